"""Two-sample kernel MMD test with every permutation evaluated as one batch of tensor ops.

Statistic: the unbiased MMD² (Gretton et al. 2012, eq. 3) with a Gaussian RBF kernel
``k(x, y) = exp(-|x - y|² / (2 σ²))`` whose bandwidth comes from the reference by the median
heuristic ``σ² = median(|x_i - x_j|²) / 2`` (alibi-detect's convention, so decisions agree).

How the permutations are batched. Pool ``Z = [X_ref (n); Y (m)]`` with kernel matrix ``K``. A
permutation is an indicator row ``a ∈ {0,1}^(n+m)`` with n ones (the permuted "reference"
group) and ``u = 1 - a``. Its statistic needs three quadratic forms, ``aᵀKa``, ``uᵀKu`` and
``aᵀKu`` (diagonal excluded), which for all B permutations at once are matrix products
``A @ K`` (B×N by N×N) followed by row-wise dot products. ``K`` splits into blocks
``[[Kxx, Kxy], [Kyx, Kyy]]``; the permutations are drawn once per test-window size and the
``Kxx`` contributions (the expensive n×n part) are cached, so a test costs
``O(n·m·(d + B) + m²·(d + B))`` instead of ``O((n+m)²·(d + B))``. Reusing one set of random
permutations across tests keeps every single test exact (the permutations are drawn
independently of the data); only the tests' errors become correlated.

Memory: kernel blocks are produced in row chunks of at most ``chunk_elements`` entries and
folded into ``B×m`` accumulators immediately, so n = 20,000, d = 512 never materialises an
n×n matrix.

Numerics: kernel values and the large matmuls are float32 (speed); the per-permutation sums,
which subtract numbers of similar size, are accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from virk_exporter.config import default
from virk_exporter.drift._torch import as_tensor, pick_device, seed_or_random
from virk_exporter.drift.null import block_starts, leave_out_bounds

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # 16 M float32 = 64 MiB per kernel chunk


@dataclass(frozen=True)
class MMDResult:
    statistic: float  # unbiased MMD² of the reference vs the tested sample
    p_value: float  # (1 + #{permuted ≥ observed}) / (1 + B): never exactly 0
    threshold: float  # drift ⇔ statistic > threshold ⇔ p_value ≤ p_val
    drift: bool
    n_permutations: int


def median_heuristic_sigma(x: torch.Tensor, max_points: int = 1000, seed: int = 0) -> float:
    """σ with ``σ² = median(pairwise squared distance) / 2`` on up to ``max_points`` points."""
    n = x.shape[0]
    if n > max_points:  # the median of 500k pairs is already very stable
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(n, generator=g)[:max_points].to(x.device)]
    d2 = squared_distances(x, x)
    iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    med = float(d2[iu[0], iu[1]].double().median()) if x.shape[0] > 1 else 0.0
    if not med > 0.0:  # all reference points identical: any positive bandwidth is as good
        med = 1.0
    return (med / 2.0) ** 0.5


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xx = (x * x).sum(1, keepdim=True)
    yy = (y * y).sum(1)
    # |x|² + |y|² - 2 x·y in one fused BLAS call; clamp the tiny negatives rounding makes.
    return torch.addmm(xx + yy, x, y.T, alpha=-2.0).clamp_min_(0.0)


def rbf(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """``exp(-gamma · |x - y|²)``, computed in place on the distance buffer."""
    return squared_distances(x, y).mul_(-gamma).exp_()


def _row_chunks(n_rows: int, n_cols: int, chunk_elements: int) -> range:
    step = max(1, chunk_elements // max(1, n_cols))
    return range(0, n_rows, step)


def block_products(
    p: torch.Tensor,
    q: torch.Tensor,
    a_p: torch.Tensor,
    gamma: float,
    chunk_elements: int,
    same: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_P @ K(P, Q), 1ᵀ K(P, Q))`` without holding ``K(P, Q)``; diagonal zeroed if ``same``.

    ``a_p`` is the B×|P| permutation-indicator block. Returns float32 B×|Q| and float64 |Q|.
    """
    out = torch.zeros(a_p.shape[0], q.shape[0], dtype=p.dtype, device=p.device)
    colsum = torch.zeros(q.shape[0], dtype=torch.float64, device=p.device)
    for start in _row_chunks(p.shape[0], q.shape[0], chunk_elements):
        stop = min(start + max(1, chunk_elements // max(1, q.shape[0])), p.shape[0])
        k = rbf(p[start:stop], q, gamma)
        if same:  # unbiased MMD² excludes k(x_i, x_i)
            idx = torch.arange(start, stop, device=p.device)
            k[idx - start, idx] = 0.0
        out.addmm_(a_p[:, start:stop], k)
        colsum += k.sum(0, dtype=torch.float64)
    return out, colsum


@dataclass
class _PermutationSet:
    """Indicator rows for B permutations of n + m points, and the cached reference-block sums."""

    a_ref: torch.Tensor  # B×n float32, 1 where a reference point stays in the "reference" group
    a_test: torch.Tensor  # B×m float32
    s_aa: torch.Tensor  # B float64: aᵀ Kxx a  (cached)
    s_uu: torch.Tensor  # B float64: uᵀ Kxx u
    s_au: torch.Tensor  # B float64: aᵀ Kxx u


class MMDDrift:
    """Batch two-sample MMD permutation test against a fixed reference.

    ``MMDDrift(x_ref).test(x)``: is ``x`` (m×d) drawn from the reference distribution?
    """

    def __init__(
        self,
        x_ref: np.ndarray | torch.Tensor,
        n_permutations: int = default("n_permutations"),
        p_val: float = default("p_val"),
        device: str | torch.device | None = None,
        seed: int | None = None,
        sigma: float | None = None,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        if n_permutations < 1:
            raise ValueError("n_permutations must be >= 1")
        if not 0.0 < p_val < 1.0:
            raise ValueError("p_val must be in (0, 1)")
        self.device = pick_device(device)
        self.x_ref = as_tensor(x_ref, self.device)
        if self.x_ref.ndim != 2 or self.x_ref.shape[0] < 2:
            raise ValueError(f"x_ref must be n×d with n >= 2, got shape {tuple(self.x_ref.shape)}")
        self.n_permutations = int(n_permutations)
        self.p_val = float(p_val)
        self.seed = seed_or_random(seed)
        self.sigma = float(sigma) if sigma is not None else median_heuristic_sigma(self.x_ref, seed=self.seed)
        self.gamma = 1.0 / (2.0 * self.sigma**2)
        self.chunk_elements = int(chunk_elements)
        self._perms: dict[int, _PermutationSet] = {}
        # Observed-statistic reference term Σ_{i≠j} k(x_i, x_j), shared by every test; filled
        # by the first reference-block pass in _permutations (no separate n×n pass).
        self._kxx_sum: float | None = None

    @property
    def n_ref(self) -> int:
        return int(self.x_ref.shape[0])

    def _permutations(self, m: int) -> _PermutationSet:
        cached = self._perms.get(m)
        if cached is not None:
            return cached
        n, b = self.n_ref, self.n_permutations
        # Drawn on the CPU from a seeded generator so the same seed gives the same permutations
        # on every device; one generator stream per window size m.
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + m) % (1 << 63))
        keep = torch.rand(b, n + m, generator=g).argsort(dim=1)[:, :n]
        a = torch.zeros(b, n + m).scatter_(1, keep, 1.0).to(self.device, self.x_ref.dtype)
        a_ref, a_test = a[:, :n].contiguous(), a[:, n:].contiguous()
        m_a, colsum = block_products(self.x_ref, self.x_ref, a_ref, self.gamma, self.chunk_elements, same=True)
        self._kxx_sum = float(colsum.sum())
        s_aa, s_uu, s_au = _fold(m_a, colsum, a_ref, weight=1.0, diagonal=True)
        perms = _PermutationSet(a_ref, a_test, s_aa, s_uu, s_au)
        if len(self._perms) >= 4:  # window sizes rarely vary; bound the cache anyway
            self._perms.pop(next(iter(self._perms)))
        self._perms[m] = perms
        return perms

    def permutations(self, m: int) -> np.ndarray:
        """The B×(n+m) boolean indicators (True: in the permuted reference group) used for
        test windows of ``m`` points; fixed per detector and ``m``. Calling it ahead of the
        first test does the reference-block work (O(n²·(d + B))) up front."""
        perms = self._permutations(m)
        return torch.cat([perms.a_ref, perms.a_test], 1).bool().cpu().numpy()

    def test(self, x: np.ndarray | torch.Tensor) -> MMDResult:
        observed, permuted = self.statistics(x)
        return _decide(observed, permuted, self.p_val)

    @torch.no_grad()
    def statistics(self, x: np.ndarray | torch.Tensor) -> tuple[float, np.ndarray]:
        """The observed MMD² and the B permuted ones (in :meth:`permutations` order)."""
        y = as_tensor(x, self.device)
        if y.ndim != 2 or y.shape[1] != self.x_ref.shape[1]:
            raise ValueError(f"x must be m×{self.x_ref.shape[1]}, got shape {tuple(y.shape)}")
        n, m = self.n_ref, int(y.shape[0])
        if m < 2:
            raise ValueError("the unbiased MMD² needs at least 2 test points")
        perms = self._permutations(m)
        # Cross block: A_ref @ Kxy (B×m) and its column sums; then the test block Kyy.
        m_xy, col_xy = block_products(self.x_ref, y, perms.a_ref, self.gamma, self.chunk_elements)
        m_yy, col_yy = block_products(y, y, perms.a_test, self.gamma, self.chunk_elements, same=True)
        xy = _fold(m_xy, col_xy, perms.a_test, weight=2.0, diagonal=False)
        yy = _fold(m_yy, col_yy, perms.a_test, weight=1.0, diagonal=True)
        s_aa = perms.s_aa + xy[0] + yy[0]
        s_uu = perms.s_uu + xy[1] + yy[1]
        s_au = perms.s_au + xy[2] + yy[2]
        permuted = s_aa / (n * (n - 1)) + s_uu / (m * (m - 1)) - 2.0 * s_au / (n * m)
        assert self._kxx_sum is not None  # set by _permutations
        observed = self._kxx_sum / (n * (n - 1)) + float(col_yy.sum()) / (m * (m - 1)) - 2.0 * float(col_xy.sum()) / (n * m)
        return observed, permuted.cpu().numpy()


def _fold(
    m_a: torch.Tensor, colsum: torch.Tensor, a_q: torch.Tensor, weight: float, diagonal: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn ``M = A_P @ K(P,Q)`` into this block's share of (aᵀKa, uᵀKu, aᵀKu) per permutation.

    With ``U_P = 1 - A_P``, ``U_P @ K = colsum - M``. An off-diagonal block stands for itself
    and its transpose: ``weight=2`` for the symmetric terms, and aᵀKu picks up both
    ``a_PᵀK u_Q`` and ``u_PᵀK a_Q``.
    """
    m64 = m_a.double()
    u64 = colsum.unsqueeze(0) - m64
    a = a_q.double()
    u = 1.0 - a
    s_aa = weight * (m64 * a).sum(1)
    s_uu = weight * (u64 * u).sum(1)
    s_au = (m64 * u).sum(1) if diagonal else (m64 * u).sum(1) + (u64 * a).sum(1)
    return s_aa, s_uu, s_au


def _decide(observed: float, permuted: np.ndarray, p_val: float) -> MMDResult:
    b = permuted.shape[0]
    k = int((permuted >= observed).sum())
    p_value = (1 + k) / (1 + b)
    # Largest k that still gives p ≤ p_val; the threshold is the (k_max+1)-th largest permuted
    # statistic, so "statistic > threshold" is exactly "p_value ≤ p_val".
    k_max = int(np.floor(p_val * (1 + b) - 1 + 1e-9))
    threshold = float(np.sort(permuted)[::-1][k_max]) if 0 <= k_max < b else float("inf")
    return MMDResult(
        statistic=float(observed),
        p_value=float(p_value),
        threshold=threshold,
        drift=bool(p_value <= p_val),
        n_permutations=b,
    )


@torch.no_grad()
def block_null_statistics(x_ref: torch.Tensor, sigma: float, window: int, margin: int) -> np.ndarray:
    """Unbiased MMD² of each reference block (``window`` consecutive samples, ``null.py``)
    against the reference without that block and ``margin`` samples each side (``null.py``).

    One n×n kernel and its 2-D prefix sums give every block's three sums by inclusion-exclusion,
    so all K statistics cost one kernel pass.
    """
    n = int(x_ref.shape[0])
    starts = block_starts(n, window)
    left, right = leave_out_bounds(starts, window, margin, n)
    keep = left + (n - right)  # reference samples that remain for each block
    usable = keep >= 2
    starts, left, right, keep = starts[usable], left[usable], right[usable], keep[usable]
    if starts.size == 0:
        return np.empty(0)
    k = rbf(x_ref, x_ref, 1.0 / (2.0 * sigma**2)).double().cpu().numpy()
    p = np.zeros((n + 1, n + 1))
    p[1:, 1:] = k.cumsum(0).cumsum(1)

    def rect(r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
        return p[r1, c1] - p[r0, c1] - p[r1, c0] + p[r0, c0]

    zero, end, stop = np.zeros_like(starts), np.full_like(starts, n), starts + window
    s_xx = rect(zero, left, zero, left) + rect(right, end, right, end) + 2.0 * rect(zero, left, right, end) - keep
    s_yy = rect(starts, stop, starts, stop) - window  # k(x, x) = 1 on the diagonal
    s_xy = rect(zero, left, starts, stop) + rect(right, end, starts, stop)
    m = float(window)
    return s_xx / (keep * (keep - 1.0)) + s_yy / (m * (m - 1.0)) - 2.0 * s_xy / (keep * m)
