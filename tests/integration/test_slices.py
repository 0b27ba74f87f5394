"""Slices: tags on frames, a size-corrected and multiplicity-corrected ranking, its metric."""

import cv2
import numpy as np
import pytest

from helpers import exposition, sample_value
from virk_exporter import Exporter
from virk_exporter.incidents.bundle import read_bundle
from virk_exporter.incidents.webhook import make_alert_payload, parse_notification
from virk_exporter.caller.tags import MAX_TAG_CHARS, MAX_TAGS, normalize_tags, tags_per_frame
from virk_exporter.drift.slices import n_permutations_for, rank_slices

D = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tags_are_small_string_dicts():
    assert normalize_tags({"site": "north", "lens": 35, "unset": None}) == {"lens": "35", "site": "north"}
    long = normalize_tags({"k": "v" * 500, **{f"key{i:02d}": i for i in range(20)}})
    assert len(long) == MAX_TAGS and all(len(v) <= MAX_TAG_CHARS for v in long.values())
    assert tags_per_frame({"site": "a"}, 3) == [{"site": "a"}] * 3
    assert tags_per_frame(None, 2) == [{}, {}]
    assert tags_per_frame([{"site": "a"}, {"site": "b"}], 2)[1] == {"site": "b"}
    with pytest.raises(ValueError):
        tags_per_frame([{"site": "a"}], 2)
    with pytest.raises(TypeError):
        normalize_tags(["site", "a"])


def _stream(seed, sizes, drifted=None, shift=1.0):
    """Reference N(0, I) and recent frames in slices site=s<i> of the given sizes."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(64, D))
    embeddings, tags = [], []
    for i, size in enumerate(sizes):
        x = rng.normal(size=(size, D))
        if i == drifted:
            x[:, :4] += shift
        embeddings.append(x)
        tags += [{"site": f"s{i}", "fw": "1.0" if i % 2 else "1.1"}] * size
    order = rng.permutation(sum(sizes))  # slices interleave in time
    return reference, np.concatenate(embeddings)[order], [tags[i] for i in order]


SIZES = [30, 30, 30, 30, 30, 30, 30, 30, 20, 12, 5, 3]  # 12 slices, the last ones tiny


@pytest.mark.parametrize("drifted", [3, 8, 9])  # a big slice, a middling one, the smallest tested one
def test_drift_in_one_slice_is_ranked_first_among_twelve(drifted):
    for seed in range(8):
        reference, emb, tags = _stream(seed, SIZES, drifted=drifted, shift=1.2)
        ranking = rank_slices(reference, emb, tags, seed=seed)
        assert ranking.slices[0].slice == f"site=s{drifted}", (seed, [(s.slice, s.score, s.p_value) for s in ranking.slices[:3]])
        assert ranking.slices[0].significant
        # tiny slices are listed with their support, not tested: they cannot win on noise
        assert ranking.untested["site=s10"] == 5 and ranking.untested["site=s11"] == 3
        assert all(not s.slice.startswith("site=") or s.slice == f"site=s{drifted}" for s in ranking.significant)


def test_a_five_frame_noise_slice_does_not_outrank_a_real_drift_when_tested():
    """With min_support lowered to 5, the 5-frame slice is tested; its noisy MMD² is matched by
    equally noisy permutations, so neither its score nor its p-value can beat a real drift."""
    wins = tiny_alarms = 0
    for seed in range(10):
        reference, emb, tags = _stream(100 + seed, SIZES, drifted=2, shift=0.8)
        ranking = rank_slices(reference, emb, tags, min_support=5, seed=seed)
        names = [s.slice for s in ranking.slices]
        assert "site=s10" in names  # tested now
        wins += names[0] == "site=s2"
        tiny_alarms += next(s for s in ranking.slices if s.slice == "site=s10").significant
    assert wins >= 9 and tiny_alarms <= 1


@pytest.mark.slow
def test_no_slice_is_reported_under_no_drift_beyond_the_false_discovery_rate():
    trials, alarms, p_values = 150, 0, []
    for seed in range(trials):
        reference, emb, tags = _stream(1000 + seed, SIZES)
        ranking = rank_slices(reference, emb, tags, seed=seed)
        alarms += bool(ranking.significant)
        p_values += [s.p_value for s in ranking.slices]
    # Under the global null BH controls the chance of any report at fdr = 0.05: 7.5 expected.
    assert alarms <= 16, alarms  # binomial(150, 0.05) exceeds 16 with probability < 0.3 %
    # and the per-slice permutation p-values are calibrated (uniform: mean 1/2, 10 % below 0.1)
    assert 0.44 < np.mean(p_values) < 0.56
    assert 0.06 < np.mean(np.array(p_values) <= 0.1) < 0.14


def test_enough_permutations_for_the_correction():
    for n_slices in (1, 12, 32):
        b = n_permutations_for(n_slices, 0.05)
        assert 1 / (b + 1) <= 0.05 / n_slices / 2


def test_a_tag_every_frame_shares_is_not_a_slice():
    reference, emb, tags = _stream(7, SIZES, drifted=1)
    tags = [dict(t, plant="berlin") for t in tags]
    ranking = rank_slices(reference, emb, tags, seed=0)
    assert "plant=berlin" not in [s.slice for s in ranking.slices]
    assert ranking.untested["plant=berlin"] == len(emb)


# ---------------------------------------------------------------------- through the exporter
BASE = [np.random.default_rng(i).integers(0, 256, (8, 8, 3)).astype(np.float32) for i in range(4)]


def _frame(rng, i, dark=False):
    f = cv2.resize(BASE[i % 4], (48, 48), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 8, (48, 48, 3))
    return np.clip(f * (0.3 if dark else 1.0), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_exporter_ranks_the_drifting_site_and_exports_its_score(tmp_path):
    rng = np.random.default_rng(0)
    sites = [f"s{i}" for i in range(10)]
    with Exporter(model="slices", store=str(tmp_path), reference_period_s=0, reference_frames=64, window=64, test_every=32, hysteresis=1) as exp:
        assert exp.wait_ready(120)

        @exp.monitor(tags=lambda frames, sites: [{"site": s, "firmware": "2.1"} for s in sites])
        def predict(frames, sites):
            return np.zeros((len(frames), 3), np.float32)

        @exp.monitor(tags=lambda frames: 1 / 0)
        def broken_tags(frames):
            return "ok"

        assert broken_tags(_frame(rng, 0)) == "ok"
        for step in range(20):  # 16-frame batches; site s3 goes dark after the reference is learned
            batch_sites = [sites[(step * 16 + i) % 10] if step < 6 or i % 2 else "s3" for i in range(16)]
            frames = np.stack([_frame(rng, i, dark=(s == "s3" and step >= 6)) for i, s in enumerate(batch_sites)])
            predict(frames, sites=batch_sites)
            exp.flush()
        status = exp.request("status")["sources"]["default"]
        snapshot = exp.request("snapshot")
        text = exposition(exp)
        exp.request("alert", parse_notification(make_alert_payload("slices", labels={"source": "default"}, fingerprint="5ce5")))
        for step in range(8):  # s3 recovers: the drift clears and its slice series goes away
            batch_sites = [sites[(step * 16 + i) % 10] for i in range(16)]
            predict(np.stack([_frame(rng, i) for i in range(16)]), sites=batch_sites)
            exp.flush()
        recovered = exp.request("status")["sources"]["default"]
        after = exposition(exp)
    bundle = read_bundle(next((tmp_path).glob("slices/5ce5/*/bundle.zip")))  # built before close() returned
    ranking = bundle.manifest["diagnosis"]["default"]["slices"]
    assert ranking["top"][0] == "site=s3" and ranking["method"].startswith("permutation MMD")
    assert b"site=s3" in bundle.files["report.html"]
    assert status["detected"]
    slices = status["slices"]
    assert slices["top"][0] == "site=s3" and slices["slices"][0]["significant"]
    assert sample_value(text, "virk_slice_drift_score", slice="site=s3") > 3
    exported = [line for line in text.splitlines() if line.startswith("virk_slice_drift_score{")]
    assert 1 <= len(exported) <= 5 and not any("firmware=" in line for line in exported)
    assert snapshot[-1].tags["firmware"] == "2.1" and snapshot[-1].tags["site"] in sites
    assert sample_value(text, "virk_errors_total", stage="tags") == 1.0
    assert not recovered["detected"] and recovered["slices"] is None
    assert "virk_slice_drift_score{" not in after
