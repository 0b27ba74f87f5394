"""The capture-fault detector: the fingerprinter's cause scores, calibrated on the source's own
reference period.

A cause score measures how strongly a window's image properties moved in that cause's
direction. On live footage some causes move by themselves (a moving scene changes sharpness,
clouds change brightness), so a fixed bar either misses faults on a still scene or pages all
day on a busy one. Instead each cause gets a bar from the reference period replayed block by
block (``virk_exporter.drift.null``): every block of ``window`` samples is diagnosed against the
reference without it, and the cause's bar is where its scores on that normal footage would be
exceeded with probability ``p_val / len(CAUSES)`` (Bonferroni over the causes). A live window is
a capture fault when some cause clears its bar; that cause names it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from virk_exporter.drift.null import EmpiricalNull, block_starts, leave_out_bounds
from virk_exporter.fingerprint.causes import CAUSES, MIN_SCORE, Diagnosis, Fingerprinter, finite_values

NULL_MIN_SCALE = 0.4  # cause scores are log1p effect sizes: a tail scale below this over-trusts a quiet reference


@dataclass(frozen=True)
class CaptureResult:
    diagnosis: Diagnosis  # top: the cause that cleared its bar, else "none" (or "content")
    statistic: float  # max over causes of score / bar: > 1 is a capture fault
    p_value: float  # Bonferroni-corrected over causes
    drift: bool

    def to_dict(self) -> dict[str, float | bool]:
        return {"statistic": self.statistic, "p_value": self.p_value, "drift": self.drift}


class CaptureDetector:
    """Calibrated cause scores for one source (see the module docstring)."""

    def __init__(self, fingerprinter: Fingerprinter, window: int, p_val: float) -> None:
        self.fingerprinter = fingerprinter
        self.window = int(window)
        self.p_val = float(p_val)
        self.nulls = _cause_nulls(fingerprinter, self.window)
        per_cause = self.p_val / len(CAUSES)
        self.thresholds = {c: max(MIN_SCORE, null.threshold(per_cause)) for c, null in self.nulls.items()}

    @property
    def calibrated(self) -> bool:
        return bool(self.nulls)

    def test(self, properties: dict[str, np.ndarray], embedding_drift: bool | None = None) -> CaptureResult:
        diagnosis = self.fingerprinter.diagnose(properties=properties, embedding_drift=embedding_drift, thresholds=self.thresholds)
        scores = diagnosis.scores
        bars = {c: self.thresholds.get(c, MIN_SCORE) for c in CAUSES}
        statistic = max(scores.get(c, 0.0) / bars[c] for c in CAUSES)
        if self.nulls:
            p_value = min(1.0, len(CAUSES) * min(self.nulls[c].p_value(scores.get(c, 0.0)) for c in CAUSES))
        else:
            p_value = 0.0 if statistic >= 1.0 else 1.0
        return CaptureResult(diagnosis=diagnosis, statistic=float(statistic), p_value=float(p_value), drift=diagnosis.top in CAUSES)


def _cause_nulls(fingerprinter: Fingerprinter, window: int) -> dict[str, EmpiricalNull]:
    """Each cause's scores over the reference period's blocks, each against the rest."""
    series = fingerprinter.reference_series
    n = min((len(v) for v in series.values()), default=0)
    starts = block_starts(n, window)
    left, right = leave_out_bounds(starts, window, window // 2, n)
    scores: dict[str, list[float]] = {c: [] for c in CAUSES}
    for start, lo, hi in zip(starts, left, right):
        if lo + (n - hi) < 8:  # too little reference left beside the block
            continue
        current = {k: v[start : start + window] for k, v in series.items()}
        rest = {k: finite_values(np.concatenate([v[:lo], v[hi:]])) for k, v in series.items()}
        diagnosis = fingerprinter.diagnose(properties=current, reference=rest, by_rules=True)  # scores only: no naming
        for cause, score in diagnosis.causes:
            scores[cause].append(score)
    if not scores[CAUSES[0]]:
        return {}
    independent = n / window  # the period holds this many non-overlapping blocks
    # A cause's score is 0 while its rule's gate is closed: a point mass below its tail.
    return {
        c: EmpiricalNull(np.asarray(v), min_scale=NULL_MIN_SCALE, effective_size=independent, floor=0.0) for c, v in scores.items()
    }

