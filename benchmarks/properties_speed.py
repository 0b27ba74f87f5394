"""Median time per 640x480 frame for image properties + geometry, on one core.

    .venv/bin/python benchmarks/properties_speed.py [--frames 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from virk_exporter.demo import photos  # noqa: E402
from virk_exporter.fingerprint import Fingerprinter  # noqa: E402
from virk_exporter.fingerprint.properties import compute_properties  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64, help="frames per batch")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--photo", default="rocket")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    fp = Fingerprinter(photos.camera_stream(args.photo, 64, seed=0))
    frames = photos.camera_stream(args.photo, args.frames, seed=1)
    fp.properties(frames[:4])  # warm up caches and OpenCV's DFT plans

    def per_frame_ms(fn) -> list[float]:
        out = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn(frames)
            out.append((time.perf_counter() - start) / len(frames) * 1e3)
        return out

    both = per_frame_ms(fp.properties)
    image_only = per_frame_ms(compute_properties)
    start = time.perf_counter()
    fp.diagnose(properties=fp.properties(frames))
    diagnose_ms = (time.perf_counter() - start) * 1e3
    print(f"frames 640x480, batches of {args.frames}, {args.repeats} repeats, 1 thread")
    print(f"properties + geometry: median {np.median(both):.3f} ms/frame (p10 {np.percentile(both, 10):.3f}, p90 {np.percentile(both, 90):.3f})")
    print(f"properties only:       median {np.median(image_only):.3f} ms/frame")
    print(f"diagnose (KS + rules) on one {args.frames}-frame window incl. properties: {diagnose_ms:.1f} ms")


if __name__ == "__main__":
    main()
