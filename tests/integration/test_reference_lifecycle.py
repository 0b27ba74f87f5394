"""Learned references: persisted in the store (local and real S3), rebased by API, HTTP and CLI,
robust to odd frames; content change is labelled `content`, not a capture cause."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from servers import start_seaweedfs, wait_until
from virk_exporter import Exporter
from virk_exporter.demo import photos

SMALL = (120, 160)
SETTINGS = {"reference_period_s": 0, "reference_frames": 40, "window": 16, "test_every": 8, "hysteresis": 1}


def stream(n: int, seed: int = 0, photo: str = "coffee") -> np.ndarray:
    return photos.camera_stream(photos.load(photo), n, size=SMALL, seed=seed)


def watched(exporter: Exporter, frames: np.ndarray, source: str = "cam") -> dict:
    predict = exporter.monitor(source=lambda frames: source)(lambda frames: None)
    for i in range(0, len(frames), 8):
        predict(frames[i : i + 8])
    exporter.flush()
    return exporter.request("status")["sources"][source]


def metric(exporter: Exporter, name: str, **labels: str) -> float | None:
    for family in exporter.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def check_survives_restart(store: str) -> None:
    with Exporter(model="persist", store=store, **SETTINGS) as first:
        assert watched(first, stream(48))["phase"] == "watching"
    with Exporter(model="persist", store=store, **SETTINGS) as second:
        status = watched(second, stream(8, seed=1))
        assert status["phase"] == "watching" and status["reference_origin"] == "stored"
        assert status["reference_frames"] == 40
        second.rebase("cam")
        status = second.request("status")["sources"]["cam"]
        assert status["phase"] == "learning"
        assert metric(second, "virk_reference_rebases_total", source="cam") == 1.0
        assert metric(second, "virk_reference_learning", source="cam") == 1.0
    with Exporter(model="persist", store=store, **SETTINGS) as third:  # the rebase outlives a restart
        assert watched(third, stream(8, seed=2))["phase"] == "learning"


@pytest.mark.slow
def test_learned_reference_survives_a_restart_in_a_local_store(tmp_path):
    check_survives_restart(str(tmp_path / "store"))


@pytest.mark.integration
@pytest.mark.slow
def test_learned_reference_survives_a_restart_in_s3(tmp_path, monkeypatch):
    server = start_seaweedfs(tmp_path / "seaweedfs")
    try:
        monkeypatch.setenv("VIRK_S3_ENDPOINT", server.url)
        monkeypatch.setenv("VIRK_S3_ACCESS_KEY", server.extra["access_key"])
        monkeypatch.setenv("VIRK_S3_SECRET_KEY", server.extra["secret_key"])
        check_survives_restart("s3://virk-references/prod")
    finally:
        server.stop()


def post(url: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_rebase_over_http_and_the_cli_needs_credentials(tmp_path):
    with Exporter(model="rebase", store=str(tmp_path), webhook_token="s3cret", **SETTINGS) as exporter:
        server = exporter.serve(port=0)
        assert watched(exporter, stream(48))["phase"] == "watching"
        url = f"{server.url}/api/v1/rebase"
        assert post(url, {"source": "cam"})[0] == 401
        assert post(url, {"source": "cam"}, token="wrong")[0] == 401
        assert post(url, {"source": 3}, token="s3cret")[0] == 400
        status, body = post(url, {"source": "cam"}, token="s3cret")
        assert status == 200 and body["rebased"] == ["cam"]
        assert exporter.request("status")["sources"]["cam"]["phase"] == "learning"
        assert watched(exporter, stream(48, seed=3))["phase"] == "watching"
        cli = subprocess.run(
            [sys.executable, "-m", "virk_exporter.cli", "reference", "rebase", "--url", server.url, "--source", "cam", "--token", "s3cret"],
            capture_output=True, text=True, timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert "cam" in cli.stdout
        assert exporter.request("status")["sources"]["cam"]["phase"] == "learning"
        assert metric(exporter, "virk_reference_rebases_total", source="cam") == 2.0
        refused = subprocess.run(
            [sys.executable, "-m", "virk_exporter.cli", "reference", "rebase", "--url", server.url, "--source", "cam"],
            capture_output=True, text=True, timeout=60,
        )
        assert refused.returncode != 0 and "401" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_rebase_over_http_is_refused_without_configured_credentials(tmp_path):
    with Exporter(model="open", store=str(tmp_path), **SETTINGS) as exporter:
        server = exporter.serve(port=0)
        assert post(f"{server.url}/api/v1/rebase", {})[0] == 403


@pytest.mark.slow
def test_one_odd_frame_size_cannot_stall_learning(tmp_path):
    with Exporter(model="odd", store=str(tmp_path), **SETTINGS) as exporter:
        predict = exporter.monitor(source=lambda frames: "cam")(lambda frames: None)
        frames = stream(48)
        predict(frames[:8])
        predict(np.zeros((16, 16, 3), np.uint8))  # one tiny frame among 120x160 ones
        for i in range(8, 48, 8):
            predict(frames[i : i + 8])
        exporter.flush()
        status = exporter.request("status")["sources"]["cam"]
        assert status["phase"] == "watching"
        assert metric(exporter, "virk_errors_total", stage="reference") == 0.0


@pytest.mark.slow
def test_content_change_is_labelled_content_not_a_capture_cause(tmp_path):
    """The model's features move (a new scene for the model) while the pixels do not."""
    rng = np.random.default_rng(0)
    settings = dict(SETTINGS, hysteresis=2)
    with Exporter(model="content", store=str(tmp_path), embedder="features", **settings) as exporter:
        shift = {"value": 0.0}
        predict = exporter.monitor(source=lambda frames: "cam", features=lambda result: result)(
            lambda frames: rng.normal(shift["value"], 1.0, size=(len(frames), 8)).astype(np.float32)
        )
        frames = stream(200, seed=4)
        for i in range(0, 48, 8):
            predict(frames[i : i + 8])
        shift["value"] = 5.0
        for i in range(48, 200, 8):
            predict(frames[i : i + 8])
        exporter.flush()
        status = exporter.request("status")["sources"]["cam"]
        assert status["detected"] and status["fingerprint"] == "content" and status["detector"] == "embedding"
        assert metric(exporter, "virk_drift_detected", source="cam", fingerprint="content", detector="embedding") == 1.0
