"""The Alertmanager webhook and the incident link route: validation, credentials, limits,
model filtering, replica forwarding (over real HTTP) and the /incidents/<fingerprint> route."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest
from incident_helpers import MODEL, alert, context
from servers import free_port

from virk_exporter.config import ExporterConfig
from virk_exporter.incidents.bundle import build_bundle, bundle_key
from virk_exporter.incidents.http import handle_alerts, handle_incident
from virk_exporter.incidents.store import LazyStore, LocalStore
from virk_exporter.incidents.webhook import WebhookError, make_alert_payload, parse_notification
from virk_exporter.telemetry.metrics import CallerMetrics
from virk_exporter.http.server import Request, serve

TOKEN = "s3cret-token"

# What Alertmanager 0.25 really posts (nanosecond timestamps, all top-level fields).
REAL_PAYLOAD = {
    "receiver": "virk",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "VisionModelDrift", "model": MODEL, "source": "cam1", "instance": "127.0.0.1:10098"},
            "annotations": {"summary": "drift"},
            "startsAt": "2026-11-26T01:02:03.123456789Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph?g0.expr=x",
            "fingerprint": "5e1ee2a5b0c9d1f2",
        }
    ],
    "groupLabels": {"alertname": "VisionModelDrift"},
    "commonLabels": {"alertname": "VisionModelDrift"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "version": "4",
    "groupKey": '{}:{alertname="VisionModelDrift"}',
    "truncatedAlerts": 0,
}


class FakeExporter:
    """The attributes of Exporter the incident routes read (config is the real ExporterConfig)."""

    def __init__(self, tmp_path, **config) -> None:
        from prometheus_client import CollectorRegistry

        self.config = ExporterConfig(model=MODEL, store=str(tmp_path / "store"), **config)
        self.model = MODEL
        self.store = LazyStore(self.config.store)
        self.metrics = CallerMetrics(CollectorRegistry())
        self.submitted: list = []

    def submit_alert(self, notification) -> None:
        self.submitted.append(notification)


def post(exporter, body: bytes, headers: dict[str, str] | None = None):
    headers = {"content-type": "application/json", "content-length": str(len(body)), **(headers or {})}
    response = handle_alerts(exporter, Request("POST", "/api/v1/alerts", {}, headers, body, "127.0.0.1"))
    return response.status, json.loads(response.body)


def payload(**changes) -> bytes:
    return json.dumps({**REAL_PAYLOAD, **changes}).encode()


def test_parses_a_real_alertmanager_payload():
    n = parse_notification(payload())
    (a,) = n.alerts
    assert (n.receiver, n.status, a.fingerprint, a.labels["source"]) == ("virk", "firing", "5e1ee2a5b0c9d1f2", "cam1")
    assert a.starts_at.stamp() == "20261126T010203.123456789Z" and a.ends_at.zero
    assert a.key == ("5e1ee2a5b0c9d1f2", "20261126T010203.123456789Z")


@pytest.mark.parametrize(
    "body,message",
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (payload(version="3"), "unsupported webhook version '3'"),
        (json.dumps({k: v for k, v in REAL_PAYLOAD.items() if k != "alerts"}).encode(), "missing field 'alerts'"),
        (payload(alerts="x"), "field 'alerts' must be list"),
        (payload(status="pending"), "status must be 'firing' or 'resolved'"),
        (payload(truncatedAlerts="many"), "field 'truncatedAlerts' must be int"),
        (payload(alerts=[{**REAL_PAYLOAD["alerts"][0], "startsAt": "yesterday"}]), "alerts[0].startsAt: 'yesterday' is not an RFC 3339"),
        (payload(alerts=[{k: v for k, v in REAL_PAYLOAD["alerts"][0].items() if k != "fingerprint"}]), "alerts[0]: missing field 'fingerprint'"),
        (payload(alerts=[{**REAL_PAYLOAD["alerts"][0], "fingerprint": "../../etc"}]), "fingerprint '../../etc' must be"),
        (payload(alerts=[{**REAL_PAYLOAD["alerts"][0], "labels": {"model": 3}}]), "labels['model'] must be a string"),
    ],
)
def test_malformed_payloads_are_400_with_the_reason(tmp_path, body, message):
    exporter = FakeExporter(tmp_path)
    status, answer = post(exporter, body)
    assert status == 400 and message in answer["error"]
    assert exporter.submitted == []


def test_credentials(tmp_path):
    exporter = FakeExporter(tmp_path, webhook_token=TOKEN, webhook_basic_auth=("am", "pw"))
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic " + base64.b64encode(b"am:nope").decode()}):
        response = handle_alerts(exporter, Request("POST", "/api/v1/alerts", {}, headers, payload(), "127.0.0.1"))
        assert response.status == 401 and "WWW-Authenticate" in response.headers
    assert exporter.submitted == []
    assert post(exporter, payload(), {"authorization": f"Bearer {TOKEN}"})[0] == 202
    assert post(exporter, payload(), {"authorization": "Basic " + base64.b64encode(b"am:pw").decode()})[0] == 202
    assert len(exporter.submitted) == 2


def test_body_limit(tmp_path):
    exporter = FakeExporter(tmp_path, webhook_max_bytes=2048)
    big = payload(commonAnnotations={"x": "y" * 4096})
    status, answer = post(exporter, big)
    assert status == 413 and "2048" in answer["error"]
    assert exporter.submitted == []


def test_only_this_models_alerts_are_accepted(tmp_path):
    exporter = FakeExporter(tmp_path)
    other = {**REAL_PAYLOAD["alerts"][0], "labels": {"model": "someone-else"}, "fingerprint": "0000000000000001"}
    status, answer = post(exporter, payload(alerts=[other]))
    assert status == 422 and "someone-else" in answer["ignored"][0]["reason"]
    assert exporter.submitted == []
    status, answer = post(exporter, payload(alerts=[REAL_PAYLOAD["alerts"][0], other]))
    assert status == 202 and answer["accepted"] == ["5e1ee2a5b0c9d1f2"]
    assert [a.fingerprint for a in exporter.submitted[0].alerts] == ["5e1ee2a5b0c9d1f2"]


def _alert_for(instance: str, fingerprint: str) -> dict:
    raw = json.loads(make_alert_payload(MODEL, labels={"instance": instance}, fingerprint=fingerprint))
    return raw


def test_forwarding_to_allow_listed_peers_only(tmp_path):
    """Two replicas over real HTTP: A forwards B's alert to B; unknown instances are not relayed;
    a forwarded notification is never forwarded again (no loops)."""
    port_a, port_b = free_port(), free_port()
    a = FakeExporter(tmp_path / "a", instance="a:10098", webhook_token=TOKEN, peers={"b:10098": f"http://127.0.0.1:{port_b}"})
    b = FakeExporter(tmp_path / "b", instance="b:10098", webhook_token=TOKEN, peers={"a:10098": f"http://127.0.0.1:{port_a}"})
    servers = [serve(a, port=port_a), serve(b, port=port_b)]
    try:
        def send(port: int, body: dict, extra: dict | None = None) -> tuple[int, dict]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/alerts",
                data=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **(extra or {})},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        status, answer = send(port_a, _alert_for("b:10098", "00000000000000bb"))
        assert status == 202 and answer["forwarded"] == {"b:10098": f"http://127.0.0.1:{port_b}"}, answer
        assert a.submitted == [] and [x.alerts[0].fingerprint for x in b.submitted] == ["00000000000000bb"]

        status, answer = send(port_a, _alert_for("a:10098", "00000000000000aa"))
        assert status == 202 and answer["accepted"] == ["00000000000000aa"] and len(b.submitted) == 1

        status, answer = send(port_a, _alert_for("evil.example:80", "00000000000000ee"))
        assert status == 422 and "nor an allowed peer" in answer["ignored"][0]["reason"]

        status, answer = send(port_b, _alert_for("a:10098", "00000000000000ff"), {"X-Virk-Forwarded": "1"})
        assert status == 422 and "not this replica" in answer["ignored"][0]["reason"]
        assert [len(a.submitted), len(b.submitted)] == [1, 1]
    finally:
        for server in servers:
            server.shutdown()


def test_forward_failure_is_502_so_alertmanager_retries(tmp_path):
    dead = free_port()
    a = FakeExporter(tmp_path, instance="a:10098", peers={"b:10098": f"http://127.0.0.1:{dead}"})
    status, answer = post(a, json.dumps(_alert_for("b:10098", "00000000000000bb")).encode())
    assert status == 502 and "unreachable" in answer["error"]


# --- GET /incidents/<fingerprint> ------------------------------------------------------------


def _get(exporter, path: str, headers: dict | None = None, remote: str = "10.0.0.7", query: dict | None = None):
    return handle_incident(exporter, Request("GET", path, query or {}, headers or {}, b"", remote))


def test_incident_route(tmp_path):
    exporter = FakeExporter(tmp_path, webhook_token=TOKEN)
    a = alert()
    data, _ = build_bundle(a, MODEL, context(n_frames=4))
    LocalStore(tmp_path / "store").put(bundle_key(MODEL, a), data, {"model": MODEL})
    auth = {"authorization": f"Bearer {TOKEN}"}

    assert _get(exporter, f"/incidents/{a.fingerprint}").status == 401
    assert _get(exporter, f"/incidents/{a.fingerprint}", {"authorization": "Bearer nope"}).status == 401
    for bad in ("/incidents/../../etc/passwd", "/incidents/..%2F..%2Fetc", "/incidents/abc/../../x", "/incidents/", "/incidents/abc/notastamp"):
        response = _get(exporter, bad, auth)
        assert response.status == 400, bad
    assert _get(exporter, "/incidents/0000000000000000", auth).status == 404

    response = _get(exporter, f"/incidents/{a.fingerprint}", auth)
    stamp = a.starts_at.stamp()
    assert response.status == 302 and response.headers["Location"] == f"/incidents/{a.fingerprint}/{stamp}"
    listing = json.loads(_get(exporter, f"/incidents/{a.fingerprint}", auth, query={"format": ["json"]}).body)
    assert [b["startsAt"] for b in listing["bundles"]] == [stamp]
    response = _get(exporter, response.headers["Location"], auth)
    assert response.status == 200 and response.body == data and response.content_type == "application/zip"


def test_incident_route_without_credentials_is_loopback_only(tmp_path):
    exporter = FakeExporter(tmp_path)
    assert _get(exporter, "/incidents/0000000000000000", remote="10.0.0.7").status == 401
    assert _get(exporter, "/incidents/0000000000000000", remote="127.0.0.1").status == 404


def test_errors_carry_status():
    with pytest.raises(WebhookError) as caught:
        parse_notification(b"")
    assert caught.value.status == 400

