"""Online MMD detector: run length to false alarm matches the requested ERT; restorable state."""

from __future__ import annotations

import numpy as np
import pytest

from virk_exporter.drift import OnlineMMDDrift


def run_length(det: OnlineMMDDrift, rng: np.random.Generator, shift: float = 0.0, limit: int = 100_000) -> int:
    det.reset()
    d = det.x_ref.shape[1]
    while det.t < limit:
        r = det.update(rng.normal(size=(8, d)) + shift)  # 8 points per call, judged one by one
        if r.drift:
            return int(r.detection_time)
    raise AssertionError("no detection")


def test_run_length_matches_requested_ert() -> None:
    ert, w = 50, 10
    lengths = []
    for ref_seed in range(12):  # average over references: calibration is per reference
        rng = np.random.default_rng(ref_seed)
        det = OnlineMMDDrift(rng.normal(size=(300, 2)), ert=ert, window_size=w, n_bootstraps=2000, seed=ref_seed)
        lengths += [run_length(det, rng) for _ in range(10)]
    mean = float(np.mean(lengths))
    print(f"requested ERT {ert}, measured mean run length {mean:.1f} over {len(lengths)} runs")
    assert 0.7 * ert <= mean <= 1.3 * ert


def test_detection_delay_under_shift_is_short() -> None:
    rng = np.random.default_rng(7)
    det = OnlineMMDDrift(rng.normal(size=(400, 4)), ert=200, window_size=16, n_bootstraps=3000, seed=1)
    delays = [run_length(det, rng, shift=1.0) for _ in range(10)]
    print(f"detection delay at a 1-sd shift: median {np.median(delays)} updates (window 16, ERT 200)")
    assert np.median(delays) <= 16  # well before the window has fully turned over twice
    assert max(delays) < 200


def test_state_round_trip_resumes_identically() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3))
    stream = rng.normal(size=(60, 3))
    a = OnlineMMDDrift(x, ert=100, window_size=8, n_bootstraps=1500, seed=4)
    a.update(stream[:25])
    state = a.state_dict()
    b = OnlineMMDDrift(x, ert=100, window_size=8, n_bootstraps=1500, seed=99)  # different split
    b.load_state_dict(state)
    for point in stream[25:]:
        ra, rb = a.update(point), b.update(point)
        assert ra.statistic == pytest.approx(rb.statistic, rel=1e-12, abs=1e-15)
        assert ra.threshold == rb.threshold and ra.time == rb.time


def test_batch_update_equals_point_updates_and_thresholds() -> None:
    rng = np.random.default_rng(5)
    x, stream = rng.normal(size=(200, 3)), rng.normal(size=(20, 3))
    a = OnlineMMDDrift(x, ert=100, window_size=8, n_bootstraps=1500, seed=4)
    b = OnlineMMDDrift(x, ert=100, window_size=8, n_bootstraps=1500, seed=4)
    last = [a.update(p) for p in stream][-1]
    batch = b.update(stream)
    assert batch.statistic == pytest.approx(last.statistic) and batch.time == 20
    assert len(a.thresholds) == 8 and a.threshold(100) == a.thresholds[-1]


def test_too_small_reference_is_an_error() -> None:
    with pytest.raises(ValueError, match="too small"):
        OnlineMMDDrift(np.random.default_rng(0).normal(size=(20, 2)), ert=50, window_size=8)
