"""A Flask service with a monitored predict, for gunicorn (tests/test_server_shapes.py).

The Exporter is created at import: in the master with ``--preload`` (then forked), else in
each worker. /metrics and /-/ready go to the exporter's WSGI app, the rest to Flask.
"""

import logging
import os

import numpy as np
from flask import Flask, jsonify

from virk_exporter import Exporter

exporter = Exporter(model=os.environ["VIRK_TEST_MODEL"], store=os.environ["VIRK_STORE"], log_level=logging.INFO)  # the test reads the worker's exit line
if os.environ.get("VIRK_TEST_SERVE_PORT"):  # in every process: the first binds, the others skip
    exporter.serve(port=int(os.environ["VIRK_TEST_SERVE_PORT"]))
FRAMES = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)


@exporter.monitor
def predict(frames):
    return np.eye(4, dtype=np.float32)[: len(frames)]


flask_app = Flask(__name__)


@flask_app.post("/predict")
def serve_predict():
    predict(FRAMES)
    return jsonify(pid=os.getpid(), first_id=exporter.last_frame_ids().start)


def app(environ, start_response):
    if environ.get("PATH_INFO", "").startswith(("/metrics", "/-/")):
        return exporter.wsgi_app(environ, start_response)
    return flask_app(environ, start_response)
