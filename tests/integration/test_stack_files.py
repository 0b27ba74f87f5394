"""The shipped stack files (prometheus/, grafana/, compose.yaml) checked with the real tools:
promtool, amtool, a running Alertmanager, docker-compose and grafana-foundation-sdk.

A missing tool is a failure, never a skip: `make test` installs them (Debian packages
prometheus, prometheus-alertmanager, docker-compose; pip grafana-foundation-sdk).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from virk_exporter.http.runbook import render_runbook, runbook_text

from servers import RecordingReceiver, binary, start_alertmanager, wait_until
from stack_queries import (
    GRAFANA,
    GRAFANA_GLOBALS,
    PROMETHEUS,
    PROMETHEUS_SYNTHETIC,
    ROOT,
    RULES,
    all_panels,
    dashboard_queries,
    exporter_metric_names,
    load_dashboards,
    load_rules,
    promql_metric_names,
    recording_rule_names,
    rule_expressions,
    variable_query,
    variables_used,
)

ALERTMANAGER_YML = PROMETHEUS / "alertmanager.yml"
TEMPLATES = PROMETHEUS / "templates"


def run(argv: list[str], cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def tool(name: str) -> str:
    """A command-line tool from PATH (or the venv); the test fails when it is missing."""
    return binary(name)


# --- Prometheus: config, rules and their unit tests -------------------------------------------


def test_promtool_check_config():
    result = run([tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["virk.rules.yml"]
    targets = [t for job in config["scrape_configs"] if job["job_name"] == "virk" for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["demo:10098"]
    am = [t for a in config["alerting"]["alertmanagers"] for sc in a["static_configs"] for t in sc["targets"]]
    assert am == ["alertmanager:9093"]


def test_promtool_check_rules():
    result = run([tool("promtool"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.slow
def test_promtool_rule_unit_tests_pass():
    tests = sorted(str(p) for p in (PROMETHEUS / "tests").glob("*.yml"))
    assert tests, "no promtool rule tests in prometheus/tests"
    result = run([tool("promtool"), "test", "rules", *tests])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


@pytest.mark.slow
def test_promtool_rule_unit_tests_catch_a_missing_for(tmp_path):
    """The unit tests are not vacuous: without `for:` the noisy-window and pending cases fail."""
    rules = RULES.read_text()
    assert re.search(r"alert: VisionModelDrift\n(?:.*\n){1,8}\s+for: 1m\n", rules), "VisionModelDrift should wait `for: 1m`"
    (tmp_path / "virk.rules.yml").write_text(rules.replace("for: 1m", "for: 0s", 1))
    (tmp_path / "tests").mkdir()
    for test in (PROMETHEUS / "tests").glob("*.yml"):
        shutil.copy(test, tmp_path / "tests" / test.name)
    result = run([tool("promtool"), "test", "rules", *map(str, (tmp_path / "tests").glob("*.yml"))])
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "alertname: VisionModelDrift, time: 45s" in output  # fired before its `for`
    assert 'source="cam-2"' in output  # the single noisy window paged


def test_drift_alert_labels_and_annotations():
    rules = {r.get("alert"): r for g in load_rules()["groups"] for r in g["rules"] if "alert" in r}
    drift = rules["VisionModelDrift"]
    # Capture causes page, whichever detector sees them; a content change is a ticket.
    assert drift["expr"].strip() == 'max without (detector) (virk_drift_detected{fingerprint!~"content|none"}) == 1'
    assert drift["labels"]["severity"] == "critical"
    content = rules["VisionModelContentChange"]
    assert content["expr"].strip() == 'max without (detector) (virk_drift_detected{fingerprint="content"}) == 1'
    assert content["labels"]["severity"] == "ticket"
    for key in ("summary", "description", "cause", "cause_description", "evidence", "dashboard", "runbook_url"):
        assert key in drift["annotations"], key
    # Every alert links its own section of the runbook page the exporter serves (docs/runbook.md).
    anchors = set(re.findall(r'<h2 id="([^"]+)">', render_runbook(runbook_text()).body.decode()))
    for name, rule in rules.items():
        if name is None:
            continue
        assert rule["annotations"]["runbook_url"] == f"http://localhost:10098/runbook#{name.lower()}", name
        assert name.lower() in anchors, f"docs/runbook.md has no section '## {name}'"
    # Every cause of the vocabulary (docs/design.md) gets words in the annotation.
    for cause in ("blur", "noise", "brightness", "contrast", "color_shift", "weather", "glare", "compression",
                  "resolution", "camera_shift", "occlusion", "frozen"):
        assert f'eq $labels.fingerprint "{cause}"' in drift["annotations"]["cause_description"], cause
    health = {"VirkExporterDown", "VirkNoFrames", "VirkFramesDropped", "VirkMonitoringErrors", "VirkMonitoringStalled",
              "VirkIncidentBundleFailed", "VirkIncidentBundlesSpooling"}
    assert health <= set(rules)
    assert all(rules[name]["labels"]["severity"] == "warning" for name in health)


def _accuracy_alert() -> dict:
    return next(r for g in load_rules()["groups"] for r in g["rules"] if r.get("alert") == "VisionModelAccuracyDropAfterDrift")


def test_accuracy_drop_alert_reads_late_labels_and_past_drift_alerts():
    alert = _accuracy_alert()
    assert alert["for"] == "15m"
    assert alert["labels"]["severity"] == "ticket"
    expr = alert["expr"]
    # Accuracy over the last hour against the 7-day baseline, a minimum of scored labels in both,
    # and a VisionModelDrift alert of the same source within 7 days.
    for name in ("model_source:virk_label_accuracy:ratio_rate1h", "model_source:virk_label_accuracy:ratio_rate7d",
                 "model_source:virk_labels_scored:increase1h", "model_source:virk_labels_scored:increase7d"):
        assert name in expr and name in recording_rule_names(), name
    assert "> 0.05" in expr
    assert re.search(r'max_over_time\(ALERTS\{alertname="VisionModelDrift", alertstate="firing"\}\[7d\]\)', expr)
    assert "on (model, source)" in expr
    for key in ("summary", "description", "accuracy", "dashboard"):
        assert key in alert["annotations"], key
    assert alert["annotations"]["dashboard"].startswith("d/virk-overview/")
    # Accuracy counts only scored labels (duplicate, expired, unknown, no_prediction are not).
    rules = {r["record"]: r["expr"] for g in load_rules()["groups"] for r in g["rules"] if "record" in r}
    for name in ("model_source:virk_label_accuracy:ratio_rate1h", "model_source:virk_label_accuracy:ratio_rate7d",
                 "model_source:virk_labels_scored:increase1h", "model_source:virk_labels_scored:increase7d"):
        assert 'outcome=~"correct|incorrect"' in rules[name], name


@pytest.mark.parametrize(
    "mutation, old, new, expected",
    [
        # Without the drift condition an accuracy drop alone (cam-2) would open a ticket.
        ("no drift condition", '\n            and on (model, source) max_over_time(ALERTS{alertname="VisionModelDrift", alertstate="firing"}[7d])', "",
         'source="cam-2"'),
        # Without the minimum, 90 labels an hour (cam-3) would be enough.
        ("no label minimum", "            and on (model, source) model_source:virk_labels_scored:increase1h >= 100\n", "", 'source="cam-3"'),
        # Without `for:` it fires while the test expects it pending.
        ("no for", "        for: 15m\n", "        for: 0s\n", "alertname: VisionModelAccuracyDropAfterDrift, time: 2h25m"),
    ],
)
@pytest.mark.slow
def test_promtool_accuracy_alert_tests_catch_a_weaker_rule(tmp_path, mutation, old, new, expected):
    rules = RULES.read_text()
    assert rules.count(old) == 1, mutation
    (tmp_path / "virk.rules.yml").write_text(rules.replace(old, new))
    (tmp_path / "tests").mkdir()
    for test in (PROMETHEUS / "tests").glob("*.yml"):
        shutil.copy(test, tmp_path / "tests" / test.name)
    result = run([tool("promtool"), "test", "rules", *map(str, (tmp_path / "tests").glob("*.yml"))])
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{mutation}: the unit tests still pass"
    assert "VisionModelAccuracyDropAfterDrift" in output and expected in output, output[-3000:]


# --- Metric names: nothing the exporter does not export ---------------------------------------


def test_metric_name_extractor_sees_names():
    assert promql_metric_names('sum by (model) (rate(virk_frames_totl{model=~"$model"}[$__rate_interval])) / on (model) up') == {"virk_frames_totl", "up"}
    assert promql_metric_names('label_values(virk_drift_p_value{model="$model"}, source)') == {"virk_drift_p_value"}


def test_rules_and_dashboards_name_only_exported_metrics():
    exported = exporter_metric_names()
    assert {"virk_frames_total", "virk_drift_detected", "virk_predict_duration_seconds_bucket", "virk_incident_bundles_total"} <= exported
    allowed = exported | recording_rule_names() | PROMETHEUS_SYNTHETIC
    unknown = []
    for name, expr in rule_expressions():
        unknown += [(f"rule {name}", m) for m in promql_metric_names(expr) - allowed]
    for file, dashboard in load_dashboards().items():
        for query in dashboard_queries(dashboard):
            unknown += [(f"{file} {query['where']}", m) for m in promql_metric_names(query["expr"]) - allowed]
        for variable in dashboard["templating"]["list"]:
            if variable.get("type") == "query":
                unknown += [(f"{file} variable {variable['name']}", m) for m in promql_metric_names(variable_query(variable)) - allowed]
    assert not unknown, f"names the exporter does not export (virk_exporter/telemetry/metrics.py): {unknown}"
    # Recording rules read only exporter metrics (not other recordings that might vanish).
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                assert promql_metric_names(rule["expr"]) <= exported, rule["record"]


# --- Alertmanager: config, routing, page text, real delivery ----------------------------------


def test_amtool_check_config():
    result = run([tool("amtool"), "check-config", str(ALERTMANAGER_YML)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout


@pytest.mark.parametrize(
    "labels, receivers",
    [
        (["alertname=VisionModelDrift", "model=detector-v3", "source=cam-1", "fingerprint=blur", "severity=critical"], "virk-exporter,virk-pager"),
        (["alertname=VirkFramesDropped", "model=detector-v3", "severity=warning"], "virk-pager"),
        (["alertname=VirkIncidentBundleFailed", "model=detector-v3", "severity=warning"], "virk-pager"),
        (["alertname=VisionModelAccuracyDropAfterDrift", "model=detector-v3", "source=cam-1", "severity=ticket"], "virk-pager"),
        # A content change: a bundle from the exporter, then the ticket route (not the page route).
        (["alertname=VisionModelContentChange", "model=detector-v3", "source=cam-1", "fingerprint=content", "severity=ticket"], "virk-exporter,virk-pager"),
    ],
)
def test_amtool_routes(labels, receivers):
    result = run([tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}", *labels])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def _render(template_text: str, data: dict, tmp_path: Path) -> str:
    (tmp_path / "data.json").write_text(json.dumps(data))
    result = run(
        [tool("amtool"), "template", "render", f"--template.glob={TEMPLATES}/*.tmpl", f"--template.data={tmp_path / 'data.json'}", f"--template.text={template_text}"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _drift_alert(source: str, cause: str, fingerprint: str, status: str = "firing") -> dict:
    return {
        "status": status,
        "labels": {"alertname": "VisionModelDrift", "model": "detector-v3", "source": source, "fingerprint": cause, "severity": "critical"},
        "annotations": {
            "summary": f"detector-v3: input drift on source {source}, likely cause: {cause}",
            "cause_description": "frames are blurrier than the reference (defocus, motion blur or a dirty lens)",
            "evidence": "p-value 0.0099; mmd statistic 0.0412 (threshold 0.0123); cause scores: blur 0.91 noise 0.20 ",
            "dashboard": f"d/virk-source/virk-source?var-model=detector-v3&var-source={source}",
        },
        "startsAt": "2026-11-26T00:10:00Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-26T00:20:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }


def test_amtool_template_render_page_has_bundle_link(tmp_path):
    data = {
        "receiver": "virk-pager",
        "status": "firing",
        "externalURL": "http://localhost:9093",
        "groupLabels": {"alertname": "VisionModelDrift", "model": "detector-v3"},
        "commonLabels": {"alertname": "VisionModelDrift", "model": "detector-v3", "severity": "critical"},
        "commonAnnotations": {},
        "alerts": [_drift_alert("cam-1", "blur", "4a7c0e2f9d1b3c55"), _drift_alert("cam-2", "camera_shift", "0123456789abcdef", "resolved")],
    }
    text = _render('{{ template "virk.page.text" . }}', data, tmp_path)
    assert "Model:     detector-v3" in text
    assert "Source:    cam-1" in text
    assert "Cause:     blur: frames are blurrier" in text
    assert "Evidence:  p-value 0.0099; mmd statistic 0.0412 (threshold 0.0123)" in text
    assert "Bundle:    http://localhost:10098/incidents/4a7c0e2f9d1b3c55" in text
    assert "Dashboard: http://localhost:3000/d/virk-source/virk-source?var-model=detector-v3&var-source=cam-1" in text
    assert "Resolved:\n- VisionModelDrift detector-v3 / cam-2 (camera_shift): http://localhost:10098/incidents/0123456789abcdef" in text
    title = _render('{{ template "virk.page.title" . }}', data, tmp_path)
    assert title.strip() == "[FIRING:1] VisionModelDrift detector-v3: cam-1 blur"


def test_amtool_template_render_accuracy_ticket(tmp_path):
    """An alert without a cause (no bundle): summary, description, accuracy and dashboard link."""
    alert = {
        "status": "firing",
        "labels": {"alertname": "VisionModelAccuracyDropAfterDrift", "model": "detector-v3", "source": "cam-1", "severity": "ticket"},
        "annotations": {
            "summary": "detector-v3: accuracy on source cam-1 is 20% below its baseline after a drift alert",
            "description": "Late labels of detector-v3 on source cam-1: ...",
            "accuracy": "last hour 70%, 7-day baseline 90% (600 labels in the hour)",
            "dashboard": "d/virk-overview/virk-overview?var-model=detector-v3&var-source=cam-1",
        },
        "startsAt": "2026-11-26T00:10:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "1111111111111111",
    }
    data = {"receiver": "virk-pager", "status": "firing", "externalURL": "http://localhost:9093",
            "groupLabels": {"alertname": "VisionModelAccuracyDropAfterDrift", "model": "detector-v3"},
            "commonLabels": alert["labels"], "commonAnnotations": {}, "alerts": [alert]}
    text = _render('{{ template "virk.page.text" . }}', data, tmp_path)
    assert text.startswith("VisionModelAccuracyDropAfterDrift (ticket): detector-v3: accuracy on source cam-1 is 20% below")
    assert "Accuracy:  last hour 70%, 7-day baseline 90% (600 labels in the hour)\n" in text
    assert "Dashboard: http://localhost:3000/d/virk-overview/virk-overview?var-model=detector-v3&var-source=cam-1" in text
    assert "/incidents/" not in text  # no bundle for this alert
    title = _render('{{ template "virk.page.title" . }}', data, tmp_path)
    assert title.strip() == "[FIRING:1] VisionModelAccuracyDropAfterDrift detector-v3: " + alert["annotations"]["summary"]


def _local_alertmanager_config(tmp_path: Path, exporter_url: str, pager_url: str, token: str) -> str:
    """The shipped alertmanager.yml with only what must change here: receiver URLs, secret
    files, template path, and waits shortened so the test takes seconds."""
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    (tmp_path / "webhook_token").write_text(token)
    (tmp_path / "routing_key").write_text("test-routing-key")
    config["templates"] = [str(TEMPLATES / "*.tmpl")]
    receivers = {r["name"]: r for r in config["receivers"]}
    webhook = receivers["virk-exporter"]["webhook_configs"][0]
    assert webhook["url"] == "http://demo:10098/api/v1/alerts"
    assert webhook["http_config"]["authorization"]["type"] == "Bearer"
    webhook["url"] = f"{exporter_url}/api/v1/alerts"
    webhook["http_config"]["authorization"]["credentials_file"] = str(tmp_path / "webhook_token")
    pager = receivers["virk-pager"]["pagerduty_configs"][0]
    pager["url"] = f"{pager_url}/v2/enqueue"
    pager["routing_key_file"] = str(tmp_path / "routing_key")
    for route in [config["route"], *config["route"]["routes"]]:
        route["group_wait"] = "1s"
        route["group_interval"] = "1s"
    return yaml.safe_dump(config)


def _post_alerts(alertmanager_url: str, alerts: list[dict]) -> None:
    request = urllib.request.Request(
        f"{alertmanager_url}/api/v2/alerts", data=json.dumps(alerts).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


@pytest.mark.integration
def test_alertmanager_pages_once_with_bundle_links_and_calls_webhook(tmp_path):
    """Real Alertmanager with the shipped config: two drift alerts of one model (a blur on cam-1,
    a camera bump on cam-2) reach the exporter webhook with the bearer token, one alert per
    notification, and make exactly one page whose text links each alert's bundle by the
    fingerprint Alertmanager computed."""
    exporter, pager = RecordingReceiver(reply=b'{"status":"success"}'), RecordingReceiver(reply=b'{"status":"success"}')
    token = "stack-test-token"
    server = start_alertmanager(tmp_path / "am", _local_alertmanager_config(tmp_path, exporter.url, pager.url, token))
    try:
        annotations = {
            "summary": "drift",
            "cause_description": "frames are blurrier than the reference",
            "evidence": "p-value 0.001; cause scores: blur 0.91 ",
            "dashboard": "d/virk-source/virk-source?var-model=detector-v3&var-source=cam-1",
        }
        alerts = [
            {"labels": {"alertname": "VisionModelDrift", "model": "detector-v3", "source": source, "fingerprint": cause, "severity": "critical",
                        "job": "virk", "instance": "127.0.0.1:10098"},
             "annotations": annotations, "generatorURL": "http://prometheus/graph"}
            for source, cause in (("cam-1", "blur"), ("cam-2", "camera_shift"))
        ]
        _post_alerts(server.url, alerts)
        wait_until(lambda: len(exporter.requests) >= 2 and len(pager.requests) >= 1, 20, what="webhook and page deliveries")
        time.sleep(2.5)  # more group_interval ticks: no second page may follow

        fingerprints = {}
        for request in exporter.requests:
            assert request["path"] == "/api/v1/alerts"
            assert request["headers"].get("Authorization") == f"Bearer {token}"
            assert request["body"]["version"] == "4"
            assert len(request["body"]["alerts"]) == 1  # grouped per (model, source, fingerprint)
            alert = request["body"]["alerts"][0]
            fingerprints[alert["labels"]["source"]] = alert["fingerprint"]
        assert set(fingerprints) == {"cam-1", "cam-2"}

        assert len(pager.requests) == 1, [r["body"].get("payload", {}).get("summary") for r in pager.requests]
        page = pager.requests[0]["body"]
        assert pager.requests[0]["path"] == "/v2/enqueue"
        assert page["routing_key"] == "test-routing-key"
        assert page["event_action"] == "trigger"
        assert page["payload"]["severity"] == "critical"
        assert page["payload"]["summary"].startswith("[FIRING:2] VisionModelDrift detector-v3: ")
        text = page["payload"]["custom_details"]["page"]
        for source, cause in (("cam-1", "blur"), ("cam-2", "camera_shift")):
            assert f"Source:    {source}" in text
            assert f"Cause:     {cause}: " in text
            assert f"Bundle:    http://localhost:10098/incidents/{fingerprints[source]}" in text
        assert "Evidence:  p-value 0.001; cause scores: blur 0.91" in text
        assert page["links"][0]["href"] in {f"http://localhost:10098/incidents/{fp}" for fp in fingerprints.values()}
    finally:
        server.stop()
        exporter.close()
        pager.close()


@pytest.mark.integration
def test_alertmanager_sends_an_accuracy_ticket_as_pagerduty_info(tmp_path):
    """PagerDuty accepts only critical/error/warning/info: a `ticket` goes out as `info`, and the
    exporter's webhook (bundles) does not get it."""
    exporter, pager = RecordingReceiver(reply=b'{"status":"success"}'), RecordingReceiver(reply=b'{"status":"success"}')
    server = start_alertmanager(tmp_path / "am", _local_alertmanager_config(tmp_path, exporter.url, pager.url, "stack-test-token"))
    try:
        _post_alerts(server.url, [{
            "labels": {"alertname": "VisionModelAccuracyDropAfterDrift", "model": "detector-v3", "source": "cam-1", "severity": "ticket"},
            "annotations": {"summary": "detector-v3: accuracy on source cam-1 is 20% below its baseline after a drift alert",
                            "description": "late labels", "accuracy": "last hour 70%, 7-day baseline 90% (600 labels in the hour)"},
            "generatorURL": "http://prometheus/graph",
        }])
        wait_until(lambda: pager.requests, 20, what="the ticket's delivery")
        time.sleep(1.5)
        assert not exporter.requests
        assert len(pager.requests) == 1
        page = pager.requests[0]["body"]
        assert page["payload"]["severity"] == "info"
        assert page["payload"]["summary"].startswith("[FIRING:1] VisionModelAccuracyDropAfterDrift detector-v3: ")
        assert "Accuracy:  last hour 70%" in page["payload"]["custom_details"]["page"]
    finally:
        server.stop()
        exporter.close()
        pager.close()


@pytest.mark.integration
def test_alertmanager_inhibits_health_alerts_of_a_replica_that_is_down(tmp_path):
    """VirkExporterDown silences the same replica's VirkNoFrames/VirkMonitoringStalled/
    VirkFramesDropped (`equal: [instance]`), and only that replica's: the label sets are the ones
    the rules produce (promtool tests check those)."""
    server = start_alertmanager(tmp_path / "am", _local_alertmanager_config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9", "t"))
    try:
        down = {"job": "virk", "instance": "10.0.0.1:10098"}
        other = {"job": "virk", "instance": "10.0.0.2:10098"}
        alerts = [{"labels": {"alertname": "VirkExporterDown", "severity": "warning", **down}}]
        for alertname in ("VirkNoFrames", "VirkMonitoringStalled", "VirkFramesDropped"):
            alerts.append({"labels": {"alertname": alertname, "model": "detector-v3", "severity": "warning", **down}})
        # The other replica: no frames and drops (its worker is not stalled, so nothing inhibits them).
        for alertname in ("VirkNoFrames", "VirkFramesDropped"):
            alerts.append({"labels": {"alertname": alertname, "model": "detector-v3", "severity": "warning", **other}})
        _post_alerts(server.url, [{**a, "annotations": {"summary": "x"}, "generatorURL": "http://prometheus/graph"} for a in alerts])

        def states():
            with urllib.request.urlopen(f"{server.url}/api/v2/alerts", timeout=5) as response:
                listed = json.loads(response.read())
            got = {(a["labels"]["alertname"], a["labels"]["instance"]): a["status"]["state"] for a in listed}
            return got if len(got) == len(alerts) and "unprocessed" not in got.values() else None

        # Alertmanager marks an alert suppressed when its group's notification pipeline runs (after
        # group_wait, 1 s here); until then a processed, inhibited alert lists as active.
        inhibited = [(n, down["instance"]) for n in ("VirkNoFrames", "VirkMonitoringStalled", "VirkFramesDropped")]
        wait_until(lambda: (got := states()) and all(got[k] != "active" for k in inhibited), 20, what="Alertmanager to process the alerts and run the inhibition")
        got = states()
        assert got[("VirkExporterDown", down["instance"])] == "active"
        for alertname in ("VirkNoFrames", "VirkMonitoringStalled", "VirkFramesDropped"):
            assert got[(alertname, down["instance"])] == "suppressed", got
        for alertname in ("VirkNoFrames", "VirkFramesDropped"):
            assert got[(alertname, other["instance"])] == "active", got
    finally:
        server.stop()


# --- compose.yaml ------------------------------------------------------------------------------


def test_compose_config_validates(tmp_path):
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is not installed: apt-get install -y --no-install-recommends docker-compose (make test does)")
    result = run([compose, "--env-file", str(ROOT / ".env.example"), "-f", str(ROOT / "compose.yaml"), "config"])
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"demo", "prometheus", "alertmanager", "grafana", "minio", "jaeger", "pager"} <= set(services)
    demo = services["demo"]
    assert demo["build"]["dockerfile"] == "Dockerfile" and (ROOT / "Dockerfile").exists()
    assert demo["command"] == ["demo", "--host", "0.0.0.0", "--port", "10098", "--duration", "0", "--store", "s3://virk-incidents/demo", "--no-self-page"]
    env = demo["environment"]
    assert env["VIRK_S3_ENDPOINT"] == "http://minio:9000"
    assert env["VIRK_S3_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert env["VIRK_S3_SECRET_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    assert env["VIRK_WEBHOOK_TOKEN"] == services["alertmanager"]["environment"]["VIRK_WEBHOOK_TOKEN"]
    assert "--console-address" in services["minio"]["command"]
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    # Every bind mount names a path of this repository that exists.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts missing {source}"
    # Without credentials compose refuses to start (no default passwords).
    (tmp_path / "empty.env").write_text("")
    bare = subprocess.run(
        [compose, "--env-file", str(tmp_path / "empty.env"), "-f", str(ROOT / "compose.yaml"), "config"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert bare.returncode != 0 and "set MINIO_ROOT_USER" in bare.stderr, bare.stderr


def test_compose_mounts_match_shipped_paths():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    # Prometheus and Alertmanager find their configs where the shipped files expect them.
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert "./prometheus:/etc/alertmanager:ro" in services["alertmanager"]["volumes"]
    entry = " ".join(services["alertmanager"]["entrypoint"])
    alertmanager = yaml.safe_load(ALERTMANAGER_YML.read_text())
    for receiver in alertmanager["receivers"]:
        for config in receiver.get("webhook_configs", []):
            assert config["http_config"]["authorization"]["credentials_file"] in entry
        for config in receiver.get("pagerduty_configs", []):
            assert config["routing_key_file"] in entry
    # Grafana's dashboard provider reads the folder compose mounts the dashboards into.
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "virk.yml").read_text())["providers"][0]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in services["grafana"]["volumes"]


# --- Grafana ---------------------------------------------------------------------------------


def _json_diff(original, round_trip, path="$") -> list[str]:
    """Keys or values of ``original`` that did not survive the SDK round trip."""
    if isinstance(original, dict):
        if not isinstance(round_trip, dict):
            return [f"{path}: object became {type(round_trip).__name__}"]
        out = []
        for key, value in original.items():
            if key not in round_trip:
                out.append(f"{path}.{key}: unknown to the Grafana schema (dropped by the SDK)")
            else:
                out += _json_diff(value, round_trip[key], f"{path}.{key}")
        return out
    if isinstance(original, list):
        if not isinstance(round_trip, list) or len(original) != len(round_trip):
            return [f"{path}: list changed"]
        return [d for i, (a, b) in enumerate(zip(original, round_trip)) for d in _json_diff(a, b, f"{path}[{i}]")]
    return [] if original == round_trip else [f"{path}: {original!r} became {round_trip!r}"]


def _sdk_round_trip(dashboard: dict) -> dict:
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()  # typed panel options, field config and Prometheus queries
    return json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder))


def test_dashboards_exist():
    assert set(load_dashboards()) == {"virk-overview.json", "virk-source.json"}


@pytest.mark.parametrize("file", ["virk-overview.json", "virk-source.json"])
def test_dashboard_round_trips_through_grafana_foundation_sdk(file):
    try:
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        pytest.fail("grafana-foundation-sdk is not installed: pip install 'grafana-foundation-sdk==1769699379!11.6.0' (make test does)")
    # `__inputs` is the import envelope (what Grafana's "Import dashboard" asks for), not part of
    # the dashboard schema the SDK models: compare the dashboard itself.
    dashboard = {k: v for k, v in load_dashboards()[file].items() if k != "__inputs"}
    differences = _json_diff(dashboard, _sdk_round_trip(dashboard))
    assert not differences, "\n".join(differences)


def test_round_trip_catches_a_typo():
    dashboard = load_dashboards()["virk-overview.json"]
    panel = next(p for p in dashboard["panels"] if p["type"] == "timeseries")
    panel["options"]["legend"]["placment"] = "bottom"
    panel["targets"][0]["legendFormt"] = "{{model}}"
    differences = _json_diff(dashboard, _sdk_round_trip(dashboard))
    assert any("legend.placment" in d for d in differences) and any("legendFormt" in d for d in differences)


def _panel(file: str, title: str) -> dict:
    panels = [p for p in all_panels(load_dashboards()[file]) if p.get("title") == title]
    assert len(panels) == 1, f"{file}: {len(panels)} panels titled {title!r}"
    return panels[0]


def _field_settings(panel: dict, ref: str) -> dict:
    """Field config of a query's series: the defaults, then the overrides matching its refId."""
    settings = {k: v for k, v in panel["fieldConfig"]["defaults"].items() if k != "custom"}
    settings.update({f"custom.{k}": v for k, v in panel["fieldConfig"]["defaults"].get("custom", {}).items()})
    for override in panel["fieldConfig"]["overrides"]:
        if override["matcher"] == {"id": "byFrameRefID", "options": ref}:
            settings.update({p["id"]: p["value"] for p in override["properties"]})
    return settings


def test_overview_drift_and_accuracy_on_one_time_axis():
    panel = _panel("virk-overview.json", "Drift and accuracy")
    assert panel["type"] == "timeseries"
    targets = {t["refId"]: t for t in panel["targets"]}
    drift = [r for r, t in targets.items() if "virk_drift_detected" in t["expr"]]
    accuracy = [r for r, t in targets.items() if "virk_label_accuracy" in t["expr"]]
    assert drift and accuracy
    for ref in accuracy:  # accuracy on its own right-hand axis, 0..1
        settings = _field_settings(panel, ref)
        assert settings.get("custom.axisPlacement") == "right", ref
        assert (settings.get("min"), settings.get("max")) == (0, 1), ref
        assert settings.get("unit") == "percentunit", ref
    for ref in drift:
        assert _field_settings(panel, ref).get("custom.axisPlacement") != "right", ref
    assert any("model_source:virk_label_accuracy:ratio_rate1h" in targets[r]["expr"] for r in accuracy)


def test_overview_labels_by_outcome_and_drifting_slices():
    labels = _panel("virk-overview.json", "Labels by outcome")
    (target,) = labels["targets"]
    assert "virk_labels_total" in target["expr"] and re.search(r"by \([^)]*\boutcome\b", target["expr"])
    assert "{{outcome}}" in target["legendFormat"]
    slices = _panel("virk-overview.json", "Drifting slices")
    (target,) = slices["targets"]
    assert slices["type"] in {"bargauge", "table"}
    assert target["expr"].startswith("topk(10, ") and "virk_slice_drift_score" in target["expr"]
    assert target["instant"] is True and "{{slice}}" in target["legendFormat"]
    assert "virk_slice_drift_score" in _panel("virk-source.json", "Drifting slices")["targets"][0]["expr"]


def test_source_image_properties_against_the_reference_band():
    panel = next(p for p in all_panels(load_dashboards()["virk-source.json"]) if p.get("repeat") == "property")
    targets = {t["refId"]: t for t in panel["targets"]}
    live = [r for r, t in targets.items() if t["expr"].startswith("virk_image_property{")]
    low = [r for r, t in targets.items() if "virk_image_property_reference" in t["expr"] and 'band="p05"' in t["expr"]]
    high = [r for r, t in targets.items() if "virk_image_property_reference" in t["expr"] and 'band="p95"' in t["expr"]]
    assert len(live) == len(low) == len(high) == 1
    assert not any("_over_time" in t["expr"] for t in targets.values())  # no stand-in band from the live series
    # The band: the 0.95 series is filled down to the 0.05 series (by its display name).
    assert _field_settings(panel, high[0]).get("custom.fillBelowTo") == targets[low[0]]["legendFormat"]
    for ref in (*low, *high):
        assert all(f'{k}="${k}"' in targets[ref]["expr"] for k in ("model", "source", "property")), ref


def _provisioned_datasources() -> dict[str, dict]:
    sources = {}
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yml"):
        for source in yaml.safe_load(path.read_text())["datasources"]:
            sources[source["uid"]] = source
    return sources


def _datasource_refs(node, path="$"):
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield path, node["datasource"]
        for key, value in node.items():
            yield from _datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _datasource_refs(value, f"{path}[{i}]")


def test_dashboard_datasources_are_the_datasource_variable():
    """Every Prometheus query goes through `${datasource}` (a datasource variable, so an imported
    board asks for its Prometheus via `__inputs`); provisioned boards get the default one."""
    provisioned = _provisioned_datasources()
    assert provisioned["virk-prometheus"]["type"] == "prometheus" and provisioned["virk-prometheus"]["isDefault"]
    assert provisioned["virk-traces"]["type"] in {"jaeger", "tempo"}
    for file, dashboard in load_dashboards().items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus", file
        assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}", file
        assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"], file
        assert dashboard["__inputs"][0]["pluginId"] == "prometheus", file
        assert dashboard["editable"] is False, file  # provisioned: edits belong in the JSON file
        refs = list(_datasource_refs(dashboard))
        assert refs, file
        for path, ref in refs:
            assert ref == {"type": "prometheus", "uid": "${datasource}"}, f"{file} {path}: {ref}"
        for name in ("job", "instance"):
            assert variables[name]["type"] == "query" and variables[name]["includeAll"], (file, name)


def test_raw_series_queries_filter_by_job_and_instance():
    for file, dashboard in load_dashboards().items():
        for query in dashboard_queries(dashboard):
            for selector in re.findall(r"\b(?:virk_\w+|ALERTS)\{[^}]*\}", query["expr"]):
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, f"{file} {query['where']}: {selector}"


def test_bundle_outcomes_have_their_own_colours():
    panel = _panel("virk-overview.json", "Incident bundles in range")
    assert panel["fieldConfig"]["defaults"]["color"]["mode"] == "fixed"
    colours = {o["matcher"]["options"]: o["properties"][0]["value"]["fixedColor"] for o in panel["fieldConfig"]["overrides"]}
    assert colours == {".* uploaded$": "green", ".* spooled$": "orange", ".* failed$": "red"}
    names = {"detector-v3 uploaded": "green", "detector-v3 failed": "red", "detector-v3 spooled": "orange"}
    for name, colour in names.items():  # the regexes match the legend names Grafana shows
        assert [c for pattern, c in colours.items() if re.fullmatch(pattern, name)] == [colour], name


def test_exemplars_link_to_the_trace_datasource():
    provisioned = _provisioned_datasources()
    destinations = provisioned["virk-prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id", "datasourceUid": "virk-traces"}.items() <= destinations[0].items()
    latency = [q for q in dashboard_queries(load_dashboards()["virk-overview.json"]) if "virk_predict_duration_seconds_bucket" in q["expr"]]
    assert latency
    panel_targets = [t for p in all_panels(load_dashboards()["virk-overview.json"]) for t in p.get("targets", [])
                     if "virk_predict_duration_seconds_bucket" in t.get("expr", "")]
    assert all(t.get("exemplar") is True for t in panel_targets)


def test_dashboard_variables_and_links():
    dashboards = load_dashboards()
    for file, dashboard in dashboards.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert {"model", "source"} <= set(variables), file
        for query in dashboard_queries(dashboard):
            unknown = variables_used(query["expr"]) - set(variables) - set(GRAFANA_GLOBALS)
            assert not unknown, f"{file} {query['where']}: undefined variables {unknown}"
        ids = [p["id"] for p in all_panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{file}: duplicate panel ids"
    uids = {d["uid"] for d in dashboards.values()}
    assert uids == {"virk-overview", "virk-source"}
    # Links between the dashboards (and from the alert annotation) point at real uids.
    for dashboard in dashboards.values():
        for link in dashboard.get("links", []):
            assert link["url"].split("/")[2] in uids
    drift = next(r for g in load_rules()["groups"] for r in g["rules"] if r.get("alert") == "VisionModelDrift")
    assert drift["annotations"]["dashboard"].startswith("d/virk-source/")
