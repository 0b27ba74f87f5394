"""The caller's handle on the monitoring worker process: start it, feed it, ask it, stop it.

The worker is started as ``python -m virk_exporter.worker`` (not multiprocessing's spawn),
so the user's ``__main__`` module is never re-imported and an Exporter created at the top of
an unguarded script works.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import numpy as np

from virk_exporter.config import ExporterConfig
from virk_exporter.transport import Arena, FrameProducer, socket_pair

log = logging.getLogger("virk_exporter")


class WorkerError(RuntimeError):
    """The worker process did not answer or reported a failure."""


class WorkerHandle:
    def __init__(self, config: ExporterConfig, reference_frames: np.ndarray | None, on_restart: Callable[[str], None] = lambda why: None) -> None:
        self.config = config
        self._reference_frames = reference_frames  # kept: a restarted worker needs them again
        self._on_restart = on_restart
        self._sticky: dict[str, tuple] = {}  # posts a restarted worker must receive again
        self._restart_at = 0.0
        self._backoff = 1.0
        self._closed = False
        self._process: subprocess.Popen | None = None
        self._arena: Arena | None = None
        self._producer: FrameProducer | None = None
        self._control = None
        self._control_lock = threading.Lock()
        self._events = None  # span records the worker sends back
        self._events_lock = threading.Lock()
        self._leftover: list[Any] = []  # records read while closing
        self._request_ids = itertools.count(1)

    def start(self) -> None:
        self._arena = Arena.create(self.config.queue_bytes)
        frames_ours, frames_theirs = socket_pair()
        control_ours, control_theirs = socket_pair()
        events_ours, events_theirs = socket_pair()
        fds = (frames_theirs.fileno(), control_theirs.fileno(), events_theirs.fileno(), self._arena.fd)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "virk_exporter.worker", *map(str, fds), str(self._arena.size)],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
        )
        for theirs in (frames_theirs, control_theirs, events_theirs):
            theirs.close()
        self._events = events_ours
        self._producer = FrameProducer(self._arena, frames_ours, self.config.queue_batches)
        self._control = control_ours
        self._control.send((None, "init", (self.config, self._reference_frames)))
        for command, args in self._sticky.items():
            self._control.send((None, command, args))

    # ------------------------------------------------------------------ state
    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def ready(self) -> bool:
        return self.alive and self._arena is not None and self._arena.ready

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready:
                return True
            if self._process is not None and not self.alive:
                raise WorkerError(f"the monitoring worker exited with status {self._process.returncode} while starting")
            time.sleep(0.02)
        return False

    def depth(self) -> int:
        return self._producer.depth() if self._producer is not None else 0

    # ------------------------------------------------------------------ frames
    def put(self, frames: np.ndarray, outputs: np.ndarray | None, meta: dict[str, Any]) -> str | None:
        """Hand a batch to the worker; returns None or a drop reason. Never blocks."""
        if self._producer is None:
            return "not_started"
        if not self.alive:
            self._maybe_restart()
            return "worker_down"
        return self._producer.try_put(frames, outputs, meta)

    def _maybe_restart(self) -> None:
        """Start a new worker after a crash, backing off (1 s, doubling to 60 s) if it keeps dying."""
        now = time.monotonic()
        if self._closed or now < self._restart_at:
            return
        why = f"the monitoring worker exited with status {self._process.returncode}; starting a new one (recorder and learned references start over)"
        log.warning("virk-exporter: %s", why)
        self._on_restart(why)
        self._restart_at, self._backoff = now + self._backoff, min(self._backoff * 2, 60.0)
        with self._control_lock:
            self._release()
            self.start()

    def span_records(self) -> list[Any]:
        """Span records the worker has sent back so far (see tracing.SpanRecord)."""
        records, self._leftover = self._leftover, []
        with self._events_lock:
            try:
                while self._events is not None and self._events.poll(0):
                    records.append(self._events.recv())
            except (EOFError, OSError):
                pass
        return records

    # ------------------------------------------------------------------ control
    def post(self, command: str, *args: Any, sticky: bool = False) -> None:
        """A one-way command (no answer awaited); a sticky one is repeated to a restarted worker."""
        with self._control_lock:
            if sticky:
                self._sticky[command] = args
            self._control.send((None, command, args))

    def request(self, command: str, *args: Any, timeout: float = 30.0) -> Any:
        if self._control is None or not self.alive:
            raise WorkerError("the monitoring worker is not running")
        with self._control_lock:
            request_id = next(self._request_ids)
            self._control.send((request_id, command, args))
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._control.poll(remaining):
                    raise WorkerError(f"the monitoring worker did not answer {command!r} within {timeout}s")
                answer_id, ok, value = self._control.recv()
                if answer_id == request_id:
                    break  # answers to requests that timed out earlier are skipped
        if not ok:
            raise WorkerError(f"{command} failed in the worker: {value}")
        return value

    def flush(self, timeout: float) -> None:
        sent = self._producer.sent if self._producer is not None else 0
        self.request("flush", sent, timeout, timeout=timeout + 5.0)

    def close(self, timeout: float) -> None:
        if self._process is None or self._closed:
            return
        self._closed = True
        try:
            if self.alive:
                self._producer.send_close()
                self._process.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, OSError):
            log.warning("virk-exporter: the monitoring worker did not drain within %.1fs; stopping it", timeout)
            self._process.kill()
            self._process.wait()
        finally:
            self._release()

    def _release(self) -> None:
        """Close our ends of the pipes and the arena (the worker has exited)."""
        leftover = self.span_records()
        with self._events_lock:
            self._events.close()
            self._events = None
        self._leftover = leftover
        self._producer.connection.close()
        self._control.close()
        self._arena.close()
        self._producer = None
        self._control = None
