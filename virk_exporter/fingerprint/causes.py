"""Name the root cause of a drift, with evidence.

Every property of the current window is KS-tested against the same source's reference
(``virk_exporter.drift.ks``, Benjamini-Hochberg corrected). Each cause then scores the
evidence with its *signature*: the properties it must move, in which direction, and the
properties that would point to a more specific cause instead (a fog also brightens, but
brightening with falling contrast is fog, not exposure). Strengths are ``log1p`` of the
robust effect size (median shift in units of the reference's own spread), so one enormous
effect cannot drown the rest, and a few physical gates (pixels, gray levels) keep
statistically significant but physically negligible changes from naming a cause.

The signatures and gates were tuned on the ``photos.TUNE`` photographs. Two rules (rain/snow
by frame-to-frame change; camera shift discounted by it) were revised after one evaluation run
on ``photos.SCORE``; BENCHMARKS.md reports the runs before and after.

The rules decide whether a window names a cause at all and which are candidates (a score at
least ``MIN_SCORE``, and above the capture detector's bar); *which* candidate is named is the
naming model's choice (``naming.py``), weighing all the evidence, unless ``by_rules`` asks for
the largest score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from virk_exporter.drift.ks import PropertyTest, SortedSample, ks_property_tests
from virk_exporter.fingerprint.geometry import GEOMETRY_NAMES, ReferenceView, compute_geometry
from virk_exporter.fingerprint.naming import evidence_features, shipped_model
from virk_exporter.fingerprint.properties import (
    PROPERTY_NAMES,
    compute_properties,
    compute_samples,
    small_gray,
    to_frames,
)
from virk_exporter.frames import ColorOrder

CAUSES: tuple[str, ...] = (
    "blur",
    "noise",
    "brightness",
    "contrast",
    "color_shift",
    "weather",
    "glare",
    "compression",
    "resolution",
    "camera_shift",
    "occlusion",
    "frozen",
)
# "content": the frames differ from the reference (the embedding test drifted) but no capture
# cause explains it: a new scene, traffic, a moving camera. "unknown": drift that could not be
# diagnosed at all (no image properties, e.g. a features-only embedder, or the stage failed).
VOCABULARY: tuple[str, ...] = CAUSES + ("none", "content", "unknown")

MIN_SCORE = 1.0  # a cause must reach this to be named; below it the window is "none"
# Physical gates: a change must be significant *and* this large to name a cause. Strong blur
# wobbles the phase correlation by ~1.5 px / 0.4 deg and leaves ~25-level cell residuals
# (zoom blur), exposure clipping bends channel ratios by a few percent.
MIN_SHIFT = 0.008  # camera translation, as a share of the frame width
MIN_ROTATION = 0.4  # degrees (the quadrant fit reads a 0.75 deg turn as ~0.5-0.6)
MIN_LOCAL_LEVELS = 25.0  # gray levels a grid cell must move beyond the global gain/offset fit
FLAT_LOSS = 0.9  # log texture a region loses under an occluder, relative to the median cell (0.9: to 40 %)
FOCUS_LOSS = 0.1  # log fine texture a darkened region loses when an occluder (out of focus) covers it
SAME_STRUCTURE = 0.5  # correlation with the reference's pixels a region keeps when a shadow dims it
MIN_BRIGHTNESS_LEVELS = 8.0  # change of mean gray level for an exposure change
MIN_CAST = 0.04  # change of log channel ratio of edge strength (about a 4% white-balance gain)
MIN_SATURATION_LEVELS = 8.0  # rise of mean HSV saturation (0..255) for an over-saturated colour
GAIN_MATCH = 0.01  # log difference of brightness and contrast changes within which a change is one gain
GLARE_ASYMMETRY = 2.0  # a glare region brightens at least this many times more than any darkens
STEADY_SPREAD = 0.5  # interquartile range of a geometric property, relative to its median, for a fault that stays put
VIEW_MATCH = 0.78  # share of the reference's phase-correlation match a displaced or partly covered view keeps
SCENE_MATCH = 0.3  # share of the reference's match left when the camera sees another scene (measured: 15-22 %)
SCENE_LAYOUT = 0.7  # share of the reference's layout correlation left then (another photograph: <= 0.62)
SCENE_SHARE = 0.25  # share of a window's frames that show another scene for the window to be content
SCENE_REFERENCE_SHARE = 0.05  # at most this share of the reference's own samples may look lost: one scene
LARGE_SHIFT = 0.04  # share of the width: a move this large is the camera's, whatever the match
LARGE_ROTATION = 2.5  # degrees (the quadrant fit reads a 4 deg turn as 2-4): a turn costs the match by itself
CAST_UNIT = 0.01  # colour-shift strength: log1p(change / CAST_UNIT)
CAST_AGREEMENT = 0.85  # share of the strong cells a white balance moves alike (TUNE: casts >= 0.88, codecs, fog <= 0.79)
IMPULSE_UNIT = 0.0005  # impulse-noise strength: log1p(share of impulse pixels / IMPULSE_UNIT)
FROZEN_FRACTION = 0.1  # share of exactly repeated frames that makes a feed frozen
STATE_PREFIX = "fingerprint/"


@dataclass(frozen=True)
class Evidence:
    property: str
    reference: float  # reference median
    current: float  # current window median
    effect: float  # robust effect size: median shift / reference spread
    p_value: float
    q_value: float
    cause: str  # the cause this property supports ("" when it supports none)
    subkind: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Diagnosis:
    causes: list[tuple[str, float]]  # every cause with its score, best first
    top: str  # a cause, "none" or "unknown"
    evidence: list[Evidence] = field(default_factory=list)
    subkind: str = ""
    notes: list[str] = field(default_factory=list)
    probabilities: dict[str, float] = field(default_factory=dict)  # the naming model's, when it named the top
    features: np.ndarray = field(default_factory=lambda: np.zeros(0), compare=False, repr=False)  # the naming model's input

    @property
    def scores(self) -> dict[str, float]:
        return dict(self.causes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "top": self.top,
            "subkind": self.subkind,
            "causes": [[name, float(score)] for name, score in self.causes],
            "probabilities": dict(self.probabilities),
            "evidence": [e.to_dict() for e in self.evidence],
            "notes": list(self.notes),
        }


class _Effects:
    """Signed strengths and physical deltas of the tested properties."""

    def __init__(self, tests: list[PropertyTest], width: float):
        self.tests = {t.name: t for t in tests}
        self.width = width  # reference frame width in pixels: geometry gates are relative to it

    def s(self, name: str, sign: float = 1.0) -> float:
        """log1p of the effect in the direction ``sign``; 0 when not significant."""
        t = self.tests.get(name)
        if t is None or not t.significant:
            return 0.0
        return float(np.log1p(max(sign * t.effect, 0.0)))

    def a(self, name: str) -> float:
        """log1p of the absolute effect; 0 when not significant."""
        return max(self.s(name, 1.0), self.s(name, -1.0))

    def d(self, name: str) -> float:
        """Physical change of the median (current - reference)."""
        t = self.tests.get(name)
        return 0.0 if t is None else t.current - t.reference


Rule = Callable[[_Effects, dict[str, np.ndarray]], tuple[float, str, tuple[str, ...]]]


def _frozen(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    diffs = cur.get("frame_diff", np.empty(0))
    diffs = diffs[np.isfinite(diffs)]
    repeated = float(np.mean(diffs <= 1e-6)) if diffs.size else 0.0
    # Identical consecutive frames never happen on a live sensor: decisive evidence.
    return (10.0 + 10.0 * repeated if repeated >= FROZEN_FRACTION else 0.0), f"{repeated:.0%} repeated frames", ("frame_diff",)


def _steady(cur: dict[str, np.ndarray], name: str) -> bool:
    """The property holds still across the window: a bumped camera or a stuck occluder stays
    put, while moving content (a head in a car, traffic) moves these properties frame to frame."""
    values = np.abs(cur.get(name, np.empty(0)))
    values = values[np.isfinite(values)]
    values = values[values >= np.median(values)] if values.size else values  # the moved part of a window the fault began in
    if values.size < 4:
        return True
    low, mid, high = np.quantile(values, (0.25, 0.5, 0.75))
    return bool(high - low <= STEADY_SPREAD * abs(mid))


def _same_view(e: _Effects) -> bool:
    """The camera still sees the reference's scene: after the best shift, the view matches about
    as well as the reference's own samples do. A bump, a turn, an occluder or a flare keep most
    of the match (measured: 73-93 % at severity 2-4); a new scene or moving content in front of
    the camera does not (a talking head in a car: 64 %). Geometry and regions are capture
    evidence only on the same view; otherwise the frames differ as content does."""
    t = e.tests.get("match")
    return t is None or not t.reference > 0 or t.current >= VIEW_MATCH * t.reference


def _scene_lost(match: np.ndarray, layout: np.ndarray, e: _Effects) -> np.ndarray | None:
    """Per frame: neither the reference's fine structure (phase-correlation match) nor its coarse
    layout (the 8x6 cells' means) is left, relative to the reference's medians. None when the
    reference has no geometry (an old saved reference) or the arrays do not pair up."""
    m, g = e.tests.get("match"), e.tests.get("layout")
    match, layout = np.asarray(match, np.float64), np.asarray(layout, np.float64)
    if m is None or g is None or not (m.reference > 0 and g.reference > 0) or match.size == 0 or match.shape != layout.shape:
        return None
    return (match < SCENE_MATCH * m.reference) & (layout < SCENE_LAYOUT * g.reference)  # NaN compares False: kept


def _new_scene(e: _Effects, cur: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> bool:
    """The camera sees another scene: at least ``SCENE_SHARE`` of the window's frames lost the
    reference's match and layout (``_scene_lost``), on a source whose reference is one scene
    (at most ``SCENE_REFERENCE_SHARE`` of its own samples look lost against it: a model fed
    photographs of everything has no scene to lose). Capture faults keep one of the two: on the
    TUNE photographs every fault kept >= 24 % of the match or a layout >= 0.84 (ImageNet-C fog
    drowns the layout but keeps the match), except albumentations' heaviest snow on one
    photograph; a different photograph kept 15-22 % and <= 0.62. A share, not the median, so that
    the window a cut falls in (half old scene) is not read as a huge camera move. A new scene is
    content (a cut, a re-aimed camera, a vehicle filling the view), never a capture cause."""
    window = _scene_lost(cur.get("match", ()), cur.get("layout", ()), e)
    reference = _scene_lost(ref.get("match", ()), ref.get("layout", ()), e)
    if window is None or reference is None:
        return False
    return bool(reference.mean() <= SCENE_REFERENCE_SHARE and window.mean() >= SCENE_SHARE)


def _camera_shift(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    # A small move with a view that no longer matches is content moving in front of a camera
    # that wobbles with it (carphone: 1.6 % and 1 deg with a new pose); a large one is the camera.
    large = e.d("shift_px") >= LARGE_SHIFT * e.width or abs(e.d("rotation")) >= LARGE_ROTATION
    if not large and not _same_view(e):
        return 0.0, "", ()
    shift = e.s("shift_px") if e.d("shift_px") >= MIN_SHIFT * e.width and _steady(cur, "shift_px") else 0.0
    rot = e.a("rotation") if abs(e.d("rotation")) >= MIN_ROTATION and _steady(cur, "rotation") else 0.0
    if shift == 0.0 and rot == 0.0:
        return 0.0, "", ()
    # Geometry is specific (+3), but strong blur wobbles phase correlation by ~2 px, and
    # particles falling through a low-texture view (snow) drag it along: discount by the blur
    # evidence and by frame-to-frame change (after a bump the camera is still again).
    bonus = 3.0 - e.s("sharpness", -1) - e.s("frame_diff")
    if shift >= rot:
        return shift + bonus, f"translation {e.d('shift_px'):.1f} px", ("shift_px", "match")
    return rot + bonus, f"rotation {e.d('rotation'):+.2f} deg", ("rotation", "match")


def _glare(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    local = e.d("local_bright")
    # A flare brightens one region and darkens none; fog and zoom blur move regions both ways.
    if not _same_view(e) or local < max(MIN_LOCAL_LEVELS, 1.5 * abs(e.d("brightness")), GLARE_ASYMMETRY * e.d("local_dark")):
        return 0.0, "", ()
    return e.s("local_bright") + 2.0, f"bright region +{local:.0f} levels", ("local_bright", "highlights", "brightness")


def _entered(e: _Effects) -> bool:
    """Something entered the scene where a region darkened (a person standing, a parked car):
    the region is as sharp as the scene around it (``local_focus``), which an occluder on or near
    the lens, far outside the depth of field, is not, and it shows other structure than the
    reference did there (``local_same``), which a shadow, dimming what was there, does not.
    False without the measurements (a reference saved before them)."""
    focus, same = e.tests.get("local_focus"), e.tests.get("local_same")
    return focus is not None and same is not None and bool(focus.current >= -FOCUS_LOSS and same.current < SAME_STRUCTURE)


def _occlusion(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    local = e.d("local_dark")
    # On a view that no longer matches, moving content also darkens regions (a head turning):
    # there an occluder must be decisive, darker by twice the bar and robbed of its texture.
    decisive = local >= 2 * MIN_LOCAL_LEVELS and e.d("local_flat") >= FLAT_LOSS
    if not (decisive or _same_view(e)) or local < max(MIN_LOCAL_LEVELS, 1.5 * abs(e.d("brightness")), e.d("local_bright")) or not _steady(cur, "local_dark"):
        return 0.0, "", ()
    if _entered(e):
        return 0.0, "", ()
    # A global blur also leaves local residuals (zoom blur smears the periphery): discount.
    score = max(e.s("local_dark"), e.s("local_flat")) - e.s("sharpness", -1) + 1.0
    return score, f"region darker by {local:.0f} levels", ("local_dark", "local_flat", "local_focus", "local_same")


def _compression(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    return e.s("blockiness") + 1.0 * (e.s("blockiness") > 0), "jpeg", ("blockiness", "noise")


def _hazier_and_brighter(e: _Effects) -> float:
    """The weaker of the haze and brightness rises' strengths: what weather (fog, rain, snow)
    does to a view, as evidence."""
    return min(e.s("haze"), e.s("brightness"))


def _precipitation(e: _Effects) -> float:
    """Falling particles: every frame differs, and the brightness moves with them (snow lightens
    the view; albumentations' rain darkens it, an overcast sky), which an exposure change, with
    its smaller or equal frame differences, never does together."""
    return min(e.s("frame_diff"), e.a("brightness"))


def _resolution(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    # Noise also makes textured spans with equal neighbours, far less often; so do snow and rain,
    # whose streaks are drawn in one flat colour (TUNE, by rules: albumentations' rain read
    # `resolution` in 18 of 60 windows before the precipitation evidence was discounted, 5 after;
    # pixelation 80 of 84 before and after).
    weather = max(_hazier_and_brighter(e), _precipitation(e))
    return e.s("flat_pairs") - e.s("noise") - weather, "pixelation", ("flat_pairs", "sharpness")


def _noise(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    sensor, specks = e.s("noise"), min(e.s("specks_bright"), e.s("specks_dark"))
    weather_like = _hazier_and_brighter(e)  # rain/snow also add specks
    # Salt-and-pepper saturates isolated pixels while barely moving the robust sigma; heavy
    # Gaussian noise clips some pixels too, but along with a large sigma.
    # A clean reference has almost no impulses, so its spread is ~0 and the robust effect size
    # explodes for a handful; the physical share of impulse pixels is the strength instead.
    impulses = e.d("impulses") if e.s("impulses") > 0 else 0.0
    kind = "impulse" if impulses >= max(0.002, 0.01 * e.d("noise")) else "gaussian/shot"
    score = max(sensor, specks, float(np.log1p(max(impulses, 0.0) / IMPULSE_UNIT))) - weather_like
    return score, kind, ("noise", "impulses", "specks_bright", "specks_dark")


def _weather(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    # Fog: airlight brightens the view, lifts the dark channel (haze) and washes out the colour
    # (_washout), without the contrast gain of exposure; a contrast reduction or a blur does not
    # brighten. Rain and snow: falling particles (_precipitation).
    fog = min(_hazier_and_brighter(e), _washout(e)) - e.s("contrast")
    precipitation = _precipitation(e)
    specks = e.s("specks_bright")
    if precipitation > fog:
        kind = "rain" if e.d("brightness") < 0 or e.s("specks_dark") > 0.6 * specks else "snow"
    else:
        kind = "fog"
    score = max(fog, precipitation) + 0.5 * specks
    return score, kind, ("haze", "brightness", "contrast", "frame_diff", "specks_bright", "saturation")


def _washout(e: _Effects) -> float:
    """How strongly the colour washed out, as airlight does to every pixel. On a colourful view
    (reference saturation at least twice ``MIN_SATURATION_LEVELS``) the saturation must fall by
    ``MIN_SATURATION_LEVELS``: a brightening in HSV value (ImageNet-C's brightness) keeps it and
    lifts the dark channel too (TUNE, 10th-90th percentile of the change: ImageNet-C brightness
    -6..+6 %, ImageNet-C's and our fog -35..-81 %). A grey view has no colour to lose: a loss of
    contrast stands in."""
    saturation = e.tests.get("saturation")
    if saturation is not None and saturation.reference >= 2 * MIN_SATURATION_LEVELS:
        return e.s("saturation", -1) if -e.d("saturation") >= MIN_SATURATION_LEVELS else 0.0
    return max(e.s("saturation", -1), e.s("contrast", -1))


def _veil(e: _Effects) -> float:
    """The evidence of an airlight veil (fog, haze): it lifts the dark channel and the brightness
    together, by at least ``MIN_BRIGHTNESS_LEVELS`` each; 0 otherwise. A white-balance gain moves
    one channel and a blur keeps the mean (TUNE: white balance never raised both by more than 2
    levels; fog by a median 12-62), so a veil explains the cast and the softness it brings."""
    if min(e.d("haze"), e.d("brightness")) < MIN_BRIGHTNESS_LEVELS:
        return 0.0
    return _hazier_and_brighter(e)


def _darker_gain(e: _Effects) -> bool:
    """The view darkened by one gain: brightness down by ``MIN_BRIGHTNESS_LEVELS`` and the RMS
    contrast down by the same factor (within ``GAIN_MATCH`` in log). TUNE: every under-exposure
    matched within 0.004; ImageNet-C's saturate, which darkens the gray too, differed by 0.075 or
    more (a white balance that darkens may match: it shows as a cast, which this leaves alone)."""
    b, c = e.tests.get("brightness"), e.tests.get("contrast")
    if b is None or c is None or -e.d("brightness") < MIN_BRIGHTNESS_LEVELS or min(b.reference, b.current, c.reference, c.current) <= 0:
        return False
    return abs(np.log(b.current / b.reference) - np.log(c.current / c.reference)) <= GAIN_MATCH


def _color_shift(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    # The reference spread of a channel ratio is tiny, so the robust effect size is huge for
    # any change; the physical size of the change is the better strength.
    change = max(abs(e.d("cast_r")) * (e.a("cast_r") > 0), abs(e.d("cast_b")) * (e.a("cast_b") > 0))
    # Fog's airlight adds one grey to every channel: its own texture pulls each cell's channel
    # ratios toward neutral, which reads as a cast. A white-balance gain moves one channel, and
    # in every cell alike (_even_cast): a codec's chroma loss moves each cell by its content.
    cast = float(np.log1p(change / CAST_UNIT)) - _veil(e) if change >= MIN_CAST and _even_cast(e) else 0.0
    # Over-saturated colour (a colour pipeline gone wrong): more saturation than any exposure,
    # fog or contrast change brings (those lower it, or raise contrast with it).
    # Colour noise raises saturation too: discount by the noise evidence.
    # A darker exposure keeps every pixel's saturation, but HSV saturation rises as the darkest
    # pixels round toward the black floor: not over-saturation.
    vivid = e.s("saturation") - e.s("contrast") - e.s("noise") if e.d("saturation") >= MIN_SATURATION_LEVELS and not _darker_gain(e) else 0.0
    if cast <= 0.0 and vivid <= 0.0:
        return 0.0, "", ()
    return max(cast, vivid), "white balance" if cast >= vivid else "saturation", ("cast_r", "cast_b", "cast_agreement", "saturation")


def _even_cast(e: _Effects) -> bool:
    """The cells' colour ratios moved alike, as a white-balance gain moves them (cast.py); a
    codec's chroma loss and fog move each cell by its content. True for a reference saved
    without its cells, which has no agreement to test."""
    t = e.tests.get("cast_agreement")
    return t is None or t.current >= CAST_AGREEMENT  # a test exists only with finite values on both sides


def _brightness(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    if abs(e.d("brightness")) < MIN_BRIGHTNESS_LEVELS:
        return 0.0, "", ()
    sign = 1.0 if e.d("brightness") >= 0 else -1.0
    # Exposure scales contrast with brightness; clipping is exposure's signature too. A darker
    # exposure shrinks frame-to-frame differences: darker with larger ones is rain (weather).
    score = min(e.s("brightness", sign), max(e.s("contrast", sign), e.s("highlights" if sign > 0 else "shadows")))
    if sign < 0:
        score -= e.s("frame_diff")
    return score, "over-exposure" if sign > 0 else "under-exposure", ("brightness", "contrast", "highlights", "shadows")


def _contrast(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    sign = 1.0 if e.d("contrast") >= 0 else -1.0
    return e.s("contrast", sign) - e.a("brightness"), "higher" if sign > 0 else "lower", ("contrast", "haze")


MOTION_ANISOTROPY = 0.35  # orientation change per unit of log-sharpness lost: motion blur
ZOOM_CENTER = 0.3  # centre-vs-whole sharpness gain per unit of log-sharpness lost: zoom blur


def _blur(e: _Effects, cur: dict[str, np.ndarray]) -> tuple[float, str, tuple[str, ...]]:
    # Blur lowers both the edges' steepness relative to contrast and the fine octave's energy
    # relative to the coarse one. Fog, a contrast loss or an exposure change on a dark scene of
    # point lights lower the first too (the city clip: by 30-135 reference spreads), not the
    # second. A reference saved before ``fine_detail`` existed has only the first.
    steepness = e.s("sharpness", -1)
    evidence = min(steepness, e.s("fine_detail", -1)) if "fine_detail" in e.tests else steepness
    # A veil softens too (albumentations' fog blurs the view it hazes): the veil explains it.
    score = evidence - e.s("noise") - _veil(e)
    # The sub-kind compares physical changes, scaled by how much sharpness was lost: effect
    # sizes (in units of a static camera's tiny reference spread) made any wobble look decisive.
    lost = max(-e.d("sharpness"), 1e-6)
    if float(np.hypot(e.d("aniso_c"), e.d("aniso_s"))) > MOTION_ANISOTROPY * lost:
        kind = "motion"
    elif e.d("sharp_center") > ZOOM_CENTER * lost:
        kind = "zoom"
    else:
        kind = "defocus"
    return score, kind, ("sharpness", "fine_detail", "sharp_center", "aniso_c", "aniso_s", "noise")


RULES: dict[str, Rule] = {
    "blur": _blur,
    "noise": _noise,
    "brightness": _brightness,
    "contrast": _contrast,
    "color_shift": _color_shift,
    "weather": _weather,
    "glare": _glare,
    "compression": _compression,
    "resolution": _resolution,
    "camera_shift": _camera_shift,
    "occlusion": _occlusion,
    "frozen": _frozen,
}


def finite_values(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


GEOMETRY_FOLDS = 8  # contiguous stretches of the reference period for cross-fitted geometry


def _cross_fitted_geometry(smalls: np.ndarray, frame_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Geometry of each reference sample against a view built from the *other* stretches of the
    period. A live frame is measured against a view it is not part of; measured against the
    mean of itself and its neighbours, the reference would look stiller than it is (a moving
    scene's own shifts vanish into its mean view) and every live window would look displaced."""
    n = len(smalls)
    edges = np.linspace(0, n, min(GEOMETRY_FOLDS, n // 4) + 1).round().astype(int)
    parts = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        rest = np.concatenate([smalls[:lo], smalls[hi:]])
        parts.append(compute_geometry(smalls[lo:hi], ReferenceView.from_smalls(rest, frame_size)))
    return {k: np.concatenate([p[k] for p in parts]) for k in GEOMETRY_NAMES}


class Fingerprinter:
    """Diagnoses why frames from one source drifted from that source's reference frames."""

    def __init__(self, reference_frames: Any, color: ColorOrder = "rgb", alpha: float = 0.01):
        self.color = color
        self.alpha = alpha
        self._sorted: tuple[dict[str, np.ndarray], dict[str, SortedSample]] | None = None
        if reference_frames is None:  # from_state / from_samples fill the rest
            return
        frames = to_frames(reference_frames, color)
        props, smalls, cast_cells = compute_samples(frames)
        self._fit(props, smalls, frames.shape[1:3], cast_cells)

    @classmethod
    def from_samples(
        cls,
        properties: dict[str, np.ndarray],
        smalls: np.ndarray,
        frame_size: tuple[int, int],
        color: ColorOrder = "rgb",
        alpha: float = 0.01,
        cast_cells: np.ndarray | None = None,
    ) -> "Fingerprinter":
        """From per-frame image properties, small gray views and colour-cast cells
        (``properties.compute_samples``) gathered while learning, so a reference never needs its
        full-size frames in memory. Without ``cast_cells`` the cast is each frame's own."""
        fp = cls(None, color=color, alpha=alpha)
        fp._fit(dict(properties), np.asarray(smalls, np.float32), frame_size, cast_cells)
        return fp

    def _fit(self, props: dict[str, np.ndarray], smalls: np.ndarray, frame_size: tuple[int, int], cast_cells: np.ndarray | None = None) -> None:
        if len(smalls) < 8:
            raise ValueError(f"need at least 8 reference frames, got {len(smalls)}")
        self.reference_view = ReferenceView.from_smalls(smalls, tuple(frame_size), cast_cells)
        if self.reference_view.cast is not None:  # the reference's own cast against its cells, as live frames' will be
            casts, props["cast_agreement"] = self.reference_view.cast.casts(cast_cells)
            props["cast_r"], props["cast_b"] = casts.T
        else:  # without cells there is no agreement to test: the cast rule goes without it
            props.pop("cast_agreement", None)
        props.update(_cross_fitted_geometry(smalls, tuple(frame_size)))
        # Kept in time order (NaNs included): the capture detector replays them block by block.
        self.reference_series = {k: np.asarray(v, np.float64) for k, v in props.items()}
        self.reference_properties = {k: finite_values(v) for k, v in props.items()}

    # --- persistence ---------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays (for an .npz): reference properties and the small reference view."""
        out = {f"{STATE_PREFIX}prop/{k}": v for k, v in self.reference_series.items()}
        out.update({f"{STATE_PREFIX}view/{k}": v for k, v in self.reference_view.state().items()})
        out[f"{STATE_PREFIX}alpha"] = np.asarray(self.alpha)
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], color: ColorOrder = "rgb") -> "Fingerprinter":
        fp = cls(None, color=color, alpha=float(state.get(f"{STATE_PREFIX}alpha", 0.01)))
        prop, view = f"{STATE_PREFIX}prop/", f"{STATE_PREFIX}view/"
        fp.reference_series = {k[len(prop) :]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith(prop)}
        fp.reference_properties = {k: finite_values(v) for k, v in fp.reference_series.items()}
        fp.reference_view = ReferenceView.from_state({k[len(view) :]: v for k, v in state.items() if k.startswith(view)})
        return fp

    # --- diagnosis ----------------------------------------------------------------------

    def _sorted_reference(self) -> dict[str, SortedSample]:
        """The reference sorted once for every live test (again if it was replaced)."""
        if self._sorted is None or self._sorted[0] is not self.reference_properties:
            self._sorted = (self.reference_properties, {k: SortedSample.of(v) for k, v in self.reference_properties.items()})
        return self._sorted[1]

    def properties(self, frames: Any, previous: Any = None) -> dict[str, np.ndarray]:
        """All properties (image + geometry against this reference) for ``frames``."""
        return compute_properties(frames, previous=previous, reference=self.reference_view, color=self.color)

    def diagnose(
        self,
        frames: Any = None,
        *,
        properties: dict[str, np.ndarray] | None = None,
        embedding_drift: bool | None = None,
        reference: dict[str, np.ndarray] | None = None,
        thresholds: dict[str, float] | None = None,
        by_rules: bool = False,
    ) -> Diagnosis:
        """Rank the causes for a window of frames (or their precomputed properties).

        ``properties`` (from :func:`compute_properties` or :meth:`properties`) saves the work
        when the caller already has them; geometry is added from ``frames`` if it is missing.
        ``embedding_drift=True`` turns an unexplained window into ``content``. ``reference``
        replaces the reference properties (the capture detector's leave-block-out replay).
        ``thresholds`` (cause -> score) are the capture detector's calibrated bars: a cause is
        named only above its bar (and ``MIN_SCORE``).
        """
        notes: list[str] = []
        if properties is None and frames is None:
            raise ValueError("diagnose needs frames or properties")
        rgb = to_frames(frames, self.color) if frames is not None else None
        if rgb is not None:
            ref_hw = tuple(int(x) for x in self.reference_view.frame_size)
            if rgb.shape[1:3] != ref_hw:
                notes.append(f"frame size {rgb.shape[2]}x{rgb.shape[1]} differs from the reference's {ref_hw[1]}x{ref_hw[0]}")
        if properties is None:  # rgb is already RGB: do not apply self.color twice
            current = compute_properties(rgb, reference=self.reference_view, color="rgb")
        else:
            current = dict(properties)
            if rgb is not None and not all(k in current for k in GEOMETRY_NAMES):
                smalls = np.stack([small_gray(f) for f in rgb])
                current.update(compute_geometry(smalls, self.reference_view))
        current = {k: np.asarray(v, np.float64) for k, v in current.items()}
        if reference is None:
            reference, tested = self.reference_properties, self._sorted_reference()
        else:
            tested = reference
        tests = ks_property_tests(tested, {k: finite_values(v) for k, v in current.items() if k in reference}, alpha=self.alpha)
        effects = _Effects(tests, width=float(self.reference_view.frame_size[1]))
        new_scene = _new_scene(effects, current, reference)
        if new_scene:
            notes.append("the view shows another scene than the reference (no match, no layout left): content, not a capture fault")
        ranked, details = [], {}
        for cause, rule in RULES.items():
            # On another scene only repeated frames are a fault: they are one whatever they show.
            score, subkind, used = (0.0, "", ()) if new_scene and cause != "frozen" else rule(effects, current)
            details[cause] = (subkind, used)
            ranked.append((cause, round(max(float(score), 0.0), 4)))
        ranked.sort(key=lambda cs: -cs[1])
        features = evidence_features(tests, dict(ranked), CAUSES)
        named = named_causes(ranked, thresholds or {})
        probabilities: dict[str, float] = {}
        if named:
            top = named[0]
            if not by_rules:
                # Only a cause the rules name (above its bar) may be chosen: on a busy scene the
                # bars know what moves by itself; the model, fitted on still cameras, does not.
                top, probabilities = shipped_model(CAUSES).best(features, among=named)
            subkind = details[top][0]
        else:
            top, subkind = ("content" if embedding_drift else "none"), ""
            if embedding_drift:
                notes.append("embedding drift is significant but no image property explains it: content change")
        used_by_top = set(details[top][1]) if top in details else set()
        evidence = [
            Evidence(
                property=t.name,
                reference=t.reference,
                current=t.current,
                effect=t.effect,
                p_value=t.p_value,
                q_value=t.q_value,
                cause=top if t.name in used_by_top else "",
                subkind=subkind if t.name in used_by_top else "",
            )
            for t in tests
            if t.significant or t.name in used_by_top
        ]
        evidence.sort(key=lambda ev: (ev.cause != top, ev.q_value))
        return Diagnosis(causes=ranked, top=top, evidence=evidence, subkind=subkind, notes=notes, probabilities=probabilities, features=features)


def named_causes(ranked: list[tuple[str, float]], bars: dict[str, float]) -> list[str]:
    """The causes of ``ranked`` (cause, score) pairs that may be named: at least ``MIN_SCORE``
    and above their bar (a calibrated cause's; none for the others), in ``ranked``'s order."""
    return [c for c, score in ranked if score >= MIN_SCORE and score > bars.get(c, -np.inf)]


__all__ = ["CAUSES", "VOCABULARY", "Diagnosis", "Evidence", "Fingerprinter", "PROPERTY_NAMES", "GEOMETRY_NAMES", "named_causes"]
