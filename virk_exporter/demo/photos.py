"""Real photographs that ship inside wheels, and a static-camera stream made from them.

The photographs come from ``skimage.data`` and ``sklearn.datasets.load_sample_images`` (only
the loaders that work offline). They are split into two disjoint sets so that anything tuned
on images (thresholds, scales) is tuned on :data:`TUNE` and measured on :data:`SCORE`.

:func:`camera_stream` turns one photograph into a feed that looks like a fixed camera's:
consecutive frames differ by sub-pixel vibration, a tiny exposure flicker and sensor noise,
which is what the fingerprinter's reference statistics must learn to ignore.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

# Disjoint on purpose; the two stereo-motorcycle views are near duplicates, so only one is used.
TUNE: tuple[str, ...] = ("astronaut", "coffee", "camera", "china", "motorcycle")
SCORE: tuple[str, ...] = ("chelsea", "rocket", "coins", "flower", "clock")
# Never looked at while the fingerprinter was written: SCORE informed one late rule change (see
# BENCHMARKS.md), so this third set is the untouched hold-out.
FRESH: tuple[str, ...] = ("moon", "brick", "grass", "immunohistochemistry", "hubble_deep_field")
ALL: tuple[str, ...] = TUNE + SCORE + FRESH

# Camera-like jitter between consecutive frames (full-resolution pixels / gray levels).
SHIFT_SIGMA_PX = 0.2
FLICKER_SIGMA = 0.004
SENSOR_NOISE_SIGMA = 2.0


@lru_cache(maxsize=None)
def _load(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        images = load_sample_images()
        index = [f.rsplit("/", 1)[-1].split(".")[0] for f in images.filenames].index(name)
        image = images.images[index]
    elif name == "motorcycle":
        from skimage import data

        image = data.stereo_motorcycle()[0]
    else:
        from skimage import data

        image = getattr(data, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    image.setflags(write=False)
    return image


def load(name: str) -> np.ndarray:
    """One photograph as uint8 RGB (H, W, 3); grayscale photographs get three equal channels."""
    if name not in ALL:
        raise KeyError(f"unknown photograph {name!r}; choose from {ALL}")
    return _load(name)


def fit(photo: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop to the aspect ratio of ``size`` = (H, W), then resize to it."""
    h, w = photo.shape[:2]
    th, tw = size
    if h * tw > w * th:  # too tall
        ch = max(1, round(w * th / tw))
        top = (h - ch) // 2
        photo = photo[top : top + ch]
    else:
        cw = max(1, round(h * tw / th))
        left = (w - cw) // 2
        photo = photo[:, left : left + cw]
    shrinking = photo.shape[0] > th
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(photo), (tw, th), interpolation=interp)


def camera_stream(
    photo: str | np.ndarray,
    n: int,
    size: tuple[int, int] = (480, 640),
    seed: int = 0,
) -> np.ndarray:
    """``n`` frames (n, H, W, 3) uint8 RGB of a static camera looking at ``photo``.

    Each frame is the scene moved by a random sub-pixel shift, scaled by a tiny exposure
    flicker, plus Gaussian sensor noise. Frames are independent given the scene, so two calls
    with different seeds are two samples of the same clean distribution.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    scene = fit(load(photo) if isinstance(photo, str) else np.asarray(photo, dtype=np.uint8), size)
    scene = scene.astype(np.float32)
    rng = np.random.default_rng(seed)
    h, w = size
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    shifts = rng.normal(0.0, SHIFT_SIGMA_PX, size=(n, 2))
    gains = rng.normal(1.0, FLICKER_SIGMA, size=n)
    noisy = np.empty((h, w, 3), dtype=np.float32)
    for i in range(n):  # one frame at a time keeps the float buffers small
        m = np.array([[1.0, 0.0, shifts[i, 0]], [0.0, 1.0, shifts[i, 1]]], dtype=np.float32)
        moved = cv2.warpAffine(scene, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        rng.standard_normal(out=noisy, dtype=np.float32)
        noisy *= SENSOR_NOISE_SIGMA
        noisy += moved * gains[i]
        np.clip(noisy, 0, 255, out=noisy)
        out[i] = (noisy + 0.5).astype(np.uint8)
    return out
