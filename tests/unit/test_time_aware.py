"""Time-aware calibration: autocorrelated normal streams stay quiet, real shifts still fire."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from virk_exporter.config import ExporterConfig
from virk_exporter.drift import EmpiricalNull, SourceDriftMonitor
from virk_exporter.drift.mmd import MMDDrift, block_null_statistics
from virk_exporter.drift.null import block_starts, leave_out_bounds

D = 8


def ar1(rng: np.random.Generator, n: int, phi: float = 0.97, start: np.ndarray | None = None) -> np.ndarray:
    """A stationary AR(1) process in embedding space: consecutive samples are strongly correlated."""
    x = np.empty((n, D), np.float32)
    prev = rng.normal(size=D) if start is None else start
    noise = rng.normal(scale=np.sqrt(1 - phi**2), size=(n, D))
    for i in range(n):
        prev = phi * prev + noise[i]
        x[i] = prev
    return x


def flag_rate(monitor: SourceDriftMonitor, stream: np.ndarray) -> float:
    results = [monitor.update(stream[i : i + 8]) for i in range(0, len(stream), 8)]
    drifts = [r.drift for r in results if r is not None]
    return float(np.mean(drifts))


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_ar1_stream_fails_the_exchangeable_test_and_passes_the_time_aware_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    series = ar1(rng, 512 + 4000, phi=0.8)
    reference, live = series[:512], series[512:]
    exchangeable = SourceDriftMonitor(reference, window=16, test_every=8, online_ert=None, seed=1, time_aware=False)
    time_aware = SourceDriftMonitor(reference, window=16, test_every=8, online_ert=None, seed=1)
    assert flag_rate(exchangeable, live) > 0.5  # the old test: "these seconds differ from those"
    assert flag_rate(time_aware, live) <= 0.02  # configured p_val 0.01, measured over 500 tests


def test_time_aware_test_still_detects_a_shift() -> None:
    rng = np.random.default_rng(1)
    series = ar1(rng, 512 + 400)
    monitor = SourceDriftMonitor(series[:512], window=16, test_every=8, online_ert=None, seed=2)
    assert flag_rate(monitor, series[512:] + 4.0) == 1.0


def test_block_null_matches_a_brute_force_leave_out() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(90, D)).astype(np.float32)
    mmd = MMDDrift(x, seed=0)
    values = block_null_statistics(mmd.x_ref, mmd.sigma, 16, 8)
    starts = block_starts(90, 16)
    left, right = leave_out_bounds(starts, 16, 8, 90)
    for i in (0, len(starts) // 2, len(starts) - 1):
        keep = np.r_[0 : left[i], right[i] : 90]
        brute = MMDDrift(x[keep], sigma=mmd.sigma, seed=0, n_permutations=1).statistics(torch.tensor(x[starts[i] : starts[i] + 16]))[0]
        assert values[i] == pytest.approx(brute, abs=1e-5)


def test_empirical_null_p_values_and_threshold_agree() -> None:
    null = EmpiricalNull(np.arange(1.0, 20.0))  # 19 values: conformal p reaches 1/20
    assert null.p_value(0.0) == 1.0
    assert null.p_value(19.0) == pytest.approx(2 / 20)
    assert null.p_value(19.5) == pytest.approx(1 / 20)
    for alpha in (0.2, 0.05, 0.01, 0.001):
        t = null.threshold(alpha)
        assert null.p_value(t + 1e-6) <= alpha + 1e-12
        assert null.p_value(t - 1e-6) > alpha or t - 1e-6 <= null.values[-1]
    assert null.threshold(0.001) > null.threshold(0.01) > 19.0  # beyond the data: the fitted tail


def test_a_p_val_that_permutations_cannot_reach_is_refused() -> None:
    with pytest.raises(ValueError, match="can never be reached"):
        ExporterConfig(model="m", p_val=0.001, n_permutations=200)
    ExporterConfig(model="m", p_val=0.005, n_permutations=199)  # 1/200 = 0.005 is reachable


def test_the_tail_starts_at_the_largest_normal_value_not_at_a_multiple_of_it() -> None:
    # A short reference (about 4 independent blocks) of a cause that is mostly 0 on normal
    # footage, with a few excursions up to 1.1: the bar for p = 0.01 / 12 lies a few tail scales
    # above 1.1; the old tail, stretched from the median, put it at 8.3 and hid strong faults.
    values = np.r_[np.zeros(30), np.linspace(0.2, 1.1, 15)]
    null = EmpiricalNull(values, min_scale=0.4, effective_size=3.75)
    top_p = (1 + 3.75 / values.size) / (1 + 3.75)
    assert null.p_value(1.1 + null.scale) == pytest.approx(min(1 / 4.75, top_p * np.exp(-1.0)))
    bar = null.threshold(0.01 / 12)
    assert 1.1 < bar < 5.0
    assert null.p_value(bar + 1e-6) <= 0.01 / 12


def test_a_gated_score_fits_its_tail_to_the_open_gate_values_not_to_the_zeros() -> None:
    # A moving camera's camera_shift score: 0 in most blocks, and 3.0-4.1 when the geometry gate
    # opens (the rule adds a constant bonus). Mean excess over the median of all values (0)
    # would be ~3.5 and put the bar ~20; the open-gate values spread by ~0.3.
    values = np.r_[np.zeros(40), np.linspace(3.0, 4.1, 12)]
    gated = EmpiricalNull(values, min_scale=0.4, effective_size=7.8, floor=0.0)
    plain = EmpiricalNull(values, min_scale=0.4, effective_size=7.8)
    assert plain.scale > 3.0
    assert gated.scale == pytest.approx(0.4)  # the open-gate values' excess (~0.3) is below the floor
    alpha = 0.01 / 12
    assert 4.1 < gated.threshold(alpha) < 7.0 < plain.threshold(alpha)
    assert gated.p_value(gated.threshold(alpha) + 1e-6) <= alpha
    # A gate that opened once or twice: the zeros do not set the tail's scale either, and the
    # bar does not fall when the same opening recurs (it fell from ~20 to ~5 at the third).
    bars = [EmpiricalNull(np.r_[np.zeros(40), np.full(k, 3.0)], min_scale=0.4, effective_size=3.75, floor=0.0).threshold(alpha) for k in (1, 2, 3, 6)]
    assert bars[0] < 6.0 and np.ptp(bars) < 0.05
    assert EmpiricalNull(np.r_[np.zeros(40), [3.0, 4.1]], min_scale=0.4, floor=0.0).scale == pytest.approx(0.55)
