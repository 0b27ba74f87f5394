"""Seeded corruption generators for every root cause, at severities 1 (subtle) to 5 (severe).

Each entry of :data:`CORRUPTIONS` names the cause label it should be diagnosed as (the closed
vocabulary in docs/design.md) and a sub-kind. :func:`apply` corrupts a window of frames
(N, H, W, 3) uint8 RGB. Anything that belongs to the scene or the camera (occluder position,
glare spot, shift, colour gains, fog map) is drawn once per window, like a real incident;
anything that changes per frame in reality (rain, snow, noise) is drawn per frame.

Work is vectorized per frame with OpenCV/NumPy; the only Python loops run over frames or
over a handful of zoom steps, never over pixels. Parameters are for 640x480 frames and scale
with the frame width where they are lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from virk_exporter.demo.photos import SENSOR_NOISE_SIGMA

SEVERITIES = (1, 2, 3, 4, 5)

Fn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Corruption:
    """A synthetic capture fault: the cause it should be diagnosed as and its severity levels."""

    name: str
    cause: str  # label in the fingerprint vocabulary
    subkind: str
    levels: tuple[float, ...]  # one parameter per severity 1..5
    fn: Fn  # (frames uint8 NHWC, level, rng) -> frames uint8 NHWC

    def __call__(self, frames: np.ndarray, severity: int, seed: int = 0) -> np.ndarray:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be in 1..5, got {severity}")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        return self.fn(frames, self.levels[severity - 1], np.random.default_rng(seed))


def _scale(frames: np.ndarray) -> float:
    """Lengths are specified for 640-pixel-wide frames."""
    return frames.shape[2] / 640.0


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _per_frame(frames: np.ndarray, op: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    out = np.empty_like(frames)
    for i in range(len(frames)):
        out[i] = op(frames[i])
    return out


# --- blur -----------------------------------------------------------------------------------


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    k = (x * x + y * y <= radius * radius).astype(np.float32)
    k = cv2.GaussianBlur(k, (3, 3), 0.5)  # anti-alias the disk edge
    return k / k.sum()


def _line(length: float, angle_deg: float) -> np.ndarray:
    n = max(3, int(np.ceil(length)) | 1)
    k = np.zeros((n, n), np.float32)
    c = n // 2
    dx, dy = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    half = max((length - 1) / 2, 1.0)  # at least 3 pixels, or small frames get no blur
    cv2.line(k, (round(c - dx * half), round(c - dy * half)), (round(c + dx * half), round(c + dy * half)), 1.0, 1, cv2.LINE_AA)
    return k / k.sum()


def defocus_blur(frames: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    k = _disk(radius * _scale(frames))
    return _per_frame(frames, lambda f: cv2.filter2D(f, -1, k, borderType=cv2.BORDER_REFLECT101))


def motion_blur(frames: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    k = _line(length * _scale(frames), float(rng.uniform(0, 180)))
    return _per_frame(frames, lambda f: cv2.filter2D(f, -1, k, borderType=cv2.BORDER_REFLECT101))


def zoom_blur(frames: np.ndarray, max_zoom: float, rng: np.random.Generator) -> np.ndarray:
    h, w = frames.shape[1:3]
    zooms = np.linspace(1.0, max_zoom, 7)[1:]
    mats = [cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, float(z)) for z in zooms]

    def op(f: np.ndarray) -> np.ndarray:
        acc = f.astype(np.float32)
        for m in mats:
            acc += cv2.warpAffine(f, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        return _to_u8(acc / (len(mats) + 1))

    return _per_frame(frames, op)


# --- noise ----------------------------------------------------------------------------------


def gaussian_noise(frames: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return _per_frame(frames, lambda f: _to_u8(f + rng.normal(0, sigma, f.shape).astype(np.float32)))


def shot_noise(frames: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    # Poisson photon counting: noise grows with the signal (photons = full-well count at 255).
    return _per_frame(frames, lambda f: _to_u8(rng.poisson(f * (photons / 255.0)) * (255.0 / photons)))


def impulse_noise(frames: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    def op(f: np.ndarray) -> np.ndarray:
        u = rng.random(f.shape[:2])
        g = f.copy()
        g[u < amount / 2] = 0
        g[u > 1 - amount / 2] = 255
        return g

    return _per_frame(frames, op)


# --- photometric ----------------------------------------------------------------------------


def _gain(frames: np.ndarray, gain: np.ndarray | float) -> np.ndarray:
    lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * np.broadcast_to(np.asarray(gain, np.float32), (3,)) + 0.5, 0, 255)
    lut = lut.astype(np.uint8)
    return np.stack([lut[frames[..., c], c] for c in range(3)], axis=-1)


def exposure(frames: np.ndarray, gain: float, rng: np.random.Generator) -> np.ndarray:
    # Over- (gain > 1) or under-exposure (gain < 1): one gain for all channels, clipped.
    return _gain(frames, gain)


def contrast(frames: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = frames.reshape(len(frames), -1).mean(axis=1).astype(np.float32)[:, None, None, None]
    return _to_u8((frames - mean) * factor + mean)


def color_shift(frames: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    # A white-balance error: channel gains along a random zero-sum direction.
    direction = rng.normal(size=3)
    direction -= direction.mean()
    direction /= np.linalg.norm(direction) + 1e-12
    return _gain(frames, 1.0 + magnitude * direction * np.sqrt(1.5))


# --- weather --------------------------------------------------------------------------------


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """Low-frequency noise in [0, 1] (bicubic-upsampled random grid)."""
    h, w = shape
    grid = rng.random((cells, max(2, round(cells * w / h)))).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def fog(frames: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    h, w = frames.shape[1:3]
    airlight = 0.88 * 255
    t = 1.0 - density * (0.7 + 0.3 * _smooth_field((h, w), rng))  # transmission
    t = t[..., None]
    return _per_frame(frames, lambda f: _to_u8(f * t + airlight * (1 - t)))


def _particles(frames: np.ndarray, rate: float, kernel: np.ndarray, gain: float, haze: float, rng: np.random.Generator) -> np.ndarray:
    """Sparse random points spread by ``kernel`` (streaks or flakes), added as bright light."""
    h, w = frames.shape[1:3]

    def op(f: np.ndarray) -> np.ndarray:
        seeds = (rng.random((h, w)) < rate).astype(np.float32)
        layer = cv2.filter2D(seeds, -1, kernel)
        layer = np.minimum(layer * gain, 255)[..., None]
        base = f.astype(np.float32) * (1 - haze) + 200 * haze
        return _to_u8(base + layer)

    return _per_frame(frames, op)


def rain(frames: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    s = _scale(frames)
    k = _line(24 * s, float(rng.uniform(70, 110)))
    k /= k.max()
    return _particles(frames, rate, k, gain=90.0, haze=0.05, rng=rng)


def snow(frames: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    r = max(1.0, 2.5 * _scale(frames))
    k = _disk(r)
    k /= k.max()
    return _particles(frames, rate, k, gain=190.0, haze=0.08, rng=rng)


def glare(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    # A bright lens flare / sun spot: additive warm Gaussian light at a fixed place in the view.
    h, w = frames.shape[1:3]
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    sigma = (0.10 + 0.03 * strength / 100) * w
    y, x = np.ogrid[:h, :w]
    spot = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2)).astype(np.float32)
    light = (strength * spot)[..., None] * np.array([1.0, 0.95, 0.85], np.float32)
    return _per_frame(frames, lambda f: _to_u8(f + light))


# --- encoding and resolution ---------------------------------------------------------------


def jpeg(frames: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]

    def op(f: np.ndarray) -> np.ndarray:
        ok, buf = cv2.imencode(".jpg", f[..., ::-1], params)
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]

    return _per_frame(frames, op)


def pixelate(frames: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    h, w = frames.shape[1:3]
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    return _per_frame(
        frames,
        lambda f: cv2.resize(cv2.resize(f, small, interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_NEAREST),
    )


# --- geometry -------------------------------------------------------------------------------


def _warp(frames: np.ndarray, m: np.ndarray) -> np.ndarray:
    h, w = frames.shape[1:3]
    return _per_frame(frames, lambda f: cv2.warpAffine(f, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101))


def translation(frames: np.ndarray, pixels: float, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    d = pixels * _scale(frames)
    return _warp(frames, np.array([[1, 0, d * np.cos(angle)], [0, 1, d * np.sin(angle)]], np.float32))


def rotation(frames: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    h, w = frames.shape[1:3]
    return _warp(frames, cv2.getRotationMatrix2D((w / 2, h / 2), float(degrees * rng.choice([-1, 1])), 1.0))


OCCLUDER_EDGE_PX = 12.0  # blur of an occluder's edge at 640 px wide: on the lens, it is far out of focus


def occlusion(frames: np.ndarray, area: float, rng: np.random.Generator) -> np.ndarray:
    # Something on or just in front of the lens (dirt, a leaf, a bag): a dark, fixed blob, out
    # of focus (blurred edge, smooth shading), under the sensor's own noise.
    h, w = frames.shape[1:3]
    aspect = rng.uniform(0.6, 1.6)
    ry = np.sqrt(area * h * w / np.pi / aspect)
    rx = ry * aspect
    cy, cx = rng.uniform(ry, h - ry) if h > 2 * ry else h / 2, rng.uniform(rx, w - rx) if w > 2 * rx else w / 2
    y, x = np.ogrid[:h, :w]
    inside = (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1).astype(np.float32)
    alpha = cv2.GaussianBlur(inside, (0, 0), max(1.0, OCCLUDER_EDGE_PX * _scale(frames)))[..., None]
    colour = rng.uniform(10, 90, size=3).astype(np.float32)
    texture = (12 * (_smooth_field((h, w), rng, cells=12) - 0.5))[..., None]
    blob = colour + texture

    def op(f: np.ndarray) -> np.ndarray:
        noise = rng.normal(0.0, SENSOR_NOISE_SIGMA, size=(h, w, 1)).astype(np.float32)  # the sensor still sees it
        return _to_u8(f * (1 - alpha) + (blob + noise) * alpha)

    return _per_frame(frames, op)


def frozen(frames: np.ndarray, hold: float, rng: np.random.Generator) -> np.ndarray:
    # The feed repeats frames: each frame is held for ``hold`` frames (>= len: one still image).
    hold = max(1, int(hold))
    start = int(rng.integers(0, hold))
    index = ((np.arange(len(frames)) + start) // hold) * hold - start
    return frames[np.clip(index, 0, len(frames) - 1)]


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in [
        Corruption("defocus_blur", "blur", "defocus", (2.0, 3.0, 4.0, 6.0, 8.0), defocus_blur),
        Corruption("motion_blur", "blur", "motion", (6, 9, 13, 19, 27), motion_blur),
        Corruption("zoom_blur", "blur", "zoom", (1.02, 1.035, 1.05, 1.07, 1.10), zoom_blur),
        Corruption("gaussian_noise", "noise", "gaussian", (6, 10, 15, 22, 32), gaussian_noise),
        Corruption("shot_noise", "noise", "shot", (400, 200, 100, 50, 25), shot_noise),
        Corruption("impulse_noise", "noise", "impulse", (0.004, 0.008, 0.016, 0.03, 0.06), impulse_noise),
        Corruption("brightness_up", "brightness", "over-exposure", (1.2, 1.35, 1.5, 1.7, 2.0), exposure),
        Corruption("brightness_down", "brightness", "under-exposure", (0.8, 0.67, 0.55, 0.45, 0.35), exposure),
        Corruption("contrast", "contrast", "low-contrast", (0.75, 0.6, 0.45, 0.35, 0.25), contrast),
        Corruption("color_shift", "color_shift", "white-balance", (0.08, 0.14, 0.2, 0.28, 0.36), color_shift),
        Corruption("fog", "weather", "fog", (0.2, 0.3, 0.4, 0.5, 0.6), fog),
        Corruption("rain", "weather", "rain", (0.0006, 0.001, 0.0016, 0.0025, 0.004), rain),
        Corruption("snow", "weather", "snow", (0.0008, 0.0015, 0.0025, 0.004, 0.006), snow),
        Corruption("glare", "glare", "flare", (70, 100, 140, 190, 250), glare),
        Corruption("jpeg", "compression", "jpeg", (30, 20, 15, 10, 7), jpeg),
        Corruption("pixelate", "resolution", "pixelation", (0.6, 0.5, 0.4, 0.3, 0.25), pixelate),
        Corruption("translation", "camera_shift", "translation", (4, 8, 14, 22, 32), translation),
        Corruption("rotation", "camera_shift", "rotation", (0.75, 1.5, 2.5, 4.0, 6.0), rotation),
        Corruption("occlusion", "occlusion", "occluder", (0.02, 0.04, 0.07, 0.11, 0.16), occlusion),
        Corruption("frozen", "frozen", "repeated-frames", (2, 3, 5, 10, 10**9), frozen),
    ]
}

CAUSES: tuple[str, ...] = tuple(dict.fromkeys(c.cause for c in CORRUPTIONS.values()))


def apply(name: str, frames: np.ndarray, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupt ``frames`` (N, H, W, 3) uint8 RGB with corruption ``name`` at ``severity`` 1..5."""
    try:
        corruption = CORRUPTIONS[name]
    except KeyError:
        raise KeyError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)}") from None
    return corruption(frames, severity, seed)
