"""The hand-off thread between the caller's threads and the monitoring worker process.

The caller's thread only appends a record of its call to a deque: no lock, no system call
(waking a sleeping thread costs tens of microseconds on a VM). This thread polls the deque,
backing off while it stays empty, and does the per-call bookkeeping: counting, sampling,
turning frames into NumPy arrays (a CUDA tensor is copied to the host here), copying pixels
into the shared-memory arena and waking the worker. NumPy's bulk copy and the socket write
release the GIL, so this thread costs the caller's threads little.

Frames are read after the decorated function returned: a caller that overwrites the same
buffer in place right away should create its Exporter with ``copy_on_call=True``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

from virk_exporter.frames import FrameError

_MIN_POLL_S = 0.0005  # while calls keep coming
_MAX_POLL_S = 0.02  # after a quiet spell: at most 50 wake-ups a second


class Handoff:
    """A queue of call records and the one thread that processes them in order."""

    def __init__(
        self,
        process: Callable[[Any], None],
        on_error: Callable[[str, BaseException], None],
        max_pending: int,
        idle: Callable[[], None] | None = None,
    ) -> None:
        self._process = process
        self._idle = idle  # called whenever the queue is empty (e.g. to emit the worker's spans)
        self._on_error = on_error
        self._max_pending = max_pending
        self._queue: deque = deque()
        self._thread = threading.Thread(target=self._run, name="virk-handoff", daemon=True)

    def start(self) -> None:
        """Start the thread (once its owner is fully built: ``idle`` may run at once)."""
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, item: Any) -> bool:
        """Queue an item unless the queue is full. Never blocks."""
        if len(self._queue) >= self._max_pending:
            return False
        self._queue.append(item)
        return True

    def drain(self, timeout: float) -> bool:
        """Wait until everything submitted so far has been processed."""
        done = threading.Event()
        self._queue.append(done)
        return done.wait(timeout)

    def close(self, timeout: float) -> None:
        self._queue.append(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        idle = _MIN_POLL_S
        while True:
            try:
                item = self._queue.popleft()
            except IndexError:
                if self._idle is not None:
                    try:
                        self._idle()
                    except Exception as problem:  # noqa: BLE001
                        self._on_error("tracing", problem)
                time.sleep(idle)
                idle = min(idle * 2, _MAX_POLL_S)
                continue
            idle = _MIN_POLL_S
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self._process(item)
            except Exception as problem:  # noqa: BLE001 - never let monitoring reach the caller
                self._on_error("input" if isinstance(problem, FrameError) else "handoff", problem)
