import numpy as np
import pytest

from virk_exporter.demo import corruptions

from virk_exporter.demo import photos
from virk_exporter.fingerprint import CAUSES


@pytest.fixture(scope="module")
def frames():
    return photos.camera_stream("astronaut", 6, size=(120, 160), seed=0)


def test_registry_covers_every_cause_with_vocabulary_labels():
    labels = {c.cause for c in corruptions.CORRUPTIONS.values()}
    assert labels == set(CAUSES)
    for name, c in corruptions.CORRUPTIONS.items():
        assert c.name == name and c.subkind and len(c.levels) == 5


@pytest.mark.parametrize("name", sorted(corruptions.CORRUPTIONS))
def test_corruption_is_seeded_keeps_shape_and_grows_with_severity(name, frames):
    mild = corruptions.apply(name, frames, 1, seed=5)
    again = corruptions.apply(name, frames, 1, seed=5)
    severe = corruptions.apply(name, frames, 5, seed=5)
    assert mild.shape == frames.shape and mild.dtype == np.uint8
    np.testing.assert_array_equal(mild, again)
    clean = frames.astype(np.float32)
    change_mild = np.abs(mild - clean).mean()
    change_severe = np.abs(severe - clean).mean()
    assert change_mild > 0.05, "severity 1 must change the frames"
    assert change_severe > change_mild


def test_frozen_repeats_frames_exactly(frames):
    out = corruptions.apply("frozen", frames, 5, seed=0)
    assert all(np.array_equal(out[0], f) for f in out)
    held = corruptions.apply("frozen", frames, 1, seed=0)  # every frame held twice
    same = [np.array_equal(a, b) for a, b in zip(held[:-1], held[1:])]
    assert 0 < sum(same) < len(same)


def test_bad_arguments_raise(frames):
    with pytest.raises(ValueError):
        corruptions.apply("fog", frames, 6)
    with pytest.raises(KeyError):
        corruptions.apply("lens-cap", frames, 1)
    with pytest.raises(ValueError):
        corruptions.apply("fog", frames[..., 0], 1)
