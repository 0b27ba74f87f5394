"""`virk-exporter serve`: recorded frames (a directory per camera) are watched and served."""

import signal
import subprocess
import sys

import cv2
import pytest

from helpers import sample_value
from servers import free_port, http_get, wait_until
from virk_exporter.demo import photos


@pytest.mark.slow
def test_serve_watches_a_directory_of_cameras(tmp_path):
    for camera, photo in (("gate", "coffee"), ("dock", "rocket")):
        folder = tmp_path / "frames" / camera
        folder.mkdir(parents=True)
        for i, frame in enumerate(photos.camera_stream(photos.load(photo), 12, size=(120, 160), seed=1)):
            cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "virk_exporter.cli", "serve", "--frames", str(tmp_path / "frames"), "--model", "recorded",
         "--port", str(port), "--fps", "200", "--store", str(tmp_path / "store")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # as a script's `serve ... &` starts it: SIGINT inherited ignored, so Python sets no handler itself
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        def counted():
            status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            text = body.decode()
            return status == 200 and all(sample_value(text, "virk_frames_total", source=s) == 12 for s in ("gate", "dock")) and text

        text = wait_until(counted, 120, interval=0.5, what="both cameras' frames to be counted")
        assert sample_value(text, "virk_frames_total", model="recorded") == 24
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output


def test_serve_on_an_empty_directory_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    from virk_exporter.cli import main

    (tmp_path / "frames").mkdir()
    result = CliRunner().invoke(main, ["serve", "--frames", str(tmp_path / "frames"), "--model", "m", "--port", "0"])
    assert result.exit_code == 1, result.output
    assert "no images" in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, ValueError)  # handled: a usage error, not a crash
