"""The colour cast against the reference's own cells (fingerprint/cast.py)."""

import cv2
import numpy as np
import pytest

from virk_exporter.demo import corruptions, photos
from virk_exporter.fingerprint import Fingerprinter, compute_properties
from virk_exporter.fingerprint.causes import CAST_AGREEMENT, MIN_CAST, MIN_SCORE


@pytest.fixture(scope="module")
def coffee() -> tuple[Fingerprinter, np.ndarray]:
    # coffee's cells differ in colour (red saucer, brown wood): a few new cells move a median of its own cells
    return Fingerprinter(photos.camera_stream("coffee", 32, size=(168, 224), seed=1)), photos.camera_stream("coffee", 8, size=(168, 224), seed=2)


def _with_object(frames: np.ndarray) -> np.ndarray:
    """A part of another photograph standing in 6 % of the view (a person, a parked car)."""
    out = frames.copy()
    h, w = frames.shape[1:3]
    donor = photos.fit(photos.load("motorcycle"), (h, w))
    y, x, oh, ow = h // 5, int(w * 0.78), int(h * 0.45), int(w * 0.13)
    out[:, y : y + oh, x : x + ow] = donor[y : y + oh, x : x + ow]
    return out


def _cast_change(fp: Fingerprinter, frames: np.ndarray, against_cells: bool) -> float:
    props = fp.properties(frames) if against_cells else compute_properties(frames)
    reference = fp.reference_properties if against_cells else compute_properties(photos.camera_stream("coffee", 32, size=(168, 224), seed=1))
    return max(abs(float(np.median(props[k]) - np.median(reference[k]))) for k in ("cast_r", "cast_b"))


def test_an_object_in_a_few_cells_does_not_move_the_cast_against_the_reference_cells(coffee):
    fp, live = coffee
    assert _cast_change(fp, _with_object(live), against_cells=False) > MIN_CAST  # each frame's own cells: it moves
    assert _cast_change(fp, _with_object(live), against_cells=True) < 0.01


@pytest.mark.parametrize("gain", [1.1, 0.8])  # (a stronger red gain clips coffee's saucer)
def test_a_channel_gain_moves_the_cast_against_the_reference_cells_by_the_gain(coffee, gain):
    fp, live = coffee
    warm = np.clip(live * np.array([gain, 1.0, 1.0]), 0, 255).astype(np.uint8)
    assert np.median(fp.properties(warm)["cast_r"]) - np.median(fp.reference_properties["cast_r"]) == pytest.approx(np.log(gain), abs=0.03)
    assert abs(np.median(fp.properties(warm)["cast_b"]) - np.median(fp.reference_properties["cast_b"])) < 0.01


def test_the_reference_cells_survive_a_round_trip_and_an_old_reference_keeps_its_own_cast(coffee):
    fp, live = coffee
    again = Fingerprinter.from_state(fp.state())
    assert np.array_equal(again.properties(live)["cast_r"], fp.properties(live)["cast_r"])
    # a reference saved before the cells were kept: its series and live frames both use each frame's own cast
    old = Fingerprinter.from_state({k: v for k, v in fp.state().items() if not k.endswith(("cast_ratios", "cast_strong"))})
    assert old.reference_view.cast is None
    assert np.allclose(old.properties(live)["cast_r"], compute_properties(live)["cast_r"])


def test_a_learned_reference_keeps_the_cells_and_measures_its_own_samples_against_them():
    from virk_exporter.fingerprint.properties import compute_samples
    from virk_exporter.reference.baseline import Learner

    frames = photos.camera_stream("coffee", 24, size=(120, 160), seed=1)
    learner = Learner(period_s=0.0, cap=24, minimum=8)
    for start in range(0, 24, 8):
        props, smalls, cells = compute_samples(frames[start : start + 8])
        learner.add(frames[start : start + 8], np.zeros((8, 4), np.float32), props, smalls, cells, timestamp=float(start))
    learned = learner.finish(now=24.0).fingerprinter
    assert learned.reference_view.cast is not None
    direct = Fingerprinter(frames)
    assert np.allclose(learned.reference_series["cast_r"], direct.reference_series["cast_r"])
    assert abs(np.median(learned.reference_series["cast_r"])) < 0.01  # its own samples, against its own cells


def _jpeg(frames: np.ndarray, quality: int) -> np.ndarray:
    return np.stack([cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_UNCHANGED) for f in frames])


def test_a_white_balance_moves_every_strong_cell_alike_and_a_codecs_chroma_loss_does_not(coffee):
    fp, live = coffee
    agreement = lambda frames: float(np.median(fp.properties(frames)["cast_agreement"]))  # noqa: E731
    cast = lambda frames: max(abs(float(np.median(fp.properties(frames)[k]) - np.median(fp.reference_properties[k]))) for k in ("cast_r", "cast_b"))  # noqa: E731
    balance = corruptions.apply("color_shift", live, severity=3, seed=0)  # zero-sum channel gains
    codec = _jpeg(live, 5)
    assert cast(balance) > MIN_CAST and agreement(balance) >= CAST_AGREEMENT
    assert cast(codec) > MIN_CAST and agreement(codec) < CAST_AGREEMENT  # its median moved as much, cell by cell unevenly
    assert agreement(live) < CAST_AGREEMENT  # no cast: the cells scatter around it
    # the reference's own samples are measured against its cells like live frames
    assert fp.reference_properties["cast_agreement"].size == 32 and np.median(fp.reference_properties["cast_agreement"]) < CAST_AGREEMENT


def test_an_uneven_colour_change_is_not_a_colour_cast_unless_the_reference_cannot_tell(coffee):
    fp, live = coffee
    codec = _jpeg(live, 5)
    assert fp.diagnose(codec, by_rules=True).scores["color_shift"] == 0.0
    assert fp.diagnose(corruptions.apply("color_shift", live, severity=3, seed=0), by_rules=True).top == "color_shift"
    # a reference saved before the agreement was measured keeps the cast rule it had
    older = Fingerprinter.from_state({k: v for k, v in fp.state().items() if not k.endswith("prop/cast_agreement")})
    assert older.diagnose(codec, by_rules=True).scores["color_shift"] > MIN_SCORE
