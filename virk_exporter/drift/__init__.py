"""Drift statistics: kernel MMD (batch and online) and KS tests on image properties."""

from virk_exporter.drift.ks import PropertyTest, ks_property_tests

__all__ = ["PropertyTest", "ks_property_tests"]
