"""The worker's incident side: the drift timeline it remembers, and what a bundle gets for an
alert (recorded frames, reference and window embeddings, diagnosis, config, the reference file).

Bundles are built on their own threads (``incidents/manager.py``); :meth:`Incidents.context`
takes the pipeline's lock only while it copies the analysis's state, never while it encodes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from virk_exporter.config import ExporterConfig
from virk_exporter.reference.store import to_bytes
from virk_exporter.telemetry.metrics import WorkerMetrics
from virk_exporter.telemetry.tracing import SpanRecord, SpanRecorder
from virk_exporter.worker.analysis import Analysis, SourceAnalysis
from virk_exporter.worker.recorder import FlightRecorder, RecordedFrame
from virk_exporter.worker.results import DriftResult

if TYPE_CHECKING:  # the bundle writer (matplotlib) is imported on the first alert, not at start
    from virk_exporter.incidents.bundle import IncidentContext

TIMELINE_LENGTH = 4096  # drift tests remembered for bundles (all sources together)
SECRETS = ("webhook_token", "webhook_basic_auth")  # config fields a bundle must not carry


class Timeline:
    """The latest drift tests of every source, oldest first (bounded)."""

    def __init__(self, length: int = TIMELINE_LENGTH) -> None:
        self._results: deque[DriftResult] = deque(maxlen=length)

    def extend(self, results: Iterable[DriftResult]) -> None:
        self._results.extend(results)

    def of(self, source: str | None) -> list[DriftResult]:
        """One source's tests (every source's with None)."""
        return [r for r in self._results if source is None or r.source == source]

    def __len__(self) -> int:
        return len(self._results)


class Incidents:
    """Books alerts into incident bundles from the analysis's state and the flight recorder."""

    def __init__(
        self,
        config: ExporterConfig,
        metrics: WorkerMetrics,
        analysis: Analysis,
        recorder: FlightRecorder,
        lock: threading.RLock,
        spans: SpanRecorder,
        send_span: Callable[[SpanRecord], None],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.analysis = analysis
        self.recorder = recorder
        self.lock = lock
        self.spans = spans
        self.send_span = send_span
        self.timeline = Timeline()
        self.functions: dict[str, str] = {}  # source -> the decorated function (module:qualname) that saw it last
        self._manager: Any = None
        from virk_exporter.incidents.journal import Journal

        if len(Journal.for_model(config.model)):  # alerts accepted before a crash: book them now
            self.manager()

    def manager(self) -> Any:
        """The incident manager, started on the first alert (it owns threads and the store)."""
        if self._manager is None:
            from virk_exporter.incidents.manager import IncidentManager

            self._manager = IncidentManager(self.config.model, self.config.store, self.metrics, self.context, on_built=self._trace_bundle)
        return self._manager

    def handle(self, notification: Any) -> dict[str, str]:
        return self.manager().handle(notification)

    def context(self, alert: Any) -> IncidentContext:
        """Freeze what the worker knows for one alert (called on a bundle-building thread)."""
        from virk_exporter.incidents.bundle import IncidentContext

        wanted = alert.labels.get("source")
        with self.lock:
            sources = self.analysis.sources
            known = wanted in sources
            names = [wanted] if known else list(sources)
            states = [sources[n] for n in names if sources[n].detectors is not None]
            frames = _bundle_frames(self.recorder.snapshot(sources={wanted} if known else None), self.config.bundle_frames, states)
            embeddings, diagnosis = _embeddings(states), _diagnosis(states)
            timeline = [r.to_dict() for r in self.timeline.of(wanted if known else None)]
            functions = {self.functions[n] for n in names if n in self.functions}
            reference_frames = [t for state in states for t in state.baseline.thumbnails]
            reference_file = to_bytes({s.name: s.baseline for s in states}, self.analysis.embedder.id) if states else None
        return IncidentContext(
            frames=frames,
            reference_frames=reference_frames,
            embeddings=embeddings,
            drift_timeline=timeline,
            diagnosis=diagnosis,
            config=self.bundle_config(),
            reference_file=reference_file,
            predict=functions.pop() if len(functions) == 1 else None,  # several: the user knows which
        )

    def bundle_config(self) -> dict[str, Any]:
        """The exporter's settings as a bundle records them: secrets masked, embedder named."""
        config = dataclasses.asdict(self.config)
        for secret in SECRETS:
            config[secret] = "<set>" if config.get(secret) else None
        config["embedder_id"] = self.analysis.embedder.id
        return config

    def _trace_bundle(self, alert: Any, context: IncidentContext, started_ns: int, outcome: str) -> None:
        """A span for the bundle's build, linked to the request spans of the frames inside it."""
        if not self.spans.enabled:
            return
        links = list(dict.fromkeys((f.trace_id, f.span_id) for f in context.frames if f.trace_id))
        attributes = {"virk.model": self.config.model, "virk.alert.fingerprint": alert.fingerprint, "virk.bundle.outcome": outcome, "virk.bundle.frames": len(context.frames)}
        self.send_span(SpanRecord("virk.bundle", started_ns, time.time_ns(), attributes=attributes, links=links))

    def wait_idle(self, timeout: float) -> None:
        if self._manager is not None:
            self._manager.wait_idle(timeout)

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()


def _bundle_frames(held: list[RecordedFrame], newest: int, states: list[SourceAnalysis]) -> list[RecordedFrame]:
    """The newest ``newest`` frames, and before them those of the last test's window that the
    recorder still holds: test samples are spaced over time, so at a camera's frame rate they
    are older than the newest frames, and replay needs them."""
    tested = {i for state in states if state.tested is not None for i in state.tested.frame_ids}
    older = held[: max(0, len(held) - newest)]
    return [f for f in older if f.frame_id in tested] + held[len(older) :]


def _embeddings(states: list[SourceAnalysis]) -> dict[str, np.ndarray]:
    """Each source's reference and tested window; ``reference`` too when there is one source."""
    embeddings: dict[str, np.ndarray] = {}
    for state in states:
        embeddings[f"reference/{state.name}"] = state.baseline.embeddings.copy()
        # both are copies already: current_window() indexes the ring buffer, and a test's window is never modified
        embeddings[f"window/{state.name}"] = state.tested.embeddings if state.tested is not None else state.detectors.embedding.current_window()
    if len(states) == 1:
        embeddings["reference"] = embeddings[f"reference/{states[0].name}"]
    return embeddings


def _diagnosis(states: list[SourceAnalysis]) -> dict[str, dict]:
    diagnosis: dict[str, dict] = {}
    for state in states:
        if state.diagnosis is not None:
            diagnosis[state.name] = state.diagnosis.to_dict()
            if state.tested is not None:  # which recorded frames the diagnosis measured (replay uses them)
                diagnosis[state.name]["frame_ids"] = list(state.tested.frame_ids)
            if state.slices.ranking is not None:  # where it drifted: manifest and report show it
                diagnosis[state.name]["slices"] = state.slices.ranking.to_dict()
    return diagnosis
