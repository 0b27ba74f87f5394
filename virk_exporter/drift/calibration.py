"""Measure the drift test's false-alarm rate on clean frames *held out* from the reference.

A permutation p-value is exact when the tested window is exchangeable with the reference.
Real feeds break that in ways only data can show: consecutive video frames are correlated, a
reference may miss the night shift, and so on. So we replay the exporter's own schedule
(``window`` frames, a test every ``test_every`` frames, hysteresis) over clean frames the
reference has never seen, count alarms, and recommend the most sensitive settings whose
measured false-alarm rate stays under a target. Frames that are also in the reference are
refused: testing a reference against itself would make the rate look better than it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from virk_exporter.config import default
from virk_exporter.drift.mmd import MMDDrift, block_null_statistics
from virk_exporter.drift.null import EmpiricalNull


@dataclass(frozen=True)
class Setting:
    """One candidate (p_val, hysteresis) and the false alarms it raised on held-out clean frames."""

    p_val: float
    hysteresis: int
    alarms: int  # tests whose last `hysteresis` results all drifted
    tests: int
    rate: float
    upper95: float  # Wilson 95% upper bound on the rate


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


def alarm_count(drifts: np.ndarray, hysteresis: int) -> tuple[int, int]:
    """(alarms, tests): positions where the last ``hysteresis`` tests all drifted."""
    n = len(drifts) - hysteresis + 1
    if n <= 0:
        return 0, 0
    # sliding all() via a cumulative count of drifting tests
    c = np.concatenate([[0], np.cumsum(drifts.astype(int))])
    runs = c[hysteresis:] - c[:-hysteresis]
    return int((runs == hysteresis).sum()), int(n)


def check_disjoint(reference: np.ndarray, heldout: np.ndarray) -> int:
    """Number of held-out embeddings that are byte-identical to a reference embedding."""
    ref = {r.tobytes() for r in np.ascontiguousarray(reference, dtype=np.float32)}
    return sum(h.tobytes() in ref for h in np.ascontiguousarray(heldout, dtype=np.float32))


def calibrate(
    reference: np.ndarray,
    heldout: np.ndarray,
    window: int = default("window"),
    test_every: int = default("test_every"),
    n_permutations: int = default("n_permutations"),
    p_vals: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05),
    hysteresis: tuple[int, ...] = (1, 2, 3),
    target: float = 0.01,
    seed: int = 0,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> CalibrationReport:
    """Replay the test schedule over ``heldout`` (clean, in stream order) against ``reference``."""
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
            k, n = alarm_count(p_values <= p, h)
            settings.append(Setting(p, h, k, n, k / n if n else float("nan"), wilson_upper(k, n)))
    # Most sensitive first: fewest confirmations, then the largest p_val. Prefer settings whose
    # 95% upper bound is under the target; with too few tests for that, the measured rate.
    ok = [s for s in settings if s.tests > 0 and s.upper95 <= target] or [
        s for s in settings if s.tests > 0 and s.rate <= target
    ]
    raw = {s.p_val: s for s in settings if s.hysteresis == 1}
    for p, s in raw.items():
        if s.tests >= 10 and s.rate > 2 * p and s.alarms >= 3:
            notes.append(
                f"at p_val={p:g} clean windows alarm {s.rate:.1%} of the time (expected {p:.1%}): the held-out "
                "frames are not exchangeable with the reference — consecutive frames are correlated or the "
                "reference misses conditions these frames show. Use a larger, more varied reference, or "
                "sample frames further apart (a larger `sample`)."
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
