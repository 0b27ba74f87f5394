"""What "normal" is for one source, and how the worker learns it from the live stream.

A learned reference samples the source *sparsely over time*: at most one frame every
``reference_period_s / reference_frames`` seconds, until the period is over and the cap is
reached (or the period is over and enough samples for a drift test are in). Two seconds of
consecutive frames are one moment of a scene; minutes of sparse samples are its normal range.
Live test windows are sampled at the same spacing, so a window of the live stream and a block
of the reference period are alike under no drift — the time-aware calibration
(``drift/null.py``) depends on that.

Only what the tests need is kept while learning: each sample's embedding, image properties and
160x120 gray view (19 KB), and a few thumbnails — never full frames, so learning a 1280x720
source costs about ``reference_frames × 20 KB`` (10 MiB at the default 512).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import cv2
import numpy as np

from virk_exporter.drift.monitor import SourceDriftMonitor
from virk_exporter.fingerprint import CaptureDetector, Fingerprinter

N_THUMBNAILS = 6
THUMBNAIL_WIDTH = 320
# A reference spanning less footage than this is warned about: on the real fixed camera (vtest),
# references of 3-26 s flagged 8-25 % of the clean tests after them (one sampling of it: 0 % at 26-38 s), against p_val 1 %
# (benchmarks/reference_span.py); the clips are too short to measure longer spans, so this is a
# floor, not a promise.
SHORT_SPAN_S = 60.0


@dataclasses.dataclass
class Baseline:
    """A source's reference: embeddings and fingerprinter (both in time order), thumbnails."""

    embeddings: np.ndarray
    fingerprinter: Fingerprinter
    thumbnails: list[np.ndarray]
    origin: str  # "file", "frames", "learned" or "stored"
    learned_at: float = 0.0  # unix seconds the reference was completed (0: not learned here)
    span_s: float | None = None  # seconds of footage from its first sample to its last (None: not known)

    @property
    def properties(self) -> dict[str, np.ndarray]:
        return self.fingerprinter.reference_series

    @property
    def samples(self) -> int:
        return int(len(self.embeddings))


@dataclasses.dataclass(frozen=True)
class Detectors:
    """The two calibrated tests of a source: the embedding (content) and the capture-fault test."""

    embedding: SourceDriftMonitor
    capture: CaptureDetector


def sample_spacing(period_s: float, cap: int) -> float:
    """Seconds between samples, for the reference and for live test windows alike."""
    return float(period_s) / int(cap) if period_s > 0 else 0.0


class Sampler:
    """Takes at most one frame per ``spacing`` seconds of the source's own time stamps."""

    def __init__(self, spacing: float) -> None:
        self.spacing = float(spacing)
        self._last: float | None = None

    def pick(self, n: int, timestamp: float) -> list[int]:
        """Indices of the frames to take from a batch of ``n`` frames stamped ``timestamp``."""
        if self.spacing <= 0.0:
            return list(range(n))
        if self._last is not None and timestamp - self._last < self.spacing:
            return []
        self._last = timestamp
        return [0] if n else []


class Learner:
    """Collects one source's samples until its reference period is over."""

    def __init__(self, period_s: float, cap: int, minimum: int) -> None:
        self.period_s = float(period_s)
        self.cap = int(cap)
        self.minimum = int(minimum)
        self.started: float | None = None
        self.embeddings: list[np.ndarray] = []
        self.properties: list[dict[str, np.ndarray]] = []
        self.smalls: list[np.ndarray] = []  # uint8 (120, 160) per sample
        self.cast_cells: list[np.ndarray] = []  # float32 (N_CAST_CELLS, 3) per sample
        self.sizes: Counter[tuple[int, int]] = Counter()
        self.thumbnails: list[np.ndarray] = []
        self.thumbnail_every = max(1, cap // N_THUMBNAILS)

    @property
    def count(self) -> int:
        return len(self.smalls)

    def add(
        self, frames: np.ndarray, embeddings: np.ndarray, properties: dict[str, np.ndarray], smalls: np.ndarray, cast_cells: np.ndarray, timestamp: float
    ) -> None:
        if self.started is None:
            self.started = timestamp
        for i, frame in enumerate(frames):
            if self.count % self.thumbnail_every == 0 and len(self.thumbnails) < N_THUMBNAILS:
                self.thumbnails.append(thumbnail(frame))
            self.smalls.append(np.clip(smalls[i], 0, 255).astype(np.uint8))
            self.sizes[(int(frame.shape[0]), int(frame.shape[1]))] += 1
        self.cast_cells.extend(np.asarray(cast_cells, np.float32))
        self.embeddings.append(np.asarray(embeddings, np.float32))
        self.properties.append(properties)

    def done(self, now: float) -> bool:
        if self.count >= self.cap:
            return True
        if self.period_s <= 0.0:  # no period: the first `cap` frames, as documented
            return False
        elapsed = 0.0 if self.started is None else now - self.started
        return elapsed >= self.period_s and self.count >= self.minimum

    def finish(self, now: float) -> Baseline:
        names = self.properties[0].keys()
        series = {k: np.concatenate([p[k] for p in self.properties]) for k in names}
        frame_size = self.sizes.most_common(1)[0][0]  # an odd frame size must not define the view
        fingerprinter = Fingerprinter.from_samples(series, np.stack(self.smalls).astype(np.float32), frame_size, cast_cells=np.stack(self.cast_cells))
        span = None if self.started is None else now - self.started
        return Baseline(np.concatenate(self.embeddings), fingerprinter, self.thumbnails, "learned", learned_at=now, span_s=span)


def thumbnail(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if w <= THUMBNAIL_WIDTH:
        return frame.copy()
    return cv2.resize(frame, (THUMBNAIL_WIDTH, max(1, round(h * THUMBNAIL_WIDTH / w))), interpolation=cv2.INTER_AREA)

