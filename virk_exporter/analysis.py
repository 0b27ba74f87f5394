"""Per-source analysis in the worker: reference, drift windows, diagnosis, and incidents.

Each source (camera) gets its own reference (learned from its first frames unless one was
given), its own drift monitor (batch MMD permutation test with hysteresis, plus the online
detector) and its own fingerprinter. Every test publishes the drift gauges and, with the
diagnosis of the same window, the fingerprint and image-property gauges.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from virk_exporter.config import ExporterConfig
from virk_exporter.drift.monitor import DriftUpdate, SourceDriftMonitor
from virk_exporter.embed import OutputsEmbedder, RandomConvEncoder, embedder_from_id
from virk_exporter.fingerprint import Fingerprinter
from virk_exporter.fingerprint.causes import CAUSES
from virk_exporter.metrics import WorkerMetrics
from virk_exporter.recorder import FlightRecorder
from virk_exporter.slices import TOP_K, SliceTracker
from virk_exporter.reference import Reference, SourceReference
from virk_exporter.tracing import SpanRecord, SpanRecorder

log = logging.getLogger("virk_exporter.worker")

TIMELINE_LENGTH = 4096  # drift tests remembered for bundles (all sources together)
THUMBNAIL_WIDTH = 320


@dataclasses.dataclass
class Baseline:
    """What "normal" is for a source: reference embeddings, fingerprinter, sample frames."""

    embeddings: np.ndarray
    fingerprinter: Fingerprinter
    thumbnails: list[np.ndarray]
    properties: dict[str, np.ndarray]
    origin: str  # "file", "frames" or "learned"


class SourceAnalysis:
    """One source's state: learning its reference, then testing windows."""

    def __init__(self, name: str, baseline: Baseline | None, config: ExporterConfig) -> None:
        self.name = name
        self.config = config
        self.learning: list[np.ndarray] = []
        self.learning_outputs: list[np.ndarray] = []
        self.baseline: Baseline | None = None
        self.drift: SourceDriftMonitor | None = None
        self.properties: deque[dict[str, float]] = deque(maxlen=config.window)
        self.previous_frame: np.ndarray | None = None
        self.last_update: DriftUpdate | None = None
        self.diagnosis: Any = None
        self.fingerprint = "none"
        # Slices (slices.py): recent (embedding, tags) pairs, ranked while drift is detected.
        self.slices = SliceTracker(capacity=4 * config.window, rerank_every=config.window, seed=zlib.crc32(name.encode()))
        self.slice_labels: set[str] = set()  # virk_slice_drift_score series currently exported
        if baseline is not None:
            self.watch(baseline)

    def watch(self, baseline: Baseline) -> None:
        self.baseline = baseline
        self.drift = SourceDriftMonitor(
            baseline.embeddings,
            window=self.config.window,
            test_every=self.config.test_every,
            n_permutations=self.config.n_permutations,
            p_val=self.config.p_val,
            hysteresis=self.config.hysteresis,
            device=self.config.device,
            seed=zlib.crc32(self.name.encode()),
        )
        self.learning, self.learning_outputs = [], []

    def window_properties(self) -> dict[str, np.ndarray]:
        names = self.properties[0].keys() if self.properties else ()
        return {k: np.array([p[k] for p in self.properties], np.float64) for k in names}


class Analysis:
    def __init__(
        self,
        config: ExporterConfig,
        metrics: WorkerMetrics,
        recorder: FlightRecorder,
        lock: threading.RLock,
        reference_frames: np.ndarray | None,
        spans: SpanRecorder,
        send_span: Callable[[SpanRecord], None],
    ) -> None:
        self.config = config
        self.spans = spans
        self.send_span = send_span
        self.model = config.model
        self.metrics = metrics
        self.recorder = recorder
        self.lock = lock
        self.sources: dict[str, SourceAnalysis] = {}
        self.timeline: deque[dict[str, Any]] = deque(maxlen=TIMELINE_LENGTH)
        self.reference: Reference | None = None
        self.shared_baseline: Baseline | None = None
        self._incidents: Any = None
        if config.embedder not in ("image", "outputs", "features"):
            raise ValueError(f"embedder must be 'image', 'outputs' or 'features', got {config.embedder!r}")
        if config.reference_path:
            self.reference = Reference.load(config.reference_path)
            self.embedder = embedder_from_id(self.reference.embedder_id, device=config.device)
            log.info("reference %s: embedder %s, sources %s", config.reference_path, self.reference.embedder_id, sorted(self.reference.sources))
        else:
            self.embedder = RandomConvEncoder(device=config.device) if config.embedder == "image" else OutputsEmbedder(device=config.device)
            if config.embedder == "features":  # rows from monitor(features=...), compared as given
                from virk_exporter.integrations import FeaturesEmbedder

                self.embedder = FeaturesEmbedder(device=config.device)
        if reference_frames is not None:
            if isinstance(self.embedder, OutputsEmbedder):
                raise ValueError("reference frames cannot define a reference of model outputs: let the exporter learn it")
            self.shared_baseline = self._baseline(reference_frames, self.embedder.embed(reference_frames), "frames")
        if self.reference is None and self.shared_baseline is None:
            log.info(
                "no reference given: learning one from the first %d frames of each source; no drift test until then",
                config.reference_frames,
            )
        from virk_exporter.incidents.journal import Journal

        if len(Journal.for_model(self.model)):  # alerts accepted before a crash: book them now
            self._incident_manager()

    # ------------------------------------------------------------------ per batch
    def process(self, monitor: Any, rgb: np.ndarray, outputs: np.ndarray | None, recorded: list, meta: dict) -> None:
        sources = meta["sources"]
        for name in dict.fromkeys(sources):
            index = [i for i, s in enumerate(sources) if s == name]
            self._process_source(monitor, self._source(name), rgb[index], None if outputs is None else outputs[index], [recorded[i] for i in index])

    def _source(self, name: str) -> SourceAnalysis:
        state = self.sources.get(name)
        if state is None:
            state = self.sources[name] = SourceAnalysis(name, self._given_baseline(name), self.config)
            if state.baseline is not None:
                self._publish_reference(state)
        return state

    def _publish_reference(self, state: SourceAnalysis) -> None:
        """Each image property's reference band, for dashboards to draw the live value against."""
        for name, values in state.baseline.properties.items():
            finite = np.asarray(values, np.float64)
            finite = finite[np.isfinite(finite)]
            if len(finite):
                for q, value in zip(("0.05", "0.5", "0.95"), np.quantile(finite, (0.05, 0.5, 0.95))):
                    self.metrics.image_property_reference.labels(self.model, state.name, name, q).set(float(value))

    def _given_baseline(self, name: str) -> Baseline | None:
        if self.shared_baseline is not None:
            return self.shared_baseline
        if self.reference is None:
            return None
        sources = self.reference.sources
        entry = sources.get(name) or (next(iter(sources.values())) if len(sources) == 1 else None)
        if entry is None:
            log.info("source %r is not in the reference file: learning its reference", name)
            return None
        fingerprinter = entry.fingerprinter()
        if fingerprinter is None:
            raise ValueError(f"the reference's source {entry.name!r} has no fingerprinter state; rebuild it")
        return Baseline(entry.embeddings, fingerprinter, list(entry.thumbnails), dict(entry.properties), "file")

    def _features(self, frames: np.ndarray, outputs: np.ndarray | None) -> np.ndarray | None:
        if isinstance(self.embedder, OutputsEmbedder):
            return None if outputs is None else self.embedder.embed_outputs(outputs)
        return self.embedder.embed(frames)

    def _process_source(self, monitor: Any, state: SourceAnalysis, frames: np.ndarray, outputs: np.ndarray | None, recorded: list) -> None:
        if state.drift is None:
            self._learn(monitor, state, frames, outputs)
            return
        with monitor.stage("properties"):
            props = state.baseline.fingerprinter.properties(frames, previous=state.previous_frame)
        state.previous_frame = frames[-1]
        for i, frame in enumerate(recorded):
            values = {k: float(v[i]) for k, v in props.items()}
            frame.properties.update(values)
            state.properties.append(values)
        with monitor.stage("embed"):
            features = self._features(frames, outputs)
        if features is None:
            return
        was_detected = state.drift.detected
        if any(frame.tags for frame in recorded) or state.slices.count:
            state.slices.add(features, [frame.tags for frame in recorded])
        with monitor.stage("drift"):
            update = state.drift.update(features)
        if update is None:
            return
        with monitor.stage("fingerprint"):
            diagnosis = state.baseline.fingerprinter.diagnose(properties=state.window_properties(), embedding_drift=update.drift)
        self._publish(state, update, diagnosis, recorded[-1].timestamp)
        try:
            with monitor.stage("slices"):
                self._rank_slices(state, update)
        except Exception:  # noqa: BLE001 - counted by the stage; a failed ranking must not cost the batch its recording
            pass
        event = {
            "virk.source": state.name,
            "virk.drift.statistic": update.statistic,
            "virk.drift.p_value": update.p_value,
            "virk.drift.threshold": update.threshold,
            "virk.drift.drift": update.drift,
            "virk.drift.detected": update.detected,
            "virk.fingerprint.top": diagnosis.top,
        }
        if state.slices.ranking is not None:
            event["virk.slices.top"] = ",".join(s.slice for s in state.slices.ranking.significant[:TOP_K])
        monitor.spans.event("virk.drift_test", event)
        if update.detected and not was_detected:
            monitor.spans.event("virk.drift_detected", event)

    def _rank_slices(self, state: SourceAnalysis, update: DriftUpdate) -> None:
        """While drift is detected, rank the source's tagged slices and export the top few."""
        if not update.detected or not state.slices.count or not state.slices.tagged:
            if state.slices.ranking is not None or state.slice_labels:
                state.slices.clear()
                self._export_slices(state, {})
            return
        if not state.slices.due():
            return
        ranking = state.slices.rank(state.baseline.embeddings, sigma=state.drift.mmd.sigma)
        self._export_slices(state, {s.slice: s.score for s in ranking.significant[:TOP_K]})

    def _export_slices(self, state: SourceAnalysis, scores: dict[str, float]) -> None:
        """``virk_slice_drift_score``: at most TOP_K series per source; stale ones are removed."""
        gauge = self.metrics.slice_drift_score
        for name in state.slice_labels - set(scores):
            try:
                gauge.remove(self.model, state.name, name)
            except KeyError:
                pass
        for name, score in scores.items():
            gauge.labels(self.model, state.name, name).set(score)
        state.slice_labels = set(scores)

    def _learn(self, monitor: Any, state: SourceAnalysis, frames: np.ndarray, outputs: np.ndarray | None) -> None:
        state.learning.extend(frames)
        if outputs is not None:
            state.learning_outputs.extend(outputs)
        if len(state.learning) < self.config.reference_frames:
            return
        with monitor.stage("reference"):
            learned = np.stack(state.learning)
            if isinstance(self.embedder, OutputsEmbedder):
                if len(state.learning_outputs) < len(learned):
                    raise ValueError("embedder='outputs' needs per-frame scores ([N, K]) returned by predict")
                features = self.embedder.embed_outputs(np.stack(state.learning_outputs))
            else:
                features = self.embedder.embed(learned)
            state.watch(self._baseline(learned, features, "learned"))
            state.previous_frame = learned[-1]
            self._publish_reference(state)
        log.info("source %r: reference learned from %d frames; drift tests start now", state.name, len(learned))

    def _baseline(self, frames: np.ndarray, embeddings: np.ndarray, origin: str) -> Baseline:
        fingerprinter = Fingerprinter(frames)
        step = max(1, len(frames) // 6)
        return Baseline(embeddings, fingerprinter, [_thumbnail(f) for f in frames[::step][:6]], dict(fingerprinter.reference_properties), origin)

    def _publish(self, state: SourceAnalysis, update: DriftUpdate, diagnosis: Any, timestamp: float) -> None:
        m, model, source = self.metrics, self.model, state.name
        m.drift_score.labels(model, source, "mmd").set(update.statistic)
        m.drift_threshold.labels(model, source, "mmd").set(update.threshold)
        m.drift_p_value.labels(model, source).set(update.p_value)
        if update.online_statistic is not None:
            m.drift_score.labels(model, source, "online_mmd").set(update.online_statistic)
            m.drift_threshold.labels(model, source, "online_mmd").set(update.online_threshold)
        fingerprint = (diagnosis.top if diagnosis.top != "none" else "unknown") if update.detected else "none"
        if fingerprint != state.fingerprint:  # one series per source: the old label goes away
            try:
                m.drift_detected.remove(model, source, state.fingerprint)
            except KeyError:
                pass
            state.fingerprint = fingerprint
        m.drift_detected.labels(model, source, fingerprint).set(1.0 if update.detected else 0.0)
        scores = dict(diagnosis.causes)
        for cause in CAUSES:
            m.fingerprint_score.labels(model, source, cause).set(float(scores.get(cause, 0.0)))
        for name, values in state.window_properties().items():
            finite = values[np.isfinite(values)]
            if len(finite):
                m.image_property.labels(model, source, name).set(float(np.median(finite)))
        state.last_update, state.diagnosis = update, diagnosis
        self.timeline.append(
            {
                "timestamp": timestamp,
                "source": source,
                "statistic": update.statistic,
                "p_value": update.p_value,
                "threshold": update.threshold,
                "drift": update.drift,
                "detected": update.detected,
                "fingerprint": fingerprint,
                "top_cause": diagnosis.top,
            }
        )

    # ------------------------------------------------------------------ status, incidents
    def status(self) -> dict[str, Any]:
        sources = {}
        for name, state in self.sources.items():
            update, diagnosis = state.last_update, state.diagnosis
            sources[name] = {
                "phase": "learning" if state.drift is None else "watching",
                "reference_frames": len(state.learning) if state.drift is None else len(state.baseline.embeddings),
                "p_value": None if update is None else update.p_value,
                "statistic": None if update is None else update.statistic,
                "drift": None if update is None else update.drift,
                "detected": bool(update and update.detected),
                "fingerprint": state.fingerprint,
                "top_cause": None if diagnosis is None else diagnosis.top,
                "causes": [] if diagnosis is None else list(diagnosis.causes[:3]),
                "evidence": [] if diagnosis is None else [e.to_dict() for e in diagnosis.evidence[:3]],
                "slices": None if state.slices.ranking is None else state.slices.ranking.to_dict(limit=TOP_K),
            }
        return {"sources": sources}

    def handle_alert(self, notification: Any) -> dict[str, str]:
        return self._incident_manager().handle(notification)

    def _incident_manager(self) -> Any:
        if self._incidents is None:
            from virk_exporter.incidents.manager import IncidentManager

            self._incidents = IncidentManager(self.model, self.config.store, self.metrics, self.incident_context, on_built=self._trace_bundle)
        return self._incidents

    def incident_context(self, alert: Any) -> Any:
        """Freeze what the worker knows for one alert (called on a bundle-building thread)."""
        from virk_exporter.incidents.bundle import IncidentContext

        wanted = alert.labels.get("source")
        with self.lock:
            frames = self.recorder.snapshot(sources={wanted} if wanted in self.sources else None)[-self.config.bundle_frames :]
            names = [wanted] if wanted in self.sources else list(self.sources)
            states = [self.sources[n] for n in names if self.sources[n].baseline is not None]
            embeddings: dict[str, np.ndarray] = {}
            diagnosis: dict[str, dict] = {}
            for state in states:
                embeddings[f"reference/{state.name}"] = state.baseline.embeddings.copy()
                embeddings[f"window/{state.name}"] = state.drift.current_window().copy()
                if state.diagnosis is not None:
                    diagnosis[state.name] = state.diagnosis.to_dict()
                    if state.slices.ranking is not None:  # where it drifted: manifest and report show it
                        diagnosis[state.name]["slices"] = state.slices.ranking.to_dict()
            if len(states) == 1:
                embeddings["reference"] = embeddings[f"reference/{states[0].name}"]
            timeline = [t for t in self.timeline if wanted not in self.sources or t["source"] == wanted]
            reference_frames = [t for state in states for t in state.baseline.thumbnails]
            reference_file = self._reference_bytes(states)
        config = dataclasses.asdict(self.config)
        for secret in ("webhook_token", "webhook_basic_auth"):
            config[secret] = "<set>" if config.get(secret) else None
        config["embedder_id"] = self.embedder.id
        return IncidentContext(
            frames=frames,
            reference_frames=reference_frames,
            embeddings=embeddings,
            drift_timeline=timeline,
            diagnosis=diagnosis,
            config=config,
            reference_file=reference_file,
        )

    def _trace_bundle(self, alert: Any, context: Any, started_ns: int, outcome: str) -> None:
        """A span for the bundle's build, linked to the request spans of the frames inside it."""
        if not self.spans.enabled:
            return
        links = list(dict.fromkeys((f.trace_id, f.span_id) for f in context.frames if f.trace_id))
        attributes = {"virk.model": self.model, "virk.alert.fingerprint": alert.fingerprint, "virk.bundle.outcome": outcome, "virk.bundle.frames": len(context.frames)}
        self.send_span(SpanRecord("virk.bundle", started_ns, time.time_ns(), attributes=attributes, links=links))

    def _reference_bytes(self, states: list[SourceAnalysis]) -> bytes | None:
        """The sources' references as a .virkref file, so a bundle replays on its own."""
        if not states:
            return None
        reference = Reference(
            embedder_id=self.embedder.id,
            sources={
                s.name: SourceReference(
                    name=s.name,
                    embeddings=s.baseline.embeddings,
                    properties=s.baseline.properties,
                    fingerprint_state=s.baseline.fingerprinter.state(),
                    thumbnails=s.baseline.thumbnails,
                )
                for s in states
            },
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = reference.save(Path(tmp) / "reference.virkref")
            return path.read_bytes()

    def close(self) -> None:
        if self._incidents is not None:
            self._incidents.close()


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if w <= THUMBNAIL_WIDTH:
        return frame.copy()
    return cv2.resize(frame, (THUMBNAIL_WIDTH, max(1, round(h * THUMBNAIL_WIDTH / w))), interpolation=cv2.INTER_AREA)
