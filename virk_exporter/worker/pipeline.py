"""What the worker does with each batch: normalize, record, analyse, record the results; and the
commands it answers.

The :class:`Monitor` owns the lock, the flight recorder and the batch's span; the analysis it
drives (``analysis.py``) returns its drift tests, which the pipeline records as span events and
in the incident timeline (``incident_context.py``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from virk_exporter import frames as frame_io
from virk_exporter.config import ExporterConfig
from virk_exporter.telemetry.metrics import WorkerMetrics
from virk_exporter.telemetry.tracing import SpanRecord, SpanRecorder
from virk_exporter.wire.transport import Arrays, BatchInfo
from virk_exporter.worker.analysis import Analysis
from virk_exporter.worker.baselines import Baselines
from virk_exporter.worker.incident_context import Incidents
from virk_exporter.worker.publishing import Publisher
from virk_exporter.worker.recorder import FlightRecorder, RecordedFrame, encode_frame
from virk_exporter.worker.results import DriftResult
from virk_exporter.worker.stages import StageFailed, Stages


class Monitor:
    """The worker's per-batch pipeline for one model, and the commands the caller sends it."""

    def __init__(
        self,
        config: ExporterConfig,
        metrics: WorkerMetrics,
        reference_frames: np.ndarray | None,
        send_span: Callable[[SpanRecord], None] = lambda record: None,
    ) -> None:
        self.config = config
        self.model = config.model
        self.metrics = metrics
        self.recorder = FlightRecorder(config.recorder_bytes)
        self.lock = threading.RLock()
        self.frames_processed = 0
        self.spans = SpanRecorder()
        self.stages = Stages(config.model, metrics, self.spans)
        self.analysis = Analysis(config, self.stages, Publisher(config, metrics), Baselines(config, self.stages, reference_frames))
        self.incidents = Incidents(config, metrics, self.analysis, self.recorder, self.lock, self.spans, send_span)

    def process(self, info: BatchInfo, arrays: Arrays) -> SpanRecord | None:
        """Analyse one batch; returns its span record when tracing is on."""
        links = [(info.trace_id, info.span_id)] if info.trace_id else []
        self.spans.begin(
            "virk.monitor",
            {"virk.model": self.model, "virk.source": sorted(set(info.sources)), "virk.frame_ids": list(info.frame_ids)},
            links,
        )
        tags = info.tags or [{}] * len(info.frame_ids)
        stage = self.stages.stage
        try:
            with stage("normalize"):
                rgb = frame_io.normalize(frame_io.Captured(arrays.frames, info.channels_first), info.color)
            with stage("record"):
                recorded = [
                    RecordedFrame(
                        frame_id=int(frame_id),
                        timestamp=float(info.timestamp),
                        source=source,
                        encoded=encode_frame(frame, self.config.record_format, self.config.jpeg_quality),
                        format=self.config.record_format,
                        shape=tuple(frame.shape),
                        trace_id=info.trace_id,
                        span_id=info.span_id,
                        output=_per_frame_output(info.output, arrays.outputs, i),
                        tags=tags[i],
                    )
                    for i, (frame_id, source, frame) in enumerate(zip(info.frame_ids, info.sources, rgb))
                ]
            features = arrays.features if self.config.embedder == "features" else arrays.outputs
            with self.lock:
                if info.function:
                    self.incidents.functions.update(dict.fromkeys(info.sources, info.function))
                self._record(self.analysis.process(rgb, features, recorded))
                for frame in recorded:
                    self.recorder.add(frame)
                self.frames_processed += len(recorded)
            self.metrics.recorder_frames.labels(self.model).set(len(self.recorder))
            self.metrics.recorder_bytes.labels(self.model).set(self.recorder.nbytes)
        except StageFailed:
            pass
        return self.spans.finish()

    def _record(self, results: list[DriftResult]) -> None:
        """The drift tests of a batch: span events, and the timeline bundles read."""
        self.incidents.timeline.extend(results)
        for result in results:
            attributes = result.span_attributes()
            self.spans.event("virk.drift_test", attributes)
            if result.onset:
                self.spans.event("virk.drift_detected", attributes)

    # ------------------------------------------------------------------ commands
    def command(self, name: str, *args: Any) -> Any:
        handler = getattr(self, f"cmd_{name}", None)
        if handler is None:
            raise ValueError(f"unknown worker command {name!r}")
        return handler(*args)

    def cmd_snapshot(self) -> list[RecordedFrame]:
        return self.recorder.snapshot()

    def cmd_status(self) -> dict[str, Any]:
        with self.lock:
            return {"frames_processed": self.frames_processed, "recorder_frames": len(self.recorder), "recorder_bytes": self.recorder.nbytes, **self.analysis.status()}

    def cmd_tracing(self, enabled: bool) -> None:
        self.spans.enabled = bool(enabled)

    # Fault drills (used by the tests): make a stage raise, or stall the worker for a while.
    def cmd_fail_stage(self, name: str | None) -> None:
        self.stages.fail = name

    def cmd_pause(self, seconds: float) -> None:
        threading.Thread(target=self._hold_lock, args=(seconds,), daemon=True).start()

    def _hold_lock(self, seconds: float) -> None:
        with self.lock:
            time.sleep(seconds)

    def cmd_rebase(self, source: str | None) -> dict[str, Any]:
        with self.lock:
            return self.analysis.rebase(source)

    def cmd_alert(self, notification: Any) -> dict[str, str]:
        return self.incidents.handle(notification)

    def settle(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for bundles being built, so a leaving process still gets their spans."""
        self.incidents.wait_idle(timeout)

    def close(self) -> None:
        self.incidents.close()


def _per_frame_output(summary: dict[str, Any] | None, outputs: np.ndarray | None, index: int) -> dict[str, Any] | None:
    """A short per-frame summary: the batch's output type plus top class and score when known."""
    result = dict(summary or {})
    if outputs is not None and outputs.shape[1] > 1:
        row = outputs[index]
        result["top_class"] = int(np.argmax(row))
        result["top_value"] = float(row.max())
    return result or None
