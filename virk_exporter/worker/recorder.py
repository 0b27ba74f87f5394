"""Flight recorder: the most recent frames, compressed, in a ring bounded by bytes."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

RecordFormat = Literal["jpeg", "png"]


@dataclass(frozen=True)
class RecordedFrame:
    """One frame as the recorder keeps it."""

    frame_id: int
    timestamp: float  # unix seconds when the decorated call returned
    source: str
    encoded: bytes  # JPEG or PNG of the RGB frame
    format: RecordFormat
    shape: tuple[int, int, int]  # (H, W, 3) of the normalized frame
    trace_id: str | None = None  # 32 hex digits, when the call ran inside a sampled span
    span_id: str | None = None
    output: dict[str, Any] | None = None  # short summary of the model output for this frame
    properties: dict[str, float] = field(default_factory=dict)  # image properties when known
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.encoded)

    def decode(self) -> np.ndarray:
        """The frame as uint8 RGB (H, W, 3)."""
        rgb = decode_image(self.encoded)
        if rgb is None:
            raise ValueError(f"frame {self.frame_id}: stored image does not decode")
        return rgb


def encode_frame(rgb: np.ndarray, fmt: RecordFormat = "jpeg", quality: int = 90) -> bytes:
    """Compress one uint8 RGB frame (OpenCV releases the GIL while it encodes)."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        raise ValueError(f"unknown record format {fmt!r}")
    if not ok:
        raise ValueError("frame could not be encoded")
    return buf.tobytes()


def decode_image(data: bytes | np.ndarray) -> np.ndarray | None:
    """A PNG or JPEG as uint8 RGB (H, W, 3); None when it does not decode."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class FlightRecorder:
    """Keeps the newest frames whose encoded bytes fit within ``max_bytes``.

    Thread-safe; :meth:`snapshot` returns a consistent copy (oldest first).
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = int(max_bytes)
        self._frames: deque[RecordedFrame] = deque()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, frame: RecordedFrame) -> None:
        if frame.nbytes > self.max_bytes:
            raise ValueError(f"frame {frame.frame_id} ({frame.nbytes} bytes) exceeds the recorder bound {self.max_bytes}")
        with self._lock:
            self._frames.append(frame)
            self._bytes += frame.nbytes
            while self._bytes > self.max_bytes:
                self._bytes -= self._frames.popleft().nbytes

    def snapshot(self, since: float | None = None, sources: set[str] | None = None) -> list[RecordedFrame]:
        """A copy of the frames held now, oldest first, optionally filtered."""
        with self._lock:
            frames = list(self._frames)
        if since is not None:
            frames = [f for f in frames if f.timestamp >= since]
        if sources is not None:
            frames = [f for f in frames if f.source in sources]
        return frames

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        return self._bytes
