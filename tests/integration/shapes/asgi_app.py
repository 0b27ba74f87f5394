"""A Starlette service with an async monitored predict, for uvicorn --workers (tests/test_server_shapes.py)."""

import asyncio
import logging
import os

import numpy as np
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from virk_exporter import Exporter

exporter = Exporter(model=os.environ["VIRK_TEST_MODEL"], store=os.environ["VIRK_STORE"], log_level=logging.INFO)  # the test reads the worker's exit line
FRAMES = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)


@exporter.monitor
async def predict(frames):
    await asyncio.sleep(0.002)
    return np.eye(4, dtype=np.float32)[: len(frames)]


async def serve_predict(request):
    await predict(FRAMES)
    return JSONResponse({"pid": os.getpid(), "first_id": exporter.last_frame_ids().start})


app = Starlette(
    routes=[Route("/predict", serve_predict, methods=["POST"]), Mount("/virk", app=exporter.asgi_app)],
    lifespan=exporter.lifespan,  # uvicorn runs its end on SIGTERM, where atexit handlers do not run
)
