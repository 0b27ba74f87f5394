"""The worker's pipeline in-process (no worker process): batches in, results, gauges, span
events, status and incident contexts out. Fast: the same paths the end-to-end tests reach
through a subprocess, driven directly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from virk_exporter.config import ExporterConfig
from virk_exporter.demo import corruptions, photos
from virk_exporter.commands.bundle import bundle as bundle_command
from virk_exporter.embed.embedders import RandomConvEncoder
from virk_exporter.incidents.bundle import build_bundle, read_bundle
from virk_exporter.incidents.replay import replay
from virk_exporter.incidents.webhook import Alert, Timestamp
from virk_exporter.reference.build import build_reference
from virk_exporter.telemetry.metrics import WorkerMetrics
from virk_exporter.wire.transport import Arrays, BatchInfo
from virk_exporter.worker.pipeline import Monitor
from virk_exporter.worker.results import DriftResult

from incident_helpers import photos as incident_photos

SETTINGS = {"reference_period_s": 0, "reference_frames": 40, "window": 16, "test_every": 8, "hysteresis": 1}


def stream(n: int, seed: int = 0) -> np.ndarray:
    return photos.camera_stream(photos.load("coffee"), n, size=(120, 160), seed=seed)


def make(tmp_path, **overrides) -> tuple[Monitor, CollectorRegistry]:
    registry = CollectorRegistry()
    config = ExporterConfig(model="unit", store=str(tmp_path / "store"), **{**SETTINGS, **overrides})
    return Monitor(config, WorkerMetrics(registry), None), registry


def feed(monitor: Monitor, frames: np.ndarray, source: str = "cam", start: float = 1_000_000.0, first_id: int = 0, function: str | None = None, batch_size: int = 8) -> list:
    """Batches through the pipeline, frame i stamped start + i s; the span records it returns (tracing on)."""
    records = []
    for i in range(0, len(frames), batch_size):
        batch = frames[i : i + batch_size]
        info = BatchInfo(
            frame_ids=list(range(first_id + i, first_id + i + len(batch))),
            sources=[source] * len(batch),
            timestamp=start + i,
            color="rgb",
            channels_first=False,
            function=function,
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
    records = feed(monitor, noisy, start=1_000_200.0, first_id=64, function="shop.vision:Model.predict")
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
    assert context.predict == "shop.vision:Model.predict"

    # the bundle names the function to replay (manifest, report, `bundle show`) and replays alone
    data, manifest = build_bundle(alert("cam"), "unit", context)
    bundle = read_bundle(data)
    assert bundle.manifest["predict"] == "shop.vision:Model.predict"
    assert b"--predict shop.vision:Model.predict" in bundle.files["report.html"]
    path = tmp_path / "bundle.zip"
    path.write_bytes(data)
    shown = CliRunner().invoke(bundle_command, ["show", str(path)], terminal_width=200)
    assert shown.exit_code == 0 and "shop.vision:Model.predict" in shown.output, shown.output
    replayed = replay(bundle)
    drift = [c for c in replayed.comparisons if c.what == "drift"]
    assert drift and drift[0].recorded is True and drift[0].match, replayed


def test_a_bundle_carries_the_sampled_frames_the_last_test_judged_and_replay_judges_them(tmp_path):
    # one sample per second of a 2 fps camera: the tested window's samples are older than the
    # newest `bundle_frames` frames, which hold no measured properties
    monitor, _ = make(tmp_path, reference_period_s=48, reference_frames=48, window=8, test_every=4, bundle_frames=4)
    clean = stream(96)
    feed(monitor, clean, batch_size=2)
    noisy = corruptions.apply("gaussian_noise", stream(48, seed=1), severity=5)
    feed(monitor, noisy, start=1_000_100.0, first_id=96, batch_size=2)
    assert monitor.command("status")["sources"]["cam"]["fingerprint"] == "noise"

    context = monitor.incidents.context(alert("cam"))
    tested = context.diagnosis["cam"]["frame_ids"]
    assert len(tested) == 8 and np.all(np.diff(tested) == 2) and tested[0] >= 96  # one sample per batch, all noisy
    ids = [f.frame_id for f in context.frames]
    assert ids == sorted(set(tested) | set(range(96 + 48 - 4, 96 + 48)))
    replayed = replay(read_bundle(build_bundle(alert("cam"), "unit", context)[0]))
    cause = [c for c in replayed.comparisons if c.what == "cause"]
    assert cause and cause[0].recorded == cause[0].replayed == "noise", replayed
    assert not any("not all in the bundle" in note for note in replayed.notes), replayed.notes


@pytest.mark.parametrize("dark", [8, 16])
def test_replay_reproduces_a_window_the_onset_splits(tmp_path, dark):
    """A page often arrives on the first test that drifts, whose window holds clean and faulty
    samples: its embedding test is near its bar, its capture test below theirs. Replay reruns
    both as the worker ran them (time-aware p-value, the source's permutations, the calibrated
    cause bars), not a plain permutation test and a bar-free diagnosis."""
    base = [cv2.resize(p, (320, 240), interpolation=cv2.INTER_AREA) for p in incident_photos()]
    rng = np.random.default_rng(0)

    def frames(n: int, gain: float = 1.0) -> np.ndarray:
        batch = np.stack([base[int(i)] for i in rng.integers(0, len(base), n)]).astype(np.int16)
        batch += rng.integers(-6, 7, batch.shape, dtype=np.int16)
        return np.clip(batch * gain, 0, 255).astype(np.uint8)

    monitor, _ = make(tmp_path, reference_frames=64, window=32, test_every=16)
    feed(monitor, frames(96))
    feed(monitor, np.concatenate([frames(32 - dark), frames(dark, gain=0.35)]), start=1_000_200.0, first_id=96, batch_size=16)
    state = monitor.analysis.sources["cam"]
    recorded = monitor.incidents.context(alert("cam"))
    replayed = replay(read_bundle(build_bundle(alert("cam"), "unit", recorded)[0]))
    assert replayed.reproduced, replayed
    p_value = next(c for c in replayed.comparisons if c.what == "p_value")
    assert p_value.recorded == p_value.replayed  # the worker's permutations, the same statistic
    cause = next(c for c in replayed.comparisons if c.what == "cause")
    if dark == 16:  # the embedding test drifts; brightness scores, but below its calibrated bar
        assert state.last.drift and cause.recorded == cause.replayed == "content", replayed
        assert state.baseline.fingerprinter.diagnose(properties=state.window_properties(), embedding_drift=True).top == "brightness"
    else:  # below both bars
        assert not state.last.drift and cause.recorded == cause.replayed == "none", replayed


def test_a_reference_over_a_short_span_of_footage_is_warned_about_and_its_span_kept(tmp_path, caplog):
    monitor, _ = make(tmp_path)
    with caplog.at_level("WARNING", logger="virk_exporter.worker"):
        feed(monitor, stream(48))  # the reference: 5 batches of 8, stamped 8 s apart: 32 s
    status = monitor.command("status")["sources"]["cam"]
    assert status["phase"] == "watching" and status["reference_origin"] == "learned" and status["reference_span_s"] == 32.0
    warned = [r.getMessage() for r in caplog.records if "spans 32.0 s of footage" in r.getMessage()]
    assert len(warned) == 1 and "'cam'" in warned[0] and "reference_period_s" in warned[0], caplog.text
    # kept with the stored reference: a restart warns again and says the same span
    context = monitor.incidents.context(alert("cam"))
    from virk_exporter.reference.store import from_bytes

    assert from_bytes(context.reference_file, "cam", monitor.analysis.embedder.id).span_s == 32.0


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


def test_a_reference_without_the_streams_source_is_counted_logged_once_and_the_source_learns(tmp_path, caplog):
    clean = stream(80)
    path = build_reference({"cam1": clean[:32]}, RandomConvEncoder(), progress=False).save(tmp_path / "ref.virkref")
    monitor, registry = make(tmp_path, reference_path=str(path))
    with caplog.at_level("WARNING", logger="virk_exporter.worker"):
        feed(monitor, clean[32:48], source="cam1")
        for _ in range(3):  # 24 samples: still learning (reference_frames=40)
            feed(monitor, clean[48:56], source="cam2")
    sources = monitor.command("status")["sources"]
    assert sources["cam1"]["phase"] == "watching" and sources["cam1"]["reference_origin"] == "file"
    assert sources["cam2"]["phase"] == "learning"
    assert value(registry, "virk_errors_total", stage="reference") == 1.0
    assert len([r for r in caplog.records if "'cam2' is not in the reference file" in r.getMessage()]) == 1


def test_a_reference_built_without_source_labels_serves_every_source(tmp_path):
    clean = stream(48)
    path = build_reference(clean[:32], RandomConvEncoder(), progress=False).save(tmp_path / "ref.virkref")
    monitor, registry = make(tmp_path, reference_path=str(path))
    feed(monitor, clean[32:48], source="gate")
    assert monitor.command("status")["sources"]["gate"]["phase"] == "watching"
    assert value(registry, "virk_errors_total", stage="reference") is None


def test_drift_result_round_trips_and_reads_old_timeline_entries():
    result = DriftResult(5.0, "cam", 0.3, 0.004, 0.1, True, True, 2.0, 0.001, True, "both", "blur", "blur", True, ("site=a",), capture_recent=False)
    assert DriftResult.from_dict(result.to_dict()) == result
    old = {"timestamp": 7, "source": "cam1", "statistic": 0.3, "p_value": 0.005, "threshold": 0.05, "detected": True, "fingerprint": "brightness"}
    read = DriftResult.from_dict(old)
    assert (read.detected, read.p_value, read.fingerprint, read.capture_p_value, read.detector) == (True, 0.005, "brightness", None, "none")
    assert DriftResult.from_dict({"timestamp": "x", "p_value": True, "capture": []}).p_value is None
    attributes = result.span_attributes()
    assert attributes["virk.slices.top"] == "site=a" and None not in attributes.values()


def test_nan_frames_fail_the_normalize_stage_and_one_odd_frame_cannot_stall_learning(tmp_path):
    monitor, registry = make(tmp_path)
    monitor.process(BatchInfo([0], ["cam"], 1.0, "rgb", False), Arrays(np.full((1, 8, 8, 3), np.nan, np.float32)))
    assert value(registry, "virk_errors_total", stage="normalize") == 1.0
    frames = stream(48)
    feed(monitor, frames[:8])
    monitor.process(BatchInfo([99], ["cam"], 1_000_008.5, "rgb", False), Arrays(np.zeros((1, 16, 16, 3), np.uint8)))
    feed(monitor, frames[8:48], start=1_000_009.0, first_id=8)
    assert monitor.command("status")["sources"]["cam"]["phase"] == "watching"
    assert value(registry, "virk_errors_total", stage="reference") is None


def test_a_content_change_in_the_features_is_labelled_content(tmp_path):
    monitor, registry = make(tmp_path, embedder="features", hysteresis=2)
    rng = np.random.default_rng(0)
    frames = stream(200, seed=4)
    for i in range(0, 200, 8):
        shift = 0.0 if i < 48 else 5.0
        info = BatchInfo(list(range(i, i + 8)), ["cam"] * 8, 1_000_000.0 + i, "rgb", False)
        monitor.process(info, Arrays(frames[i : i + 8], features=rng.normal(shift, 1.0, size=(8, 8)).astype(np.float32)))
    status = monitor.command("status")["sources"]["cam"]
    assert status["detected"] and (status["fingerprint"], status["detector"]) == ("content", "embedding")
    assert value(registry, "virk_drift_detected", source="cam", fingerprint="content", detector="embedding") == 1.0
