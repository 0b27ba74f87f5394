"""virk-exporter: a flight recorder for production vision models."""

from virk_exporter.exporter import Exporter
from virk_exporter.frames import FrameError

__all__ = ["Exporter", "FrameError"]
__version__ = "0.1.0"
