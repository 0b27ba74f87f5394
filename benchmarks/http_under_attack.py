"""/metrics latency while the standalone server is under a slowloris attack.

A real Exporter (monitoring worker running, so a scrape asks the worker for its families)
served on loopback. N attacking connections are opened and kept open: half idle, half sending
a request head that never completes (one byte every 0.5 s, so they are never "idle"). A
scraper GETs /metrics back to back on fresh connections; latency percentiles are printed per
attack size (0 = baseline).

    .venv/bin/python benchmarks/http_under_attack.py [--connections 0 500] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import platform
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from virk_exporter import Exporter  # noqa: E402


def attack(port: int, n: int, stop: threading.Event) -> list[socket.socket]:
    sockets = []
    for i in range(n):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            break
        if i % 2:
            sock.sendall(b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        sockets.append(sock)

    def trickle() -> None:
        while not stop.wait(0.5):
            for sock in sockets[1::2]:
                try:
                    sock.sendall(b"{")
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    return sockets


def scrape(url: str, count: int) -> tuple[list[float], int]:
    latencies, failures = [], 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            latencies.append(time.perf_counter() - started)
        except OSError:
            failures += 1
    return latencies, failures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, nargs="+", default=[0, 500])
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    exporter = Exporter(model="attacked")
    server = exporter.serve(port=0)
    exporter.wait_ready(120)

    @exporter.monitor
    def predict(frames):
        return np.zeros(len(frames))

    predict(np.zeros((4, 64, 64, 3), np.uint8))
    exporter.flush()
    table = Table(title=f"/metrics under attack ({platform.machine()}, {platform.python_version()})")
    for column in ("attacking connections", "scrapes", "failed", "p50 ms", "p99 ms", "max ms"):
        table.add_column(column)
    try:
        for n in args.connections:
            stop = threading.Event()
            sockets = attack(server.port, n, stop)
            latencies, failures = scrape(f"{server.url}/metrics", args.scrapes)
            stop.set()
            for sock in sockets:
                sock.close()
            ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
            table.add_row(str(len(sockets)), str(args.scrapes), str(failures), f"{np.percentile(ms, 50):.1f}",
                          f"{np.percentile(ms, 99):.1f}", f"{ms.max():.1f}")
    finally:
        exporter.close()
    Console().print(table)


if __name__ == "__main__":
    main()
