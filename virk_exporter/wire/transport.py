"""Hand-off of frames from the caller's process to the monitoring worker process.

Pixels travel through a shared-memory arena (an mmap of a memfd, passed to the worker as a
file descriptor); only a small message with offsets goes over a socket. The caller copies a
frame into the arena (a memcpy that releases nothing and holds the GIL for microseconds) and
never waits: when the arena or the message queue is full the batch is dropped and counted.

The arena is a byte ring written in order by the caller's process and released in order by
the worker, which publishes how far it has consumed in the arena's header.
"""

from __future__ import annotations

import mmap
import os
import socket
import tempfile
import threading
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

SESSION_BITS = 40  # frame id = session number << 40 | the count of its process
_HEADER = 64  # uint64 counters the worker writes: bytes consumed, batches consumed, ready flag
_ALIGN = 64


def _anonymous_fd(size: int) -> int:
    """A file descriptor for ``size`` bytes of shared memory that vanishes with its last user."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("virk-arena", 0)
    else:  # macOS: an unlinked temporary file serves the same purpose
        handle = tempfile.TemporaryFile()
        fd = os.dup(handle.fileno())
        handle.close()
    os.ftruncate(fd, size)
    return fd


class Arena:
    """Shared bytes: a header with the worker's progress and a data ring."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._map = mmap.mmap(fd, size)
        self.counters = np.frombuffer(self._map, dtype=np.uint64, count=3)
        self.data = np.frombuffer(self._map, dtype=np.uint8, offset=_HEADER)

    @classmethod
    def create(cls, data_bytes: int) -> "Arena":
        arena = cls(_anonymous_fd(_HEADER + data_bytes), _HEADER + data_bytes)
        arena.data[:] = 0  # touch every page now, not on the first predict calls
        return arena

    @property
    def capacity(self) -> int:
        return self.size - _HEADER

    @property
    def ready(self) -> bool:
        return bool(self.counters[2])

    def mark_ready(self) -> None:
        self.counters[2] = 1

    def close(self) -> None:
        del self.counters, self.data
        self._map.close()
        os.close(self.fd)


@dataclass(frozen=True)
class Slot:
    """Where one array lies in the arena."""

    offset: int  # position in the data ring
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class BatchInfo:
    """What the caller's process says about one decorated call's sampled frames.

    Built on the hand-off thread (``exporter.py``), read by the worker (``monitor.py``): every
    field is named here, so a typo fails in the process that makes it.
    """

    frame_ids: list[int]
    sources: list[str]
    timestamp: float  # wall-clock time of the call
    color: str  # "rgb" or "bgr": the channel order of the frames
    channels_first: bool  # the frames are [N, C, H, W]
    trace_id: str | None = None  # the call's span, when tracing is on
    span_id: str | None = None
    output: dict[str, Any] | None = None  # a short summary of predict's result (type, shape)
    tags: list[dict[str, str]] | None = None  # one dict per frame (monitor(tags=...))
    function: str | None = None  # the decorated function as module:qualname (bundle replay --predict)


@dataclass(frozen=True)
class Arrays:
    """A batch's arrays on the caller's side: pixels, predict's score rows, monitor(features=...) rows."""

    frames: np.ndarray
    outputs: np.ndarray | None = None
    features: np.ndarray | None = None


@dataclass(frozen=True)
class BatchMessage:
    """What goes over the socket for one batch: where its arrays lie in the arena, and its info."""

    frames: Slot
    outputs: Slot | None
    features: Slot | None
    end: int  # monotonic arena position after this batch: the worker releases up to here
    info: BatchInfo


def split_batch(arrays: Arrays, info: BatchInfo, max_bytes: int) -> list[tuple[Arrays, BatchInfo]]:
    """A batch as pieces of at most ``max_bytes`` each (consecutive frames; one frame per piece at
    least), so that large frames in large batches (8 x 1280x720) are not dropped whole."""
    n = len(info.frame_ids)
    per_frame = sum(_aligned(a.nbytes // n) for a in (arrays.frames, arrays.outputs, arrays.features) if a is not None)
    size = max(1, max_bytes // max(per_frame, 1) - 1)  # - 1: room for the pieces' alignment padding
    if n <= size:
        return [(arrays, info)]

    def rows(array: np.ndarray | None, at: slice) -> np.ndarray | None:
        return None if array is None else array[at]

    pieces = []
    for start in range(0, n, size):
        at = slice(start, start + size)
        piece = replace(info, frame_ids=info.frame_ids[at], sources=info.sources[at], tags=info.tags[at] if info.tags is not None else None)
        pieces.append((Arrays(arrays.frames[at], rows(arrays.outputs, at), rows(arrays.features, at)), piece))
    return pieces


def socket_pair() -> tuple[Connection, socket.socket]:
    """A connected pair: our end as a Connection, the worker's end as an inheritable socket."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 2**20)
    theirs.set_inheritable(True)
    return Connection(ours.detach()), theirs


class FrameProducer:
    """Caller side: writes batches into the arena and announces them; never blocks."""

    def __init__(self, arena: Arena, connection: Connection, max_batches: int) -> None:
        self.arena = arena
        self.connection = connection
        self.max_batches = max_batches
        self._written = 0  # monotonic bytes, wrap-around padding included
        self._sent = 0
        self._lock = threading.Lock()

    @property
    def sent(self) -> int:
        return self._sent

    def depth(self) -> int:
        """Batches announced and not yet consumed by the worker."""
        return self._sent - int(self.arena.counters[1])

    @property
    def max_batch_bytes(self) -> int:
        """The largest batch one message may carry (a quarter of the arena, so that several are in flight)."""
        return self.arena.capacity // 4

    def try_put(self, arrays: Arrays, info: BatchInfo) -> str | None:
        """Copy a batch into the arena and announce it. Returns None, or the reason for a drop."""
        parts = (arrays.frames, arrays.outputs, arrays.features)
        need = sum(_aligned(a.nbytes) for a in parts if a is not None)
        capacity = self.arena.capacity
        if need > self.max_batch_bytes:
            return "batch_too_large"
        with self._lock:
            if self._sent - int(self.arena.counters[1]) >= self.max_batches:
                return "queue_full"
            start = self._written
            position = start % capacity
            if position + need > capacity:  # no room before the end of the ring: skip to its start
                start += capacity - position
                position = 0
            if start + need - int(self.arena.counters[0]) > capacity:
                return "queue_full"
            slots = []
            for array in parts:
                slots.append(self._copy_in(array, position) if array is not None else None)
                position += _aligned(array.nbytes) if array is not None else 0
            self._written = start + need
            message = BatchMessage(*slots, end=self._written, info=info)
            try:
                self.connection.send(message)
            except OSError:
                return "worker_down"
            self._sent += 1
        return None

    def _copy_in(self, array: np.ndarray, position: int) -> Slot:
        target = self.arena.data[position : position + array.nbytes].view(array.dtype).reshape(array.shape)
        np.copyto(target, array, casting="no")
        return Slot(position, tuple(array.shape), array.dtype.str)

    def send_close(self, last_words: Any = None) -> None:
        """The last message: after the batches before it, ``last_words`` (our final counts)."""
        with self._lock:
            self.connection.send(Closing(last_words))


@dataclass(frozen=True)
class ForwardedLabels:
    """Labels for frames a process issued, recorded in another process (worker to issuer).

    ``outcome`` set: sent back to the process that recorded them, to count as ``expired`` (the
    issuing process has gone, with its ledger) or ``unknown`` (no process had that id).
    """

    frame_ids: list[int]
    labels: list[Any]
    outcome: str | None = None


@dataclass(frozen=True)
class Closing:
    """The caller's process is leaving; everything it sent before has arrived."""

    last_words: Any = None


class FrameConsumer:
    """Worker side: receives batch messages, copies pixels out, releases arena space."""

    def __init__(self, arena: Arena, connection: Connection) -> None:
        self.arena = arena
        self.connection = connection
        self.last_words: Any = None  # what the caller sent with its Closing

    def receive(self) -> tuple[BatchInfo, Arrays] | None:
        """The next batch (its arrays copied out of the arena), or None at close."""
        message = self.connection.recv()
        if isinstance(message, Closing):
            self.last_words = message.last_words
            return None
        arrays = Arrays(self._copy_out(message.frames), self._copy_out(message.outputs), self._copy_out(message.features))
        self.arena.counters[0] = message.end
        self.arena.counters[1] += 1
        return message.info, arrays

    def _copy_out(self, slot: Slot | None) -> np.ndarray | None:
        if slot is None:
            return None
        dtype = np.dtype(slot.dtype)
        count = int(np.prod(slot.shape)) * dtype.itemsize
        return self.arena.data[slot.offset : slot.offset + count].view(dtype).reshape(slot.shape).copy()


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN
