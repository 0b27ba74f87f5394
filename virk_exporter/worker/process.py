"""The monitoring worker process: ``python -m virk_exporter.worker SOCKET_PATH``.

One per model and settings on a host (see ``rendezvous.py``), shared by every process of a
server that attaches to it. It listens on ``SOCKET_PATH`` before its heavy imports, so a
process can attach within milliseconds; each attached process is a :class:`Session` with its
own arena and three connections (frames, control, events) and two threads here: one
consumes its frame batches, one answers its requests (metrics, flush, alerts, snapshots).
All sessions feed one :class:`~virk_exporter.worker.pipeline.Monitor` (one reference, one recorder,
one drift state per source), one batch at a time. The worker exits when its last session
has gone (after a short linger, so a restarting server worker finds it still there).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from virk_exporter.telemetry.metrics import WorkerMetrics
from virk_exporter.wire.rendezvous import Attached, Rendezvous, receive_attach, reply_attached
from virk_exporter.telemetry.totals import CallerTotals
from virk_exporter.wire.transport import SESSION_BITS, Arena, ForwardedLabels, FrameConsumer

log = logging.getLogger("virk_exporter.worker")

LINGER_S = 0.25  # with no session left, wait this long for a new one before exiting
STOP_DRAIN_S = 10.0  # after SIGTERM, attached processes have this long to close
FIRST_CLIENT_S = 60.0  # a worker nobody attaches to (its starter died) gives up after this


class Session:
    """One attached process: its arena and connections, and how far its batches got."""

    def __init__(self, number: int, pid: int, fds: list[int], arena_size: int) -> None:
        self.number = number
        self.pid = pid
        frames_fd, control_fd, events_fd, arena_fd = fds
        self.control = Connection(control_fd)
        self.events = Connection(events_fd)
        self.arena = Arena(arena_fd, arena_size)
        self.consumer = FrameConsumer(self.arena, Connection(frames_fd))
        self.processed = 0
        self.progress = threading.Condition()
        self.send_lock = threading.Lock()  # control answers
        self.events_lock = threading.Lock()

    def send_event(self, record: Any) -> None:
        with self.events_lock:
            try:
                self.events.send(record)
            except OSError:
                pass

    def hang_up(self) -> None:
        """Wake this session's control thread and tell its process we are done (EOF)."""
        for conn in (self.control, self.events):
            try:
                wrapper = socket.socket(fileno=conn.fileno())
                wrapper.shutdown(socket.SHUT_RDWR)
                wrapper.detach()
            except OSError:
                pass


class Worker:
    """The worker process: accepts callers' connections, runs each model's pipeline, exports."""

    def __init__(self, listener: socket.socket, rendezvous: Rendezvous) -> None:
        self.listener = listener
        self.rendezvous = rendezvous
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = WorkerMetrics(self.registry)
        self.callers = CallerTotals()
        self.monitor: Any = None
        self.model: str | None = None  # from the first session's settings
        self._last_requester: Session | None = None
        self._initialized = threading.Event()
        self._init_lock = threading.Lock()
        self._pipeline = threading.Lock()  # one batch at a time through the shared Monitor
        self._sessions: dict[int, Session] = {}
        self._sessions_lock = threading.Lock()
        self._sessions_issued = 0
        self._current = threading.local()  # the session a thread works for (where its spans go)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.batches = 0  # processed, all sessions

    # ------------------------------------------------------------------ sessions
    def serve(self) -> None:
        """Accept sessions until the last one has gone (or SIGTERM)."""
        started = quiet_since = time.monotonic()
        had_session = False
        while not self._stopping.is_set():
            readable, _, _ = select.select([self.listener], [], [], 0.1)
            if readable:
                self._accept()
                had_session = True
                continue
            with self._sessions_lock:
                busy = bool(self._sessions)
            now = time.monotonic()
            if busy:
                quiet_since = now
                continue
            if now - quiet_since < LINGER_S or (not had_session and now - started < FIRST_CLIENT_S):
                continue
            with self.rendezvous.locked():  # no client is between connect and attach now
                if select.select([self.listener], [], [], 0)[0]:
                    continue
                self._close_listener()
            break
        if self._stopping.is_set():
            with self.rendezvous.locked():
                self._close_listener()
        deadline = time.monotonic() + STOP_DRAIN_S
        for thread in self._threads:  # after SIGTERM: sessions drain as their processes close
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.monitor is not None:
            self.monitor.close()
        log.info("exiting after %d batches from %d processes", self.batches, self._sessions_issued)

    def _close_listener(self) -> None:
        """From now on, a process that wants a worker for this key starts a new one."""
        self.rendezvous.socket_path.unlink(missing_ok=True)
        self.listener.close()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            conn.settimeout(5.0)
            pid, arena_size, fds = receive_attach(conn)
            session = Session(self._sessions_issued, pid, fds, arena_size)
            self._sessions_issued += 1
            with self._sessions_lock:
                self._sessions[session.number] = session
            reply_attached(conn, Attached(session.number, os.getpid()))
        except (OSError, ConnectionError, ValueError) as problem:
            log.warning("a process failed to attach: %s", problem)
            return
        finally:
            conn.close()
        log.info("process %d attached (session %d)", session.pid, session.number)
        thread = threading.Thread(target=self._run_session, args=(session,), name=f"virk-session-{session.number}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _run_session(self, session: Session) -> None:
        """The session's control thread: the first session's settings start the analysis (in
        the background: requests that need no analysis are answered meanwhile), then answer."""
        self._current.session = session
        try:
            _, command, (config, reference_frames) = session.control.recv()
            assert command == "init", command
        except (EOFError, OSError):
            self._end(session)
            return
        with self._init_lock:
            if self.model is None:
                self.model = config.model
                threading.Thread(target=self._initialize, args=(config, reference_frames), name="virk-init", daemon=True).start()
        frames = threading.Thread(target=self._consume, args=(session,), name=f"virk-frames-{session.number}", daemon=True)
        frames.start()
        self._serve_control(session)
        frames.join()

    def _initialize(self, config: Any, reference_frames: Any) -> None:
        try:
            if config.log_level is not None:
                logging.getLogger("virk_exporter").setLevel(config.log_level)
            import torch

            from virk_exporter.worker.pipeline import Monitor  # heavy imports once the socket listens

            torch.set_num_threads(1)  # monitoring must not take the model's cores
            self.metrics.start_at_zero(config.model, config.device)
            self.monitor = Monitor(config, self.metrics, reference_frames, self.send_span)
        except Exception:  # noqa: BLE001 - every process sees the worker exit, logs it and counts it
            log.exception("the monitoring worker could not start")
            os._exit(1)
        self._initialized.set()

    def _consume(self, session: Session) -> None:
        self._current.session = session
        self._initialized.wait()  # batches wait in the session's arena meanwhile
        session.arena.mark_ready()
        while True:
            try:
                item = session.consumer.receive()
            except (EOFError, OSError):
                break  # the process is gone
            if item is None:  # it closed: everything it sent before is processed
                if session.consumer.last_words is not None:
                    self.callers.update(session.number, session.consumer.last_words)
                self.monitor.settle(self.monitor.config.close_timeout_s)  # bundles in flight, and their spans
                break
            with self._pipeline:
                record = self.monitor.process(*item)
                self.batches += 1
            if record is not None:
                session.send_event(record)
            with session.progress:
                session.processed += 1
                session.progress.notify_all()
        self._end(session)

    def _end(self, session: Session) -> None:
        with self._sessions_lock:
            if self._sessions.pop(session.number, None) is None:
                return
        self.callers.end(session.number)
        session.hang_up()
        log.info("process %d detached (session %d)", session.pid, session.number)

    def send_span(self, record: Any) -> None:
        """A span record goes to the process whose batch or request produced it; from a
        thread of the analysis's own (a bundle being built), to the last one that asked."""
        session = getattr(self._current, "session", None) or self._last_requester
        if session is not None:
            session.send_event(record)

    # ------------------------------------------------------------------ control
    def _serve_control(self, session: Session) -> None:
        while True:
            try:
                request_id, command, args = session.control.recv()
            except (EOFError, OSError):
                return
            try:
                ok, value = True, self._answer(session, command, args)
            except Exception as problem:  # noqa: BLE001 - reported to the caller process
                ok, value = False, f"{type(problem).__name__}: {problem}"
                self.metrics.errors.labels(self.model, "control").inc()
            if request_id is not None:
                with session.send_lock:
                    try:
                        session.control.send((request_id, ok, value))
                    except OSError:
                        return

    def _answer(self, session: Session, command: str, args: tuple) -> Any:
        if command == "ping":
            return "pong"
        if command == "counters":
            self.callers.update(session.number, args[0])
            return None
        if command == "collect":
            # The asking process's own families are fresh on its side; it gets everyone else's.
            self.callers.update(session.number, args[0])
            return list(self.registry.collect()), self.callers.others(session.number)
        if command == "flush":
            sent, timeout = args
            deadline = time.monotonic() + timeout
            with session.progress:
                while session.processed < sent:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"processed {session.processed} of {sent} batches")
                    session.progress.wait(remaining)
            return session.processed
        if command == "labels":
            self._route_labels(session, *args)
            return None
        if command == "sessions":
            with self._sessions_lock:
                return sorted(s.pid for s in self._sessions.values())
        self._initialized.wait()
        self._last_requester = session
        return self.monitor.command(command, *args)

    def _route_labels(self, sender: Session, frame_ids: list[int], labels: list[Any]) -> None:
        """Each label to the process that issued its frame (the session number is the id's high bits)."""
        by_session: dict[int, tuple[list[int], list[Any]]] = {}
        for frame_id, label in zip(frame_ids, labels):
            ids, values = by_session.setdefault(frame_id >> SESSION_BITS, ([], []))
            ids.append(frame_id)
            values.append(label)
        with self._sessions_lock:
            targets = {number: self._sessions.get(number) for number in by_session}
        for number, (ids, values) in by_session.items():
            target = targets[number]
            if target is None:
                sender.send_event(ForwardedLabels(ids, values, "expired" if number < self._sessions_issued else "unknown"))
            else:
                target.send_event(ForwardedLabels(ids, values))

    def stop(self, *_: Any) -> None:
        """SIGTERM: stop accepting; sessions drain as their processes close."""
        self._stopping.set()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s virk-worker %(levelname)s %(message)s")
    rendezvous = Rendezvous.for_key(Path(argv[0]).stem, Path(argv[0]).parent)
    worker = Worker(rendezvous.listen(), rendezvous)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server; we exit when it detaches
    worker.serve()
    return 0

