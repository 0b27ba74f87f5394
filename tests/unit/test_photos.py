import numpy as np
import pytest

from virk_exporter.demo import photos


def test_tune_score_and_fresh_sets_are_disjoint_and_load():
    assert set(photos.TUNE).isdisjoint(photos.SCORE)
    assert set(photos.FRESH).isdisjoint(set(photos.TUNE) | set(photos.SCORE))
    assert len(photos.TUNE) >= 4 and len(photos.SCORE) >= 4 and len(photos.FRESH) >= 4
    for name in photos.ALL:
        image = photos.load(name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) >= 150
        assert image.std() > 10  # a real picture, not a blank


def test_unknown_photo_raises():
    with pytest.raises(KeyError):
        photos.load("no-such-photo")


def test_camera_stream_shape_and_determinism():
    a = photos.camera_stream("chelsea", 4, size=(120, 160), seed=3)
    b = photos.camera_stream("chelsea", 4, size=(120, 160), seed=3)
    c = photos.camera_stream("chelsea", 4, size=(120, 160), seed=4)
    assert a.shape == (4, 120, 160, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_consecutive_frames_differ_like_a_static_camera():
    frames = photos.camera_stream("coffee", 6, seed=1).astype(np.int16)
    diffs = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    assert np.all(diffs > 0.5)  # sensor noise and vibration: never identical
    assert np.all(diffs < 6.0)  # but the same view
    brightness = frames.mean(axis=(1, 2, 3))
    assert np.ptp(brightness) < 3.0


def test_camera_stream_accepts_an_array_and_crops_to_aspect():
    scene = np.zeros((100, 400, 3), np.uint8)
    scene[:, 150:250] = 200  # a bright band in the middle survives the centre crop
    frames = photos.camera_stream(scene, 2, size=(48, 64), seed=0)
    assert frames.shape == (2, 48, 64, 3)
    assert frames[:, :, 20:44].mean() > 150 and frames[:, :, :4].mean() < 30
