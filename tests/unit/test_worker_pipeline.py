"""The worker's pipeline in-process (no worker process): batches in, results, gauges, span
events, status and incident contexts out. Fast: the same paths the end-to-end tests reach
through a subprocess, driven directly."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from virk_exporter.config import ExporterConfig
from virk_exporter.demo import corruptions, photos
from virk_exporter.incidents.webhook import Alert, Timestamp
from virk_exporter.telemetry.metrics import WorkerMetrics
from virk_exporter.wire.transport import Arrays, BatchInfo
from virk_exporter.worker.pipeline import Monitor
from virk_exporter.worker.results import DriftResult

SETTINGS = {"reference_period_s": 0, "reference_frames": 40, "window": 16, "test_every": 8, "hysteresis": 1}


def stream(n: int, seed: int = 0) -> np.ndarray:
    return photos.camera_stream(photos.load("coffee"), n, size=(120, 160), seed=seed)


def make(tmp_path, **overrides) -> tuple[Monitor, CollectorRegistry]:
    registry = CollectorRegistry()
    config = ExporterConfig(model="unit", store=str(tmp_path / "store"), **{**SETTINGS, **overrides})
    return Monitor(config, WorkerMetrics(registry), None), registry


def feed(monitor: Monitor, frames: np.ndarray, source: str = "cam", start: float = 1_000_000.0, first_id: int = 0) -> list:
    """Batches of 8 through the pipeline; the span records it returns (tracing on)."""
    records = []
    for i in range(0, len(frames), 8):
        batch = frames[i : i + 8]
        info = BatchInfo(
            frame_ids=list(range(first_id + i, first_id + i + len(batch))),
            sources=[source] * len(batch),
            timestamp=start + i,
            color="rgb",
            channels_first=False,
        )
        records.append(monitor.process(info, Arrays(batch)))
    return [r for r in records if r is not None]


def alert(source: str) -> Alert:
    now = Timestamp.parse("2026-12-02T00:00:00Z", "startsAt")
    zero = Timestamp.parse("0001-01-01T00:00:00Z", "endsAt")
    return Alert("firing", {"alertname": "VirkDriftDetected", "source": source}, {}, now, zero, "", "f00d")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"model": "unit", **labels})


def test_learning_then_noise_is_detected_diagnosed_exported_and_bundled(tmp_path):
    monitor, registry = make(tmp_path)
    monitor.spans.enabled = True
    clean = stream(96)
    feed(monitor, clean[:40])
    assert monitor.command("status")["sources"]["cam"]["phase"] == "watching"
    assert value(registry, "virk_reference_learning", source="cam") == 0.0
    assert value(registry, "virk_reference_samples", source="cam") == 40.0

    feed(monitor, clean[40:64], start=1_000_100.0, first_id=40)
    status = monitor.command("status")["sources"]["cam"]
    assert not status["detected"] and status["p_value"] is not None

    noisy = corruptions.apply("gaussian_noise", clean[64:96], severity=5)
    records = feed(monitor, noisy, start=1_000_200.0, first_id=64)
    status = monitor.command("status")["sources"]["cam"]
    assert status["detected"], status
    assert status["detector"] in ("properties", "both") and status["fingerprint"] == "noise"
    assert value(registry, "virk_drift_detected", source="cam", fingerprint="noise", detector=status["detector"]) == 1.0
    assert value(registry, "virk_fingerprint_score", source="cam", cause="noise") > 0

    events = [(name, attributes) for r in records for name, _, attributes in r.events]
    detections = [attributes for name, attributes in events if name == "virk.drift_detected"]
    assert len(detections) == 1 and detections[0]["virk.fingerprint.top"] == "noise"
    assert sum(name == "virk.drift_test" for name, _ in events) >= 2
    assert {"virk.properties", "virk.embed", "virk.drift", "virk.fingerprint"} <= {c.name for r in records for c in r.children}

    timeline = monitor.incidents.timeline.of("cam")
    assert [r.onset for r in timeline].count(True) == 1 and timeline[-1].detected
    context = monitor.incidents.context(alert("cam"))
    assert {"reference/cam", "window/cam", "reference"} <= set(context.embeddings)
    assert context.diagnosis["cam"]["top"] == "noise"
    assert [DriftResult.from_dict(p) for p in context.drift_timeline] == timeline
    assert context.reference_file and context.frames and context.config["embedder_id"] == monitor.analysis.embedder.id


def test_a_failing_stage_is_counted_and_the_batch_dropped(tmp_path):
    monitor, registry = make(tmp_path)
    monitor.command("fail_stage", "record")
    feed(monitor, stream(8))
    assert value(registry, "virk_errors_total", stage="record") == 1.0
    assert monitor.command("status")["frames_processed"] == 0
    monitor.command("fail_stage", None)
    feed(monitor, stream(8))
    assert monitor.command("status")["frames_processed"] == 8


def test_rebase_forgets_the_reference_and_the_verdict(tmp_path):
    monitor, registry = make(tmp_path)
    feed(monitor, stream(48))
    assert monitor.command("status")["sources"]["cam"]["phase"] == "watching"
    assert monitor.command("rebase", None) == {"rebased": ["cam"], "reference_period_s": 0}
    status = monitor.command("status")["sources"]["cam"]
    assert status["phase"] == "learning" and not status["detected"] and status["p_value"] is None
    assert value(registry, "virk_reference_rebases_total", source="cam") == 1.0
    assert value(registry, "virk_reference_learning", source="cam") == 1.0


def test_the_drift_tests_calibration_cli_and_replay_share_the_config_defaults():
    import inspect

    from virk_exporter.cli import main
    from virk_exporter.commands.calibrate import calibrate as calibrate_command
    from virk_exporter.config import ExporterConfig, default
    from virk_exporter.drift.calibration import calibrate
    from virk_exporter.drift.mmd import MMDDrift
    from virk_exporter.drift.monitor import SourceDriftMonitor

    config = ExporterConfig(model="defaults")
    shared = {MMDDrift.__init__: ("n_permutations", "p_val"), SourceDriftMonitor.__init__: ("n_permutations", "p_val"), calibrate: ("n_permutations", "window", "test_every")}
    for function, names in shared.items():
        parameters = inspect.signature(function).parameters
        for name in names:
            assert parameters[name].default == getattr(config, name), (function, name)
    options = {p.name: p.default for p in calibrate_command.params}
    assert (options["window"], options["test_every"], options["n_permutations"]) == (config.window, config.test_every, config.n_permutations)
    serve = {p.name: p.default for p in main.commands["serve"].params}
    assert serve["reference_period_s"] == config.reference_period_s == default("reference_period_s")
