"""A Flask service with a monitored predict, for gunicorn (tests/test_server_shapes.py).

The Exporter is created at import: in the master with ``--preload`` (then forked), else in
each worker. /metrics and /-/ready go to the exporter's WSGI app, the rest to Flask.
"""

import logging
import os

import itertools

import numpy as np
from flask import Flask, jsonify, request

from virk_exporter import Exporter

# Small windows, so a scripted blur is detected within a few hundred frames.
SMALL = dict(reference_period_s=0, reference_frames=32, window=32, test_every=16, hysteresis=1) if os.environ.get("VIRK_TEST_SMALL") else {}
exporter = Exporter(model=os.environ["VIRK_TEST_MODEL"], store=os.environ["VIRK_STORE"], log_level=logging.INFO, **SMALL)  # the test reads the worker's exit line
if os.environ.get("VIRK_TEST_SERVE_PORT"):  # in every process: the first binds, the others skip
    exporter.serve(port=int(os.environ["VIRK_TEST_SERVE_PORT"]))
FRAMES = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
_camera: dict[bool, np.ndarray] = {}
_next = itertools.count()


def camera_frames(blur: bool) -> np.ndarray:
    """Two frames of a static camera (a real photograph), optionally out of focus."""
    if not _camera:
        from virk_exporter.demo import corruptions
        from virk_exporter.demo import photos

        _camera[False] = photos.camera_stream(photos.load("coffee"), 40, size=(120, 160), seed=1)
        _camera[True] = corruptions.apply("defocus_blur", _camera[False], 5, seed=1)
    i = next(_next) % 20 * 2
    return _camera[blur][i : i + 2]


@exporter.monitor
def predict(frames):
    return np.eye(4, dtype=np.float32)[: len(frames)]


flask_app = Flask(__name__)


@flask_app.post("/predict")
def serve_predict():
    predict(camera_frames(request.args.get("blur") == "1") if "camera" in request.args else FRAMES)
    return jsonify(pid=os.getpid(), first_id=exporter.last_frame_ids().start)


def app(environ, start_response):
    if environ.get("PATH_INFO", "").startswith(("/metrics", "/-/", "/api/v1/alerts", "/incidents/")):
        return exporter.wsgi_app(environ, start_response)
    return flask_app(environ, start_response)
