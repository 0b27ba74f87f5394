"""OpenTelemetry over real OTLP/HTTP: request spans, linked monitoring spans, drift events,
exemplars and bundle trace ids, decoded by a test receiver."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from servers import OTLPReceiver
from virk_exporter.fingerprint.causes import VOCABULARY
from virk_exporter.incidents.bundle import read_bundle

INTERNAL, SERVER = 1, 2  # span kinds as the protobuf numbers them


@pytest.fixture(scope="module", params=["current", "per-call"])
def traced(request, tmp_path_factory):
    """The app's run in each tracing mode; ``calls`` are the spans carrying the calls' attributes
    (the request spans by default, the per-call spans with span_per_call=True)."""
    receiver = OTLPReceiver()
    store = tmp_path_factory.mktemp("store")
    app = Path(__file__).with_name("tracing_app.py")
    run = subprocess.run([sys.executable, str(app), receiver.endpoint, str(store), request.param], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["mode"] = request.param
    spans = receiver.spans()
    # (instrumentation scope name, version) of each span name
    result["scopes"] = {
        (span.name, ss.scope.name, ss.scope.version)
        for r in receiver.requests for rs in r["body"].resource_spans for ss in rs.scope_spans for span in ss.spans
    }
    receiver.close()
    yield result, spans, store


def hexid(raw: bytes) -> str:
    return raw.hex()


def call_spans(traced) -> list:
    result, spans, _ = traced
    return [s for s in spans if s.name == ("predict" if result["mode"] == "per-call" else "POST /predict")]


@pytest.mark.slow
def test_calls_are_attributes_of_the_request_span_by_default(traced):
    result, spans, _ = traced
    if result["mode"] != "current":
        pytest.skip("the default mode's test")
    assert not [s for s in spans if s.name == "predict"]  # no span of our own per call
    requests = call_spans(traced)
    assert [(hexid(s.trace_id), hexid(s.span_id)) for s in requests] == [tuple(i) for i in result["incoming"]]
    first_ids = []
    for span in requests:
        attributes = {a.key: a.value for a in span.attributes}
        assert span.kind == SERVER
        assert attributes["virk.model"].string_value == "traced" and attributes["virk.batch_size"].int_value == 4
        assert attributes["virk.source"].string_value == "cam-t" and attributes["virk.sampled"].bool_value is True
        assert "code.function.name" not in attributes  # only virk.* goes on the caller's span
        first_ids.append(attributes["virk.frame_id.first"].int_value)
    assert first_ids == list(range(0, 48, 4))


@pytest.mark.slow
def test_tracer_is_named_and_versioned(traced):
    import virk_exporter

    result, _, _ = traced
    ours = {(scope, version) for name, scope, version in result["scopes"] if name.startswith("virk.") or name == "predict"}
    assert ours == {("virk_exporter", virk_exporter.__version__)}


@pytest.mark.slow
def test_a_span_per_call_nests_under_the_incoming_request(traced):
    result, spans, _ = traced
    if result["mode"] != "per-call":
        pytest.skip("span_per_call=True's test")
    calls = [s for s in spans if s.name == "predict"]
    assert len(calls) == len(result["incoming"]) == 12
    by_parent = {(hexid(s.trace_id), hexid(s.parent_span_id)): s for s in calls}
    first_ids = []
    for trace_id, server_span in result["incoming"]:
        call = by_parent[(trace_id, server_span)]  # same trace, child of the server span
        assert call.kind == INTERNAL
        attributes = {a.key: a.value for a in call.attributes}
        assert attributes["virk.model"].string_value == "traced"
        assert attributes["virk.batch_size"].int_value == 4
        assert attributes["virk.source"].string_value == "cam-t"
        assert attributes["virk.sampled"].bool_value is True
        first_ids.append(attributes["virk.frame_id.first"].int_value)
    assert first_ids == list(range(0, 48, 4))


@pytest.mark.slow
def test_monitoring_spans_link_back_to_the_request_spans(traced):
    _, spans, _ = traced
    calls = {(hexid(s.trace_id), hexid(s.span_id)) for s in call_spans(traced)}
    monitors = [s for s in spans if s.name == "virk.monitor"]
    assert len(monitors) == 12
    for span in monitors:
        links = {(hexid(link.trace_id), hexid(link.span_id)) for link in span.links}
        assert links and links <= calls
        assert (hexid(span.trace_id), hexid(span.span_id)) not in calls  # a trace of its own
    children = {s.name for s in spans if s.parent_span_id and hexid(s.parent_span_id) in {hexid(m.span_id) for m in monitors}}
    assert {"virk.normalize", "virk.record", "virk.embed", "virk.drift", "virk.fingerprint"} <= children


@pytest.mark.slow
def test_drift_detection_is_a_span_event_with_statistic_p_value_and_cause(traced):
    result, spans, _ = traced
    assert result["status"]["sources"]["cam-t"]["detected"]
    events = [e for s in spans if s.name == "virk.monitor" for e in s.events if e.name == "virk.drift_detected"]
    assert len(events) == 1
    attributes = {a.key: a.value for a in events[0].attributes}
    assert attributes["virk.drift.p_value"].double_value <= 0.05
    assert attributes["virk.drift.statistic"].double_value > attributes["virk.drift.threshold"].double_value
    assert attributes["virk.fingerprint.top"].string_value in VOCABULARY
    tests = [e for s in spans for e in s.events if e.name == "virk.drift_test"]
    assert len(tests) >= 2


@pytest.mark.slow
def test_exemplars_carry_the_trace_ids_of_exported_spans(traced):
    result, spans, _ = traced
    trace_ids = {hexid(s.trace_id) for s in call_spans(traced)}
    exemplars = [
        sample.exemplar
        for family in text_string_to_metric_families(result["openmetrics"])
        if family.name in ("virk_predict_duration_seconds", "virk_frames")
        for sample in family.samples
        if sample.exemplar is not None
    ]
    assert exemplars
    assert {e.labels["trace_id"] for e in exemplars} <= trace_ids


@pytest.mark.slow
def test_bundle_trace_ids_match_the_spans_of_its_frames(traced):
    result, spans, store = traced
    calls = {(hexid(s.trace_id), hexid(s.span_id)) for s in call_spans(traced)}
    bundles = list(Path(store).rglob("bundle.zip"))
    assert len(bundles) == 1
    manifest = read_bundle(bundles[0]).manifest
    frames = manifest["frames"]
    assert frames
    assert {(f["trace_id"], f["span_id"]) for f in frames} <= calls
    bundle_spans = [s for s in spans if s.name == "virk.bundle"]
    assert len(bundle_spans) == 1
    links = {(hexid(link.trace_id), hexid(link.span_id)) for link in bundle_spans[0].links}
    assert links == {(f["trace_id"], f["span_id"]) for f in frames}


def test_tracing_off_adds_no_span_and_keeps_working(tmp_path):
    from virk_exporter.telemetry.tracing import resolve_tracer

    # This test process has set no provider and no OTLP endpoint.
    assert resolve_tracer() is None


def _own_tracer_run(env: dict[str, str]) -> subprocess.CompletedProcess:
    """resolve_tracer() in a fresh process with no provider of its own and the given OTEL_* env."""
    code = (
        "from virk_exporter.telemetry import tracing\n"
        "tracer = tracing.resolve_tracer()\n"
        "print('TRACER', tracer is not None)\n"
        "if tracer is not None:\n"
        "    tracer.start_span('probe').end()\n"
        "    tracing.force_flush()\n"
    )
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=60)


def test_the_otel_environment_names_the_service_and_the_exporter():
    # OTEL_RESOURCE_ATTRIBUTES' service.name is kept (not replaced by ours); console is honoured.
    run = _own_tracer_run({"OTEL_TRACES_EXPORTER": "console", "OTEL_RESOURCE_ATTRIBUTES": "service.name=camera-api,deployment.environment=prod"})
    assert run.returncode == 0, run.stderr
    assert "TRACER True" in run.stdout
    assert '"service.name": "camera-api"' in run.stdout and '"deployment.environment": "prod"' in run.stdout
    assert '"name": "probe"' in run.stdout
    # Nothing names the service: ours, not unknown_service.
    run = _own_tracer_run({"OTEL_TRACES_EXPORTER": "console"})
    assert '"service.name": "virk-exporter"' in run.stdout, run.stdout
    # An endpoint, but OTEL_TRACES_EXPORTER=none: off.
    run = _own_tracer_run({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert run.returncode == 0 and "TRACER False" in run.stdout, run.stderr


def test_a_failing_tracer_never_reaches_the_caller(caplog):
    from virk_exporter.telemetry.tracing import own_span

    class Broken:
        def start_as_current_span(self, *args, **kwargs):
            raise RuntimeError("sdk broke")

    for _ in range(3):
        with own_span(Broken(), "predict", {"virk.model": "m"}) as span:
            assert span is None
    assert sum("could not be started" in r.getMessage() for r in caplog.records) <= 1
