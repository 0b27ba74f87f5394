"""virk-exporter: a flight recorder for production vision models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from virk_exporter._version import __version__

if TYPE_CHECKING:
    from virk_exporter.caller.exporter import Exporter
    from virk_exporter.frames import FrameError

__all__ = ["Exporter", "FrameError", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `virk-exporter --help` and `import virk_exporter.telemetry.metrics` do not
    # pay for torch, OpenCV and SciPy, and the monitoring worker (`python -m
    # virk_exporter.worker.process`) listens on its socket before heavy imports.
    if name == "Exporter":
        from virk_exporter.caller.exporter import Exporter

        return Exporter
    if name == "FrameError":
        from virk_exporter.frames import FrameError

        return FrameError
    raise AttributeError(f"module 'virk_exporter' has no attribute {name!r}")
