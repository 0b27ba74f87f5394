"""Per-source analysis in the worker: reference, drift tests, diagnosis, and incidents.

Each source (camera) gets its own reference — given (file or frames), loaded from the store, or
learned by sampling the source over its reference period (``baseline.py``) — and two calibrated
tests run every ``test_every`` samples on the latest ``window`` samples: the embedding test
(content: ``drift/monitor.py``) and the capture-fault test (image properties:
``fingerprint/detector.py``). ``virk_drift_detected`` is 1 while either detects drift; its
``detector`` label says which, its ``fingerprint`` the cause (``content`` for an embedding-only
drift: the scene changed, the camera did not break).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import zlib
from collections import deque
from typing import Any, Callable

import numpy as np

from virk_exporter.reference.baseline import Baseline, Detectors, Learner, Sampler, sample_spacing, thumbnail
from virk_exporter.config import ExporterConfig
from virk_exporter.drift.monitor import DriftUpdate, Hysteresis, SourceDriftMonitor
from virk_exporter.embed.embedders import OutputsEmbedder, RandomConvEncoder, embedder_from_id
from virk_exporter.fingerprint import CaptureDetector, CaptureResult, Fingerprinter
from virk_exporter.fingerprint.causes import CAUSES
from virk_exporter.fingerprint.properties import compute_properties_and_smalls
from virk_exporter.telemetry.metrics import WorkerMetrics
from virk_exporter.worker.recorder import FlightRecorder
from virk_exporter.reference.build import Reference
from virk_exporter.reference.store import ReferenceStore, to_bytes
from virk_exporter.drift.slices import TOP_K, SliceTracker
from virk_exporter.telemetry.tracing import SpanRecord, SpanRecorder

log = logging.getLogger("virk_exporter.worker")

TIMELINE_LENGTH = 4096  # drift tests remembered for bundles (all sources together)


class SourceAnalysis:
    """One source's state: learning its reference, then testing windows of samples."""

    def __init__(self, name: str, config: ExporterConfig) -> None:
        self.name = name
        self.config = config
        self.sampler = Sampler(sample_spacing(config.reference_period_s, config.reference_frames))
        self.learner: Learner | None = None
        self.baseline: Baseline | None = None
        self.detectors: Detectors | None = None
        self.capture_state = Hysteresis(config.hysteresis)
        self.properties: deque[dict[str, float]] = deque(maxlen=config.window)
        self.previous_frame: np.ndarray | None = None
        self.last_update: DriftUpdate | None = None
        self.last_capture: CaptureResult | None = None
        self.diagnosis: Any = None
        self.cause = "none"  # the capture cause named while the capture detector is on
        self.labels = ("none", "none")  # (fingerprint, detector) of the exported series
        # Slices (slices.py): recent (embedding, tags) pairs, ranked while drift is detected.
        self.slices = SliceTracker(capacity=4 * config.window, rerank_every=config.window, seed=zlib.crc32(name.encode()))
        self.slice_labels: set[str] = set()  # virk_slice_drift_score series currently exported

    @property
    def detected(self) -> bool:
        return self.detectors is not None and (self.detectors.embedding.detected or self.capture_state.detected)

    def learn(self) -> None:
        """(Re)start learning: forget the reference and the tests' state."""
        minimum = min(self.config.reference_frames, self.config.calibration_samples)
        self.learner = Learner(self.config.reference_period_s, self.config.reference_frames, minimum)
        self.baseline = self.detectors = None
        self.capture_state = Hysteresis(self.config.hysteresis)
        self.properties.clear()
        self.last_update = self.last_capture = self.diagnosis = None
        self.cause = "none"

    def watch(self, baseline: Baseline) -> None:
        config = self.config
        embedding = SourceDriftMonitor(
            baseline.embeddings,
            window=config.window,
            test_every=config.test_every,
            n_permutations=config.n_permutations,
            p_val=config.p_val,
            hysteresis=config.hysteresis,
            device=config.device,
            seed=zlib.crc32(self.name.encode()),
        )
        self.baseline = baseline
        self.detectors = Detectors(embedding, CaptureDetector(baseline.fingerprinter, config.window, config.p_val))
        self.learner = None

    def window_properties(self) -> dict[str, np.ndarray]:
        names = self.properties[0].keys() if self.properties else ()
        return {k: np.array([p[k] for p in self.properties], np.float64) for k in names}


class Analysis:
    """The worker's per-batch analysis of every source, and what incidents need from it."""

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
        self._stored: ReferenceStore | None = None
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
            fingerprinter = Fingerprinter(reference_frames)
            step = max(1, len(reference_frames) // 6)
            thumbnails = [thumbnail(f) for f in reference_frames[::step][:6]]
            self.shared_baseline = Baseline(self.embedder.embed(reference_frames), fingerprinter, thumbnails, "frames")
        if self.reference is None and self.shared_baseline is None:
            log.info(
                "no reference given: each source learns one over %gs (%d samples at most)%s; no drift test until then",
                config.reference_period_s,
                config.reference_frames,
                ", kept in the store" if config.persist_reference else "",
            )
        from virk_exporter.incidents.journal import Journal

        if len(Journal.for_model(self.model)):  # alerts accepted before a crash: book them now
            self._incident_manager()

    # ------------------------------------------------------------------ per batch
    def process(self, monitor: Any, rgb: np.ndarray, outputs: np.ndarray | None, recorded: list, meta: dict) -> None:
        sources = meta["sources"]
        for name in dict.fromkeys(sources):
            index = [i for i, s in enumerate(sources) if s == name]
            self._process_source(monitor, self._source(monitor, name), rgb[index], None if outputs is None else outputs[index], [recorded[i] for i in index])

    def _source(self, monitor: Any, name: str) -> SourceAnalysis:
        state = self.sources.get(name)
        if state is None:
            state = self.sources[name] = SourceAnalysis(name, self.config)
            baseline = self._given_baseline(name) or self._stored_baseline(monitor, name)
            if baseline is None:
                state.learn()
                self._publish_learning(state)
            else:
                self._install(state, baseline)
        return state

    def _install(self, state: SourceAnalysis, baseline: Baseline) -> None:
        state.watch(baseline)
        self._publish_reference(state)

    def _publish_learning(self, state: SourceAnalysis) -> None:
        learning = state.learner is not None
        self.metrics.reference_learning.labels(self.model, state.name).set(1.0 if learning else 0.0)
        samples = state.learner.count if learning else state.baseline.samples
        self.metrics.reference_samples.labels(self.model, state.name).set(samples)

    def _publish_reference(self, state: SourceAnalysis) -> None:
        """Each image property's reference band, for dashboards to draw the live value against."""
        self._publish_learning(state)
        self.metrics.publish_reference(self.model, state.name, state.baseline.properties, self.config.property_metrics)

    def _given_baseline(self, name: str) -> Baseline | None:
        if self.shared_baseline is not None:
            return self.shared_baseline
        if self.reference is None:
            return None
        sources = self.reference.sources
        entry = sources.get(name) or (next(iter(sources.values())) if len(sources) == 1 else None)
        if entry is None:
            log.info("source %r is not in the reference file (it has %s): learning its reference", name, sorted(sources))
            return None
        fingerprinter = entry.fingerprinter()
        if fingerprinter is None:
            raise ValueError(f"the reference's source {entry.name!r} has no fingerprinter state; rebuild it")
        return Baseline(entry.embeddings, fingerprinter, list(entry.thumbnails), "file")

    # ------------------------------------------------------------------ stored references
    def _reference_store(self) -> ReferenceStore | None:
        if not self.config.persist_reference:
            return None
        if self._stored is None:
            from virk_exporter.incidents.store import open_store

            self._stored = ReferenceStore(open_store(self.config.store), self.model, self.embedder.id)
        return self._stored

    def _stored_baseline(self, monitor: Any, name: str) -> Baseline | None:
        try:
            with monitor.stage("reference_store"):
                store = self._reference_store()
                baseline = None if store is None else store.load(name)
        except Exception:  # noqa: BLE001 - counted by the stage: learning is the fallback
            log.warning("source %r: could not read its stored reference; learning one", name)
            return None
        if baseline is not None:
            log.info("source %r: reference of %d samples loaded from the store; drift tests start now", name, baseline.samples)
        return baseline

    def _save(self, monitor: Any, state: SourceAnalysis) -> None:
        try:
            with monitor.stage("reference_store"):
                store = self._reference_store()
                if store is not None:
                    log.info("source %r: reference saved as %s", state.name, store.save(state.name, state.baseline))
        except Exception:  # noqa: BLE001 - counted by the stage; the reference still works in memory
            pass

    def rebase(self, monitor: Any, source: str | None = None) -> dict[str, Any]:
        """Forget a source's reference (every source's with None) and learn a new one."""
        names = list(self.sources) if source is None else [source]
        for name in names:
            state = self._source(monitor, name)
            state.learn()
            self._set_detected(state, "none", "none", 0.0)
            self.metrics.reference_rebases.labels(self.model, name).inc()
            self._publish_learning(state)
            try:
                with monitor.stage("reference_store"):
                    store = self._reference_store()
                    if store is not None:
                        store.clear(name)
            except Exception:  # noqa: BLE001 - counted; a restart would then load the old reference
                log.warning("source %r: rebased, but the stored reference could not be cleared", name)
            log.warning("source %r: rebased; learning a new reference over %gs", name, self.config.reference_period_s)
        return {"rebased": names, "reference_period_s": self.config.reference_period_s}

    # ------------------------------------------------------------------ learning and testing
    def _features(self, frames: np.ndarray, outputs: np.ndarray | None) -> np.ndarray | None:
        if isinstance(self.embedder, OutputsEmbedder):
            return None if outputs is None else self.embedder.embed_outputs(outputs)
        return self.embedder.embed(frames)

    def _process_source(self, monitor: Any, state: SourceAnalysis, frames: np.ndarray, outputs: np.ndarray | None, recorded: list) -> None:
        picked = state.sampler.pick(len(frames), recorded[0].timestamp)
        if not picked:
            return
        frames, recorded = frames[picked], [recorded[i] for i in picked]
        outputs = None if outputs is None else outputs[picked]
        if state.detectors is None:
            self._learn(monitor, state, frames, outputs, recorded[-1].timestamp)
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
        was_detected = state.detected
        if any(frame.tags for frame in recorded) or state.slices.count:
            state.slices.add(features, [frame.tags for frame in recorded])
        with monitor.stage("drift"):
            update = state.detectors.embedding.update(features)
        if update is None:
            return
        with monitor.stage("fingerprint"):
            capture = state.detectors.capture.test(state.window_properties(), embedding_drift=update.drift)
        self._publish(state, update, capture, recorded[-1].timestamp)
        try:
            with monitor.stage("slices"):
                self._rank_slices(state)
        except Exception:  # noqa: BLE001 - counted by the stage; a failed ranking must not cost the batch its recording
            pass
        event = {
            "virk.source": state.name,
            "virk.drift.statistic": update.statistic,
            "virk.drift.p_value": update.p_value,
            "virk.drift.threshold": update.threshold,
            "virk.drift.drift": update.drift,
            "virk.capture.statistic": capture.statistic,
            "virk.capture.p_value": capture.p_value,
            "virk.capture.drift": capture.drift,
            "virk.drift.detected": state.detected,
            "virk.drift.detector": state.labels[1],
            "virk.fingerprint.top": state.labels[0],
        }
        if state.slices.ranking is not None:
            event["virk.slices.top"] = ",".join(s.slice for s in state.slices.ranking.significant[:TOP_K])
        monitor.spans.event("virk.drift_test", event)
        if state.detected and not was_detected:
            monitor.spans.event("virk.drift_detected", event)

    def _learn(self, monitor: Any, state: SourceAnalysis, frames: np.ndarray, outputs: np.ndarray | None, timestamp: float) -> None:
        with monitor.stage("reference"):
            if isinstance(self.embedder, OutputsEmbedder) and outputs is None:
                raise ValueError("embedder='outputs' needs per-frame scores ([N, K]) returned by predict")
            props, smalls = compute_properties_and_smalls(frames, previous=state.previous_frame)
            state.learner.add(frames, self._features(frames, outputs), props, smalls, timestamp)
            state.previous_frame = frames[-1]
            self.metrics.reference_samples.labels(self.model, state.name).set(state.learner.count)
            if not state.learner.done(timestamp):
                return
            started = state.learner.started
            self._install(state, state.learner.finish(timestamp))
        log.info(
            "source %r: reference learned from %d samples over %.0fs; drift tests start now",
            state.name, state.baseline.samples, timestamp - (started or timestamp),
        )
        self._save(monitor, state)

    def _rank_slices(self, state: SourceAnalysis) -> None:
        """While drift is detected, rank the source's tagged slices and export the top few."""
        if not state.detected or not state.slices.count or not state.slices.tagged:
            if state.slices.ranking is not None or state.slice_labels:
                state.slices.clear()
                self._export_slices(state, {})
            return
        if not state.slices.due():
            return
        ranking = state.slices.rank(state.baseline.embeddings, sigma=state.detectors.embedding.mmd.sigma)
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

    def _set_detected(self, state: SourceAnalysis, fingerprint: str, detector: str, value: float) -> None:
        """One ``virk_drift_detected`` series per source: the old labels go away when they change."""
        gauge = self.metrics.drift_detected
        if (fingerprint, detector) != state.labels:
            try:
                gauge.remove(self.model, state.name, *state.labels)
            except KeyError:
                pass
            state.labels = (fingerprint, detector)
        gauge.labels(self.model, state.name, fingerprint, detector).set(value)

    def _publish(self, state: SourceAnalysis, update: DriftUpdate, capture: CaptureResult, timestamp: float) -> None:
        m, model, source = self.metrics, self.model, state.name
        m.drift_score.labels(model, source, "mmd").set(update.statistic)
        m.drift_threshold.labels(model, source, "mmd").set(update.threshold)
        m.drift_p_value.labels(model, source).set(update.p_value)
        m.drift_score.labels(model, source, "properties").set(capture.statistic)
        m.drift_threshold.labels(model, source, "properties").set(1.0)
        if update.online_statistic is not None:
            m.drift_score.labels(model, source, "online_mmd").set(update.online_statistic)
            m.drift_threshold.labels(model, source, "online_mmd").set(update.online_threshold)
        captured = state.capture_state.update(capture.drift)
        if capture.drift:
            state.cause = capture.diagnosis.top
        content = state.detectors.embedding.detected
        if captured:
            fingerprint, detector = state.cause, "both" if content else "properties"
        elif content and capture.drift:  # the capture test sees a cause already: name it
            fingerprint, detector = capture.diagnosis.top, "embedding"
        elif content:
            fingerprint, detector = "content", "embedding"
        else:
            fingerprint, detector, state.cause = "none", "none", "none"
        self._set_detected(state, fingerprint, detector, 1.0 if captured or content else 0.0)
        scores = capture.diagnosis.scores
        for cause in CAUSES:
            m.fingerprint_score.labels(model, source, cause).set(float(scores.get(cause, 0.0)))
        m.publish_properties(model, source, state.window_properties(), self.config.property_metrics)
        state.last_update, state.last_capture, state.diagnosis = update, capture, capture.diagnosis
        self.timeline.append(
            {
                "timestamp": timestamp,
                "source": source,
                **update.to_dict(),
                "detected": state.detected,
                "capture": capture.to_dict(),
                "detector": detector,
                "fingerprint": fingerprint,
                "top_cause": capture.diagnosis.top,
            }
        )

    # ------------------------------------------------------------------ status, incidents
    def status(self) -> dict[str, Any]:
        sources = {}
        for name, state in self.sources.items():
            update, capture, diagnosis = state.last_update, state.last_capture, state.diagnosis
            sources[name] = {
                "phase": "learning" if state.detectors is None else "watching",
                "reference_origin": None if state.baseline is None else state.baseline.origin,
                "reference_frames": state.learner.count if state.learner is not None else state.baseline.samples,
                "p_value": None if update is None else update.p_value,
                "statistic": None if update is None else update.statistic,
                "drift": None if update is None else update.drift,
                "capture": None if capture is None else capture.to_dict(),
                "detected": state.detected,
                "detector": state.labels[1],
                "fingerprint": state.labels[0],
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
            states = [self.sources[n] for n in names if self.sources[n].detectors is not None]
            embeddings: dict[str, np.ndarray] = {}
            diagnosis: dict[str, dict] = {}
            for state in states:
                embeddings[f"reference/{state.name}"] = state.baseline.embeddings.copy()
                embeddings[f"window/{state.name}"] = state.detectors.embedding.current_window().copy()
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
        return to_bytes({s.name: s.baseline for s in states}, self.embedder.id) if states else None

    def close(self) -> None:
        if self._incidents is not None:
            self._incidents.close()

