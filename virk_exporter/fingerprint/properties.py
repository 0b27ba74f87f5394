"""Cheap per-frame image properties, computed on small reused buffers.

Every property is a scalar per frame chosen so that one root cause moves it and the scene
alone does not: values are compared against the *same source's* reference distribution
(``causes.py``), never against absolute thresholds. Where a property would otherwise move
with a global brightness or contrast change (sharpness), it is normalized by contrast.

Buffers (for a 640x480 frame):

* ``mid``  320x240 gray, area-averaged: gradients (sharpness, anisotropy) and specks.
* ``small`` 160x120 RGB/gray, area-averaged: brightness, colour, clipping, haze, frame
  differences and geometry (``geometry.py``).
* ``cast.CAST_VIEW`` 80x60 RGB, area-averaged from ``small``: the colour cast's edges (``cast.py``).
* A full-resolution 320x240 central crop of green: noise and specks, because averaging would
  remove the very noise we want to measure (and decimation aliases texture into it).
* Every 4th full-resolution row of green: JPEG blockiness and pixelation, which live on the
  exact pixel grid.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from virk_exporter.fingerprint.cast import N_CAST_CELLS, CastReference, cell_strengths, own_cast
from virk_exporter.fingerprint.view import SMALL
from virk_exporter.frames import ColorOrder, normalize_any

MID = (320, 240)
CROP = (320, 240)  # full-resolution crop for noise and specks

# Immerkaer's noise kernel: zero response on planes and linear ramps; std of the response is
# 6 sigma for i.i.d. Gaussian noise of std sigma. The median of |response| resists texture.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
_MAD_TO_SIGMA = 1.0 / (0.6745 * 6.0)
_SPECK_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
_HAZE_KERNEL = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5))
SPECK_LEVEL = 40  # gray levels above (below) the local opening (closing) that make a speck
IMPULSE_LEVEL = 60  # gray levels from the 3x3 median that make a saturated pixel an impulse
TEXTURE_SPAN = 24  # a 3-pixel span that changes this much is textured (for pixelation)

PROPERTY_NAMES: tuple[str, ...] = (
    "brightness",  # mean gray level, 0..255
    "contrast",  # RMS contrast: std of gray
    "sharpness",  # RMS gradient / RMS contrast at 320x240 (scale-free edge steepness)
    "sharp_center",  # log(gradient energy in the central half / everywhere): zoom blur
    "fine_detail",  # log(gradient energy at 320x240, or the frame if smaller / one octave coarser): blur loses the fine scale first
    "aniso_c",  # gradient orientation anisotropy (Jxx - Jyy) / (Jxx + Jyy): motion blur, rain
    "aniso_s",  # 2 Jxy / (Jxx + Jyy)
    "noise",  # sigma of additive noise in gray levels (robust Immerkaer estimate)
    "specks_bright",  # fraction of pixels much brighter than their neighbourhood (snow, rain, salt)
    "specks_dark",  # fraction much darker (pepper)
    "impulses",  # fraction of saturated (0 or 255) pixels far from their 3x3 median: salt-and-pepper
    "saturation",  # mean HSV saturation, 0..255
    "cast_r",  # log(R / G edge strength) per 6x8 cell at 80x60, median change vs the reference's cells (cast.py)
    "cast_b",  # log(B / G edge strength)
    "cast_agreement",  # share of the reference's strong cells that moved with the cast (cast.py); NaN without a reference's cells
    "highlights",  # fraction of clipped highlights (gray >= 250)
    "shadows",  # fraction of crushed shadows (gray <= 5)
    "blockiness",  # 8-periodic excess of pixel steps at one grid phase (JPEG)
    "flat_pairs",  # fraction of exactly equal neighbours inside textured spans (pixelation)
    "haze",  # mean dark channel (5x5 min over pixels of min over RGB), 0..255
    "frame_diff",  # mean |gray_t - gray_{t-1}| at 160x120; 0 for a repeated frame (keep last)
)
_DIFF = PROPERTY_NAMES.index("frame_diff")
_CAST_R, _CAST_B = PROPERTY_NAMES.index("cast_r"), PROPERTY_NAMES.index("cast_b")
_CAST_AGREEMENT = PROPERTY_NAMES.index("cast_agreement")


def to_frames(frames: Any, color: ColorOrder = "rgb") -> np.ndarray:
    """Any frame input (gray, BGR, float, CHW, torch) -> uint8 RGB (N, H, W, 3)."""
    return normalize_any(frames, color)


def small_gray(frame: np.ndarray) -> np.ndarray:
    """The 160x120 float32 gray view used for frame differences and geometry."""
    small = cv2.resize(frame, SMALL, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _hist_median(values: np.ndarray) -> float:
    """Median of a uint8 array via a 256-bin histogram (far cheaper than sorting), interpolated."""
    hist = cv2.calcHist([values], [0], None, [256], [0, 256]).ravel()
    cum = np.cumsum(hist)
    half = cum[-1] / 2.0
    k = int(np.searchsorted(cum, half))
    below = cum[k - 1] if k > 0 else 0.0
    return k + (half - below) / max(hist[k], 1.0)


def _blockiness(steps: np.ndarray) -> float:
    """(largest - second largest) mean step over the 8 grid phases, relative to the mean step.

    JPEG raises exactly one phase (its 8x8 block edges); pixelation raises two or more phases
    equally (blocks of 2 or 4) or none consistently (non-integer factors), so it scores ~0.
    """
    n = (steps.shape[1] // 8) * 8
    if n == 0:
        return 0.0
    phases = steps[:, :n].sum(axis=0, dtype=np.int64).reshape(-1, 8).sum(axis=0) / float(steps.shape[0] * (n // 8))
    top = np.sort(phases)
    return float((top[-1] - top[-2]) / (phases.mean() + 1e-3))


def _gradient_energy(gray: np.ndarray) -> float:
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return float(cv2.mean(gx * gx)[0] + cv2.mean(gy * gy)[0]) + 1e-6


def _frame_properties(frame: np.ndarray, out: np.ndarray, cells: np.ndarray, i: int) -> np.ndarray:
    """Fill row ``i`` of ``out`` (one column per PROPERTY_NAMES entry; the cast without a
    reference) and of ``cells`` (the cast's cell strengths); return the small gray."""
    h, w = frame.shape[:2]
    mid_rgb = cv2.resize(frame, MID, interpolation=cv2.INTER_AREA)
    small_rgb = cv2.resize(mid_rgb, SMALL, interpolation=cv2.INTER_AREA)
    small = cv2.cvtColor(small_rgb, cv2.COLOR_RGB2GRAY)
    mid = cv2.cvtColor(mid_rgb, cv2.COLOR_RGB2GRAY)

    mean, std = cv2.meanStdDev(small)
    brightness, contrast = float(mean[0, 0]), float(std[0, 0])

    # Gradients at 320x240: steepness of edges relative to contrast (blur lowers it whatever
    # the scene's texture or exposure), the share of edge energy in the centre (zoom blur
    # blurs the periphery more) and the orientation structure tensor (motion blur, rain).
    gx = cv2.Sobel(mid, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(mid, cv2.CV_32F, 0, 1, ksize=3)
    gxx, gyy = gx * gx, gy * gy
    jxx, jyy, jxy = float(cv2.mean(gxx)[0]), float(cv2.mean(gyy)[0]), float(cv2.mean(gx * gy)[0])
    energy = jxx + jyy + 1e-6
    mh, mw = mid.shape
    cy, cx = mh // 4, mw // 4
    center = cv2.mean(gxx[cy:-cy, cx:-cx] + gyy[cy:-cy, cx:-cx])[0] + 1e-6
    mid_std = float(cv2.meanStdDev(mid)[1][0, 0])
    # The finest octave's gradient energy against the next coarser one: gain, offset and added
    # low-frequency light (fog's airlight, a vignette, a lamp) scale both alike, while every
    # blur takes the fine octave first. Sharpness relative to contrast falls under fog too;
    # this ratio does not. Below 320x240 the mid view is upsampled: the frame's own octave is
    # the finest, and interpolation would only add spread.
    if w < MID[0] or h < MID[1]:
        native = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        fine_detail = np.log(_gradient_energy(native) / _gradient_energy(cv2.resize(native, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)))
    else:
        fine_detail = np.log(energy / _gradient_energy(small))

    # Noise on a full-resolution central crop of the green channel (decimating would alias
    # texture into the estimate; averaging would remove the noise).
    top, left = max(0, (h - CROP[1]) // 2), max(0, (w - CROP[0]) // 2)
    green = np.ascontiguousarray(frame[top : top + CROP[1], left : left + CROP[0], 1])
    response = cv2.filter2D(green, cv2.CV_16S, _NOISE_KERNEL)
    noise = _hist_median(cv2.convertScaleAbs(response)) * _MAD_TO_SIGMA

    # Isolated bright / dark specks: top-hat and black-hat on the same crop.
    tophat = cv2.morphologyEx(green, cv2.MORPH_TOPHAT, _SPECK_KERNEL)
    blackhat = cv2.morphologyEx(green, cv2.MORPH_BLACKHAT, _SPECK_KERNEL)
    specks_bright = cv2.countNonZero(cv2.threshold(tophat, SPECK_LEVEL, 255, cv2.THRESH_BINARY)[1]) / tophat.size
    specks_dark = cv2.countNonZero(cv2.threshold(blackhat, SPECK_LEVEL, 255, cv2.THRESH_BINARY)[1]) / blackhat.size
    outlier = cv2.absdiff(green, cv2.medianBlur(green, 3)) > IMPULSE_LEVEL
    impulses = np.count_nonzero(outlier & ((green == 0) | (green == 255))) / green.size

    hsv = cv2.cvtColor(small_rgb, cv2.COLOR_RGB2HSV)
    saturation = float(cv2.mean(hsv[..., 1])[0])
    cells[i] = cell_strengths(small_rgb)
    cast_r, cast_b = own_cast(cells[i])
    highlights = cv2.countNonZero(cv2.threshold(small, 249, 255, cv2.THRESH_BINARY)[1]) / small.size
    shadows = cv2.countNonZero(cv2.threshold(small, 5, 255, cv2.THRESH_BINARY_INV)[1]) / small.size

    # Pixel-grid structure on every 4th full-resolution row (green).
    rows = frame[::4, :, 1].astype(np.int16)
    steps = np.abs(np.diff(rows, axis=1))
    blockiness = _blockiness(steps)
    if rows.shape[1] >= 4:
        span = np.abs(rows[:, 3:] - rows[:, :-3]) > TEXTURE_SPAN  # pixels x-1 .. x+2 around step x
        flat_pairs = float(np.count_nonzero((steps[:, 1:-1] == 0) & span)) / max(np.count_nonzero(span), 1)
    else:
        flat_pairs = 0.0

    r_, g_, b_ = cv2.split(small_rgb)
    dark = cv2.erode(cv2.min(cv2.min(r_, g_), b_), _HAZE_KERNEL)
    haze = float(cv2.mean(dark)[0])

    out[i, :_DIFF] = (
        brightness,
        contrast,
        np.sqrt(energy) / (mid_std + 1.0),
        np.log(center / (energy)),
        fine_detail,
        (jxx - jyy) / energy,
        2 * jxy / energy,
        noise,
        specks_bright,
        specks_dark,
        impulses,
        saturation,
        cast_r,
        cast_b,
        np.nan,  # cast_agreement: only against a reference's cells (_compute)
        highlights,
        shadows,
        blockiness,
        flat_pairs,
        haze,
    )
    return small.astype(np.float32)


def _compute(
    frames: np.ndarray, previous_small: np.ndarray | None, cast: CastReference | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    n = len(frames)
    values = np.empty((n, len(PROPERTY_NAMES)), dtype=np.float64)
    smalls = np.empty((n, SMALL[1], SMALL[0]), dtype=np.float32)
    cells = np.empty((n, N_CAST_CELLS, 3), dtype=np.float32)
    for i in range(n):  # per frame: every operation inside is a vectorized OpenCV call
        smalls[i] = _frame_properties(frames[i], values, cells, i)
    if n:
        first = np.nan if previous_small is None else float(np.abs(smalls[0] - previous_small).mean())
        values[:, _DIFF] = np.concatenate([[first], np.abs(np.diff(smalls, axis=0)).mean(axis=(1, 2))])
        if cast is not None:
            values[:, [_CAST_R, _CAST_B]], values[:, _CAST_AGREEMENT] = cast.casts(cells)
    return {name: values[:, k].copy() for k, name in enumerate(PROPERTY_NAMES)}, smalls, cells


def compute_properties(
    frames: Any,
    *,
    previous: Any = None,
    reference: Any = None,
    color: ColorOrder = "rgb",
) -> dict[str, np.ndarray]:
    """One float64 array of length N per property, for frames (N, H, W, 3) uint8 RGB (or any
    layout :func:`virk_exporter.frames.normalize_any` reads).

    ``frame_diff`` compares each frame with the one before it. The first frame is compared
    with ``previous`` (the frame that preceded this batch, any layout) when given; without it
    the first frame's ``frame_diff`` is NaN, and consumers drop NaNs (``causes.py`` does).

    ``reference`` is a :class:`~virk_exporter.fingerprint.geometry.ReferenceView`; when given,
    the geometry properties (camera shift, occlusion) against it are added.
    """
    props, _, _ = compute_samples(frames, previous=previous, reference=reference, color=color)
    return props


def compute_samples(
    frames: Any,
    *,
    previous: Any = None,
    reference: Any = None,
    color: ColorOrder = "rgb",
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """:func:`compute_properties` plus what a reference keeps of each frame: the (N, 120, 160)
    float32 gray views (for geometry) and the (N, N_CAST_CELLS, 3) colour-cast cell strengths
    (``cast.CastReference``). With a ``reference`` that holds its cells the cast is measured
    against them."""
    frames = to_frames(frames, color)
    previous_small = None if previous is None else small_gray(to_frames(previous, color)[-1])
    props, smalls, cells = _compute(frames, previous_small, None if reference is None else reference.cast)
    if reference is not None:
        from virk_exporter.fingerprint.geometry import compute_geometry

        props.update(compute_geometry(smalls, reference))
    return props, smalls, cells
