"""An application with its own TracerProvider, run by test_tracing.py in a fresh process.

Usage: python tracing_app.py OTLP_ENDPOINT STORE_DIR MODE  → prints one JSON line of what it did.

MODE "current": the provider is the global one and the exporter puts its attributes on the
request span (the default). MODE "per-call": the provider is only passed as
``Exporter(tracer_provider=...)`` (never made global) with ``span_per_call=True``.
"""

import json
import sys
import urllib.request

import numpy as np
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from virk_exporter import Exporter

from virk_exporter.demo import corruptions

from virk_exporter.demo import photos
from virk_exporter.incidents.webhook import make_alert_payload

endpoint, store, mode = sys.argv[1], sys.argv[2], sys.argv[3]
provider = TracerProvider(resource=Resource.create({"service.name": "tracing-app"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
tracing = {"tracer_provider": provider, "span_per_call": True} if mode == "per-call" else {}
if mode == "current":
    trace.set_tracer_provider(provider)
server_tracer = provider.get_tracer("app.http")

exporter = Exporter(model="traced", store=store, reference_period_s=0, reference_frames=16, window=16, test_every=8, hysteresis=1, n_permutations=100, webhook_token="t0k",
                    **tracing)
server = exporter.serve(port=0)
exporter.wait_ready(120)


@exporter.monitor(source=lambda frames, camera: camera)
def predict(frames, camera):
    return np.zeros((len(frames), 3))


clean = photos.camera_stream(photos.load("coffee"), 48, size=(120, 160), seed=3)
blurred = corruptions.apply("defocus_blur", clean[32:], 5, seed=3)
stream = np.concatenate([clean[:32], blurred])
incoming = []  # (trace id, server span id) of each simulated HTTP request
for i in range(0, len(stream), 4):
    # An instrumented web server: the request arrives with a traceparent; its span is current.
    parent_context = TraceContextTextMapPropagator().extract({"traceparent": f"00-{(i + 1):032x}-{(i + 7):016x}-01"})
    with server_tracer.start_as_current_span("POST /predict", context=parent_context, kind=trace.SpanKind.SERVER) as request_span:
        ctx = request_span.get_span_context()
        incoming.append((format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")))
        predict(stream[i : i + 4], camera="cam-t")
exporter.flush()
status = exporter.request("status")
body = make_alert_payload("traced", labels={"source": "cam-t", "instance": exporter.config.instance})
request = urllib.request.Request(f"{server.url}/api/v1/alerts", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer t0k"})
urllib.request.urlopen(request, timeout=10).read()
accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
openmetrics = urllib.request.urlopen(urllib.request.Request(f"{server.url}/metrics", headers=accept), timeout=10).read().decode()
exporter.close(timeout=60)  # waits for the bundle, exports the worker's spans
provider.force_flush()
provider.shutdown()
print(json.dumps({"incoming": incoming, "status": status, "openmetrics": openmetrics, "alert": json.loads(body)["alerts"][0]["fingerprint"]}))
