"""Shared builders for the incident tests and the bundle benchmark: real photographs as frames,
an Alertmanager-shaped alert and an IncidentContext like the worker's."""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from virk_exporter.fingerprint import CaptureDetector, Fingerprinter
from virk_exporter.reference.build import Reference, SourceReference

from virk_exporter.incidents.bundle import IncidentContext
from virk_exporter.incidents.webhook import Alert, make_alert_payload, parse_notification
from virk_exporter.worker.recorder import RecordedFrame, encode_frame

MODEL = "detector-v3"


def photos(size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    return [cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in (skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee())]


def alert(model: str = MODEL, status: str = "firing", fingerprint: str = "a1b2c3d4e5f60718", **labels: str) -> Alert:
    from datetime import datetime, timezone

    body = make_alert_payload(
        model,
        labels={"source": "cam1", **labels},
        status=status,  # type: ignore[arg-type]
        starts_at=datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=timezone.utc),
        ends_at=datetime(2026, 11, 26, 1, 9, 0, tzinfo=timezone.utc) if status == "resolved" else None,
        fingerprint=fingerprint,
    )
    return parse_notification(body).alerts[0]


_FINGERPRINTERS: dict = {}


def _fingerprinter(reference: list[np.ndarray]):
    key = (len(reference), reference[0].shape)
    if key not in _FINGERPRINTERS:
        _FINGERPRINTERS[key] = Fingerprinter(np.stack(reference))
    return _FINGERPRINTERS[key]


_REFERENCE_FILES: dict = {}


def reference_file(fingerprinter, embeddings: np.ndarray) -> bytes:
    """A real .virkref (virk_exporter.reference.build) holding the embeddings and fingerprinter.
    Cached: Reference.save stamps zip entries with the current time, and the tests compare
    bundles built from the same content byte for byte."""
    key = (id(fingerprinter), embeddings.tobytes())
    if key not in _REFERENCE_FILES:
        _REFERENCE_FILES[key] = _save_reference(fingerprinter, embeddings)
    return _REFERENCE_FILES[key]


def _save_reference(fingerprinter, embeddings: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        ref = Reference(
            embedder_id="test-embedder/v0",
            sources={"cam1": SourceReference("cam1", embeddings, fingerprint_state=fingerprinter.state())},
            created="2026-11-26T00:00:00+00:00",
        )
        return ref.save(Path(tmp) / "r.virkref").read_bytes()


def context(n_frames: int = 16, size: tuple[int, int] = (640, 480), onset: int | None = None, seed: int = 0) -> IncidentContext:
    """Frames of real photos that darken from ``onset`` on (a brightness drift), with traces,
    the properties and diagnosis the real fingerprinter gives for them, and a real .virkref."""
    rng = np.random.default_rng(seed)
    base = photos(size)
    reference = [np.clip(b.astype(np.int16) + rng.integers(-4, 5, b.shape), 0, 255).astype(np.uint8) for b in base for _ in range(3)]
    fingerprinter = _fingerprinter(reference)
    onset = n_frames // 2 if onset is None else onset
    raw = [base[i % len(base)] if i < onset else (base[i % len(base)] * 0.4).astype(np.uint8) for i in range(n_frames)]
    measured = fingerprinter.properties(np.stack(raw))
    frames = []
    for i, rgb in enumerate(raw):
        frames.append(
            RecordedFrame(
                frame_id=i,
                timestamp=1_764_118_800.0 + i,
                source="cam1",
                encoded=encode_frame(rgb),
                format="jpeg",
                shape=rgb.shape,
                trace_id=f"{i:032x}",
                span_id=f"{i:016x}",
                output={"label": int(i % 3)},
                properties={k: float(v[i]) for k, v in measured.items()},
            )
        )
    window = {k: v[onset:] for k, v in measured.items()}
    config = {"window": max(2, n_frames - onset), "n_permutations": 100, "p_val": 0.05}
    capture = CaptureDetector(fingerprinter, config["window"], config["p_val"]).test(window, embedding_drift=True)  # as the worker tests
    timeline = [
        {
            "timestamp": 1_764_118_800.0 + i,
            "source": "cam1",
            "statistic": 0.01 if i < onset else 0.3,
            "p_value": 0.6 if i < onset else 0.005,
            "threshold": 0.05,
            "drift": i >= onset,
            "detected": i >= onset,
            "capture": {"drift": capture.drift if i >= onset else False},
            "fingerprint": capture.diagnosis.top if i >= onset else "none",
        }
        for i in range(0, n_frames, 2)
    ]
    reference_embeddings = rng.normal(size=(32, 8)).astype(np.float32)
    return IncidentContext(
        frames=frames,
        reference_frames=reference,
        embeddings={"reference": reference_embeddings, "window/cam1": rng.normal(2.0, 1.0, size=(config["window"], 8)).astype(np.float32)},
        drift_timeline=timeline,
        diagnosis={"cam1": capture.diagnosis.to_dict()},
        reference_file=reference_file(fingerprinter, reference_embeddings),
        config=config,
    )
