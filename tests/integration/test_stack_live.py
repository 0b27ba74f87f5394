"""Every Grafana panel query runs against a real Prometheus scraping the running demo and returns
at least one series, with the dashboards' template variables resolved the way Grafana does.

The demo (`virk-exporter demo`) streams real photographs through a monitored model with a
scripted incident (blur, then a camera bump), so drift, diagnosis and incident metrics appear.
Prometheus loads the shipped rules (recording rules feed the panels; VisionModelDrift's `for:`
is shortened so the ALERTS panels have a firing alert within the test) and stores exemplars, as
compose.yaml runs it: the latency panel's exemplars must carry trace ids of spans the demo
exported over OTLP (what Grafana's exemplar link to the trace datasource follows).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

import yaml

from servers import OTLPReceiver, Server, _start, binary, free_port, http_get, wait_until
from stack_queries import RULES, dashboard_queries, load_dashboards, substitute, variable_query

# The demo's scripted incidents start at 40% (blur on cam-1) and 65% (camera bump on cam-2) of its
# duration; it keeps serving /metrics after streaming while it waits for its bundles, then exits.
# Late-label series (virk_labels_total, virk_label_accuracy_ratio) appear ~6 s after the first frames
# (the demo's label delay); slice scores (virk_slice_drift_score) once cam-1's drift is detected,
# and they stay while it is detected (to the end of a finite demo): no later than the drift alerts.
DEMO_SECONDS = 50
DEADLINE_S = 110  # from the demo's first /metrics until every query must have series
CAUSES = {"blur", "noise", "brightness", "contrast", "color_shift", "weather", "glare", "compression",
          "resolution", "camera_shift", "occlusion", "frozen", "none", "unknown"}


def _query(server: Server, promql: str, instant: bool) -> list[dict]:
    if instant:
        params = {"query": promql}
        path = "query"
    else:
        now = time.time()
        params = {"query": promql, "start": f"{now - 120:.3f}", "end": f"{now:.3f}", "step": "1"}
        path = "query_range"
    status, body = http_get(f"{server.url}/api/v1/{path}?" + urllib.parse.urlencode(params), timeout=10)
    payload = json.loads(body)
    if status != 200 or payload.get("status") != "success":
        raise AssertionError(f"Prometheus rejected {promql!r}: {status} {body[:500]!r}")
    return payload["data"]["result"]


def _start_prometheus(workdir: Path, target: str, rules: Path) -> Server:
    """Prometheus as compose.yaml runs it (exemplar storage on), scraping every second."""
    workdir.mkdir(parents=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "virk", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary("prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
    ]
    return Server("prometheus", _start("prometheus", argv, workdir, f"{url}/-/ready"), url, workdir / "prometheus.log")


def _exemplar_trace_ids(server: Server, dashboard: dict, values: dict[str, str]) -> set[str]:
    """Trace ids of the exemplars Grafana gets for the dashboard's exemplar-enabled targets."""
    trace_ids: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if not target.get("exemplar"):
                continue
            now = time.time()
            params = {"query": substitute(target["expr"], values), "start": f"{now - 300:.3f}", "end": f"{now:.3f}"}
            status, body = http_get(f"{server.url}/api/v1/query_exemplars?" + urllib.parse.urlencode(params), timeout=10)
            payload = json.loads(body)
            assert status == 200 and payload["status"] == "success", body[:500]
            for series in payload["data"]:
                trace_ids |= {e["labels"].get("trace_id") for e in series["exemplars"]} - {None}
    return trace_ids


def _regex_escape(value: str) -> str:
    """A label value as Grafana puts it into a PromQL regex string (metacharacters escaped)."""
    return re.sub(r"([\\.*+?^$()\[\]{}|])", r"\\\\\1", value)


def _resolve_variables(server: Server, dashboard: dict) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Values of each query variable: single-value ones get the first value Grafana shows
    (sorted), multi-value ones with "All" get the regex of all values. Unresolvable variables
    are left out."""
    values: dict[str, str] = {}
    options: dict[str, list[str]] = {}
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        query = variable_query(variable)
        match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.S)
        assert match, f"variable {variable['name']}: only label_values(metric, label) queries are used here, got {query!r}"
        try:
            selector = substitute(match.group(1), values)
        except KeyError:
            continue  # depends on a variable that has no value yet
        label = match.group(2)
        found = sorted({series["metric"].get(label) for series in _query(server, f"group by ({label}) ({selector})", True)} - {None})
        if not found:
            continue
        options[variable["name"]] = found
        if variable.get("includeAll"):
            values[variable["name"]] = "(" + "|".join(_regex_escape(v) for v in found) + ")"
        else:
            values[variable["name"]] = found[0]
    return values, options


def _empty_queries(server: Server) -> dict[str, str]:
    """The panel queries (with variables substituted) that return no series right now:
    {query's place in a dashboard: why}."""
    empty: dict[str, str] = {}
    for file, dashboard in load_dashboards().items():
        values, options = _resolve_variables(server, dashboard)
        for query in dashboard_queries(dashboard):
            repeat = query["repeat"]
            runs = [{**values, repeat: v} for v in options.get(repeat, [])] if repeat else [values]
            if not runs:
                empty[f"{file} {query['where']}"] = f"repeat variable ${repeat} has no values"
            for run_values in runs:
                place = f"{file} {query['where']}" + (f" (${repeat}={run_values[repeat]})" if repeat else "")
                try:
                    expr = substitute(query["expr"], run_values)
                except KeyError as error:
                    empty[place] = error.args[0]
                    continue
                if not _query(server, expr, query["instant"]):
                    empty[place] = expr
    return empty


def _more_telling(before: str, now: str) -> str:
    """The query text beats 'variable has no value' (seen while the demo starts or stops)."""
    return before if now.endswith("has no value") and not before.endswith("has no value") else now


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.slow
def test_every_panel_query_returns_series_from_the_running_demo(tmp_path: Path):
    port = free_port()
    log = tmp_path / "demo.log"
    receiver = OTLPReceiver()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "virk-demo"}
    demo = subprocess.Popen(
        [sys.executable, "-c", "from virk_exporter.cli import main; main()",
         "demo", "--host", "127.0.0.1", "--port", str(port), "--duration", str(DEMO_SECONDS)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True, env=env,
    )
    prometheus = None
    try:
        def serving() -> bool:
            if demo.poll() is not None:
                raise AssertionError(f"demo exited with {demo.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            return http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)[0] == 200

        wait_until(serving, 90, interval=0.5, what="the demo to serve /metrics")
        rules = tmp_path / "virk.rules.yml"
        text = RULES.read_text()
        assert "        for: 1m\n" in text
        rules.write_text(text.replace("        for: 1m\n", "        for: 2s\n", 1))  # VisionModelDrift only
        prometheus = _start_prometheus(tmp_path / "prometheus", f"127.0.0.1:{port}", rules)

        # Queries return series at different moments (drift only after the scripted incident):
        # each query must have returned series at some point while the demo ran.
        overview = load_dashboards()["virk-overview.json"]
        deadline = time.monotonic() + DEADLINE_S
        empty = _empty_queries(prometheus)
        exemplar_ids: set[str] = set()
        while (empty or not exemplar_ids) and time.monotonic() < deadline and demo.poll() is None:
            time.sleep(2)
            now_empty = _empty_queries(prometheus)
            if demo.poll() is None:  # answers after the demo stopped serving say nothing
                empty = {place: _more_telling(empty[place], now_empty[place]) for place in empty if place in now_empty}
                values, _ = _resolve_variables(prometheus, overview)
                if "model" in values:
                    exemplar_ids |= _exemplar_trace_ids(prometheus, overview, values)
        empty = sorted(f"{place}: {why}" for place, why in empty.items())
        assert not empty, (
            "panel queries without series after the demo ran:\n  " + "\n  ".join(empty)
            + f"\n--- demo log ---\n{log.read_text(errors='replace')[-2000:]}"
        )
        # The shipped drift alert fired on the demo's incident, labelled with a known cause.
        alerts = _query(prometheus, 'ALERTS{alertname="VisionModelDrift", alertstate="firing"}', True)
        alerts = alerts or _query(prometheus, 'max_over_time(ALERTS{alertname="VisionModelDrift", alertstate="firing"}[5m])', True)
        assert alerts
        assert {a["metric"]["fingerprint"] for a in alerts} <= CAUSES
        assert all(a["metric"]["severity"] == "critical" for a in alerts)
        # Late labels became an accuracy (0..1) per source, and the drifting slices are the demo's tags.
        accuracy = _query(prometheus, "max_over_time(model_source:virk_label_accuracy:ratio_rate1h[5m])", True)
        assert {a["metric"]["source"] for a in accuracy} == {"cam-1", "cam-2"}
        assert all(0 <= float(a["value"][1]) <= 1 for a in accuracy), accuracy
        slices = _query(prometheus, "max_over_time(virk_slice_drift_score[5m])", True)
        assert slices and {s["metric"]["slice"] for s in slices} <= {"shift=day", "shift=night"}, slices
        # Exemplars on the latency panel lead to traces the demo really exported.
        assert exemplar_ids, "no exemplars with trace_id on the predict-latency panel"
        assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in exemplar_ids), exemplar_ids
        exported = wait_until(lambda: exemplar_ids & {span.trace_id.hex() for span in receiver.spans()}, 15,
                              what="exported spans with the exemplars' trace ids")
        assert exported
    finally:
        if prometheus is not None:
            prometheus.stop()
        _stop(demo)
        receiver.close()
