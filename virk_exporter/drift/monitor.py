"""Per-source streaming embedding test: the piece the exporter's worker calls for every batch.

One :class:`SourceDriftMonitor` per source holds the source's reference embeddings (in time
order), a sliding window of the latest embeddings, a batch MMD test run every ``test_every``
new samples on the latest ``window`` samples, an optional online ERT-calibrated detector fed
sample by sample, and hysteresis (:class:`Hysteresis`).

A test's p-value is the larger of two: the permutation p-value (frames exchangeable) and the
time-aware p-value of the same statistic against the reference period replayed block by block
(``null.py``). Footage whose consecutive frames are correlated fails the first and passes the
second; a real change fails both.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from virk_exporter.config import default
from virk_exporter.drift.mmd import MMDDrift, MMDResult, block_null_statistics
from virk_exporter.drift.null import EmpiricalNull
from virk_exporter.drift.online import OnlineMMDDrift

log = logging.getLogger("virk_exporter.drift")


def source_seed(source: str) -> int:
    """The seed of a source's tests (permutations, bandwidth subsample): fixed by its name, so
    a replay of its recorded window draws the worker's permutations."""
    return zlib.crc32(source.encode())


class Hysteresis:
    """``detected`` switches on after ``count`` consecutive drifting tests and off after as
    many consecutive clean ones, so one noisy window cannot flap an alert.

    ``recent``: the test did not drift, but its newest samples alone did (a fault that began
    inside the window; ``fingerprint.detector``). Such a test counts among the consecutive ones,
    never as the one that switches the alarm on, and does not count as clean."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("hysteresis must be >= 1")
        self.count = int(count)
        self.detected = False
        self._streak = 0  # consecutive tests disagreeing with `detected`

    def update(self, drift: bool, recent: bool = False) -> bool:
        leaning = drift or recent
        self._streak = self._streak + 1 if leaning != self.detected else 0
        if self._streak >= self.count and (drift or self.detected):
            self.detected, self._streak = leaning, 0
        return self.detected


@dataclass(frozen=True)
class DriftUpdate:
    statistic: float  # batch MMD² of the latest window vs the reference
    p_value: float  # max(permutation p, time-aware p)
    threshold: float  # drift ⇔ statistic > threshold
    drift: bool  # this test alone (raw)
    detected: bool  # after hysteresis
    frames_seen: int  # samples this monitor has received
    online_statistic: float | None  # online detector, after the latest sample (None: disabled)
    online_threshold: float | None
    online_drift: bool | None  # online statistic crossed its threshold since the previous test

    def to_dict(self) -> dict[str, float | bool | int | None]:
        return {
            "statistic": self.statistic,
            "p_value": self.p_value,
            "threshold": self.threshold,
            "drift": self.drift,
            "detected": self.detected,
        }


class SourceDriftMonitor:
    def __init__(
        self,
        x_ref: np.ndarray,
        window: int = 32,
        test_every: int | None = None,
        n_permutations: int = default("n_permutations"),
        p_val: float = default("p_val"),
        hysteresis: int = 2,
        online_ert: float | None = 2000.0,
        online_window: int = 16,
        online_bootstraps: int | None = None,
        device: str | torch.device | None = None,
        seed: int | None = None,
        time_aware: bool = True,
    ) -> None:
        """``x_ref``: the source's reference embeddings (n×d), in time order. ``test_every``
        defaults to ``window``. ``time_aware`` calibrates against the reference period replayed
        in blocks (skipped, with a log line, when the reference is too short for one block).
        ``online_ert`` is the online detector's expected number of samples between false
        alarms; ``None`` disables it (also skipped when the reference is too small)."""
        if window < 2:
            raise ValueError("window must be >= 2")
        x_ref = np.asarray(x_ref, dtype=np.float32)
        self.window = int(window)
        self.test_every = int(test_every or window)
        self.p_val = float(p_val)
        self.hysteresis = Hysteresis(hysteresis)
        self.mmd = MMDDrift(x_ref, n_permutations=n_permutations, p_val=p_val, device=device, seed=seed)
        self.null: EmpiricalNull | None = None
        if time_aware:
            values = block_null_statistics(self.mmd.x_ref, self.mmd.sigma, self.window, self.window)
            if values.size:
                self.null = EmpiricalNull(values, min_scale=1e-3, effective_size=len(x_ref) / self.window)
            else:
                log.info("reference of %d samples is too short for a time-aware null (window %d): permutation test only", len(x_ref), self.window)
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
        self._online_crossed = False  # online crossing since the last reported test
        self.last: DriftUpdate | None = None

    @property
    def detected(self) -> bool:
        return self.hysteresis.detected

    def _push(self, emb: np.ndarray) -> None:
        emb = emb[-self.window :]  # older samples of a huge batch would be overwritten anyway
        idx = (self._head + np.arange(len(emb))) % self.window
        self._buffer[idx] = emb
        self._head = int((self._head + len(emb)) % self.window)

    def current_window(self) -> np.ndarray:
        """The latest ``min(frames_seen, window)`` embeddings, oldest first."""
        n = min(self.frames_seen, self.window)
        idx = (self._head - n + np.arange(n)) % self.window
        return self._buffer[idx]

    def test(self, window: np.ndarray) -> MMDResult:
        """One test of ``window`` (m×d) as :meth:`update` runs it: the permutation p-value, or
        the time-aware one when larger (replay tests a bundle's recorded window with this)."""
        result = self.mmd.test(window)
        if self.null is None:
            return result
        p_value = max(result.p_value, self.null.p_value(result.statistic))
        threshold = max(result.threshold, self.null.threshold(self.p_val))
        return dataclasses.replace(result, p_value=p_value, threshold=threshold, drift=p_value <= self.p_val)

    def update(self, embeddings: np.ndarray) -> DriftUpdate | None:
        """Feed a batch (k×d) of this source's embeddings; returns a result when a test ran.

        At most one batch test runs per call (on the latest window), so a burst cannot queue
        up work; the online detector still sees every sample.
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
        result = self.test(self.current_window())
        self.last = DriftUpdate(
            statistic=result.statistic,
            p_value=result.p_value,
            threshold=result.threshold,
            drift=result.drift,
            detected=self.hysteresis.update(result.drift),
            frames_seen=self.frames_seen,
            online_statistic=None if online is None else online.statistic,
            online_threshold=None if online is None else online.threshold,
            online_drift=None if online is None else self._online_crossed,
        )
        self._online_crossed = False
        return self.last
