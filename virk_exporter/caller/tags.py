"""Tags on frames (``@exporter.monitor(tags=fn)``), as the caller normalizes them for slices.

Kept apart from ``drift/slices.py`` (the worker's ranking) so the caller's process does not
import torch and SciPy for a few dict operations.
"""

from __future__ import annotations

from typing import Any

MAX_TAGS = 8  # keys kept per frame (sorted by key)
MAX_TAG_CHARS = 64  # a key or value is cut to this many characters


def _cut(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_TAG_CHARS]


def normalize_tags(value: Any) -> dict[str, str]:
    """One frame's tags as a small ``str -> str`` dict (at most ``MAX_TAGS`` keys; None values dropped)."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"tags must be a dict (or a list of dicts, one per frame), got {type(value).__name__}")
    items = sorted((_cut(k), _cut(v)) for k, v in value.items() if v is not None)
    return dict(items[:MAX_TAGS])


def tags_per_frame(value: Any, n: int) -> list[dict[str, str]]:
    """What a ``tags`` callable returned, as one dict per frame of an n-frame call."""
    if value is None or isinstance(value, dict):
        tags = normalize_tags(value)
        return [tags] * n
    frames = [normalize_tags(v) for v in value]
    if len(frames) != n:
        raise ValueError(f"tags() returned {len(frames)} dicts for {n} frames")
    return frames
