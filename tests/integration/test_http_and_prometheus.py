"""/metrics over HTTP: a real Prometheus scrapes it, promtool accepts it, routes mount into apps."""

import asyncio
import socket
import subprocess
import urllib.request
import wsgiref.util

import numpy as np
import pytest

from helpers import sample_value
from servers import binary, http_get, prometheus_query, start_prometheus, wait_until
from stack_queries import load_rules
import virk_exporter
from virk_exporter import Exporter
from virk_exporter.telemetry.metrics import CORE_PROPERTIES
from virk_exporter.http.server import PortInUseError

# The README's bound on series per source with the default property_metrics="core": 8 properties,
# 24 reference bands, 14 cause scores, up to 6 drift gauges (two detectors), up to 2 drift states,
# 2 frame counters, labels by outcome (2 here) and up to 5 slices (none here).
SERIES_PER_SOURCE_MAX = 60
FRAME = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    # A reference learned from 8 frames and drift tests every 4: the exposition then holds every
    # per-source family (reference bands, drift scores), which is what promtool must accept.
    exporter = Exporter(model="scraped", store=str(tmp_path_factory.mktemp("store")), reference_period_s=0, reference_frames=8, window=8, test_every=4)
    server = exporter.serve(host="127.0.0.1", port=0)
    assert exporter.wait_ready(120)

    @exporter.monitor(source=lambda frames, cam: cam)
    def predict(frames, cam):
        return np.eye(len(frames), 4)

    for i in range(24):
        predict(np.stack([FRAME] * 2), cam=f"cam-{i % 2}")
    exporter.flush()
    yield exporter, server, predict
    exporter.close()


@pytest.mark.slow
def test_prometheus_scrapes_the_exporter(served, tmp_path):
    exporter, server, predict = served
    prometheus = start_prometheus(tmp_path / "prom", [f"127.0.0.1:{server.port}"])
    try:
        result = wait_until(
            lambda: prometheus_query(prometheus, 'sum by (source) (virk_frames_total{model="scraped"})'),
            timeout=30,
            what="Prometheus to scrape virk_frames_total",
        )
        by_source = {r["metric"]["source"]: float(r["value"][1]) for r in result}
        assert by_source == {"cam-0": 24.0, "cam-1": 24.0}
        up = prometheus_query(prometheus, "up")
        assert up and up[0]["value"][1] == "1"
        # a worker-side family arrives through the same scrape
        recorder = wait_until(lambda: prometheus_query(prometheus, 'virk_recorder_frames{model="scraped"}'), timeout=15, what="recorder gauge")
        assert float(recorder[0]["value"][1]) >= 24
    finally:
        prometheus.stop()


def test_exposition_parses_and_passes_promtool(served):
    exporter, server, _ = served
    status, body = http_get(f"{server.url}/metrics")
    assert status == 200
    text = body.decode()
    assert sample_value(text, "virk_frames_total", model="scraped") >= 48
    for family in (
        "virk_predict_duration_seconds",
        "virk_monitor_stage_seconds",
        "virk_queue_depth",
        "virk_recorder_bytes",
        "virk_image_property_reference",  # a learned reference: the family promtool once rejected
        "virk_drift_score",
        "virk_build_info",
    ):
        assert f"# TYPE {family}" in text, family
    check = subprocess.run([binary("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_series_per_source_are_bounded(served):
    """The README's count of series per source, measured on a source with a learned reference."""
    _, server, _ = served
    text = http_get(f"{server.url}/metrics")[1].decode()
    series = [line for line in text.splitlines() if not line.startswith("#") and 'source="cam-0"' in line and "_created" not in line]
    assert len(series) <= SERIES_PER_SOURCE_MAX, "\n".join(sorted(series))
    properties = {line.split('property="')[1].split('"')[0] for line in series if line.startswith("virk_image_property{")}
    assert properties == set(CORE_PROPERTIES)
    bands = [line.split('band="')[1].split('"')[0] for line in series if line.startswith("virk_image_property_reference{")]
    assert sorted(set(bands)) == ["p05", "p50", "p95"] and len(bands) == 3 * len(CORE_PROPERTIES)


def test_build_info(served):
    _, server, _ = served
    text = http_get(f"{server.url}/metrics")[1].decode()
    info = [line for line in text.splitlines() if line.startswith("virk_build_info{")]
    assert len(info) == 1 and info[0].endswith(" 1.0"), info
    assert f'version="{virk_exporter.__version__}"' in info[0] and 'python="' in info[0]
    assert 'device="cpu"' in info[0] or 'device="cuda' in info[0]


def test_openmetrics_is_served_when_asked(served):
    _, server, _ = served
    status, body = http_get(f"{server.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert body.rstrip().endswith(b"# EOF")


def test_landing_page_links_the_routes(served):
    exporter, server, _ = served
    status, body = http_get(f"{server.url}/")
    assert status == 200
    page = body.decode()
    assert f"virk-exporter {virk_exporter.__version__}" in page and "<b>scraped</b>" in page
    for link in ('href="metrics"', 'href="-/healthy"', 'href="-/ready"', 'href="runbook"'):
        assert link in page, link
    assert "github.com" not in page  # no link to a project home that does not exist
    # The relative links resolve to routes that answer.
    assert http_get(f"{server.url}/metrics")[0] == 200
    assert http_get(f"{server.url}/runbook")[0] == 200


def test_runbook_page_has_every_alert_section(served):
    """Each alert's runbook_url (BASE#<name lower>) lands on a section of the page /runbook serves."""
    _, server, _ = served
    with urllib.request.urlopen(f"{server.url}/runbook", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        page = response.read().decode()
    alerts = [r["alert"] for g in load_rules()["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 10
    for name in alerts:
        assert f'<h2 id="{name.lower()}">{name}</h2>' in page, name
    assert "<h1>Runbook: virk-exporter alerts</h1>" in page
    # The Markdown is escaped text, never markup: `<fingerprint>` of the runbook's commands.
    assert "bundle fetch &lt;fingerprint&gt;" in page and "<fingerprint>" not in page


def test_health_ready_and_unknown_routes(served):
    _, server, _ = served
    assert http_get(f"{server.url}/-/healthy")[0] == 200
    assert http_get(f"{server.url}/-/ready")[0] == 200
    assert http_get(f"{server.url}/nope")[0] == 404
    request = urllib.request.Request(f"{server.url}/metrics", data=b"x", method="POST")
    try:
        urllib.request.urlopen(request, timeout=5)
        raise AssertionError("POST /metrics must be refused")
    except urllib.error.HTTPError as error:
        assert error.code == 405


def test_a_port_in_use_is_a_clear_error(served):
    exporter, _, _ = served
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PortInUseError, match="already in use"):
            exporter.serve(host="127.0.0.1", port=taken.getsockname()[1])


def test_routes_mount_into_a_wsgi_app(served):
    exporter, _, _ = served
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""}
    wsgiref.util.setup_testing_defaults(environ)
    environ["PATH_INFO"] = "/metrics"
    seen = {}

    def start_response(status, headers):
        seen["status"] = status

    body = b"".join(exporter.wsgi_app(environ, start_response))
    assert seen["status"].startswith("200")
    assert b"virk_frames_total" in body


def test_routes_mount_into_an_asgi_app(served):
    exporter, _, _ = served
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/-/ready", "query_string": b"", "headers": []}
    asyncio.run(exporter.asgi_app(scope, receive, send))
    assert sent[0]["status"] == 200
    scope["path"] = "/metrics"
    sent.clear()
    asyncio.run(exporter.asgi_app(scope, receive, send))
    assert b"virk_frames_total" in sent[1]["body"]


def test_property_metrics_choose_the_exported_properties():
    from virk_exporter.fingerprint.properties import PROPERTY_NAMES
    from virk_exporter.telemetry.metrics import exported_properties

    names = list(PROPERTY_NAMES)
    assert exported_properties(names, "all") == names
    assert exported_properties(names, "none") == []
    assert exported_properties(names, ("noise", "sharpness", "not_a_property")) == ["sharpness", "noise"]
    assert set(exported_properties([*names, "shift_px"], "core")) == set(CORE_PROPERTIES)
