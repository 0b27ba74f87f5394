"""The naming model: fitting, its file, the shipped model, and how diagnose uses it."""

import numpy as np
import pytest

from virk_exporter.demo import corruptions, photos
from virk_exporter.fingerprint import CAUSES, Fingerprinter
from virk_exporter.fingerprint.causes import MIN_SCORE
from virk_exporter.fingerprint.naming import CauseModel, evidence_features, feature_names, shipped_model
from virk_exporter.drift.ks import PropertyTest


def _toy(seed: int = 0, n: int = 60) -> tuple[np.ndarray, list[str]]:
    """Three classes, each moving its own feature; the rest is noise."""
    rng = np.random.default_rng(seed)
    labels = [("a", "b", "c")[i % 3] for i in range(n)]
    x = rng.normal(0.0, 0.3, size=(n, 5))
    for row, label in zip(x, labels):
        row["abc".index(label)] += 2.0
    return x, labels


def test_fit_separates_classes_and_survives_its_file() -> None:
    x, labels = _toy()
    model = CauseModel.fit(x, labels, ("a", "b", "c"), [f"f{i}" for i in range(5)], l2=1.0)
    test_x, test_labels = _toy(seed=1)
    picks = [model.classes[i] for i in np.argmax(model.probabilities(test_x), axis=1)]
    assert np.mean([p == t for p, t in zip(picks, test_labels)]) >= 0.95
    again = CauseModel.from_json(model.to_json())
    assert np.allclose(again.probabilities(test_x), model.probabilities(test_x), atol=1e-3)
    assert model.probabilities(test_x[0]).sum() == pytest.approx(1.0)


def test_best_can_be_restricted_to_some_classes() -> None:
    x, labels = _toy()
    model = CauseModel.fit(x, labels, ("a", "b", "c"), [f"f{i}" for i in range(5)])
    point = np.array([2.0, 0.0, 0.0, 0.0, 0.0])
    assert model.best(point)[0] == "a"
    assert model.best(point, among=("b", "c"))[0] in ("b", "c")


def test_a_model_file_with_mismatched_shapes_is_refused() -> None:
    x, labels = _toy()
    text = CauseModel.fit(x, labels, ("a", "b", "c"), [f"f{i}" for i in range(4)] + ["extra"]).to_json()
    broken = text.replace('"f0",', "", 1)
    with pytest.raises(ValueError, match="do not match"):
        CauseModel.from_json(broken)


def test_the_shipped_model_matches_the_features_and_causes() -> None:
    model = shipped_model(CAUSES)
    assert model.features == feature_names(CAUSES)
    assert set(model.classes) <= set(CAUSES)
    assert model.provenance["photographs"]  # says what it was fitted on
    assert np.isfinite(model.weights).all()


def test_features_are_zero_for_insignificant_properties_and_signed_otherwise() -> None:
    moved = PropertyTest("brightness", reference=100.0, current=60.0, effect=-20.0, statistic=0.9, p_value=1e-9, q_value=1e-8, significant=True)
    still = PropertyTest("contrast", reference=40.0, current=41.0, effect=0.5, statistic=0.2, p_value=0.3, q_value=0.5, significant=False)
    x = dict(zip(feature_names(CAUSES), evidence_features([moved, still], {"blur": 2.5}, CAUSES)))
    assert x["effect:brightness"] == pytest.approx(-np.log1p(20.0))
    assert x["ks:brightness"] == pytest.approx(-0.9)
    assert x["relative:brightness"] == pytest.approx(-40.0 / 160.0, rel=1e-4)
    assert x["effect:contrast"] == x["ks:contrast"] == x["relative:contrast"] == 0.0
    assert x["rule:blur"] == 2.5 and x["rule:noise"] == 0.0
    odd = PropertyTest("haze", reference=float("nan"), current=3.0, effect=2.0, statistic=0.5, p_value=1e-5, q_value=1e-4, significant=True)
    assert np.isfinite(evidence_features([odd], {"blur": float("nan")}, CAUSES)).all()


@pytest.fixture(scope="module")
def fp() -> Fingerprinter:
    return Fingerprinter(photos.camera_stream("coffee", 48, seed=0))


def test_diagnose_names_by_the_model_only_when_the_rules_name_a_cause(fp: Fingerprinter) -> None:
    clean = fp.diagnose(photos.camera_stream("coffee", 16, seed=1))
    assert clean.top == "none" and clean.probabilities == {}
    faulty = corruptions.apply("gaussian_noise", photos.camera_stream("coffee", 16, seed=2), 4, 0)
    d = fp.diagnose(faulty)
    candidates = {c for c, score in d.causes if score >= MIN_SCORE}
    assert d.top in candidates
    assert d.top == max(candidates, key=d.probabilities.get)
    assert set(d.probabilities) == set(shipped_model(CAUSES).classes)
    assert d.to_dict()["probabilities"] == d.probabilities
    rules = fp.diagnose(faulty, by_rules=True)
    assert rules.top == rules.causes[0][0] and rules.probabilities == {}
    assert np.array_equal(rules.features, d.features)  # the evidence does not depend on the naming


def test_a_cause_below_its_bar_is_never_named(fp: Fingerprinter) -> None:
    faulty = corruptions.apply("gaussian_noise", photos.camera_stream("coffee", 16, seed=2), 4, 0)
    free = fp.diagnose(faulty)
    bars = {c: (np.inf if c == free.top else 0.0) for c in CAUSES}  # the favourite cannot clear its bar
    barred = fp.diagnose(faulty, thresholds=bars)
    assert barred.top != free.top
    assert barred.top in {c for c, score in barred.causes if score >= MIN_SCORE} | {"none"}
