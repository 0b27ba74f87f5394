"""End to end through the real stack: decorated predict stream → drift → Prometheus rule fires →
Alertmanager posts to the exporter's webhook (bearer token) and pages (PagerDuty-shaped, the
shipped template) → bundle object in S3 → the page's link, followed with the credential,
redirects to a presigned download → `bundle verify` passes → `bundle replay` reproduces it.

Prints the drift onset → page latency (recorded in BENCHMARKS.md, section Incidents)."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from incident_helpers import photos
from servers import RecordingReceiver, http_get, start_alertmanager, start_prometheus, start_seaweedfs, wait_until

from virk_exporter import Exporter
from virk_exporter.commands.bundle import bundle as bundle_cli
from virk_exporter.incidents.store import S3Store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "e2e-detector"
TOKEN = "e2e-webhook-token"
RULES = {
    "groups": [
        {
            "name": "virk.drift",
            "rules": [
                {
                    # the shipped VisionModelDrift rule (prometheus/virk.rules.yml) without its `for:`
                    "alert": "VisionModelDrift",
                    "expr": "virk_drift_detected == 1",
                    "labels": {"severity": "critical"},
                    "annotations": {"summary": "{{ $labels.model }} drift on {{ $labels.source }}"},
                }
            ],
        }
    ]
}


def alertmanager_config(webhook: str, pager_url: str) -> str:
    return yaml.safe_dump(
        {
            "templates": [str(ROOT / "prometheus" / "templates" / "*.tmpl")],
            "route": {
                "receiver": "virk-pager",
                "group_by": ["alertname", "model"],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1h",
                "routes": [
                    {"receiver": "virk-exporter", "matchers": ['alertname="VisionModelDrift"'], "group_by": ["alertname", "model", "source", "fingerprint"], "group_wait": "0s", "continue": True},
                    {"receiver": "virk-pager", "matchers": ['alertname="VisionModelDrift"'], "group_wait": "0s"},
                ],
            },
            "receivers": [
                {
                    "name": "virk-exporter",
                    "webhook_configs": [{"url": webhook, "send_resolved": True, "http_config": {"authorization": {"type": "Bearer", "credentials": TOKEN}}}],
                },
                {
                    "name": "virk-pager",
                    "pagerduty_configs": [
                        {
                            "url": pager_url,
                            "routing_key": "e2e",
                            "description": '{{ template "virk.page.title" . }}',
                            "details": {"page": '{{ template "virk.page.text" . }}'},
                        }
                    ],
                },
            ],
        }
    )


@pytest.mark.slow
def test_alert_to_bundle_to_replay(tmp_path, monkeypatch):
    s3 = start_seaweedfs(tmp_path / "s3")
    pager = RecordingReceiver()
    stoppers = [s3.stop, pager.close]
    try:
        for name, value in {"VIRK_S3_ENDPOINT": s3.url, "VIRK_S3_ACCESS_KEY": s3.extra["access_key"], "VIRK_S3_SECRET_KEY": s3.extra["secret_key"], "VIRK_SPOOL_DIR": str(tmp_path / "spool")}.items():
            monkeypatch.setenv(name, value)
        base = [cv2.resize(p, (320, 240), interpolation=cv2.INTER_AREA) for p in photos()]
        rng = np.random.default_rng(0)

        def frames(dark: bool, n: int = 8) -> np.ndarray:
            batch = np.stack([base[int(i)] for i in rng.integers(0, len(base), n)]).astype(np.int16)
            batch += rng.integers(-6, 7, batch.shape, dtype=np.int16)
            if dark:
                batch = (batch * 0.35).astype(np.int16)
            return np.clip(batch, 0, 255).astype(np.uint8)

        exporter = Exporter(
            model=MODEL, reference=frames(False, 64), store="s3://virk-e2e/prod", webhook_token=TOKEN, reference_period_s=0, window=32, test_every=16, hysteresis=1,
        )
        stoppers.insert(0, exporter.close)
        server = exporter.serve(port=0)
        assert exporter.wait_ready(120)

        @exporter.monitor(source=lambda frames: "cam1")
        def predict(batch):
            return batch.reshape(len(batch), -1).mean(axis=1, keepdims=True) * np.ones((1, 4))

        alertmanager = start_alertmanager(tmp_path / "am", alertmanager_config(f"{server.url}/api/v1/alerts", f"{pager.url}/v2/enqueue"))
        stoppers.insert(0, alertmanager.stop)
        (tmp_path / "rules.yml").write_text(yaml.safe_dump(RULES))
        prometheus = start_prometheus(tmp_path / "prom", [f"127.0.0.1:{server.port}"], [str(tmp_path / "rules.yml")], alertmanager.url.removeprefix("http://"))
        stoppers.insert(0, prometheus.stop)

        for _ in range(8):
            predict(frames(False))
        exporter.flush()
        onset = time.time()
        stop = threading.Event()

        def stream() -> None:
            while not stop.is_set():
                predict(frames(True))
                time.sleep(0.05)

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        try:
            page_at, page = wait_until(lambda: next(((r["time"], r["body"]) for r in pager.requests), None), timeout=120, what="the page")
        finally:
            stop.set()
            streamer.join()
        latency = page_at - onset
        print(f"\ndrift onset → page with link: {latency:.1f} s")

        # the page carries the bundle link (shipped template): <exporter>/incidents/<alert fingerprint>
        text = json.dumps(page)
        link = re.search(r"/incidents/([0-9a-f]+)", text)
        assert link, text
        fingerprint = link.group(1)

        store = S3Store.from_env("virk-e2e", "prod")
        keys = wait_until(lambda: [o.key for o in store.list(f"{MODEL}/{fingerprint}")], timeout=60, what="the bundle in S3")
        assert len(keys) == 1 and keys[0].endswith("/bundle.zip")

        # the link needs the credential; with it, a redirect to a presigned URL that downloads the bundle
        assert http_get(f"{server.url}/incidents/{fingerprint}")[0] == 401

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        request = urllib.request.Request(f"{server.url}/incidents/{fingerprint}", headers={"Authorization": f"Bearer {TOKEN}"})
        with pytest.raises(urllib.error.HTTPError) as redirect:
            urllib.request.build_opener(NoRedirect).open(request, timeout=10)
        assert redirect.value.code == 302
        location = redirect.value.headers["Location"]
        assert "X-Amz-Signature" in location
        status, data = http_get(location)
        assert status == 200 and data == store.get(keys[0])

        path = tmp_path / "bundle.zip"
        path.write_bytes(data)
        result = CliRunner().invoke(bundle_cli, ["verify", str(path)])
        assert result.exit_code == 0, result.output
        result = CliRunner().invoke(bundle_cli, ["replay", str(path), "--strict"])
        print(result.output)
        assert result.exit_code == 0, result.output
        (tmp_path / "latency.txt").write_text(f"{latency:.2f}\n")
    finally:
        for stopper in stoppers:
            try:
                stopper()
            except Exception:  # noqa: BLE001 - stop every server even when one fails
                pass
