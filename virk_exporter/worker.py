"""The monitoring worker process: ``python -m virk_exporter.worker FRAMES_FD CONTROL_FD EVENTS_FD ARENA_FD ARENA_SIZE``.

Its main thread consumes frame batches in order; a second thread answers the caller
process's requests (metrics collection, flush, alerts, snapshots). Both share one
:class:`~virk_exporter.monitor.Monitor` guarded by its lock.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import CollectorRegistry

from virk_exporter.metrics import WorkerMetrics
from virk_exporter.transport import Arena, FrameConsumer

log = logging.getLogger("virk_exporter.worker")


class Worker:
    def __init__(self, frames: Connection, control: Connection, events: Connection, arena: Arena) -> None:
        self.control = control
        self.events = events  # span records back to the caller's process
        self.arena = arena
        self.consumer = FrameConsumer(arena, frames)
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = WorkerMetrics(self.registry)
        self.processed = 0
        self._progress = threading.Condition()
        self._send_lock = threading.Lock()  # the control answers
        self._events_lock = threading.Lock()
        self.monitor: Any = None

    def initialize(self) -> None:
        _, command, (config, reference_frames) = self.control.recv()
        assert command == "init", command
        if config.log_level is not None:
            logging.getLogger("virk_exporter").setLevel(config.log_level)
        import torch

        from virk_exporter.monitor import Monitor  # heavy imports after the fork-free start

        torch.set_num_threads(1)  # monitoring must not take the model's cores
        self.metrics.start_at_zero(config.model, config.device)
        self.monitor = Monitor(config, self.metrics, reference_frames, self.send_span)
        self.arena.mark_ready()
        threading.Thread(target=self._serve_control, name="virk-control", daemon=True).start()

    def run(self) -> None:
        while True:
            try:
                item = self.consumer.receive()
            except (EOFError, OSError):
                break  # the caller's process is gone
            if item is None:
                break
            record = self.monitor.process(*item)
            if record is not None:
                self.send_span(record)
            with self._progress:
                self.processed += 1
                self._progress.notify_all()
        self.monitor.close()

    def send_span(self, record: Any) -> None:
        """Send a span record to the caller's process (from any worker thread)."""
        with self._events_lock:
            try:
                self.events.send(record)
            except OSError:
                pass

    # ------------------------------------------------------------------ control
    def _serve_control(self) -> None:
        while True:
            try:
                request_id, command, args = self.control.recv()
            except (EOFError, OSError):
                return
            try:
                ok, value = True, self._answer(command, args)
            except Exception as problem:  # noqa: BLE001 - reported to the caller process
                ok, value = False, f"{type(problem).__name__}: {problem}"
                self.metrics.errors.labels(self.monitor.model, "control").inc()
            if request_id is not None:
                with self._send_lock:
                    try:
                        self.control.send((request_id, ok, value))
                    except OSError:
                        return

    def _answer(self, command: str, args: tuple) -> Any:
        if command == "ping":
            return "pong"
        if command == "collect":
            return list(self.registry.collect())
        if command == "flush":
            sent, timeout = args
            deadline = time.monotonic() + timeout
            with self._progress:
                while self.processed < sent:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"processed {self.processed} of {sent} batches")
                    self._progress.wait(remaining)
            return self.processed
        return self.monitor.command(command, *args)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s virk-worker %(levelname)s %(message)s")
    frames_fd, control_fd, events_fd, arena_fd, arena_size = (int(a) for a in argv)
    worker = Worker(Connection(frames_fd), Connection(control_fd), Connection(events_fd), Arena(arena_fd, arena_size))
    worker.initialize()
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
