"""The colour cast against the reference's own cells (fingerprint/cast.py)."""

import numpy as np
import pytest

from virk_exporter.demo import photos
from virk_exporter.fingerprint import Fingerprinter, compute_properties
from virk_exporter.fingerprint.causes import MIN_CAST


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
