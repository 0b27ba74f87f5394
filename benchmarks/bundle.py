"""Incident bundle latency: webhook received → bundle stored in S3.

A real S3 server (SeaweedFS, as in the tests) and the exporter's HTTP server on loopback; the
webhook handler hands the alert straight to the IncidentManager (the worker-process hop is
left out: it is one pipe write). Each trial posts a new alert (Alertmanager v4 payload, fresh
fingerprint) and stops the clock when the bundle object is in S3, verified by a HEAD.

    .venv/bin/python benchmarks/bundle.py [--trials 15] [--frames 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import cv2  # noqa: E402
from incident_helpers import MODEL, context  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from servers import free_port, start_seaweedfs  # noqa: E402

from virk_exporter.config import ExporterConfig  # noqa: E402
from virk_exporter.incidents.bundle import build_bundle, bundle_key  # noqa: E402
from virk_exporter.incidents.manager import IncidentManager  # noqa: E402
from virk_exporter.incidents.store import S3Store  # noqa: E402
from virk_exporter.incidents.webhook import make_alert_payload, parse_notification  # noqa: E402
from virk_exporter.telemetry.metrics import CallerMetrics, WorkerMetrics  # noqa: E402
from virk_exporter.http.server import serve  # noqa: E402


class BenchExporter:
    def __init__(self, manager: IncidentManager) -> None:
        self.model = MODEL
        self.config = ExporterConfig(model=MODEL, store="s3://virk-bench/prod")
        self.store = manager.store
        self.metrics = CallerMetrics(CollectorRegistry())
        self.manager = manager

    def submit_alert(self, notification) -> None:
        self.manager.handle(notification)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--frames", type=int, default=128)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="virk-bench-bundle-"))
    s3 = start_seaweedfs(work / "s3")
    server = None
    try:
        env = {"VIRK_S3_ENDPOINT": s3.url, "VIRK_S3_ACCESS_KEY": s3.extra["access_key"], "VIRK_S3_SECRET_KEY": s3.extra["secret_key"]}
        store = S3Store.from_env("virk-bench", "prod", env)
        ctx = context(n_frames=args.frames, size=(640, 480))  # real photos, JPEG as the recorder keeps them
        # the worker bundles its reference thumbnails (160 px wide, 6 per source), not full frames
        ctx = dataclasses.replace(ctx, reference_frames=[cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA) for f in ctx.reference_frames[:6]])
        frame_bytes = sum(f.nbytes for f in ctx.frames)
        manager = IncidentManager(MODEL, store, WorkerMetrics(CollectorRegistry()), lambda alert: ctx, spool_dir=work / "spool")
        port = free_port()
        server = serve(BenchExporter(manager), port=port)
        answer_s, stored_s, sizes = [], [], []
        for trial in range(args.trials + 1):  # trial 0 warms up (imports, PNG cache, bucket creation)
            body = make_alert_payload(MODEL, labels={"source": "cam1"}, fingerprint=f"{trial:016x}")
            key = bundle_key(MODEL, parse_notification(body).alerts[0])
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/alerts", data=body, headers={"Content-Type": "application/json"})
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 202
            answered = time.perf_counter()
            while not store.exists(key):
                time.sleep(0.005)
            done = time.perf_counter()
            if trial:
                answer_s.append(answered - started)
                stored_s.append(done - started)
                sizes.append(store.client.stat_object("virk-bench", f"prod/{key}").size)
        manager.close()
        build_s = []  # the build alone, in memory, for the split between building and uploading
        for trial in range(args.trials):
            alert = parse_notification(make_alert_payload(MODEL, fingerprint=f"{trial + 1000:016x}")).alerts[0]
            started = time.perf_counter()
            build_bundle(alert, MODEL, ctx)
            build_s.append(time.perf_counter() - started)
    finally:
        if server is not None:
            server.shutdown()
        s3.stop()

    table = Table(title=f"webhook → bundle in S3 ({args.frames} frames 640x480, {args.trials} trials)")
    for column in ("measure", "p50", "p90", "max"):
        table.add_column(column)

    def row(name: str, values: list[float]) -> None:
        q = statistics.quantiles(values, n=10)
        table.add_row(name, f"{statistics.median(values) * 1000:.0f} ms", f"{q[8] * 1000:.0f} ms", f"{max(values) * 1000:.0f} ms")

    row("webhook answered (202)", answer_s)
    row("bundle stored in S3", stored_s)
    row("  of which: build in memory", build_s)
    console = Console()
    console.print(table)
    console.print(f"bundle size {statistics.median(sizes) / 2**20:.1f} MiB (frames {frame_bytes / 2**20:.1f} MiB as JPEG); "
                  f"machine: {platform.machine()}, {platform.python_version()}, target p50 ≤ 1 s")


if __name__ == "__main__":
    main()
