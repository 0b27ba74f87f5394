"""Per-source streaming drift logic: the piece the exporter's worker calls for every batch.

One :class:`SourceDriftMonitor` per source holds the source's reference embeddings, a sliding
window of the latest embeddings, a batch MMD permutation test run every ``test_every`` new
frames on the latest ``window`` frames, an optional online ERT-calibrated detector fed frame
by frame, and hysteresis: ``detected`` switches on after ``hysteresis`` consecutive drifting
tests and off after as many consecutive clean ones, so one noisy window cannot flap an alert.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from virk_exporter.drift.mmd import MMDDrift
from virk_exporter.drift.online import OnlineMMDDrift


@dataclass(frozen=True)
class DriftUpdate:
    statistic: float  # batch MMD² of the latest window vs the reference
    p_value: float
    threshold: float  # batch MMD² threshold at p_val (drift ⇔ statistic > threshold)
    drift: bool  # this test alone (raw)
    detected: bool  # after hysteresis: what `virk_drift_detected` should show
    frames_seen: int  # frames this monitor has received
    online_statistic: float | None  # online detector, after the latest frame (None: disabled)
    online_threshold: float | None
    online_drift: bool | None  # online statistic crossed its threshold since the previous test


class SourceDriftMonitor:
    def __init__(
        self,
        x_ref: np.ndarray,
        window: int = 64,
        test_every: int | None = None,
        n_permutations: int = 100,
        p_val: float = 0.05,
        hysteresis: int = 2,
        online_ert: float | None = 2000.0,
        online_window: int = 16,
        online_bootstraps: int | None = None,
        device: str | torch.device | None = None,
        seed: int | None = None,
    ) -> None:
        """``x_ref``: the source's reference embeddings (n×d). ``test_every`` defaults to
        ``window`` (non-overlapping windows). ``online_ert`` is the online detector's expected
        number of frames between false alarms; ``None`` disables it, and it is skipped (with
        ``online_*`` = None) when the reference is too small for ``online_window``."""
        if window < 2 or hysteresis < 1:
            raise ValueError("window must be >= 2 and hysteresis >= 1")
        x_ref = np.asarray(x_ref, dtype=np.float32)
        self.window = int(window)
        self.test_every = int(test_every or window)
        self.hysteresis = int(hysteresis)
        self.mmd = MMDDrift(x_ref, n_permutations=n_permutations, p_val=p_val, device=device, seed=seed)
        self.online: OnlineMMDDrift | None = None
        if online_ert is not None and len(x_ref) >= 4 * online_window - 1:
            self.online = OnlineMMDDrift(
                x_ref,
                ert=online_ert,
                window_size=online_window,
                # the conditional quantiles need many bootstraps per expected false alarm
                n_bootstraps=online_bootstraps or int(max(1000, 10 * online_ert)),
                device=device,
                seed=seed,
                sigma=self.mmd.sigma,
            )
        self._buffer = np.zeros((self.window, x_ref.shape[1]), np.float32)  # ring buffer
        self._head = 0
        self.frames_seen = 0
        self._since_test = 0
        self.detected = False
        self._streak = 0  # consecutive tests disagreeing with `detected`
        self._online_crossed = False  # online crossing since the last reported test
        self.last: DriftUpdate | None = None

    def _push(self, emb: np.ndarray) -> None:
        emb = emb[-self.window :]  # older frames of a huge batch would be overwritten anyway
        idx = (self._head + np.arange(len(emb))) % self.window
        self._buffer[idx] = emb
        self._head = int((self._head + len(emb)) % self.window)

    def current_window(self) -> np.ndarray:
        """The latest ``min(frames_seen, window)`` embeddings, oldest first."""
        n = min(self.frames_seen, self.window)
        idx = (self._head - n + np.arange(n)) % self.window
        return self._buffer[idx]

    def update(self, embeddings: np.ndarray) -> DriftUpdate | None:
        """Feed a batch (k×d) of this source's embeddings; returns a result when a test ran.

        At most one batch test runs per call (on the latest window), so a burst cannot queue
        up work; the online detector still sees every frame.
        """
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None]
        if emb.shape[0] == 0:
            return None
        online = self.online.update(emb) if self.online is not None else None
        self._online_crossed |= bool(online is not None and online.drift)
        self._push(emb)
        self.frames_seen += len(emb)
        self._since_test += len(emb)
        if self.frames_seen < self.window or self._since_test < self.test_every:
            return None
        self._since_test = 0
        result = self.mmd.test(self.current_window())
        # Hysteresis: flip only after `hysteresis` consecutive tests that disagree.
        self._streak = self._streak + 1 if result.drift != self.detected else 0
        if self._streak >= self.hysteresis:
            self.detected, self._streak = result.drift, 0
        self.last = DriftUpdate(
            statistic=result.statistic,
            p_value=result.p_value,
            threshold=result.threshold,
            drift=result.drift,
            detected=self.detected,
            frames_seen=self.frames_seen,
            online_statistic=None if online is None else online.statistic,
            online_threshold=None if online is None else online.threshold,
            online_drift=None if online is None else self._online_crossed,
        )
        self._online_crossed = False
        return self.last
