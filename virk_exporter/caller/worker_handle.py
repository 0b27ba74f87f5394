"""The caller's handle on the shared monitoring worker: attach (or start it), feed it, ask it, leave.

A process attaches to the worker of its model and settings through ``rendezvous.py``; the
first process to need one starts it as ``python -m virk_exporter.worker`` (not
multiprocessing's spawn, so the user's ``__main__`` is never re-imported) in its own session,
so that it outlives the server worker that happened to start it and no signal aimed at the
server's process group reaches it. A supervisor thread notices a dead worker within a second
and attaches again (starting a new one), backing off while it keeps dying.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import numpy as np

from virk_exporter.config import ExporterConfig
from virk_exporter.wire.rendezvous import Attached, Rendezvous, send_attach, worker_key
from virk_exporter.wire.transport import Arena, Arrays, BatchInfo, FrameProducer, socket_pair, split_batch

log = logging.getLogger("virk_exporter")

ATTACH_TIMEOUT_S = 10.0  # a listening worker answers an attach within milliseconds
SUPERVISE_S = 0.5


class WorkerError(RuntimeError):
    """The worker process did not answer or reported a failure."""


class WorkerHandle:
    def __init__(self, config: ExporterConfig, reference_frames: np.ndarray | None, on_restart: Callable[[str], None] = lambda why: None) -> None:
        self.config = config
        self._reference_frames = reference_frames  # kept: a restarted worker needs them again
        self.rendezvous = Rendezvous.for_key(worker_key(config, reference_frames))
        self._on_restart = on_restart
        self._sticky: dict[str, tuple] = {}  # posts a restarted worker must receive again
        self._restart_at = 0.0
        self._backoff = 1.0
        self._closed = False
        self.attached: Attached | None = None
        self._started: subprocess.Popen | None = None  # the worker, when this process started it
        self._arena: Arena | None = None
        self._producer: FrameProducer | None = None
        self._control = None
        self._control_lock = threading.Lock()
        self._events = None  # span records the worker sends back
        self._events_lock = threading.Lock()
        self._leftover: list[Any] = []  # records read while closing
        self._request_ids = itertools.count(1)
        self._supervisor: threading.Thread | None = None
        self._stop = threading.Event()
        self._ever_ready = False
        self._wanted = False  # start() was called: frames without a worker are "worker_down"
        self.on_attached: Callable[[Attached], None] = lambda attached: None

    def start(self) -> None:
        """Attach to the worker (starting it when none runs) and watch it from a thread.

        Never raises: a failure is reported to ``on_restart`` and the supervisor tries again.
        """
        self._wanted = True
        self._supervisor = threading.Thread(target=self._supervise, name="virk-supervisor", daemon=True)
        self._supervisor.start()
        with self._control_lock:
            self._try_attach()

    def _try_attach(self) -> None:
        try:
            self._attach()
        except (OSError, WorkerError) as problem:
            self._release()
            log.warning("virk-exporter: could not attach to a monitoring worker: %s", problem)
            self._on_restart(f"could not attach to a monitoring worker: {problem}")

    def _attach(self) -> None:
        self._arena = Arena.create(self.config.queue_bytes)
        frames_ours, frames_theirs = socket_pair()
        control_ours, control_theirs = socket_pair()
        events_ours, events_theirs = socket_pair()
        self._events, self._control = events_ours, control_ours
        self._producer = FrameProducer(self._arena, frames_ours, self.config.queue_batches)
        fds = (frames_theirs.fileno(), control_theirs.fileno(), events_theirs.fileno(), self._arena.fd)
        try:
            with self.rendezvous.locked():
                conn = self.rendezvous.connect()
                if conn is None:
                    self._start_worker()
                    conn = self._wait_listening()
                try:
                    attached = send_attach(conn, fds, self._arena.size, ATTACH_TIMEOUT_S)
                finally:
                    conn.close()
        finally:
            for theirs in (frames_theirs, control_theirs, events_theirs):
                theirs.close()
        self._control.send((None, "init", (self.config, self._reference_frames)))
        for command, args in self._sticky.items():
            self._control.send((None, command, args))
        self.attached = attached
        self.on_attached(attached)

    def _start_worker(self) -> None:
        self._started = subprocess.Popen(
            [sys.executable, "-m", "virk_exporter.worker", str(self.rendezvous.socket_path)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_listening(self) -> Any:
        deadline = time.monotonic() + self.config.worker_start_timeout_s
        while time.monotonic() < deadline:
            conn = self.rendezvous.connect()
            if conn is not None:
                return conn
            if self._started.poll() is not None:
                raise WorkerError(f"the monitoring worker exited with status {self._started.returncode} while starting")
            time.sleep(0.01)
        raise WorkerError(f"the monitoring worker did not listen on {self.rendezvous.socket_path} within {self.config.worker_start_timeout_s}s")

    # ------------------------------------------------------------------ state
    @property
    def wanted(self) -> bool:
        """start() was called (and close() not yet)."""
        return self._wanted and not self._closed

    @property
    def pid(self) -> int | None:
        return self.attached.worker_pid if self.attached is not None else None

    @property
    def alive(self) -> bool:
        if self.attached is None or self._producer is None:
            return False
        if self._started is not None and self._started.pid == self.attached.worker_pid:
            return self._started.poll() is None  # our child: poll() also reaps it
        try:
            os.kill(self.attached.worker_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a pid reused by another user's process
            return False
        return True

    @property
    def ready(self) -> bool:
        ready = self.alive and self._arena is not None and self._arena.ready
        self._ever_ready = self._ever_ready or ready
        return ready

    def wait_ready(self, timeout: float) -> bool:
        """Wait for a ready worker (a crashed one is replaced meanwhile by the supervisor);
        raises when the first worker this process started died before it was ever ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready:
                return True
            started = self._started
            if not self._ever_ready and started is not None and started.poll() is not None:
                raise WorkerError(f"the monitoring worker exited with status {started.returncode} while starting")
            time.sleep(0.02)
        return False

    def depth(self) -> int:
        return self._producer.depth() if self._producer is not None else 0

    # ------------------------------------------------------------------ frames
    def put(self, arrays: Arrays, info: BatchInfo) -> list[tuple[str, int]]:
        """Hand a batch to the worker, in pieces when it is larger than one message may be; returns
        the drops as (reason, frames), none when all went. Never blocks.

        Until the worker is ready the arena holds what fits (``queue_batches``,
        ``queue_bytes``); what does not fit is dropped as ``not_started``.
        """
        producer = self._producer
        if producer is None:
            return [("worker_down" if self._wanted else "not_started", len(info.frame_ids))]
        if not self.alive:
            return [("worker_down", len(info.frame_ids))]
        drops = []
        for piece, piece_info in split_batch(arrays, info, producer.max_batch_bytes):
            reason = producer.try_put(piece, piece_info)
            if reason == "queue_full" and not self._arena.ready:
                reason = "not_started"
            if reason is not None:
                drops.append((reason, len(piece_info.frame_ids)))
        return drops

    def _supervise(self) -> None:
        """Restart a dead worker without waiting for the next call."""
        while not self._stop.wait(SUPERVISE_S):
            if not self.alive:
                self._maybe_restart()

    def _maybe_restart(self) -> None:
        """Attach again after a crash, backing off (1 s, doubling to 60 s) if the worker keeps dying."""
        now = time.monotonic()
        if self._closed or now < self._restart_at:
            return
        with self._control_lock:
            if self._closed or self.alive:
                return
            why = "the monitoring worker exited; attaching to a new one (recorder and learned references start over)"
            log.warning("virk-exporter: %s", why)
            self._on_restart(why)
            self._restart_at, self._backoff = now + self._backoff, min(self._backoff * 2, 60.0)
            self._release()
            self._try_attach()

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
            if self._control is not None:
                self._control.send((None, command, args))

    def try_post(self, command: str, *args: Any) -> bool:
        """A one-way command, unless a request holds the connection right now (then skipped)."""
        if not self._control_lock.acquire(blocking=False):
            return False
        try:
            if self._control is None:
                return False
            self._control.send((None, command, args))
            return True
        finally:
            self._control_lock.release()

    def request(self, command: str, *args: Any, timeout: float = 30.0) -> Any:
        if self._control is None or not self.alive:
            raise WorkerError("the monitoring worker is not running")
        if not self._control_lock.acquire(timeout=timeout):  # another request holds the connection
            raise WorkerError(f"the monitoring worker did not answer {command!r} within {timeout}s (busy)")
        try:
            if self._control is None:
                raise WorkerError("the monitoring worker is not running")
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
        finally:
            self._control_lock.release()
        if not ok:
            raise WorkerError(f"{command} failed in the worker: {value}")
        return value

    def flush(self, timeout: float) -> None:
        sent = self._producer.sent if self._producer is not None else 0
        self.request("flush", sent, timeout, timeout=timeout + 5.0)

    def close(self, timeout: float, last_words: Callable[[], list] | None = None) -> None:
        """Leave: the worker processes what we sent (up to ``timeout``), then hangs up.

        ``last_words`` gives our final caller-side families, sent with the closing message so
        the worker's totals keep them.
        """
        self._stop.set()
        with self._control_lock:
            if self._producer is None or self._closed:
                self._closed = True
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        last = False
        try:
            if self.alive:
                last = self._started is not None and self.request("sessions", timeout=max(0.1, timeout)) == [os.getpid()]
                self._producer.send_close(last_words() if last_words is not None else None)
                while time.monotonic() < deadline and self._control.poll(max(0.0, deadline - time.monotonic())):
                    self._control.recv()  # late answers; EOF once the worker has drained us
        except (EOFError, OSError, WorkerError):
            pass  # drained (or the worker is gone)
        else:
            if self.alive:
                log.warning("virk-exporter: the monitoring worker did not drain within %.1fs", timeout)
        finally:
            self._release()
        if last:  # we started the worker and were its only process: it exits now; wait for that
            try:
                self._started.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("virk-exporter: the monitoring worker did not exit within %.1fs", timeout)
        elif self._started is not None:  # it outlives us in this process: reap it whenever it exits
            threading.Thread(target=self._started.wait, name="virk-reaper", daemon=True).start()

    def _release(self) -> None:
        """Close our ends of the connections and the arena (whatever of them exists)."""
        leftover = self.span_records()
        with self._events_lock:
            for conn in (self._events, self._producer.connection if self._producer else None, self._control):
                if conn is not None:
                    conn.close()
            self._events = None
        self._leftover = leftover
        if self._arena is not None:
            self._arena.close()
        self._producer = self._control = self._arena = None
        self.attached = None

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's connections and arena without touching them
        (the parent still uses them), so the child can attach as a process of its own."""
        self._stop = threading.Event()
        self._control_lock = threading.Lock()
        self._events_lock = threading.Lock()
        for conn in (self._producer.connection if self._producer else None, self._control, self._events):
            if conn is not None:
                conn.close()  # our copy of the descriptor only
        if self._arena is not None:
            self._arena.close()
        self._producer = self._control = self._events = self._arena = None
        self._started = None  # the parent's child, not ours
        self.attached = None
        self._leftover = []
