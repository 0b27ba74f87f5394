"""A FastAPI inference service with OpenTelemetry, the exporter's routes mounted on the app.

    pip install fastapi uvicorn opentelemetry-instrumentation-fastapi   # not in virk-exporter's deps
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 uvicorn fastapi_service:app --app-dir examples

    curl -X POST --data-binary @frame.png 'localhost:8000/predict?camera=gate'
        → {"class": "coffee", "frame_id": 17, "trace_id": "…"}
    curl -X POST -d '{"17": "coffee"}' localhost:8000/labels      # ground truth, whenever it comes
    curl localhost:8000/virk/metrics                               # the exporter, on the same port

FastAPI and uvicorn are not installed offline: the test suite drives this app's ASGI interface
with ``standins.install_fastapi()`` (a minimal ``fastapi`` with the same routing and mounting)
and an in-memory span exporter.

* Tracing: ``FastAPIInstrumentor`` (opentelemetry-instrumentation-fastapi) when installed, else a
  small ASGI middleware below that opens the same SERVER span per request. The monitored
  ``predict`` call puts its ``virk.*`` attributes on that span (``Exporter(span_per_call=True)``
  gives it a child span instead); the exporter's monitoring spans link back to it, and
  ``virk.frame_id.first`` ties the trace to recorded frames.
* ``predict`` runs in a worker thread (``asyncio.to_thread``): ``exporter.last_frame_ids()`` is
  read *in that thread*, right after the call (ids are per thread / per task).
* ``app.mount("/virk", exporter.asgi_app)`` serves ``/virk/metrics``, ``/virk/-/ready``,
  ``/virk/api/v1/alerts`` (Alertmanager's webhook) and ``/virk/incidents/...``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import cv2
import numpy as np
import torch
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from virk_exporter import Exporter

CLASSES = ("astronaut", "coffee", "chelsea", "rocket")


class ServerSpans:
    """An ASGI middleware opening a SERVER span per HTTP request (what FastAPIInstrumentor does)."""

    def __init__(self, app: Any, tracer_provider: Any = None) -> None:
        self.app = app
        self.tracer = trace.get_tracer("examples.fastapi_service", tracer_provider=tracer_provider)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        name = f"{scope['method']} {scope['path']}"
        with self.tracer.start_as_current_span(name, kind=SpanKind.SERVER, attributes={"http.request.method": scope["method"], "url.path": scope["path"]}):
            await self.app(scope, receive, send)


def instrument(app: Any, tracer_provider: Any = None) -> str:
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:
        app.add_middleware(ServerSpans, tracer_provider=tracer_provider)
        return "middleware"
    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider)
    return "FastAPIInstrumentor"


def default_model() -> torch.nn.Module:
    """Your model goes here; this one needs no download (the torch_classifier example's)."""
    from _util import camera
    from torch_classifier import SceneNet, to_tensor

    return SceneNet({k: to_tensor(camera(scene, 16, seed=k)) for k, scene in enumerate(CLASSES)}).eval()


def create_app(model: torch.nn.Module | None = None, exporter: Exporter | None = None, tracer_provider: Any = None) -> Any:
    from fastapi import FastAPI, Request

    model = model if model is not None else default_model()
    exporter = exporter if exporter is not None else Exporter(model="fastapi-classifier", webhook_token=os.environ.get("VIRK_WEBHOOK_TOKEN"))

    @exporter.monitor(source=lambda frames, camera: camera, predicted=lambda logits: [CLASSES[i] for i in logits.argmax(1).tolist()])
    @torch.no_grad()
    def predict(frames: torch.Tensor, camera: str) -> torch.Tensor:
        return model(frames)

    def predict_one(image: np.ndarray, camera: str) -> tuple[int, int]:
        logits = predict(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, camera=camera)
        return int(logits.argmax(1)[0]), exporter.last_frame_ids()[0]  # same thread as the call

    app = FastAPI(title="scene classifier")
    app.state_exporter = exporter
    instrument(app, tracer_provider)

    @app.post("/predict")
    async def predict_endpoint(request: Request) -> dict:
        data = np.frombuffer(await request.body(), np.uint8)
        image = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        label, frame_id = await asyncio.to_thread(predict_one, image, request.query_params.get("camera", "default"))
        context = trace.get_current_span().get_span_context()
        return {"class": CLASSES[label], "frame_id": frame_id, "trace_id": format(context.trace_id, "032x") if context.is_valid else None}

    @app.post("/labels")
    async def labels_endpoint(request: Request) -> dict:
        labels = {int(k): v for k, v in (await request.json()).items()}
        exporter.record_labels(labels)  # never blocks, never raises on unknown ids
        return {"accepted": len(labels)}

    app.mount("/virk", exporter.asgi_app)
    return app


def __getattr__(name: str) -> Any:
    """``uvicorn fastapi_service:app`` builds the app on first access (importing starts nothing)."""
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
