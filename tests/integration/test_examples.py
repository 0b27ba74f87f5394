"""Every example in examples/ runs here (stand-ins for what needs downloads) and its metrics appear."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import sample_value

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_torch_classifier_slices_and_late_labels(tmp_path):
    import torch_classifier

    result = torch_classifier.run(batches=30, drift_from=12, label_delay=6, store=str(tmp_path))
    text, source = result["metrics"], result["status"]["sources"]["dock-cam"]
    assert source["detected"]
    assert source["slices"]["top"][0] == "site=site-2"  # the site whose camera went dark
    assert sample_value(text, "virk_slice_drift_score", slice="site=site-2") > 3
    correct = sample_value(text, "virk_labels_total", source="dock-cam", outcome="correct")
    incorrect = sample_value(text, "virk_labels_total", source="dock-cam", outcome="incorrect")
    assert correct + incorrect == 30 * 8  # every frame labelled, 6 batches late
    assert 0 < incorrect and sample_value(text, "virk_label_accuracy_ratio", source="dock-cam") == pytest.approx(correct / (correct + incorrect))


@pytest.mark.slow
def test_detector_with_hooked_features_and_box_statistics(tmp_path):
    import detector
    from standins import TinyDetector

    result = detector.run(TinyDetector(), batches=24, fog_from=12, store=str(tmp_path))
    text, sources = result["metrics"], result["status"]["sources"]
    assert sources["gate"]["detected"] and not sources["yard"]["detected"]  # fog on the gate camera only
    assert sample_value(text, "virk_frames_total", source="gate") == 24 * 6
    assert sample_value(text, "virk_drift_detected", source="gate") == 1.0
    assert sample_value(text, "virk_errors_total", stage="features") == 0.0


@pytest.mark.slow
def test_hugging_face_style_classifier_with_class_names_as_labels(tmp_path):
    import hf_classifier

    processor, model, scenes = hf_classifier.stand_in()
    result = hf_classifier.run(processor, model, scenes, batches=28, drift_from=12, store=str(tmp_path))
    text, source = result["metrics"], result["status"]["sources"]["store-1"]
    assert source["detected"]
    correct = sample_value(text, "virk_labels_total", source="store-1", outcome="correct")
    incorrect = sample_value(text, "virk_labels_total", source="store-1", outcome="incorrect")
    assert correct + incorrect == 28 * 8 and correct > incorrect > 0  # names matched by predicted=


SERVICE_SCRIPT = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import cv2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(provider)

import standins
standin = standins.install_fastapi()
import fastapi_service
from _util import camera
from virk_exporter import Exporter

exporter = Exporter(model="svc", store=sys.argv[2])
app = fastapi_service.create_app(exporter=exporter)

async def call(method, path, body=b"", query=b""):
    sent = []
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    async def send(message):
        sent.append(message)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query, "headers": [],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

async def main():
    answers = []
    for i, frame in enumerate(camera("coffee", 10, seed=4)):
        ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        status, body = await call("POST", "/predict", png.tobytes(), b"camera=gate")
        assert status == 200, (status, body)
        answers.append(json.loads(body))
    labels = {str(a["frame_id"]): "coffee" for a in answers}
    labels["999999"] = "coffee"  # an id the service never issued
    status, body = await call("POST", "/labels", json.dumps(labels).encode())
    assert status == 200, body
    exporter.flush()
    ready, _ = await call("GET", "/virk/-/ready")
    status, metrics = await call("GET", "/virk/metrics")
    return answers, ready, status, metrics.decode()

answers, ready, status, metrics = asyncio.run(main())
exporter.close()
finished = [
    {"name": s.name, "kind": s.kind.name, "trace_id": format(s.context.trace_id, "032x"), "span_id": format(s.context.span_id, "016x"),
     "parent": format(s.parent.span_id, "016x") if s.parent else None, "attributes": dict(s.attributes or {})}
    for s in spans.get_finished_spans()
]
print(json.dumps({"standin": standin, "answers": answers, "ready": ready, "status": status, "metrics": metrics, "spans": finished}))
"""


@pytest.mark.slow
def test_fastapi_service_with_opentelemetry_and_mounted_routes(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", SERVICE_SCRIPT, str(EXAMPLES), str(tmp_path)], capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    answers, spans, metrics = result["answers"], result["spans"], result["metrics"]
    assert result["ready"] == 200 and result["status"] == 200
    assert len({a["frame_id"] for a in answers}) == 10 and all(a["class"] == "coffee" for a in answers)
    # /virk/metrics is the exporter, served by the app: frames and late labels counted there
    assert sample_value(metrics, "virk_frames_total", source="gate") == 10
    assert sample_value(metrics, "virk_labels_total", source="gate", outcome="correct") == 10
    assert sample_value(metrics, "virk_labels_total", outcome="unknown") == 1
    # each request's SERVER span carries the monitored call's attributes (frame id included): by
    # default the exporter annotates the request span instead of opening one of its own
    servers = {s["span_id"]: s for s in spans if s["kind"] == "SERVER" and s["name"].endswith("/predict")}
    assert len(servers) == 10 and not [s for s in spans if s["name"].endswith(".predict")]
    assert all(s["attributes"].get("virk.model") == "svc" for s in servers.values())
    assert {s["attributes"]["virk.frame_id.first"] for s in servers.values()} == {a["frame_id"] for a in answers}
    assert {a["trace_id"] for a in answers} == {s["trace_id"] for s in servers.values()}
