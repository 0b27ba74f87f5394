"""Drift statistics: kernel MMD (batch and online), the per-source streaming monitor, and KS
tests on image properties."""

from virk_exporter.drift.ks import PropertyTest, ks_property_tests
from virk_exporter.drift.mmd import MMDDrift, MMDResult
from virk_exporter.drift.monitor import DriftUpdate, Hysteresis, SourceDriftMonitor
from virk_exporter.drift.null import EmpiricalNull
from virk_exporter.drift.online import OnlineMMDDrift, OnlineResult

__all__ = [
    "DriftUpdate",
    "EmpiricalNull",
    "Hysteresis",
    "MMDDrift",
    "MMDResult",
    "OnlineMMDDrift",
    "OnlineResult",
    "PropertyTest",
    "SourceDriftMonitor",
    "ks_property_tests",
]
