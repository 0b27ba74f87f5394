"""Measure the drift test's false-alarm rate on clean frames *held out* from the reference.

A permutation p-value is exact when the tested window is exchangeable with the reference.
Real feeds break that in ways only data can show: consecutive video frames are correlated, a
reference may miss the night shift, and so on. So we replay the exporter's own schedule
(``window`` frames, a test every ``test_every`` frames, hysteresis) over clean frames the
reference has never seen, count alarms, and recommend the most sensitive settings whose
measured false-alarm rate stays under a target. Frames that are also in the reference are
refused: testing a reference against itself would make the rate look better than it is.

The alarm fires on either test, so the capture-fault test's verdicts on the same windows
(``capture``: per candidate ``p_val``, each test's drift and newest-samples flags, as
``fingerprint.detector.replay_flags`` gives them) count too: on real footage it is the one that
flags normal scenes most (BENCHMARKS.md, reference span).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from virk_exporter.config import default
from virk_exporter.drift.mmd import MMDDrift, block_null_statistics
from virk_exporter.drift.null import EmpiricalNull


@dataclass(frozen=True)
class Setting:
    """One candidate (p_val, hysteresis) and the false alarms it raised on held-out clean frames."""

    p_val: float
    hysteresis: int
    alarms: int  # tests where either test's alarm is on: its last `hysteresis` results all drifted
    tests: int
    rate: float
    upper95: float  # Wilson 95% upper bound on the rate
    embedding_alarms: int = 0
    capture_alarms: int = 0  # 0 when the capture test was not replayed


@dataclass
class CalibrationReport:
    """What ``calibrate`` found: the schedule replayed, each setting's false-alarm rate, the pick."""

    window: int
    test_every: int
    n_permutations: int
    n_reference: int
    n_heldout: int
    p_values: np.ndarray  # one per test, in stream order
    settings: list[Setting]
    target: float
    recommended: Setting | None
    notes: list[str] = field(default_factory=list)


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    if n == 0:
        return 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(min(1.0, (centre + spread) / (1 + z * z / n)))


def alarm_flags(drifts: np.ndarray, hysteresis: int, recent: np.ndarray | None = None) -> np.ndarray:
    """Per test from the ``hysteresis``-th on: the last ``hysteresis`` tests all drifted. With
    ``recent`` (tests whose newest samples alone drifted) those count among them, never as the
    latest (``monitor.Hysteresis``)."""
    drifts = np.asarray(drifts, bool)
    leaning = drifts | (np.asarray(recent, bool) if recent is not None else False)
    if len(drifts) < hysteresis:
        return np.zeros(0, bool)
    # sliding all() via a cumulative count of leaning tests
    c = np.concatenate([[0], np.cumsum(leaning.astype(int))])
    return (c[hysteresis:] - c[:-hysteresis] == hysteresis) & drifts[hysteresis - 1 :]


def alarm_count(drifts: np.ndarray, hysteresis: int) -> tuple[int, int]:
    """(alarms, tests): positions where the last ``hysteresis`` tests all drifted."""
    flags = alarm_flags(drifts, hysteresis)
    return int(flags.sum()), int(flags.size)


def check_disjoint(reference: np.ndarray, heldout: np.ndarray) -> int:
    """Number of held-out embeddings that are byte-identical to a reference embedding."""
    ref = {r.tobytes() for r in np.ascontiguousarray(reference, dtype=np.float32)}
    return sum(h.tobytes() in ref for h in np.ascontiguousarray(heldout, dtype=np.float32))


P_VALS = (0.001, 0.005, 0.01, 0.05)  # the candidate p_val settings


def calibrate(
    reference: np.ndarray,
    heldout: np.ndarray,
    window: int = default("window"),
    test_every: int = default("test_every"),
    n_permutations: int = default("n_permutations"),
    p_vals: tuple[float, ...] = P_VALS,
    hysteresis: tuple[int, ...] = (1, 2, 3),
    target: float = 0.01,
    seed: int = 0,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
    capture: Mapping[float, tuple[np.ndarray, np.ndarray]] | None = None,
) -> CalibrationReport:
    """Replay the test schedule over ``heldout`` (clean, in stream order) against ``reference``;
    with ``capture`` (p_val -> per-test drift and newest-samples flags of the capture test on
    the same schedule) an alarm of either test counts."""
    reference = np.asarray(reference, dtype=np.float32)
    heldout = np.asarray(heldout, dtype=np.float32)
    overlap = check_disjoint(reference, heldout)
    if overlap:
        raise ValueError(
            f"{overlap} held-out frames are also in the reference; calibrate on frames the reference has not seen"
        )
    if len(heldout) < window:
        raise ValueError(f"need at least window={window} held-out frames, got {len(heldout)}")
    notes = []
    floor = 1.0 / (1 + n_permutations)
    unreachable = [p for p in p_vals if p < floor]
    p_vals = tuple(p for p in p_vals if p >= floor)
    if unreachable:
        notes.append(
            f"p_val {', '.join(f'{p:g}' for p in unreachable)} left out: with n_permutations={n_permutations} the "
            f"smallest p-value is {floor:.4g}, so such a setting could never fire"
        )
    if not p_vals:
        raise ValueError(f"every p_val is below 1/(1+n_permutations) = {floor:.4g}: raise n_permutations")
    starts = np.arange(0, len(heldout) - window + 1, test_every)
    if capture is not None:
        missing = [p for p in p_vals if p not in capture or len(capture[p][0]) != len(starts)]
        if missing:
            raise ValueError(f"the capture test's flags must cover every p_val and the {len(starts)} scheduled tests (missing: {missing})")
    detector = MMDDrift(reference, n_permutations=n_permutations, p_val=max(p_vals), device=device, seed=seed)
    # The exporter's time-aware p-value (drift/monitor.py): the larger of the permutation p and
    # the rank against the reference period replayed block by block.
    values = block_null_statistics(detector.x_ref, detector.sigma, window, window)
    null = EmpiricalNull(values, min_scale=1e-3, effective_size=len(reference) / window) if values.size else None
    p_values = np.empty(len(starts))
    for i, s in enumerate(starts):  # one test per scheduled window, as the exporter runs them
        result = detector.test(heldout[s : s + window])
        p_values[i] = result.p_value if null is None else max(result.p_value, null.p_value(result.statistic))
        if progress:
            progress(1)
    settings = []
    for h in sorted(hysteresis):
        for p in sorted(p_vals, reverse=True):
            embedding = alarm_flags(p_values <= p, h)
            captured = alarm_flags(capture[p][0], h, recent=capture[p][1]) if capture is not None else np.zeros_like(embedding)
            k, n = int((embedding | captured).sum()), int(embedding.size)
            rate = k / n if n else float("nan")
            settings.append(Setting(p, h, k, n, rate, wilson_upper(k, n), int(embedding.sum()), int(captured.sum())))
    # Most sensitive first: fewest confirmations, then the largest p_val. Prefer settings whose
    # 95% upper bound is under the target; with too few tests for that, the measured rate.
    ok = [s for s in settings if s.tests > 0 and s.upper95 <= target] or [
        s for s in settings if s.tests > 0 and s.rate <= target
    ]
    raw = {s.p_val: s for s in settings if s.hysteresis == 1}
    for p, s in raw.items():
        if s.tests >= 10 and s.capture_alarms > 2 * p * s.tests and s.capture_alarms >= 3:
            notes.append(
                f"at p_val={p:g} the capture-fault test flags {s.capture_alarms / s.tests:.1%} of clean windows "
                f"(expected {p:.1%}): its bars come from the reference period replayed, and this reference does "
                "not show what these frames show. Build or learn it from a longer period of the source's normal "
                "scene (reference_period_s for a learned one); references spanning under a minute flagged 6-43 % "
                "of clean tests on real footage (BENCHMARKS.md, reference span)."
            )
            break
    for p, s in raw.items():
        if s.tests >= 10 and s.embedding_alarms > 2 * p * s.tests and s.embedding_alarms >= 3:
            notes.append(
                f"at p_val={p:g} the embedding test alarms on {s.embedding_alarms / s.tests:.1%} of clean windows "
                f"(expected {p:.1%}): the held-out frames are not exchangeable with the reference — consecutive "
                "frames are correlated or the reference misses conditions these frames show. Use a larger, more "
                "varied reference, or sample frames further apart (a larger `sample`)."
            )
            break
    n_tests = len(p_values)
    if n_tests < 1 / max(target, 1e-9):
        notes.append(
            f"only {n_tests} tests: a false-alarm rate of {target:.1%} cannot be resolved; use at least "
            f"{int(np.ceil(3 / target)) * test_every + window} held-out frames for a meaningful estimate."
        )
    return CalibrationReport(
        window=window,
        test_every=test_every,
        n_permutations=n_permutations,
        n_reference=len(reference),
        n_heldout=len(heldout),
        p_values=p_values,
        settings=settings,
        target=target,
        recommended=ok[0] if ok else None,
        notes=notes,
    )
