"""Sequential (online) MMD drift detection calibrated to an expected run time (ERT).

The scheme follows alibi-detect's ``MMDDriftOnline`` (Cobb et al. 2022, "Sequential
multivariate change detection with calibrated and memoryless false detection rates"):

* The reference ``X`` (N points) is split into a fixed sub-reference ``R`` of
  ``N - (2W - 1)`` points and held-back points; the sliding test window (W points) starts
  filled with W held-back reference points, so the statistic is defined from the first update.
* Each update pushes one point into the window and computes the unbiased MMD²(R, window).
* Thresholds ``h_0 … h_{W-1}`` come from a bootstrap under no change: in each of
  ``n_bootstraps`` random splits of ``X`` the 2W-1 held-back points play the stream, and
  ``h_t`` is the ``1 - 1/ERT`` quantile of the statistic at step t *among the splits that have
  not crossed earlier* (conditional quantiles make the false-alarm hazard ≈ 1/ERT per step,
  so the run length to a false alarm is ≈ geometric with mean ERT). After W updates the window
  holds only stream points and ``h_{W-1}`` is used from then on.

Costs: calibration is one N×N kernel matrix and vectorised window sums over all bootstraps
(no Python loop over bootstraps; a loop over the W window positions). An update costs one
kernel row against R and one against the window, ``O((|R| + W)·d)``; the window's own kernel
sums are kept incrementally, so nothing grows with time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from virk_exporter.drift._torch import as_tensor, pick_device, seed_or_random
from virk_exporter.drift.mmd import median_heuristic_sigma, rbf

STATE_VERSION = 1
BOOTSTRAP_CHUNK = 2048


@dataclass(frozen=True)
class OnlineResult:
    statistic: float  # MMD² of R vs the window after the last point of this update
    threshold: float  # the threshold that statistic was compared with
    drift: bool  # any point of this update crossed its threshold
    time: int  # points seen since start (or reset)
    detection_time: int | None  # time of the first crossing within this update


class OnlineMMDDrift:
    def __init__(
        self,
        x_ref: np.ndarray | torch.Tensor,
        ert: float,
        window_size: int,
        n_bootstraps: int = 1000,
        device: str | torch.device | None = None,
        seed: int | None = None,
        sigma: float | None = None,
        max_reference: int = 2000,
    ) -> None:
        if window_size < 2:
            raise ValueError("window_size must be >= 2")
        if ert <= 1:
            raise ValueError("ert must be > 1 (it is a mean number of updates)")
        self.device = pick_device(device)
        self.seed = seed_or_random(seed)
        gen = torch.Generator().manual_seed(self.seed)
        x = as_tensor(x_ref, torch.device("cpu"), torch.float64)
        if x.shape[0] > max_reference:  # calibration holds an N×N matrix: bound N
            x = x[torch.randperm(x.shape[0], generator=gen)[:max_reference]]
        n, w = x.shape[0], int(window_size)
        if n - (2 * w - 1) < 2 * w:
            raise ValueError(f"reference of {n} points is too small for window_size={w} (need >= {4 * w - 1})")
        self.window_size = w
        self.ert = float(ert)
        self.n_bootstraps = int(n_bootstraps)
        self.sigma = float(sigma) if sigma is not None else median_heuristic_sigma(x, seed=self.seed)
        self.gamma = 1.0 / (2.0 * self.sigma**2)
        self.x_ref = x.to(self.device)
        # float64 throughout: the statistic is a difference of near-equal means.
        k = rbf(self.x_ref, self.x_ref, self.gamma)
        self.thresholds = self._calibrate(k, gen)
        self._init_split(k, gen)
        self.reset()

    # -- calibration -------------------------------------------------------------------------

    def _calibrate(self, k: torch.Tensor, gen: torch.Generator) -> np.ndarray:
        n, w, b = k.shape[0], self.window_size, self.n_bootstraps
        length = 2 * w - 1
        n_r = n - length
        rowsum = k.sum(1)
        total = rowsum.sum()
        lo, hi = torch.arange(w, device=self.device), torch.arange(w, device=self.device) + w
        stats = np.empty((b, w))
        # Bootstraps in chunks (vectorised within a chunk) so memory stays ~chunk×L² whatever
        # n_bootstraps is; the random draws are identical to one unchunked draw.
        for start in range(0, b, BOOTSTRAP_CHUNK):
            rows = min(BOOTSTRAP_CHUNK, b - start)
            # Only the 2W-1 held-back points of each split are needed (R_b is "everything
            # else"); the smallest random keys give a uniformly random ordered subset.
            held = torch.rand(rows, n, generator=gen).topk(length, dim=1, largest=False).indices.to(self.device)
            g = k[held[:, :, None], held[:, None, :]]  # rows×L×L kernel among held-back points
            # Σ over R_b (diagonal excluded) by inclusion–exclusion from the full-matrix sums.
            held_rows = rowsum[held]  # rows×L: Σ_j k(h, x_j) over all N
            s_rr = total - 2.0 * held_rows.sum(1) + g.sum((1, 2)) - n_r
            # Σ_{i∈R_b} k(x_i, h) for each held-back point h.
            to_r = held_rows - g.sum(1)
            # Sliding windows of W consecutive held-back points: prefix sums in 1-D and 2-D.
            c1 = torch.nn.functional.pad(to_r.cumsum(1), (1, 0))
            s_rw = c1[:, w:] - c1[:, :-w]  # rows×W
            c2 = torch.nn.functional.pad(g.cumsum(1).cumsum(2), (1, 0, 1, 0))
            s_ww = c2[:, hi, hi] - c2[:, lo, hi] - c2[:, hi, lo] + c2[:, lo, lo] - w
            chunk = (s_rr / (n_r * (n_r - 1)))[:, None] + s_ww / (w * (w - 1)) - 2.0 * s_rw / (n_r * w)
            stats[start : start + rows] = chunk.cpu().numpy()
        q = 1.0 - 1.0 / self.ert
        alive = np.ones(b, dtype=bool)
        thresholds = np.empty(w)
        for t in range(w):  # conditional quantile among the bootstraps still running
            if alive.sum() < 10:
                raise ValueError(
                    f"n_bootstraps={b} too small for ert={self.ert:g}, window_size={w}: raise n_bootstraps"
                )
            thresholds[t] = np.quantile(stats[alive, t], q)
            alive &= stats[:, t] < thresholds[t]
        return thresholds

    def _init_split(self, k: torch.Tensor, gen: torch.Generator) -> None:
        n, w = k.shape[0], self.window_size
        n_r = n - (2 * w - 1)
        # Redraw (a few times) a split whose initial window would already alarm at t = 0,
        # as alibi-detect does; otherwise the detector would start in a false alarm.
        for _ in range(100):
            perm = torch.randperm(n, generator=gen).to(self.device)
            ref_idx, init_idx = perm[:n_r], perm[n - w :]
            k_rr = k[ref_idx][:, ref_idx]
            s_rr = float(k_rr.sum() - n_r)
            k_ri = k[ref_idx][:, init_idx]
            k_ii = k[init_idx][:, init_idx]
            stat = s_rr / (n_r * (n_r - 1)) + float(k_ii.sum() - w) / (w * (w - 1)) - 2.0 * float(k_ri.sum()) / (n_r * w)
            if stat < self.thresholds[0]:
                break
        self._ref = self.x_ref[ref_idx].contiguous()
        self._rr_term = s_rr / (n_r * (n_r - 1))
        self._init_window = self.x_ref[init_idx].clone()
        self._init_col = k_ri.sum(0).clone()
        self._init_kww = k_ii.clone()

    # -- streaming ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to t = 0 with the initial (reference) window, e.g. after handling a drift."""
        # The window state is tiny (W×d, W×W): plain numpy on the CPU, where per-point steps
        # cost microseconds; only kernel rows against R (|R|×d) run batched on the device.
        self.t = 0
        self._window = self._init_window.cpu().numpy().copy()  # ring buffer W×d
        self._col = self._init_col.cpu().numpy().copy()  # Σ_{r∈R} k(r, window_j)
        self._kww = self._init_kww.cpu().numpy().copy()  # kernel among window points
        self._head = 0  # slot the next point overwrites (the oldest)

    def threshold(self, t: int) -> float:
        # Bootstrap step t is the window after t updates; from W - 1 on it is stationary.
        return float(self.thresholds[min(t, self.window_size - 1)])

    def _statistic(self) -> float:
        n_r, w = self._ref.shape[0], self.window_size
        s_ww = float(self._kww.sum()) - w
        return self._rr_term + s_ww / (w * (w - 1)) - 2.0 * float(self._col.sum()) / (n_r * w)

    @torch.no_grad()
    def update(self, x: np.ndarray | torch.Tensor) -> OnlineResult:
        """Push one point (d,) or several (k, d), in order; report the last and any crossing."""
        pts = as_tensor(x, self.device, torch.float64)
        if pts.ndim == 1:
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != self._ref.shape[1]:
            raise ValueError(f"expected points of dimension {self._ref.shape[1]}, got shape {tuple(pts.shape)}")
        first: int | None = None
        stat, thr = float("nan"), float("nan")
        w = self.window_size
        for start in range(0, pts.shape[0], 256):  # bounds the (W+k)×k block below
            chunk = pts[start : start + 256]
            k = chunk.shape[0]
            cols = rbf(self._ref, chunk, self.gamma).sum(0).cpu().numpy()
            # Kernel of every new point against the current window and the other new points,
            # batched; the sequential loop below only gathers from it.
            both = torch.cat([torch.from_numpy(self._window).to(self.device), chunk])
            kc = rbf(both, chunk, self.gamma).cpu().numpy()  # (W+k)×k
            new_np = chunk.cpu().numpy()
            source = np.arange(w)  # which row of `both` each window slot holds
            for i in range(k):  # sequential by definition: each point is one step
                h = self._head
                source[h] = w + i
                row = kc[source, i]
                self._window[h] = new_np[i]
                self._col[h] = cols[i]
                self._kww[h, :] = row
                self._kww[:, h] = row
                self._head = (h + 1) % w
                self.t += 1
                stat, thr = self._statistic(), self.threshold(self.t)
                if first is None and stat > thr:
                    first = self.t
        return OnlineResult(statistic=stat, threshold=thr, drift=first is not None, time=self.t, detection_time=first)

    # -- persistence -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to resume; restore into a detector built on the same ``x_ref``."""
        return {
            "version": np.array(STATE_VERSION),
            "sigma": np.array(self.sigma),
            "ert": np.array(self.ert),
            "window_size": np.array(self.window_size),
            "thresholds": self.thresholds.copy(),
            "ref": self._ref.cpu().numpy(),
            "rr_term": np.array(self._rr_term),
            "init_window": self._init_window.cpu().numpy(),
            "init_col": self._init_col.cpu().numpy(),
            "init_kww": self._init_kww.cpu().numpy(),
            "t": np.array(self.t),
            "window": self._window.copy(),
            "col": self._col.copy(),
            "kww": self._kww.copy(),
            "head": np.array(self._head),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if int(state["version"]) != STATE_VERSION:
            raise ValueError(f"online MMD state version {int(state['version'])} is not {STATE_VERSION}")
        if int(state["window_size"]) != self.window_size or state["ref"].shape[1] != self.x_ref.shape[1]:
            raise ValueError("state was saved by a detector with another window size or dimension")
        self.sigma = float(state["sigma"])
        self.gamma = 1.0 / (2.0 * self.sigma**2)
        self.ert = float(state["ert"])
        self.thresholds = np.asarray(state["thresholds"], dtype=np.float64).copy()
        t = lambda k: torch.as_tensor(np.asarray(state[k]), dtype=torch.float64, device=self.device).clone()  # noqa: E731
        self._ref, self._rr_term = t("ref"), float(state["rr_term"])
        self._init_window, self._init_col, self._init_kww = t("init_window"), t("init_col"), t("init_kww")
        self._window, self._col, self._kww = (np.array(state[k], dtype=np.float64) for k in ("window", "col", "kww"))
        self.t, self._head = int(state["t"]), int(state["head"])
