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

A fault that begins inside a window fills only its newest samples, so the first test after an
onset sees a half-faulty window and often stays below its bars. With ``recent`` (the worker
passes ``test_every``), each test that does not flag also looks at its newest ``recent``
samples alone, against bars calibrated the same way on blocks of that size: ``recent_drift``.
It never raises the alarm by itself; the worker's hysteresis lets it count as the first of the
consecutive tests an alarm needs (``drift.monitor.Hysteresis``), so the alarm can come on at the
first fully faulty test.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np

from virk_exporter.drift.null import EmpiricalNull, block_starts, leave_out_bounds
from virk_exporter.fingerprint.causes import CAUSES, MIN_SCORE, Diagnosis, Fingerprinter, finite_values, named_causes

NULL_MIN_SCALE = 0.4  # cause scores are log1p effect sizes: a tail scale below this over-trusts a quiet reference


@dataclass(frozen=True)
class CaptureResult:
    diagnosis: Diagnosis  # top: the cause that cleared its bar, else "none" (or "content")
    statistic: float  # max over causes of score / bar: > 1 is a capture fault
    p_value: float  # Bonferroni-corrected over causes
    drift: bool
    recent_drift: bool = False  # not drift, but the newest `recent` samples alone clear their bars

    def to_dict(self) -> dict[str, float | bool]:
        return {"statistic": self.statistic, "p_value": self.p_value, "drift": self.drift}


class CaptureDetector:
    """Calibrated cause scores for one source (see the module docstring)."""

    def __init__(self, fingerprinter: Fingerprinter, window: int, p_val: float, recent: int | None = None) -> None:
        self.fingerprinter = fingerprinter
        self.window = int(window)
        self.p_val = float(p_val)
        self.nulls = _cause_nulls(fingerprinter, self.window)
        self.thresholds = self._bars(self.nulls)
        # The newest samples' own bars: only while they are a part of the window, and the
        # reference holds blocks of that size to calibrate them (else no recent look).
        self.recent = int(recent) if recent is not None and 4 <= int(recent) < self.window else None
        self.recent_nulls = _cause_nulls(fingerprinter, self.recent) if self.recent and self.nulls else {}
        self.recent_thresholds = self._bars(self.recent_nulls)

    def at(self, p_val: float) -> "CaptureDetector":
        """This detector at another ``p_val``: the same nulls (the reference is replayed once),
        bars set anew."""
        other = copy.copy(self)
        other.p_val = float(p_val)
        other.thresholds, other.recent_thresholds = other._bars(other.nulls), other._bars(other.recent_nulls)
        return other

    def _bars(self, nulls: dict[str, EmpiricalNull]) -> dict[str, float]:
        per_cause = self.p_val / len(CAUSES)
        return {c: max(MIN_SCORE, null.threshold(per_cause)) for c, null in nulls.items()}

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
        drift = diagnosis.top in CAUSES
        return CaptureResult(diagnosis, float(statistic), float(p_value), drift, recent_drift=not drift and self._recent_drift(properties))

    def _recent_drift(self, properties: dict[str, np.ndarray]) -> bool:
        """The newest ``recent`` samples alone clear some cause's bar (rules only: no naming)."""
        newest = self.recent_scores(properties)
        return newest is not None and bool(named_causes(newest, self.recent_thresholds))

    def recent_scores(self, properties: dict[str, np.ndarray]) -> list[tuple[str, float]] | None:
        """The rules' (cause, score) pairs of the window's newest ``recent`` samples alone; None
        when this detector has no such look or the window is not full."""
        if not self.recent_thresholds or min((len(v) for v in properties.values()), default=0) < self.window:
            return None
        newest = {k: v[-self.recent :] for k, v in properties.items()}
        return self.fingerprinter.diagnose(properties=newest, by_rules=True).causes


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


def replay_flags(
    fingerprinter: Fingerprinter,
    properties: dict[str, np.ndarray],
    window: int,
    test_every: int,
    p_vals: tuple[float, ...],
    progress: Callable[[int], None] | None = None,
) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """The worker's capture test over held-out frames' ``properties`` (stream order, measured
    against ``fingerprinter``'s reference view), one test per ``test_every`` samples: per
    ``p_val``, each test's drift and newest-samples flags (for ``drift.calibration``). A flag
    depends on ``p_val`` only through the bars, so the reference is replayed and each window
    scored once; the flags are :meth:`CaptureDetector.test`'s."""
    n = min((len(v) for v in properties.values()), default=0)
    detectors = [CaptureDetector(fingerprinter, window, p_vals[0], recent=test_every)] if p_vals else []
    detectors += [detectors[0].at(p) for p in p_vals[1:]]
    flags = np.zeros((len(p_vals), 2, len(range(0, n - window + 1, test_every))), bool)
    for i, start in enumerate(range(0, n - window + 1, test_every)):
        current = {k: v[start : start + window] for k, v in properties.items()}
        scores = fingerprinter.diagnose(properties=current, by_rules=True).causes
        newest = detectors[0].recent_scores(current) if detectors else None
        for j, detector in enumerate(detectors):
            drift = bool(named_causes(scores, detector.thresholds))
            flags[j, :, i] = drift, not drift and newest is not None and bool(named_causes(newest, detector.recent_thresholds))
        if progress:
            progress(len(detectors))
    return {p: (flags[j, 0], flags[j, 1]) for j, p in enumerate(p_vals)}
