"""Per-source streaming monitor (cadence, hysteresis, online detector) and calibration."""

from __future__ import annotations

import numpy as np
import pytest

from virk_exporter.drift.calibration import P_VALS, alarm_count, alarm_flags, calibrate, wilson_upper
from virk_exporter.drift import DriftUpdate, Hysteresis, SourceDriftMonitor

D = 8


def clean(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, D)).astype(np.float32)


def test_cadence_no_test_until_window_full() -> None:
    rng = np.random.default_rng(0)
    mon = SourceDriftMonitor(clean(rng, 300), window=32, test_every=16, online_ert=None, seed=0)
    results = [mon.update(clean(rng, 8)) for _ in range(12)]  # 96 frames
    ran = [i for i, r in enumerate(results) if r is not None]
    # first test once 32 frames are in, then every 16 frames: after 32, 48, 64, 80, 96 frames
    assert ran == [3, 5, 7, 9, 11]
    assert all(isinstance(results[i], DriftUpdate) for i in ran)
    assert results[3].online_statistic is None and results[3].frames_seen == 32


def test_burst_runs_one_test_on_latest_window() -> None:
    rng = np.random.default_rng(1)
    mon = SourceDriftMonitor(clean(rng, 300), window=32, online_ert=None, seed=0)
    burst = np.concatenate([clean(rng, 200), clean(rng, 32) + 3.0])  # latest 32 are shifted
    r = mon.update(burst)
    assert r is not None and r.drift and mon.frames_seen == 232
    np.testing.assert_array_equal(mon.current_window(), burst[-32:])


def test_hysteresis_one_noisy_window_does_not_flap() -> None:
    rng = np.random.default_rng(2)
    mon = SourceDriftMonitor(clean(rng, 400), window=32, p_val=0.01, hysteresis=2, online_ert=None, seed=0)
    plan = [0, 0, 3, 0, 0, 3, 3, 3, 0, 3, 0, 0]  # shift of each 32-frame window
    got = [mon.update(clean(rng, 32) + s) for s in plan]
    assert [r.drift for r in got] == [s > 0 for s in plan]
    assert [r.detected for r in got] == [False] * 6 + [True] * 5 + [False]


def test_a_test_whose_newest_samples_alone_drift_counts_toward_the_alarm_but_never_raises_it() -> None:
    def run(tests: list[str], count: int = 2) -> list[bool]:  # "D": drift, "r": only the newest samples, ".": clean
        state = Hysteresis(count)
        return [state.update(t == "D", recent=t == "r") for t in tests]

    assert run(["r", "D"]) == [False, True]  # a fault that began inside the first window: on at the first full one
    assert run([".", "D", "r", "D"]) == [False, False, False, True]
    assert run(["r", "r", "r", "r"]) == [False] * 4  # the newest samples alone never switch it on
    assert run(["D", "r"]) == [False, False]
    assert run(["r", "D"], count=1) == [False, True]
    assert run(["D", "D", "r", ".", "r", ".", "."]) == [False, True, True, True, True, True, False]  # "r" is not clean


def test_online_detector_reported_and_fires_on_shift() -> None:
    rng = np.random.default_rng(3)
    mon = SourceDriftMonitor(clean(rng, 400), window=32, online_ert=500, online_window=16, seed=0)
    quiet = [mon.update(clean(rng, 32)) for _ in range(3)]
    loud = mon.update(clean(rng, 32) + 2.0)
    assert all(r.online_threshold is not None and r.online_statistic is not None for r in quiet + [loud])
    assert loud.online_drift and loud.online_statistic > loud.online_threshold


def test_calibration_on_held_out_clean_frames() -> None:
    rng = np.random.default_rng(4)
    ref, heldout = clean(rng, 300), clean(rng, 64 * 40)
    report = calibrate(ref, heldout, window=64, test_every=64, n_permutations=100, target=0.05, seed=1)
    assert len(report.p_values) == 40
    raw = {s.p_val: s for s in report.settings if s.hysteresis == 1}
    assert raw[0.05].rate <= 0.15  # exchangeable data: near the nominal 5% (40 tests)
    assert report.recommended is not None and report.recommended.rate <= 0.05


def test_calibration_flags_non_exchangeable_stream() -> None:
    # "video": consecutive frames share a slowly wandering offset, so a window is not a
    # random sample of the reference's conditions; calibration must say so.
    rng = np.random.default_rng(5)
    ref = clean(rng, 400) + rng.normal(size=(400, 1)).astype(np.float32)
    walk = np.repeat(rng.normal(size=(40, 1)), 64, axis=0).astype(np.float32)
    report = calibrate(ref, clean(rng, 64 * 40) + walk, window=64, test_every=64, n_permutations=100, seed=1)
    raw = {s.p_val: s for s in report.settings if s.hysteresis == 1}
    assert raw[0.05].rate > 0.3
    assert any("not exchangeable" in n for n in report.notes)


def test_calibration_refuses_reference_frames() -> None:
    rng = np.random.default_rng(6)
    ref = clean(rng, 200)
    with pytest.raises(ValueError, match="also in the reference"):
        calibrate(ref, np.concatenate([clean(rng, 100), ref[:10]]), window=32)


def test_alarm_count_and_wilson() -> None:
    drifts = np.array([1, 1, 0, 1, 1, 1, 0], bool)
    assert alarm_count(drifts, 1) == (5, 7)
    assert alarm_count(drifts, 2) == (3, 6)
    assert alarm_count(drifts, 3) == (1, 5)
    assert 0.0 < wilson_upper(0, 100) < 0.05 and wilson_upper(50, 100) > 0.5


def test_calibration_never_recommends_a_p_val_the_permutations_cannot_reach() -> None:
    rng = np.random.default_rng(7)
    report = calibrate(clean(rng, 200), clean(rng, 16 * 30), window=16, test_every=16, n_permutations=200, seed=1)
    assert all(s.p_val >= 1 / 201 for s in report.settings)
    assert report.recommended is None or report.recommended.p_val >= 1 / 201
    assert any("0.001 left out" in note for note in report.notes)


def test_a_newest_samples_flag_counts_toward_an_alarm_but_never_as_the_latest_test() -> None:
    drifts, recent = np.array([0, 1, 0, 1], bool), np.array([1, 0, 1, 0], bool)
    assert list(alarm_flags(drifts, 2, recent=recent)) == [True, False, True]
    assert list(alarm_flags(drifts, 2)) == [False, False, False]


def test_calibration_counts_the_capture_tests_alarms_too() -> None:
    rng = np.random.default_rng(8)
    ref, heldout = clean(rng, 300), clean(rng, 16 * 40)
    n = 40  # scheduled tests: window 16, a test every 16
    quiet = calibrate(ref, heldout, window=16, test_every=16, n_permutations=200, target=0.05, seed=1)
    flagged = np.zeros(n, bool)
    flagged[5:15] = True  # the capture test flags a stretch of these clean frames
    capture = {p: (flagged if p == 0.05 else np.zeros(n, bool), np.zeros(n, bool)) for p in P_VALS}
    loud = calibrate(ref, heldout, window=16, test_every=16, n_permutations=200, target=0.05, seed=1, capture=capture)
    before = {(s.p_val, s.hysteresis): s for s in quiet.settings}
    for s in loud.settings:
        same = before[(s.p_val, s.hysteresis)]
        assert s.embedding_alarms == same.alarms and same.capture_alarms == 0
        if s.p_val == 0.05:
            assert s.capture_alarms == 11 - s.hysteresis and s.alarms >= max(s.capture_alarms, s.embedding_alarms)
    assert loud.recommended is None or loud.recommended.p_val < 0.05 or loud.recommended.hysteresis > 1
    assert any("capture-fault test flags" in note for note in loud.notes)
    with pytest.raises(ValueError, match="every p_val"):
        calibrate(ref, heldout, window=16, test_every=16, capture={0.05: capture[0.05]})
