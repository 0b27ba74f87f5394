"""Lifecycle: `virk-exporter serve` drains on SIGTERM and leaves no process behind."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from helpers import sample_value
from servers import free_port, http_get, wait_until
from virk_exporter.demo import photos


def _workers_in(run_dir: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if str(run_dir) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_sigterm_drains_serve_and_the_worker_exits(tmp_path):
    folder = tmp_path / "frames" / "gate"
    folder.mkdir(parents=True)
    for i, frame in enumerate(photos.camera_stream(photos.load("coffee"), 12, size=(120, 160), seed=1)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    port, run_dir = free_port(), tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "virk_exporter.cli", "-v", "serve", "--frames", str(tmp_path / "frames"), "--model", "sigterm",
         "--port", str(port), "--fps", "200", "--store", str(tmp_path / "store")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, VIRK_RUNTIME_DIR=str(run_dir)),
    )
    try:
        def counted():
            status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            return status == 200 and sample_value(body.decode(), "virk_frames_total", model="sigterm") == 12

        wait_until(counted, 120, interval=0.5, what="the frames to be counted")
        assert len(_workers_in(run_dir)) == 1
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    wait_until(lambda: not _workers_in(run_dir), 20, what="the monitoring worker to exit")
    assert re.findall(r"exiting after (\d+) batches", output) == ["12"], output
