"""Helpers the examples share: camera frames from real photographs, and a metrics printout."""

from __future__ import annotations

import numpy as np

from virk_exporter.demo import photos

SIZE = (96, 128)  # small frames keep the examples quick on a laptop CPU


def camera(scene: str, n: int, seed: int, dark: bool = False) -> np.ndarray:
    """n frames (n, H, W, 3) uint8 RGB of a static camera looking at a photograph shipped with
    scikit-image/scikit-learn; ``dark`` simulates an exposure fault (the drift)."""
    frames = photos.camera_stream(scene, n, size=SIZE, seed=seed)
    return (frames * 0.35).astype(np.uint8) if dark else frames


def metrics_text(exporter) -> str:
    """What the exporter's /metrics serves (the caller's and the worker's families)."""
    return exporter.exposition()[0].decode()


def show(text: str, prefixes: tuple[str, ...]) -> None:
    for line in text.splitlines():
        if line.startswith(prefixes):
            print(" ", line)
