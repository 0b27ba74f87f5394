"""Fingerprinter: each cause on controlled inputs, clean -> none, odd inputs, persistence."""

import json

import cv2
import numpy as np
import pytest

from virk_exporter.demo import corruptions

from virk_exporter.demo import photos
from virk_exporter.fingerprint import VOCABULARY, Fingerprinter, compute_properties
from virk_exporter.fingerprint.causes import FOCUS_LOSS, MIN_CAST, MIN_SCORE

N = 24  # frames per test window: enough for the KS tests, fast enough for CI


@pytest.fixture(scope="module")
def reference():
    return photos.camera_stream("astronaut", 64, seed=0)


@pytest.fixture(scope="module")
def fp(reference):
    return Fingerprinter(reference)


@pytest.fixture(scope="module")
def window():
    return photos.camera_stream("astronaut", N, seed=1)


def test_clean_window_is_none(fp, window):
    d = fp.diagnose(window)
    assert d.top == "none"
    assert [name for name, _ in d.causes] == sorted(d.scores, key=lambda c: -d.scores[c])
    assert {name for name, _ in d.causes} == set(VOCABULARY) - {"none", "content", "unknown"}


# One corruption per sub-kind, at severity 4, on a controlled scene.
@pytest.mark.parametrize("name", sorted(corruptions.CORRUPTIONS))
def test_each_corruption_is_diagnosed_as_its_cause(fp, window, name):
    corruption = corruptions.CORRUPTIONS[name]
    d = fp.diagnose(corruptions.apply(name, window, 4, seed=11))
    assert d.top == corruption.cause, (name, d.causes[:3])
    top_evidence = [e for e in d.evidence if e.cause == d.top]
    assert top_evidence, "the named cause must come with evidence"


def test_subkinds_in_evidence(fp, window):
    cases = {
        "brightness_up": "over-exposure",
        "brightness_down": "under-exposure",
        "fog": "fog",
        "translation": "translation",
        "impulse_noise": "impulse",
        "defocus_blur": "defocus",
        "motion_blur": "motion",
        "zoom_blur": "zoom",
    }
    for name, subkind in cases.items():
        d = fp.diagnose(corruptions.apply(name, window, 4, seed=2))
        assert subkind in d.subkind, (name, d.subkind)
        assert any(subkind in e.subkind for e in d.evidence)


def test_blur_evidence_names_sharpness_with_numbers(fp, window):
    d = fp.diagnose(corruptions.apply("defocus_blur", window, 3, seed=0))
    sharp = next(e for e in d.evidence if e.property == "sharpness")
    assert sharp.cause == "blur" and sharp.current < sharp.reference
    assert sharp.effect < 0 and 0 <= sharp.p_value < 1e-6


def test_low_texture_scene_is_not_blur():
    # A scene with almost no texture is "unsharp" in absolute terms; against its own
    # reference it is clean, and real blur of it is still found.
    scene = cv2.GaussianBlur(photos.fit(photos.load("chelsea"), (480, 640)), (0, 0), 6)
    fp = Fingerprinter(photos.camera_stream(scene, 48, seed=0))
    clean = photos.camera_stream(scene, N, seed=1)
    assert fp.diagnose(clean).top == "none"
    assert fp.diagnose(corruptions.apply("defocus_blur", clean, 5, seed=0)).top == "blur"


def _point_lights(size=(480, 640), seed=0):
    """A night view: a dark field with small bright lights (the city clip's office towers)."""
    rng = np.random.default_rng(seed)
    scene = np.full((*size, 3), 12.0, np.float32)
    for y, x in zip(rng.integers(0, size[0], 400), rng.integers(0, size[1], 400)):
        cv2.circle(scene, (int(x), int(y)), int(rng.integers(1, 4)), tuple(float(c) for c in rng.uniform(120, 255, 3)), -1)
    return np.clip(scene, 0, 255).astype(np.uint8)


def _textured_veil(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Fog's airlight as a bright grey field with texture of its own (ImageNet-C's plasma
    fractal, coarse to fine): 150-240 levels, (H, W, 1)."""
    h, w = shape
    rng = np.random.default_rng(seed)
    octaves = [cv2.resize(rng.uniform(0, 1, (h // s + 1, w // s + 1)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC) / 2**i for i, s in enumerate((64, 16, 4))]
    veil = sum(octaves)
    return (150 + 90 * (veil - veil.min()) / (veil.max() - veil.min()))[..., None]


def test_a_veil_that_pulls_channel_ratios_to_grey_is_not_a_colour_shift():
    """A textured grey veil over a tinted scene pulls every cell's edge channel ratios toward
    neutral (a cast past MIN_CAST) while it lifts the dark channel and the brightness together,
    which a white-balance gain on the same stream does not."""
    tint = np.array([1.0, 0.85, 0.6], np.float32)  # a warm scene: its cells' ratios are far from grey
    ref = np.clip(photos.camera_stream("coffee", 64, seed=0) * tint, 0, 255).astype(np.uint8)
    live = photos.camera_stream("coffee", N, seed=1) * tint
    fp = Fingerprinter(ref)
    fog = fp.diagnose(np.clip(0.5 * live + 0.5 * _textured_veil(live.shape[1:3])[None], 0, 255).astype(np.uint8), by_rules=True)
    moved = {e.property: e.current - e.reference for e in fog.evidence}
    assert moved["cast_b"] > MIN_CAST and moved["haze"] > 8 and moved["brightness"] > 8  # a cast, under a veil
    assert fog.scores["color_shift"] < MIN_SCORE and fog.top == "weather"
    white_balance = fp.diagnose(np.clip(live * (1.0, 1.0, 0.85), 0, 255).astype(np.uint8), by_rules=True)
    assert white_balance.top == "color_shift"


def test_a_veil_explains_the_softness_it_brings():
    """albumentations' fog blurs the view it hazes: the softness under a veil is the fog's, while
    the same softness without the veil is a blur."""
    fp = Fingerprinter(photos.camera_stream("coffee", 64, seed=0))
    soft = np.stack([cv2.blur(f, (9, 9)) for f in photos.camera_stream("coffee", N, seed=1)]).astype(np.float32)
    fog = fp.diagnose(np.clip(0.7 * soft + 0.3 * _textured_veil(soft.shape[1:3])[None], 0, 255).astype(np.uint8), by_rules=True)
    assert fog.scores["blur"] < MIN_SCORE and fog.top == "weather"
    assert fp.diagnose(soft.astype(np.uint8), by_rules=True).top == "blur"


def test_a_darker_exposure_is_not_over_saturated_colour(fp, window):
    """HSV saturation rises under a darker exposure (the darkest pixels round toward the black
    floor: +10 levels at severity 4) although every pixel keeps its saturation."""
    darker = fp.diagnose(corruptions.apply("brightness_down", window, 4, seed=11), by_rules=True)
    moved = {e.property: e.current - e.reference for e in darker.evidence}
    assert moved["saturation"] > 8  # past MIN_SATURATION_LEVELS
    assert darker.scores["color_shift"] < MIN_SCORE and darker.top == "brightness"


def _value_raised(frames: np.ndarray, amount: float) -> np.ndarray:
    """ImageNet-C's brightness: HSV value up, hue and saturation kept."""
    out = []
    for frame in frames:
        hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 2] = np.clip(hsv[..., 2] + amount * 255, 0, 255)
        out.append(cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB))
    return np.stack(out)


def test_a_brightening_that_keeps_the_colour_is_not_fog(fp, window):
    """A brighter HSV value lifts the dark channel like fog's airlight, but airlight washes the
    colour out of a colourful view and a brightening keeps it."""
    brighter = fp.diagnose(_value_raised(window, 0.5), by_rules=True)
    moved = {e.property: e.current - e.reference for e in brighter.evidence}
    assert moved["haze"] > 8 and moved["brightness"] > 8  # brighter and hazier, as fog is
    assert brighter.top == "brightness"
    fog = fp.diagnose(np.clip(0.6 * window + 0.4 * _textured_veil(window.shape[1:3])[None], 0, 255).astype(np.uint8), by_rules=True)
    assert fog.top == "weather"


def test_fog_over_point_lights_is_not_blur_and_their_defocus_is():
    scene = _point_lights()
    fp = Fingerprinter(photos.camera_stream(scene, 48, seed=0))
    clean = photos.camera_stream(scene, N, seed=1).astype(np.float32)
    yy, xx = np.mgrid[0 : scene.shape[0], 0 : scene.shape[1]].astype(np.float32)
    airlight = (70 + 50 * np.sin(xx / 120.0) * np.cos(yy / 90.0))[None, ..., None]  # smooth, uneven
    fog = fp.diagnose(np.clip(0.6 * clean + airlight, 0, 255).astype(np.uint8), by_rules=True)
    steepness = next(e for e in fog.evidence if e.property == "sharpness")
    assert steepness.effect < -3  # steepness relative to contrast fell: that alone read as blur
    assert fog.scores["blur"] < MIN_SCORE and fog.top != "blur"  # the fine octave kept its share (2 % lower)
    defocus = fp.diagnose(np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in clean]).astype(np.uint8), by_rules=True)
    assert defocus.top == "blur"
    assert {"sharpness", "fine_detail"} <= {e.property for e in defocus.evidence if e.cause == "blur"}


def test_a_reference_saved_before_fine_detail_still_names_blur(fp, window):
    state = {k: v for k, v in fp.state().items() if not k.endswith("/fine_detail")}
    old = Fingerprinter.from_state(state)
    assert "fine_detail" not in old.reference_properties
    assert old.diagnose(corruptions.apply("defocus_blur", window, 3, seed=0)).top == "blur"
    assert old.diagnose(window).top == "none"


def test_embedding_drift_without_property_change_is_content(fp, window):
    assert fp.diagnose(window, embedding_drift=True).top == "content"
    assert fp.diagnose(window, embedding_drift=False).top == "none"
    # An explained drift stays explained.
    assert fp.diagnose(corruptions.apply("fog", window, 3), embedding_drift=True).top == "weather"


@pytest.mark.parametrize("other", ["coffee", "chelsea", "rocket"])
def test_another_scene_is_content_never_a_capture_cause(fp, other):
    # A scene cut or a re-aimed camera: without the gate the phase correlation finds a large
    # random "move" (camera_shift) and every property moves with the new content.
    d = fp.diagnose(photos.camera_stream(other, N, seed=2), embedding_drift=True)
    assert d.top == "content", (other, d.causes[:3])
    assert all(score == 0.0 for _, score in d.causes)
    assert any("another scene" in note for note in d.notes)
    assert fp.diagnose(photos.camera_stream(other, N, seed=2)).top == "none"


def test_the_window_a_cut_falls_in_is_content_not_a_camera_move(fp, window):
    # Half the frames from before the cut: their medians sit between the scenes, the phase
    # correlation reads the new half as a large move; the share of frames that lost the scene decides.
    mixed = np.concatenate([window[: N // 2], photos.camera_stream("coffee", N - N // 2, seed=4)])
    d = fp.diagnose(mixed, embedding_drift=True)
    assert d.top == "content", d.causes[:3]


def test_a_source_of_two_scenes_has_no_scene_to_lose():
    # 30 % of the reference is another scene: those samples look "lost" against the reference's
    # medians, so a window of the minority scene is not a new scene, and its blur is named.
    a, b = photos.camera_stream("astronaut", 64, seed=0), photos.camera_stream("coffee", 64, seed=1)
    fp = Fingerprinter(np.where((np.random.default_rng(0).random(64) < 0.3)[:, None, None, None], b, a))
    both = np.where((np.random.default_rng(1).random(N) < 0.5)[:, None, None, None], photos.camera_stream("coffee", N, seed=2), photos.camera_stream("astronaut", N, seed=3))
    d = fp.diagnose(corruptions.apply("defocus_blur", both, 4, seed=1))
    assert not any("another scene" in note for note in d.notes) and d.top not in ("none", "content"), d.causes[:3]


def test_a_fault_that_drowns_the_fine_structure_keeps_the_scene(fp, window):
    # Heavy noise and fog cost most of the phase-correlation match, not the coarse layout.
    for name in ("gaussian_noise", "fog", "defocus_blur"):
        assert fp.diagnose(corruptions.apply(name, window, 5, seed=3)).top == corruptions.CORRUPTIONS[name].cause, name


def test_precomputed_properties_give_the_same_answer(fp, window):
    frames = corruptions.apply("jpeg", window, 3)
    direct = fp.diagnose(frames)
    plain = compute_properties(frames)  # no geometry: diagnose adds it from the frames
    assert fp.diagnose(frames, properties=plain).top == direct.top == "compression"
    full = fp.properties(frames)
    assert fp.diagnose(properties=full).top == "compression"


def test_state_round_trip_through_npz(fp, window, tmp_path):
    state = fp.state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    np.savez(tmp_path / "ref.npz", **state)
    with np.load(tmp_path / "ref.npz") as data:
        restored = Fingerprinter.from_state(dict(data))
    frames = corruptions.apply("translation", window, 3)
    a, b = fp.diagnose(frames), restored.diagnose(frames)
    assert a.top == b.top == "camera_shift"
    assert a.causes == b.causes


def test_to_dict_is_json(fp, window):
    d = fp.diagnose(corruptions.apply("glare", window, 4))
    payload = json.loads(json.dumps(d.to_dict()))
    assert payload["top"] == "glare"
    ev = payload["evidence"][0]
    assert {"property", "reference", "current", "effect", "p_value", "q_value", "cause", "subkind"} <= set(ev)


def test_odd_inputs(fp, window):
    # BGR order, float frames, CHW torch tensors and grayscale frames are all readable.
    torch = pytest.importorskip("torch")
    bgr_fp = Fingerprinter(np.ascontiguousarray(window[..., ::-1]), color="bgr")
    assert bgr_fp.diagnose(np.ascontiguousarray(window[..., ::-1])).top == "none"
    assert fp.diagnose(window.astype(np.float32) / 255.0).top == "none"
    assert fp.diagnose(torch.from_numpy(np.moveaxis(window, -1, 1).copy())).top == "none"
    gray = fp.diagnose(window[..., 1])  # the colour vanished: that is a real change
    assert gray.top in VOCABULARY and gray.top != "none"


def test_other_frame_size_is_noted_and_still_diagnosed(fp, window):
    small = np.stack([cv2.resize(f, (320, 240), interpolation=cv2.INTER_AREA) for f in window])
    d = fp.diagnose(small)
    assert any("frame size" in note for note in d.notes)
    assert d.top in VOCABULARY


def test_tiny_frames_and_a_single_frame(fp, window):
    # (Frames of two scenes mixed in one window: test_the_window_a_cut_falls_in_is_content_not_a_camera_move.)
    tiny = np.random.default_rng(0).integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)
    assert Fingerprinter(np.repeat(tiny, 3, axis=0)).diagnose(tiny).top in VOCABULARY
    assert fp.diagnose(window[:1]).top in VOCABULARY  # one frame: no frame_diff, no crash


def test_too_few_reference_frames_raise(window):
    with pytest.raises(ValueError):
        Fingerprinter(window[:3])


def _dimmed(window: np.ndarray, gain: float) -> np.ndarray:
    # Rounded, as a sensor gain (and corruptions._gain) rounds: truncating drops every channel by
    # half a level on average, the dark channel most in relative terms, and raises HSV
    # saturation by ~11 levels on this scene, which the naming model reads as a colour change.
    return np.clip(np.rint(window.astype(np.float32) * gain), 0, 255).astype(np.uint8)


def test_darker_frames_with_new_streaks_in_each_are_rain_and_plain_darkening_is_exposure(fp, window):
    # Rain as albumentations draws it: the view darkens and bright slanted streaks fall, new in
    # every frame. An under-exposure darkens without making frames differ more.
    rng = np.random.default_rng(5)
    rainy = _dimmed(window, 0.7)
    for frame in rainy:
        for _ in range(800):
            x, y = int(rng.integers(0, frame.shape[1])), int(rng.integers(0, frame.shape[0]))
            cv2.line(frame, (x, y), (x + 3, y + 18), (200, 200, 200), 1)
    d = fp.diagnose(rainy)
    assert (d.top, d.subkind) == ("weather", "rain"), d.causes[:3]
    # Streaks drawn in one flat colour make equal neighbours, as pixelation does: the rain
    # explains them (the resolution score was 0.94 of the weather score before it did).
    assert d.scores["resolution"] < 0.5 * d.scores["weather"]
    darker = fp.diagnose(_dimmed(window, 0.7))
    assert (darker.top, darker.subkind) == ("brightness", "under-exposure"), darker.causes[:3]



def test_the_newest_samples_of_a_window_get_their_own_calibrated_look():
    from virk_exporter.fingerprint import CaptureDetector
    from virk_exporter.fingerprint.properties import compute_samples

    reference = photos.camera_stream(photos.load("coffee"), 128, size=(120, 160), seed=0)
    props, smalls, cells = compute_samples(reference)
    detector = CaptureDetector(Fingerprinter.from_samples(props, smalls, (120, 160), cast_cells=cells), 16, p_val=0.01, recent=8)
    live = photos.camera_stream(photos.load("coffee"), 40, size=(120, 160), seed=1)

    def tests(frames):
        measured = compute_properties(frames, previous=reference[-1], reference=detector.fingerprinter.reference_view)
        return [detector.test({k: v[s : s + 16] for k, v in measured.items()}) for s in range(0, len(frames) - 15, 8)]

    assert not any(t.drift or t.recent_drift for t in tests(live))
    # a defocus that began half a window ago: the window's bars miss it, its newest samples' do not
    first = tests(np.concatenate([live[:8], corruptions.apply("defocus_blur", live[8:24], severity=3)]))[0]
    assert not first.drift and first.recent_drift
    assert CaptureDetector(detector.fingerprinter, 16, p_val=0.01, recent=16).recent is None  # no newer part to look at


def test_replaying_the_capture_test_at_several_p_vals_flags_what_each_detector_flags():
    """``replay_flags`` (calibrate) replays the reference and scores each window once for every
    p_val; its flags are those of a detector built at each p_val and tested window by window."""
    from virk_exporter.fingerprint import CaptureDetector
    from virk_exporter.fingerprint.detector import replay_flags
    from virk_exporter.fingerprint.properties import compute_samples

    reference = photos.camera_stream(photos.load("coffee"), 128, size=(120, 160), seed=0)
    props, smalls, cells = compute_samples(reference)
    fingerprinter = Fingerprinter.from_samples(props, smalls, (120, 160), cast_cells=cells)
    live = photos.camera_stream(photos.load("coffee"), 96, size=(120, 160), seed=1)
    dimming = np.linspace(1.0, 0.75, 48)[:, None, None, None]
    live[48:] = np.clip(live[48:] * dimming, 0, 255).astype(np.uint8)  # a slow fade: some p_vals flag it sooner
    live[20:36] = corruptions.apply("defocus_blur", live[20:36], severity=2)
    measured = fingerprinter.properties(live, previous=reference[-1])
    p_vals = (0.001, 0.01, 0.05)
    flags = replay_flags(fingerprinter, measured, 16, 8, p_vals)
    assert set(flags) == set(p_vals)
    seen = set()
    for p_val in p_vals:
        detector = CaptureDetector(fingerprinter, 16, p_val, recent=8)
        assert detector.thresholds == CaptureDetector(fingerprinter, 16, 0.5, recent=8).at(p_val).thresholds
        tests = [detector.test({k: v[s : s + 16] for k, v in measured.items()}) for s in range(0, 96 - 15, 8)]
        drift, recent = flags[p_val]
        assert list(drift) == [t.drift for t in tests] and list(recent) == [t.recent_drift for t in tests]
        seen.add((int(drift.sum()), int(recent.sum())))
    assert len(seen) > 1 and any(d for d, _ in seen) and any(r for _, r in seen)  # the p_vals differ, both flags occur


def test_an_object_that_enters_in_focus_is_not_an_occluder(fp, window):
    """A part of another photograph, dimmed to 60 % of the region it covers, stands in the view
    (a person, a parked car): the region darkens as under an occluder, but stays as sharp as the
    scene (``local_focus``) and shows other structure than the reference there (``local_same``),
    so occlusion scores nothing; a shadow on the same region keeps the structure and scores as
    before. A reference saved before these measurements still reads the object as occlusion, as
    every reference did."""
    mask = np.zeros(window.shape[1:3], np.float32)
    cv2.ellipse(mask, (420, 260), (60, 150), 0.0, 0, 360, 1.0, -1)
    covered = mask > 0
    alpha = cv2.GaussianBlur(mask, (0, 0), 2.0)[..., None]
    thing = photos.fit(photos.load("coffee"), window.shape[1:3]).astype(np.float32)
    thing *= 0.6 * window[:, covered].mean() / thing[covered].mean()
    entered = np.clip(window * (1 - alpha) + thing[None] * alpha, 0, 255).astype(np.uint8)
    assert fp.diagnose(entered).scores["occlusion"] == 0.0
    shade = np.zeros(window.shape[1:3], np.float32)
    cv2.ellipse(shade, (320, 300), (60, 150), 0.0, 0, 360, 1.0, -1)  # over textured ground: the shadow is in focus too
    shadowed = np.clip(window * (1 - 0.5 * cv2.GaussianBlur(shade, (0, 0), 2.0)[..., None]), 0, 255).astype(np.uint8)
    assert np.median(fp.properties(shadowed)["local_focus"]) >= -FOCUS_LOSS
    assert fp.diagnose(shadowed).scores["occlusion"] > MIN_SCORE
    state = {k: v for k, v in fp.state().items() if not k.endswith(("/local_focus", "/local_same", "/cell_texture"))}
    assert Fingerprinter.from_state(state).diagnose(entered).top == "occlusion"
