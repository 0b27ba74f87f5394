"""Camera geometry against the source's reference view, and occlusion.

Both work on the 160x120 gray views from ``properties.py``.

* Camera shift: phase correlation of each image quadrant against the same quadrant of the
  reference view gives four displacement vectors; a least-squares similarity fit turns them
  into translation, rotation and zoom (a bump moves all quadrants alike; a rotation moves
  them tangentially; a zoom radially).
* Occlusion: after undoing the translation, the view is cut into an 8x6 grid of cells. The
  cells' means are fitted to the reference cells' means by one gain and offset (which absorbs
  any global exposure or contrast change); a cell that stays far from the fit after that, or
  that lost its texture while the others did not, is a region that stopped looking like the
  reference.
* Focus and structure of the darkest cell: an occluder on or near the lens lies far outside the
  depth of field, so it is smooth; an object that enters the scene (a person, a parked car) is as
  sharp as the scene (``local_focus``) and replaces the structure that was there, which a shadow
  dims but keeps (``local_same``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import fft as sp_fft

from virk_exporter.fingerprint.cast import CastReference
from virk_exporter.fingerprint.view import SMALL

LOWPASS_SIGMA = 0.12  # cycles/pixel: phase correlation trusts the frequencies blur keeps
GRID = (6, 8)  # cells (rows, cols) on the 120x160 view: 20x20 pixels each
DETAIL_FLOOR = 0.5  # mean |Laplacian| (gray levels) added so a flat cell's log detail stays finite
DETAIL_LEVEL = 8.0  # gray levels added to a cell's mean so a black cell's relative detail stays finite

GEOMETRY_NAMES: tuple[str, ...] = (
    "shift_px",  # translation magnitude, in reference-frame pixels
    "rotation",  # degrees (sign: image coordinates)
    "zoom",  # log scale factor
    "match",  # mean phase-correlation peak energy near the peak (about 1 = identical view)
    "local_bright",  # largest cell brightening left after a global gain/offset fit (gray levels)
    "local_dark",  # largest cell darkening left after that fit
    "local_flat",  # largest cell loss of texture, log std, relative to the median cell's change
    "local_focus",  # the darkest cell's fine texture against the reference's (log; below 0: smoother)
    "local_same",  # correlation of the darkest cell's pixels with the reference view's (1: the same structure, dimmed)
    "layout",  # correlation of the cells' means with the reference's (1 = the same scene's layout)
)


@dataclass(frozen=True)
class ReferenceView:
    """What geometry and the colour cast measure against: kept in the reference file as plain arrays."""

    view: np.ndarray  # (120, 160) float32 mean gray view of the reference frames
    cell_mean: np.ndarray  # (6, 8) median over reference frames of cell means
    cell_std: np.ndarray  # (6, 8) median over reference frames of cell stds
    frame_size: np.ndarray  # (2,) reference frame (height, width)
    cast: CastReference | None = None  # the colour cast's cells (None: a reference saved without them)
    cell_texture: np.ndarray | None = None  # (6, 8) median over reference frames of cell fine texture (None: saved without it)

    @classmethod
    def from_smalls(cls, smalls: np.ndarray, frame_size: tuple[int, int], cast_cells: np.ndarray | None = None) -> "ReferenceView":
        """``cast_cells``: the samples' colour-cast cell strengths (``properties.compute_samples``)."""
        means, stds = _cells(smalls)
        return cls(
            view=smalls.mean(axis=0).astype(np.float32),
            cell_mean=np.median(means, axis=0),
            cell_std=np.median(stds, axis=0),
            frame_size=np.asarray(frame_size, dtype=np.int64),
            cast=None if cast_cells is None else CastReference.from_strengths(cast_cells),
            cell_texture=np.median(_cell_texture(smalls)[0], axis=0),
        )

    def state(self) -> dict[str, np.ndarray]:
        out = {"view": self.view, "cell_mean": self.cell_mean, "cell_std": self.cell_std, "frame_size": self.frame_size}
        if self.cell_texture is not None:
            out["cell_texture"] = self.cell_texture
        return out | (self.cast.state() if self.cast is not None else {})

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "ReferenceView":
        return cls(
            view=np.asarray(state["view"], np.float32),
            cell_mean=np.asarray(state["cell_mean"], np.float64),
            cell_std=np.asarray(state["cell_std"], np.float64),
            frame_size=np.asarray(state["frame_size"], np.int64),
            cast=CastReference.from_state(state),
            cell_texture=np.asarray(state["cell_texture"], np.float64) if "cell_texture" in state else None,
        )


def _cells(smalls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell mean and std for views (N, 120, 160), vectorized over frames."""
    n = len(smalls)
    gh, gw = GRID
    blocks = np.asarray(smalls, np.float32).reshape(n, gh, SMALL[1] // gh, gw, SMALL[0] // gw)
    mean = blocks.mean(axis=(2, 4), dtype=np.float64)
    std = np.sqrt(np.maximum(np.square(blocks).mean(axis=(2, 4), dtype=np.float64) - mean**2, 0.0))
    return mean, std


def _cell_texture(smalls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell fine texture (N, 6, 8) of views as captured, the mean absolute Laplacian, and the
    cells' means. Not on the aligned views: a sub-pixel warp is a low-pass filter."""
    views = np.asarray(smalls, np.float32)
    padded = np.pad(views, ((0, 0), (1, 1), (1, 1)), mode="edge")
    laplacian = np.abs(4 * views - padded[:, :-2, 1:-1] - padded[:, 2:, 1:-1] - padded[:, 1:-1, :-2] - padded[:, 1:-1, 2:])
    means, _ = _cells(views)
    n, (gh, gw) = len(views), GRID
    return laplacian.reshape(n, gh, SMALL[1] // gh, gw, SMALL[0] // gw).mean(axis=(2, 4), dtype=np.float64), means


def _detail(texture: np.ndarray, means: np.ndarray, floor: float) -> np.ndarray:
    """Log fine texture above the sensor's noise (``floor``: the reference's flattest cell, which
    shows noise and little else) relative to the cell's level, so that a dimmer region with the
    same texture keeps its detail, as a global gain keeps every cell's; offsets keep flat and
    black cells finite."""
    return np.log((np.maximum(texture - floor, 0.0) + DETAIL_FLOOR) / (means + DETAIL_LEVEL))


# Phase correlation on 80x60 quadrants of the 160x120 view. (Halving once more is 4x cheaper
# but halves the precision: a 4 px bump at 640 then reads as 2.5 px and small rotations vanish.)
_QH, _QW = SMALL[1] // 2, SMALL[0] // 2
_WINDOW = cv2.createHanningWindow((_QW, _QH), cv2.CV_32F)
# Quadrant centres relative to the view centre, in small-view pixels.
_FY, _FX = np.meshgrid(sp_fft.fftfreq(_QH), sp_fft.rfftfreq(_QW), indexing="ij")
_LOWPASS = np.exp(-(_FY**2 + _FX**2) / (2 * LOWPASS_SIGMA**2)).astype(np.float32)
_CENTRES = np.array([[-_QW / 2, -_QH / 2], [_QW / 2, -_QH / 2], [-_QW / 2, _QH / 2], [_QW / 2, _QH / 2]])
_QUADRANTS = [(slice(0, _QH), slice(0, _QW)), (slice(0, _QH), slice(_QW, None)), (slice(_QH, None), slice(0, _QW)), (slice(_QH, None), slice(_QW, None))]


def _phase_correlate(reference: np.ndarray, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched phase correlation of every view's quadrants against the reference's.

    Returns shifts (N, 4, 2) as (dx, dy) in view pixels and peak responses (N, 4). One batched
    FFT for all frames and quadrants, with the reference's spectrum computed once (a per-call
    ``cv2.phaseCorrelate`` redoes it and costs ~2x more here).
    """
    n = len(views)
    quads = np.stack([views[:, q[0], q[1]] for q in _QUADRANTS], axis=1)  # (N, 4, QH, QW)
    ref = np.stack([reference[q] for q in _QUADRANTS])  # (4, QH, QW)
    ref_spec = sp_fft.rfft2((ref - ref.mean(axis=(1, 2), keepdims=True)) * _WINDOW, workers=1)
    cur = (quads - quads.mean(axis=(2, 3), keepdims=True)) * _WINDOW
    cross = sp_fft.rfft2(cur, workers=1) * np.conj(ref_spec)[None]
    cross /= np.abs(cross) + 1e-9
    cross *= _LOWPASS  # whitening would let blurred-away frequencies (pure noise) vote
    corr = sp_fft.irfft2(cross, s=(_QH, _QW), workers=1).reshape(n * 4, _QH, _QW)
    flat = corr.reshape(n * 4, -1).argmax(axis=1)
    py, px = np.divmod(flat, _QW)
    # Sub-pixel peak: weighted centroid of the 3x3 neighbourhood (circular indices).
    offsets = np.arange(-1, 2)
    rows = (py[:, None] + offsets[None]) % _QH  # (M, 3)
    cols = (px[:, None] + offsets[None]) % _QW
    patch = corr[np.arange(n * 4)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (M, 3, 3)
    weights = np.maximum(patch, 0.0)
    total = weights.sum(axis=(1, 2)) + 1e-12
    sub_y = (weights.sum(axis=2) * offsets).sum(axis=1) / total
    sub_x = (weights.sum(axis=1) * offsets).sum(axis=1) / total
    # Peaks past half the size wrap around to negative shifts.
    dy = np.where(py > _QH // 2, py - _QH, py) + sub_y
    dx = np.where(px > _QW // 2, px - _QW, px) + sub_x
    shifts = np.stack([dx, dy], axis=1).reshape(n, 4, 2)
    return shifts, total.reshape(n, 4)


def compute_geometry(smalls: np.ndarray, reference: ReferenceView) -> dict[str, np.ndarray]:
    """Geometry properties (GEOMETRY_NAMES), one value per view in ``smalls`` (N, 120, 160)."""
    n = len(smalls)
    smalls = np.asarray(smalls, np.float32)
    shifts, responses = _phase_correlate(reference.view, smalls)
    # Similarity fit d_k = t + rot * perp(r_k) + zoom * r_k, made robust to one bad quadrant
    # (an occluder or a textureless sky there): medians instead of least squares.
    t = np.median(shifts, axis=1)
    rel = shifts - t[:, None, :]
    r2 = (_CENTRES**2).sum(axis=1)
    rot = np.median((_CENTRES[None, :, 0] * rel[..., 1] - _CENTRES[None, :, 1] * rel[..., 0]) / r2, axis=1)
    zoom = np.median((_CENTRES[None, :, 0] * rel[..., 0] + _CENTRES[None, :, 1] * rel[..., 1]) / r2, axis=1)
    scale = float(reference.frame_size[1]) / SMALL[0]

    aligned = np.empty_like(smalls)
    for i in range(n):  # undo the translation so a camera bump is not read as occlusion
        m = np.array([[1, 0, -t[i, 0]], [0, 1, -t[i, 1]]], np.float32)
        aligned[i] = cv2.warpAffine(smalls[i], m, SMALL, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    means, stds = _cells(aligned)
    residual = _robust_affine_residual(reference.cell_mean.ravel(), means.reshape(n, -1))
    layout = _correlation(reference.cell_mean.ravel(), means.reshape(n, -1))
    log_std = np.log((stds.reshape(n, -1) + 2.0) / (reference.cell_std.ravel() + 2.0))
    log_std -= np.median(log_std, axis=1, keepdims=True)
    darkest = residual.argmin(axis=1)  # the cell local_dark reports, per view
    return {
        "shift_px": np.hypot(t[:, 0], t[:, 1]) * scale,
        "rotation": np.degrees(rot),
        "zoom": zoom,
        "match": responses.mean(axis=1),
        "local_bright": residual.max(axis=1),
        "local_dark": (-residual).max(axis=1),
        "local_flat": (-log_std).max(axis=1),
        "local_focus": _cell_focus(smalls, darkest, reference),
        "local_same": _cell_correlation(aligned, darkest, reference.view),
        "layout": layout,
    }


def _cell_focus(smalls: np.ndarray, darkest: np.ndarray, reference: ReferenceView) -> np.ndarray:
    """The fine texture of each view's ``darkest`` cell (after the gain/offset fit) against the
    larger of the reference's same cell and its median cell: a smooth occluder over a textureless
    wall is still smoother than the scene. NaN against a reference saved without cell texture."""
    n = len(smalls)
    if reference.cell_texture is None:
        return np.full(n, np.nan)
    floor = float(reference.cell_texture.min())
    texture, means = _cell_texture(smalls)
    rows = np.arange(n)
    detail = _detail(texture.reshape(n, -1)[rows, darkest], means.reshape(n, -1)[rows, darkest], floor)
    ref = _detail(reference.cell_texture, reference.cell_mean, floor).ravel()
    return detail - np.maximum(ref[darkest], np.median(ref))


def _cell_correlation(aligned: np.ndarray, darkest: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Pearson correlation of each aligned view's ``darkest`` cell with the same cell of the
    reference view: a shadow dims the structure that was there (high), an object or an occluder
    replaces it (low)."""
    n, (gh, gw) = len(aligned), GRID
    ch, cw = SMALL[1] // gh, SMALL[0] // gw
    row, col = np.divmod(darkest, gw)
    ys = row[:, None] * ch + np.arange(ch)[None]  # (N, ch)
    xs = col[:, None] * cw + np.arange(cw)[None]  # (N, cw)
    cur = aligned[np.arange(n)[:, None, None], ys[:, :, None], xs[:, None, :]].reshape(n, -1)
    ref = view[ys[:, :, None], xs[:, None, :]].reshape(n, -1)
    c, r = cur - cur.mean(axis=1, keepdims=True), ref - ref.mean(axis=1, keepdims=True)
    return (c * r).sum(axis=1) / (np.sqrt((c**2).sum(axis=1) * (r**2).sum(axis=1)) + 1e-9)


def _correlation(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``cur`` (N, M) with ``ref`` (M,); 0 for a flat row."""
    r = ref - ref.mean()
    c = cur - cur.mean(axis=1, keepdims=True)
    denominator = np.sqrt((c**2).sum(axis=1) * (r**2).sum()) + 1e-9
    return (c @ r) / denominator


def _robust_affine_residual(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Residuals of cur[i] ~ a_i * ref + b_i, fitted twice: the second fit ignores the quarter
    of cells that fitted worst, so an occluder does not drag the fit towards itself."""
    n, m = cur.shape
    keep = np.ones((n, m), dtype=bool)
    for _ in range(2):
        w = keep.astype(np.float64)
        sw = w.sum(axis=1, keepdims=True)
        mx = (w * ref).sum(axis=1, keepdims=True) / sw
        my = (w * cur).sum(axis=1, keepdims=True) / sw
        cov = (w * (ref - mx) * (cur - my)).sum(axis=1, keepdims=True)
        var = (w * (ref - mx) ** 2).sum(axis=1, keepdims=True) + 1e-6
        a = cov / var
        residual = cur - (my + a * (ref - mx))
        cutoff = np.quantile(np.abs(residual), 0.75, axis=1, keepdims=True)
        keep = np.abs(residual) <= cutoff
    return residual
