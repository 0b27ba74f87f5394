"""virk-exporter: a flight recorder for production vision models."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virk_exporter.exporter import Exporter
    from virk_exporter.frames import FrameError

__all__ = ["Exporter", "FrameError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: the monitoring worker (`python -m virk_exporter.worker`) must listen on its
    # socket before heavy imports, and importing this package must not pull in the caller's side.
    if name == "Exporter":
        from virk_exporter.exporter import Exporter

        return Exporter
    if name == "FrameError":
        from virk_exporter.frames import FrameError

        return FrameError
    raise AttributeError(f"module 'virk_exporter' has no attribute {name!r}")
