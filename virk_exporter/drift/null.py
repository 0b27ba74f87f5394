"""Time-aware null distributions: what a test statistic looks like on this source's normal footage.

A permutation test treats frames as exchangeable. Consecutive frames of a live scene are not:
two seconds of footage always differ from two other seconds, so on real video the permutation
test rejects almost every window (REALITY.md measured 19 of 19). The remedy used here is to
*replay the reference period*: cut the time-ordered reference into the blocks a live test would
see (``window`` consecutive samples, overlapping), test each block against the
reference **without** that block and a margin around it (so a block is never compared with its
own neighbours), and keep the statistics. They are draws of the statistic under "normal footage
of this source, with its own temporal correlation". A live statistic is then ranked against them.

p-value (:class:`EmpiricalNull`): the conformal rank ``(1 + #{null >= x}) / (1 + K)`` — exact
when blocks are exchangeable — extended beyond the largest null value by an exponential tail
that starts there, at the largest value's own conformal p-value, and decays with the mean excess
of the upper half over the median (peaks-over-threshold with shape 0), so a small reference can
still express p-values below ``1 / (1 + K)``. A statistic that is exactly ``floor`` whenever its
gate is closed (a cause score of 0) is a point mass plus a continuous part: the tail's scale is
then fitted to the continuous part alone, since the zeros say how often the gate opens, not how
far it goes when it does (BENCHMARKS.md, "gated cause scores"), however few the open values
(a single one gets ``min_scale``: with the zeros in the fit, a gate that opened once at 3 put
the bar at 19 and one that opened three times at 3 put it at 5). An earlier tail started at the
median and was stretched until it reached the largest value's p-value: with the 4-8
independent blocks of a short reference that multiplied the largest normal score by 5-7 and hid
strong faults (BENCHMARKS.md, "capture bars").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TAIL_FROM = 0.5  # the tail's scale is the mean excess of the null values above this quantile
MAX_BLOCKS = 128  # null values per statistic: overlapping blocks, evenly spread over the period


def block_starts(n: int, window: int, max_blocks: int = MAX_BLOCKS) -> np.ndarray:
    """Starts of the blocks replayed from ``n`` time-ordered samples: every possible start
    (windows overlap as live tests do), thinned evenly to at most ``max_blocks``."""
    if n < window:
        return np.empty(0, np.int64)
    return np.unique(np.linspace(0, n - window, num=min(max_blocks, n - window + 1)).round().astype(np.int64))


def leave_out_bounds(start: np.ndarray, window: int, margin: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``[left, right)``: the samples left out for a block (the block and ``margin`` each side)."""
    return np.maximum(start - margin, 0), np.minimum(start + window + margin, n)


@dataclass(frozen=True)
class EmpiricalNull:
    """Null statistics with a conformal p-value and an exponential tail beyond them.

    Overlapping blocks are not independent draws: ``effective_size`` (default: the number of
    values) is how many independent ones they stand for — the number of non-overlapping blocks
    the period holds. The conformal rank is scaled to it, and the tail is never lighter than
    the largest null value's conformal p-value.
    """

    values: np.ndarray
    min_scale: float = 1e-6  # smallest tail scale (a constant null would make any excess decisive)
    effective_size: float | None = None
    floor: float | None = None  # values at or below it are a point mass (a closed gate), not the tail
    scale: float = field(init=False)

    def __post_init__(self) -> None:
        values = np.sort(np.asarray(self.values, np.float64))
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("an empirical null needs at least one finite value")
        object.__setattr__(self, "values", values)
        size = float(min(self.effective_size or values.size, values.size))
        object.__setattr__(self, "effective_size", max(size, 1.0))
        above = values[values > self.floor] if self.floor is not None else values
        body = above if above.size else values
        median = float(np.quantile(body, TAIL_FROM))
        excess = body[body > median] - median
        object.__setattr__(self, "scale", max(float(excess.mean()) if excess.size else 0.0, self.min_scale))

    @property
    def size(self) -> int:
        return int(self.values.size)

    def p_value(self, x: float) -> float:
        share = (self.size - int(np.searchsorted(self.values, x, side="left"))) / self.size  # null values >= x
        k = self.effective_size
        conformal = (1.0 + k * share) / (1.0 + k)
        if x <= self.values[-1]:
            return conformal
        return min(conformal, self._top_p * float(np.exp(-(x - float(self.values[-1])) / self.scale)))

    @property
    def _top_p(self) -> float:
        """The conformal p-value of the largest null value, where the tail starts."""
        k = self.effective_size
        return (1.0 + k / self.size) / (1.0 + k)

    def threshold(self, alpha: float) -> float:
        """The statistic above which ``p_value <= alpha`` (drift ⇔ statistic > threshold)."""
        k = self.effective_size
        allowed = (alpha * (1.0 + k) - 1.0) / k  # share of null values allowed at or above x
        if allowed >= 1.0:
            return -np.inf
        if allowed >= 0.0:
            # the smallest x whose share of null values >= x is at most `allowed`
            index = int(np.ceil(self.size * (1.0 - allowed) - 1e-9))
            return float(self.values[index - 1]) if index >= 1 else -np.inf
        return float(self.values[-1]) + self.scale * float(np.log(self._top_p / alpha))
