"""The colour cast: per-cell R/G and B/G edge-strength ratios, and their change against the
reference's own cells.

A white-balance error scales one channel everywhere, so every cell's R/G edge-contrast ratio
moves by the same factor; fog, exposure and contrast change all channels alike and leave the
ratio (a ratio of *spreads* over the frame fell by 0.2-0.26 under ImageNet-C fog on three of
five photographs). At 80x60 a codec's half-resolution chroma and sensor noise are averaged away
(JPEG and h264 moved a per-edge ratio at 160x120 by 0.05).

With a reference (``CastReference``) the cast is the median, over the cells that hold the
stronger half of the reference's edges, of each cell's change against the same cell of the
reference: an object that enters the view or an occluder changes the few cells it covers, a
white balance all of them. So a gain also moves them *alike*: the cast's agreement (the share
of the strong cells that moved with it) is near 1 under a white-balance fault, and near a half
where a codec's chroma loss, fog's airlight or saturation move each cell's ratio by its own
content (TUNE photographs, 10th / 90th percentiles of the windows: casts >= 0.88 at every
severity; h264, JPEG, fog and ImageNet-C saturate <= 0.79; clean frames about 0.55).

The median of a frame's own cells (the cast without a reference, and of references saved
before the cells were kept) moves when a few new cells fall on the other side of a scene whose
cells differ in colour: on TUNE photographs an object of 3-10 % of the view moved it past
``MIN_CAST`` in 17-33 % of windows, this way in none (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CAST_VIEW = (80, 60)  # the colour cast's view: coarser than any codec's half-resolution chroma
CAST_CELLS = (6, 8)  # rows, columns of the cast's cells (10x10 pixels of CAST_VIEW each)
N_CAST_CELLS = CAST_CELLS[0] * CAST_CELLS[1]
_CAST_CELL_PIXELS = (CAST_VIEW[0] // CAST_CELLS[1]) * (CAST_VIEW[1] // CAST_CELLS[0])
AGREEMENT_SHARE = 0.5  # a cell moved with the cast when its change is at least this share of it, the same way


def cell_strengths(small_rgb: np.ndarray) -> np.ndarray:
    """(N_CAST_CELLS, 3) mean R, G, B edge strength per cell of an 80x60 view of ``small_rgb``."""
    view = cv2.resize(small_rgb, CAST_VIEW, interpolation=cv2.INTER_AREA)
    gx = cv2.Sobel(view, cv2.CV_16S, 1, 0, ksize=3)
    gy = cv2.Sobel(view, cv2.CV_16S, 0, 1, ksize=3)
    edges = (np.abs(gx) + np.abs(gy)).astype(np.float32)
    # Area resizing to the cell grid averages each cell; + 1 / pixels is + 1 on a cell's sum
    # (a flat cell reads as no cast, not as 0 / 0).
    return cv2.resize(edges, CAST_CELLS[::-1], interpolation=cv2.INTER_AREA).reshape(-1, 3) + 1.0 / _CAST_CELL_PIXELS


def _log_ratios(strengths: np.ndarray) -> np.ndarray:
    """(..., cells, 2) log(R / G), log(B / G) of (..., cells, 3) strengths."""
    return np.log(strengths[..., 0::2] / strengths[..., 1:2])


def _stronger_half(strengths: np.ndarray) -> np.ndarray:
    total = strengths.sum(axis=-1)
    return total >= np.median(total)


def own_cast(strengths: np.ndarray) -> tuple[float, float]:
    """Without a reference: the median over the frame's stronger half of cells of its ratios."""
    ratios = np.median(_log_ratios(strengths[_stronger_half(strengths)]), axis=0)
    return float(ratios[0]), float(ratios[1])


@dataclass(frozen=True)
class CastReference:
    """The reference's colour cell by cell (kept in the reference file as plain arrays)."""

    ratios: np.ndarray  # (N_CAST_CELLS, 2) log ratios of the reference's median cell strengths
    strong: np.ndarray  # (N_CAST_CELLS,) bool: the cells holding the stronger half of its edges

    @classmethod
    def from_strengths(cls, strengths: np.ndarray) -> "CastReference":
        """From the reference samples' (N, N_CAST_CELLS, 3) cell strengths."""
        median = np.median(np.asarray(strengths, np.float64), axis=0)
        return cls(ratios=_log_ratios(median), strong=_stronger_half(median))

    def casts(self, strengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per frame: (N, 2) the median over the reference's stronger cells of each cell's change
        (the cast), and (N,) the share of those cells that moved with it in the ratio that moved
        more (the same way, at least half as far): its agreement."""
        change = (_log_ratios(np.asarray(strengths, np.float64)) - self.ratios)[:, self.strong]
        cast = np.median(change, axis=1)
        channel = np.abs(cast).argmax(axis=1)
        moved = np.take_along_axis(change, channel[:, None, None], axis=2)[..., 0]
        shift = np.take_along_axis(cast, channel[:, None], axis=1)
        agree = (np.sign(moved) == np.sign(shift)) & (np.abs(moved) >= AGREEMENT_SHARE * np.abs(shift))
        return cast, agree.mean(axis=1)

    def state(self) -> dict[str, np.ndarray]:
        return {"cast_ratios": self.ratios, "cast_strong": self.strong}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "CastReference | None":
        """None for a reference saved before the cells were kept: its cast is each frame's own."""
        if "cast_ratios" not in state:
            return None
        return cls(ratios=np.asarray(state["cast_ratios"], np.float64), strong=np.asarray(state["cast_strong"], bool))
