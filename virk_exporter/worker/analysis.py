"""Per-source analysis in the worker: learning a reference, then drift tests and diagnosis.

Each source (camera) starts from the reference ``baselines.py`` finds for it, or learns one by
sampling the source over its reference period (``reference/baseline.py``); then two calibrated
tests run every ``test_every`` samples on the latest ``window`` samples: the embedding test
(content: ``drift/monitor.py``) and the capture-fault test (image properties:
``fingerprint/detector.py``). ``virk_drift_detected`` is 1 while either detects drift; its
``detector`` label says which, its ``fingerprint`` the cause (``content`` for an embedding-only
drift: the scene changed, the camera did not break).

The analysis returns each test as a :class:`~virk_exporter.worker.results.DriftResult`; the
pipeline records them (span events, the incident timeline). Gauges are set by ``publishing.py``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from typing import Any, Sequence

import numpy as np

from virk_exporter.config import ExporterConfig
from virk_exporter.drift.monitor import DriftUpdate, Hysteresis, SourceDriftMonitor, source_seed
from virk_exporter.drift.slices import TOP_K, SliceTracker
from virk_exporter.embed.embedders import OutputsEmbedder
from virk_exporter.fingerprint import CaptureDetector, CaptureResult
from virk_exporter.fingerprint.properties import compute_samples
from virk_exporter.reference.baseline import SHORT_SPAN_S, Baseline, Detectors, Learner, Sampler, sample_spacing
from virk_exporter.worker.baselines import Baselines
from virk_exporter.worker.publishing import Publisher
from virk_exporter.worker.recorder import RecordedFrame
from virk_exporter.worker.results import DriftResult
from virk_exporter.worker.stages import Stages

log = logging.getLogger("virk_exporter.worker")


@dataclasses.dataclass(frozen=True)
class TestedWindow:
    """The samples the latest test judged: a bundle carries them so that replay tests and
    diagnoses those frames, not whatever arrived between the test and the alert."""

    frame_ids: tuple[int, ...]
    embeddings: np.ndarray


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
        self.frame_ids: deque[int] = deque(maxlen=config.window)  # the frames `properties` measured
        self.tested: TestedWindow | None = None
        self.previous_frame: np.ndarray | None = None
        self.last: DriftResult | None = None
        self.diagnosis: Any = None
        self.cause = "none"  # the capture cause named while the capture detector is on
        # Slices (slices.py): recent (embedding, tags) pairs, ranked while drift is detected.
        self.slices = SliceTracker(capacity=4 * config.window, rerank_every=config.window, seed=source_seed(name))

    @property
    def detected(self) -> bool:
        return self.detectors is not None and (self.detectors.embedding.detected or self.capture_state.detected)

    @property
    def samples(self) -> int:
        return self.learner.count if self.learner is not None else self.baseline.samples

    def learn(self) -> None:
        """(Re)start learning: forget the reference and the tests' state."""
        minimum = min(self.config.reference_frames, self.config.calibration_samples)
        self.learner = Learner(self.config.reference_period_s, self.config.reference_frames, minimum)
        self.baseline = self.detectors = None
        self.capture_state = Hysteresis(self.config.hysteresis)
        self.properties.clear()
        self.frame_ids.clear()
        self.last = self.diagnosis = self.tested = None
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
            seed=source_seed(self.name),
        )
        self.baseline = baseline
        self.detectors = Detectors(embedding, CaptureDetector(baseline.fingerprinter, config.window, config.p_val, recent=config.test_every))
        self.learner = None

    def window_properties(self) -> dict[str, np.ndarray]:
        names = self.properties[0].keys() if self.properties else ()
        return {k: np.array([p[k] for p in self.properties], np.float64) for k in names}

    def judge(self, update: DriftUpdate, capture: CaptureResult, timestamp: float, was_detected: bool) -> DriftResult:
        """Combine the two tests into the source's verdict (which detector, which cause);
        ``was_detected``: the verdict before this test's embedding update."""
        captured = self.capture_state.update(capture.drift, recent=capture.recent_drift)
        if capture.drift:
            self.cause = capture.diagnosis.top
        content = self.detectors.embedding.detected
        if captured:
            fingerprint, detector = self.cause, "both" if content else "properties"
        elif content and capture.drift:  # the capture test sees a cause already: name it
            fingerprint, detector = capture.diagnosis.top, "embedding"
        elif content:
            fingerprint, detector = "content", "embedding"
        else:
            fingerprint, detector, self.cause = "none", "none", "none"
        self.diagnosis = capture.diagnosis
        return DriftResult(
            timestamp, self.name, update.statistic, update.p_value, update.threshold, update.drift, self.detected,
            capture_statistic=capture.statistic, capture_p_value=capture.p_value, capture_drift=capture.drift, capture_recent=capture.recent_drift,
            detector=detector, fingerprint=fingerprint, top_cause=capture.diagnosis.top, onset=self.detected and not was_detected,
        )

    def status(self) -> dict[str, Any]:
        """What ``status`` reports of this source: its phase and its latest test."""
        diagnosis, last = self.diagnosis, self.last
        latest = (last or DriftResult(0.0, self.name, None, None, None, None, self.detected)).to_dict()
        for unknown in ("timestamp", "source", "onset"):
            latest.pop(unknown)
        return {
            "phase": "learning" if self.detectors is None else "watching",
            "reference_origin": None if self.baseline is None else self.baseline.origin,
            "reference_span_s": None if self.baseline is None else self.baseline.span_s,
            "reference_frames": self.samples,
            **latest,
            "detected": self.detected,
            "capture": None if last is None else latest["capture"],
            "causes": [] if diagnosis is None else list(diagnosis.causes[:3]),
            "evidence": [] if diagnosis is None else [e.to_dict() for e in diagnosis.evidence[:3]],
            "slices": None if self.slices.ranking is None else self.slices.ranking.to_dict(limit=TOP_K),
        }


class Analysis:
    """The worker's per-batch analysis of every source: learn, embed, test, diagnose, rank slices.

    It does not record, trace or lock: the pipeline gives it a batch and records the
    :class:`DriftResult` list it returns."""

    def __init__(self, config: ExporterConfig, stages: Stages, publisher: Publisher, baselines: Baselines) -> None:
        self.config = config
        self.stages = stages
        self.publisher = publisher
        self.baselines = baselines
        self.embedder = baselines.embedder
        self.sources: dict[str, SourceAnalysis] = {}

    # ------------------------------------------------------------------ per batch
    def process(self, rgb: np.ndarray, features: np.ndarray | None, recorded: Sequence[RecordedFrame]) -> list[DriftResult]:
        """Analyse one batch (frames, per-frame model outputs or features, their recordings)."""
        results = []
        sources = [frame.source for frame in recorded]
        for name in dict.fromkeys(sources):
            index = [i for i, s in enumerate(sources) if s == name]
            result = self._process_source(self.source(name), rgb[index], None if features is None else features[index], [recorded[i] for i in index])
            if result is not None:
                results.append(result)
        return results

    def source(self, name: str) -> SourceAnalysis:
        """The source's state, created (with its initial reference, if any) on first sight."""
        state = self.sources.get(name)
        if state is None:
            state = self.sources[name] = SourceAnalysis(name, self.config)
            baseline = self.baselines.initial(name)
            if baseline is None:
                state.learn()
                self.publisher.learning(name, 0)
            else:
                self._install(state, baseline)
        return state

    def _install(self, state: SourceAnalysis, baseline: Baseline) -> None:
        state.watch(baseline)
        self.publisher.reference(state.name, baseline)
        if baseline.span_s is not None and baseline.span_s < SHORT_SPAN_S:
            log.warning(
                "source %r: its reference (%s) spans %.1f s of footage, under %.0f s; on a real fixed camera references of "
                "3-26 s flagged 8-25 %% of clean tests (BENCHMARKS.md, reference_span): learn it over minutes "
                "(reference_period_s, default 900) or build it from longer footage",
                state.name, baseline.origin, baseline.span_s, SHORT_SPAN_S,
            )

    def rebase(self, source: str | None = None) -> dict[str, Any]:
        """Forget a source's reference (every source's with None) and learn a new one."""
        names = list(self.sources) if source is None else [source]
        for name in names:
            state = self.source(name)
            state.learn()
            self.publisher.rebased(name)
            self.publisher.learning(name, 0)
            self.baselines.clear(name)
            log.warning("source %r: rebased; learning a new reference over %gs", name, self.config.reference_period_s)
        return {"rebased": names, "reference_period_s": self.config.reference_period_s}

    # ------------------------------------------------------------------ learning and testing
    def _features(self, frames: np.ndarray, outputs: np.ndarray | None) -> np.ndarray | None:
        if isinstance(self.embedder, OutputsEmbedder):
            return None if outputs is None else self.embedder.embed_outputs(outputs)
        return self.embedder.embed(frames)

    def _process_source(self, state: SourceAnalysis, frames: np.ndarray, outputs: np.ndarray | None, recorded: list[RecordedFrame]) -> DriftResult | None:
        stage = self.stages.stage
        picked = state.sampler.pick(len(frames), recorded[0].timestamp)
        if not picked:
            return None
        frames, recorded = frames[picked], [recorded[i] for i in picked]
        outputs = None if outputs is None else outputs[picked]
        if state.detectors is None:
            self._learn(state, frames, outputs, recorded[-1].timestamp)
            return None
        with stage("properties"):
            props = state.baseline.fingerprinter.properties(frames, previous=state.previous_frame)
        state.previous_frame = frames[-1]
        for i, frame in enumerate(recorded):
            values = {k: float(v[i]) for k, v in props.items()}
            frame.properties.update(values)
            state.properties.append(values)
            state.frame_ids.append(frame.frame_id)
        with stage("embed"):
            features = self._features(frames, outputs)
        if features is None:
            return None
        if any(frame.tags for frame in recorded) or state.slices.count:
            state.slices.add(features, [frame.tags for frame in recorded])
        was_detected = state.detected
        with stage("drift"):
            update = state.detectors.embedding.update(features)
        if update is None:
            return None
        with stage("fingerprint"):
            capture = state.detectors.capture.test(state.window_properties(), embedding_drift=update.drift)
        result = state.judge(update, capture, recorded[-1].timestamp, was_detected)
        state.tested = TestedWindow(tuple(state.frame_ids), state.detectors.embedding.current_window())
        self.publisher.test(result, update, capture, state.window_properties())
        try:
            with stage("slices"):
                self._rank_slices(state)
        except Exception:  # noqa: BLE001 - counted by the stage; a failed ranking must not cost the batch its recording
            pass
        if state.slices.ranking is not None:
            top = tuple(s.slice for s in state.slices.ranking.significant[:TOP_K])
            result = dataclasses.replace(result, slices_top=top)
        state.last = result
        return result

    def _learn(self, state: SourceAnalysis, frames: np.ndarray, outputs: np.ndarray | None, timestamp: float) -> None:
        with self.stages.stage("reference"):
            if isinstance(self.embedder, OutputsEmbedder) and outputs is None:
                raise ValueError("embedder='outputs' needs per-frame scores ([N, K]) returned by predict")
            props, smalls, cast_cells = compute_samples(frames, previous=state.previous_frame)
            state.learner.add(frames, self._features(frames, outputs), props, smalls, cast_cells, timestamp)
            state.previous_frame = frames[-1]
            self.publisher.learning(state.name, state.learner.count)
            if not state.learner.done(timestamp):
                return
            started = state.learner.started
            self._install(state, state.learner.finish(timestamp))
        log.info(
            "source %r: reference learned from %d samples over %.0fs; drift tests start now",
            state.name, state.baseline.samples, timestamp - (started or timestamp),
        )
        self.baselines.save(state.name, state.baseline)

    def _rank_slices(self, state: SourceAnalysis) -> None:
        """While drift is detected, rank the source's tagged slices and export the top few."""
        if not state.detected or not state.slices.count or not state.slices.tagged:
            if state.slices.ranking is not None or self.publisher.has_slices(state.name):
                state.slices.clear()
                self.publisher.slices(state.name, {})
            return
        if not state.slices.due():
            return
        ranking = state.slices.rank(state.baseline.embeddings, sigma=state.detectors.embedding.mmd.sigma)
        self.publisher.slices(state.name, {s.slice: s.score for s in ranking.significant[:TOP_K]})

    def status(self) -> dict[str, Any]:
        return {"sources": {name: state.status() for name, state in self.sources.items()}}
