"""Shutdown hooks: SIGTERM (what Kubernetes and process managers send) and SIGINT drain alike."""

from __future__ import annotations

import signal
import threading
from typing import Any


def stop_signals_as_interrupt() -> None:
    """From now on SIGTERM and SIGINT raise KeyboardInterrupt in the main thread, so the
    ``finally`` that closes the Exporter runs. SIGTERM's default action kills the process
    without it; SIGINT is set explicitly because a background job of a non-interactive shell
    (``virk-exporter serve ... &`` in a script) inherits it ignored, and Python then installs
    no handler of its own: ``kill -INT`` would do nothing (uvicorn and gunicorn take both too)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
