"""Worker memory while sources learn their references at 1280x720 (issue 11's memory target).

Starts an Exporter, feeds ``--sources`` sources of 1280x720 frames until every source has
learned its reference (``reference_frames`` samples; ``reference_period_s=0`` so the benchmark
does not wait out a period), and reads the worker process's peak resident memory (VmHWM) from
/proc. Prints a table; the README states the bound as a formula of the settings.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/learning_memory.py --sources 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from virk_exporter import Exporter

from virk_exporter.demo import photos  # noqa: E402


def worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"virk_exporter.worker" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--reference-frames", type=int, default=512)
    args = parser.parse_args()
    frames = photos.camera_stream(photos.load("coffee"), 64, size=(720, 1280), seed=0)
    before = set(worker_pids())
    with tempfile.TemporaryDirectory() as store:
        exporter = Exporter(model="learning-memory", store=store, reference_period_s=0, reference_frames=args.reference_frames)
        exporter.wait_ready(120)
        predict = exporter.monitor(source=lambda frames, source: source)(lambda frames, source: None)
        started = time.perf_counter()
        for step in range(args.reference_frames // 8 + 1):
            for s in range(args.sources):  # one batch at a time: 4 x 8 720p frames overflow the 64 MiB queue
                predict(frames[(step * 8) % 64 : (step * 8) % 64 + 8], source=f"cam-{s}")
                exporter.flush(timeout=300)
        whole = exporter.request("status")
        status = whole["sources"]
        pids = [p for p in worker_pids() if p not in before]
        peak = max(peak_mib(p) for p in pids) if pids else float("nan")
        exporter.close()
    learned = sum(1 for s in status.values() if s["phase"] == "watching")
    table = Table(title=f"worker peak memory, {args.sources} sources at 1280x720 learning {args.reference_frames} samples each")
    for column in ("sources learned", "worker peak RSS (MiB)", "of it the flight recorder (MiB)", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(f"{learned}/{args.sources}", f"{peak:.0f}", f"{whole['recorder_bytes'] / 2**20:.0f}", f"{time.perf_counter() - started:.0f}")
    Console().print(table)
    return 0 if learned == args.sources else 1


if __name__ == "__main__":
    raise SystemExit(main())
