"""Shutdown hooks: SIGTERM (what Kubernetes and process managers send) drains like Ctrl-C."""

from __future__ import annotations

import signal
import threading
from typing import Any


def sigterm_as_interrupt() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in the main thread, so the ``finally``
    that closes the Exporter runs (Python's default action kills the process without it)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
