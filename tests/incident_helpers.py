"""Shared builders for the incident tests and the bundle benchmark: real photographs as frames,
an Alertmanager-shaped alert and an IncidentContext like the worker's."""

from __future__ import annotations

import cv2
import numpy as np
import skimage.data

from virk_exporter.incidents.bundle import IncidentContext
from virk_exporter.incidents.webhook import Alert, make_alert_payload, parse_notification
from virk_exporter.recorder import RecordedFrame, encode_frame

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


def context(n_frames: int = 16, size: tuple[int, int] = (640, 480), onset: int | None = None, seed: int = 0) -> IncidentContext:
    """Frames of real photos that darken from ``onset`` on (a brightness drift), with traces."""
    rng = np.random.default_rng(seed)
    base = photos(size)
    onset = n_frames // 2 if onset is None else onset
    frames = []
    for i in range(n_frames):
        rgb = base[i % len(base)]
        if i >= onset:
            rgb = (rgb * 0.4).astype(np.uint8)
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
                properties={"brightness": float(rgb.mean()), "contrast": float(rgb.std())},
            )
        )
    timeline = [
        {
            "timestamp": 1_764_118_800.0 + i,
            "source": "cam1",
            "statistic": 0.01 if i < onset else 0.3,
            "p_value": 0.6 if i < onset else 0.005,
            "threshold": 0.05,
            "detected": i >= onset,
            "fingerprint": "brightness" if i >= onset else "none",
        }
        for i in range(0, n_frames, 2)
    ]
    return IncidentContext(
        frames=frames,
        reference_frames=base,
        embeddings={"reference": rng.normal(size=(32, 8)).astype(np.float32), "window/cam1": rng.normal(2.0, 1.0, size=(16, 8)).astype(np.float32)},
        drift_timeline=timeline,
        diagnosis={"cam1": {"top": "brightness", "causes": [["brightness", 0.92], ["contrast", 0.3]], "evidence": {"brightness": "median luma 0.4x"}}},
        config={"window": 16, "n_permutations": 100, "p_val": 0.05},
    )
