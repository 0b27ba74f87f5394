"""Slices: *where* did it drift? Tags on frames, and a size-corrected ranking of tagged slices.

``@exporter.monitor(tags=fn)`` attaches a small dict to each frame (``{"site": "north",
"weather": "rain"}``). Every ``key=value`` pair is a slice. When a source's drift is
detected, the worker ranks the slices of that source's recent frames by how far they drifted
from the source's reference:

* every slice with at least ``min_support`` recent frames gets the same calibrated test as the
  source itself: a permutation MMD² test of the slice's frames against the reference (the
  kernel bandwidth of the source's detector; p-values ``(1 + k) / (1 + B)``, never 0). A
  5-frame slice therefore cannot win on noise: its permuted statistics are as noisy as its
  observed one, so its p-value stays large;
* the p-values are corrected for testing many slices at once (Benjamini–Hochberg, at false
  discovery rate ``fdr``); ``B`` grows with the number of slices so the smallest attainable
  p-value never blocks the correction;
* the score is the standardized statistic ``(MMD² - mean of the permuted MMD²) / their
  standard deviation``: how many null standard deviations a slice of *this size* sits above
  chance, comparable across slice sizes. Significant slices come first, by score.

Slices are single ``key=value`` pairs (combinations are not enumerated: tag
``"site_weather": "north/rain"`` yourself when a combination matters). Slices are compared with
the *source's* reference: a tag whose values look different by nature (one site per camera, say)
belongs in ``source=``, not in ``tags=``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np
import torch
from scipy.stats import false_discovery_control

from virk_exporter.drift.mmd import median_heuristic_sigma, rbf

MIN_SUPPORT = 10  # recent frames a slice needs before it is tested
MAX_SLICES = 32  # slices tested per ranking (the best supported)
MAX_SLICE_FRAMES = 128  # newest frames of a slice that its test uses
MAX_REFERENCE = 256  # reference points used by slice tests (a fixed subsample)
TOP_K = 5  # slices exported as virk_slice_drift_score per source
SLICE_FDR = 0.05  # Benjamini-Hochberg false discovery rate over a ranking's slices


# ---------------------------------------------------------------------- worker side: ranking
@dataclass(frozen=True)
class SliceResult:
    """One ``key=value`` slice's MMD test against the reference, with its BH-adjusted q-value."""

    slice: str  # "key=value"
    support: int  # frames of the slice in the recent buffer
    tested_frames: int  # frames the test used (the newest, at most MAX_SLICE_FRAMES)
    mmd2: float
    score: float  # standardized MMD²: (observed - null mean) / null std
    p_value: float
    q_value: float  # Benjamini-Hochberg adjusted over the ranking's slices
    significant: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SliceRanking:
    """The tested slices of one source, most drifted first, and those left untested."""

    slices: list[SliceResult]  # tested slices, significant first, then by score
    untested: dict[str, int]  # slices below min_support, beyond MAX_SLICES, or holding every frame: their support
    frames: int  # frames in the recent buffer the ranking looked at
    min_support: int
    fdr: float
    n_permutations: int

    @property
    def significant(self) -> list[SliceResult]:
        return [s for s in self.slices if s.significant]

    def to_dict(self, limit: int = 20) -> dict[str, Any]:
        """JSON-ready, for evidence, status and bundles (bounded: ``limit`` slices each list)."""
        untested = sorted(self.untested.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return {
            "method": "permutation MMD² per slice vs the source reference, Benjamini-Hochberg over slices",
            "frames": self.frames,
            "min_support": self.min_support,
            "fdr": self.fdr,
            "n_permutations": self.n_permutations,
            "top": [s.slice for s in self.significant[:TOP_K]],
            "slices": [s.to_dict() for s in self.slices[:limit]],
            "untested": dict(untested),
        }


def n_permutations_for(n_slices: int, fdr: float, base: int = 200, cap: int = 4000) -> int:
    """Enough permutations that the smallest p-value, 1/(B+1), is at most half of BH's first
    threshold fdr/n_slices (so correcting over many slices does not make detection impossible)."""
    need = math.ceil(2.0 * max(1, n_slices) / fdr) - 1
    return int(min(cap, max(base, need)))


def slice_test(reference: np.ndarray, sample: np.ndarray, gamma: float, n_permutations: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Permutation MMD² test of ``sample`` against ``reference``: ``(mmd2, score, p_value)``.

    All permutations at once: with ``T`` the B×N indicator of the permuted "sample" group and
    ``K`` the pooled kernel (zero diagonal), ``tᵀKt`` is a row of ``(T @ K) * T`` summed, and
    the cross and reference-group sums follow from the row sums of ``K``.
    """
    n, m = len(reference), len(sample)
    if n < 2 or m < 2:
        raise ValueError("a slice test needs at least 2 reference and 2 slice points")
    pool = np.concatenate([reference, sample]).astype(np.float64)
    k = rbf(torch.from_numpy(pool), torch.from_numpy(pool), gamma).numpy()  # the drift test's kernel (mmd.py)
    np.fill_diagonal(k, 0.0)
    rows = k.sum(1)
    total = rows.sum()
    big_n = n + m
    keep = rng.random((n_permutations, big_n)).argsort(1)[:, :m]
    t = np.zeros((n_permutations + 1, big_n), np.float32)
    np.put_along_axis(t[:-1], keep, 1.0, axis=1)
    t[-1, n:] = 1.0  # the observed split
    # torch for the one product that matters: NumPy's BLAS would spread these small matrices
    # over threads (and cores the model needs); the worker runs torch single-threaded.
    tt = torch.from_numpy(t)
    s_tt = ((tt @ torch.from_numpy(k.astype(np.float32))) * tt).sum(1, dtype=torch.float64).numpy()
    cross = (tt.double() @ torch.from_numpy(rows)).numpy() - s_tt
    s_rr = total - s_tt - 2.0 * cross
    mmd2 = s_rr / (n * (n - 1)) + s_tt / (m * (m - 1)) - 2.0 * cross / (n * m)
    observed, permuted = float(mmd2[-1]), mmd2[:-1]
    p_value = (1.0 + float((permuted >= observed).sum())) / (1.0 + n_permutations)
    spread = float(permuted.std())
    score = (observed - float(permuted.mean())) / spread if spread > 0 else 0.0
    return observed, score, p_value


def rank_slices(
    reference: np.ndarray,
    embeddings: np.ndarray,
    tags: list[dict[str, str]],
    *,
    sigma: float | None = None,
    min_support: int = MIN_SUPPORT,
    fdr: float = SLICE_FDR,
    max_slices: int = MAX_SLICES,
    n_permutations: int | None = None,
    seed: int = 0,
) -> SliceRanking:
    """Rank the ``key=value`` slices of ``embeddings`` (one tags dict per row) against ``reference``."""
    embeddings = np.asarray(embeddings, np.float64)
    if len(tags) != len(embeddings):
        raise ValueError(f"{len(tags)} tag dicts for {len(embeddings)} embeddings")
    rng = np.random.default_rng(seed)
    reference = np.asarray(reference, np.float64)
    if len(reference) > MAX_REFERENCE:
        reference = reference[np.sort(np.random.default_rng(0).choice(len(reference), MAX_REFERENCE, replace=False))]
    members: dict[str, list[int]] = {}
    for i, frame_tags in enumerate(tags):
        for key, value in frame_tags.items():
            members.setdefault(f"{key}={value}", []).append(i)
    support = Counter({name: len(idx) for name, idx in members.items()})
    # A slice holding every frame (a tag all frames share) is the source itself: it says nothing about where.
    candidates = [
        name for name, count in sorted(support.items(), key=lambda kv: (-kv[1], kv[0])) if max(2, min_support) <= count < len(embeddings)
    ]
    tested, untested = candidates[:max_slices], {n: c for n, c in support.items() if n not in candidates[:max_slices]}
    b = n_permutations or n_permutations_for(len(tested), fdr)
    if not tested or len(reference) < 2:
        return SliceRanking([], dict(untested), len(embeddings), min_support, fdr, b)
    gamma = 1.0 / (2.0 * (sigma if sigma and sigma > 0 else median_heuristic_sigma(torch.from_numpy(reference))) ** 2)
    raw = []
    for name in tested:
        index = members[name][-MAX_SLICE_FRAMES:]
        mmd2, score, p = slice_test(reference, embeddings[index], gamma, b, rng)
        raw.append((name, support[name], len(index), mmd2, score, p))
    q = false_discovery_control(np.array([r[5] for r in raw]), method="bh")
    results = [
        SliceResult(name, count, used, float(mmd2), float(score), float(p), float(qv), bool(qv <= fdr))
        for (name, count, used, mmd2, score, p), qv in zip(raw, q)
    ]
    results.sort(key=lambda r: (not r.significant, -r.score, r.slice))
    return SliceRanking(results, dict(untested), len(embeddings), min_support, fdr, b)


class SliceTracker:
    """A source's recent (embedding, tags) pairs, and its latest ranking (worker side)."""

    def __init__(self, capacity: int = 256, min_support: int = MIN_SUPPORT, fdr: float = SLICE_FDR, rerank_every: int = 64, seed: int = 0) -> None:
        self.capacity = int(capacity)
        self.min_support = int(min_support)
        self.fdr = float(fdr)
        self.rerank_every = int(rerank_every)
        self.seed = int(seed)
        self._emb: np.ndarray | None = None
        self._tags: list[dict[str, str]] = [{}] * self.capacity
        self._head = 0
        self.count = 0
        self._since_rank = 0
        self._rankings = 0
        self.ranking: SliceRanking | None = None

    @property
    def tagged(self) -> bool:
        return any(self._tags[i] for i in self._order())

    def add(self, embeddings: np.ndarray, tags: Iterable[dict[str, str]]) -> None:
        embeddings = np.asarray(embeddings, np.float32)
        if self._emb is None:
            self._emb = np.zeros((self.capacity, embeddings.shape[1]), np.float32)
        for row, frame_tags in zip(embeddings[-self.capacity :], list(tags)[-self.capacity :]):
            self._emb[self._head] = row
            self._tags[self._head] = frame_tags
            self._head = (self._head + 1) % self.capacity
            self.count = min(self.count + 1, self.capacity)
        self._since_rank += len(embeddings)

    def _order(self) -> np.ndarray:
        return (self._head - self.count + np.arange(self.count)) % self.capacity

    def due(self) -> bool:
        """A ranking is due: none yet for this drift, or enough new frames since the last."""
        return self.ranking is None or self._since_rank >= self.rerank_every

    def rank(self, reference: np.ndarray, sigma: float | None = None) -> SliceRanking:
        order = self._order()
        embeddings = self._emb[order] if self._emb is not None else np.zeros((0, reference.shape[1]), np.float32)
        self._rankings += 1
        self.ranking = rank_slices(
            reference,
            embeddings,
            [self._tags[i] for i in order],
            sigma=sigma,
            min_support=self.min_support,
            fdr=self.fdr,
            seed=self.seed * 7919 + self._rankings,
        )
        self._since_rank = 0
        return self.ranking

    def clear(self) -> None:
        """Drift is over: forget the ranking (the buffer keeps filling)."""
        self.ranking = None
