"""The package version: the one source (pyproject.toml reads it, so do --version and virk_build_info)."""

__version__ = "0.1.0"
