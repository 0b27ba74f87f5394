"""What the worker does with each batch: normalize, record, analyse; and the commands it answers."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from virk_exporter import frames as frame_io
from virk_exporter.config import ExporterConfig
from virk_exporter.telemetry.metrics import WorkerMetrics
from virk_exporter.worker.recorder import FlightRecorder, RecordedFrame, encode_frame
from virk_exporter.telemetry.tracing import SpanRecord, SpanRecorder
from virk_exporter.wire.transport import Arrays, BatchInfo

log = logging.getLogger("virk_exporter.worker")


class StageFailed(Exception):
    """A stage raised; it was counted and logged, and the batch goes no further."""


class Monitor:
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
        self._logged: set[str] = set()
        self.frames_processed = 0
        self.fail_stage: str | None = None  # tests: make one stage raise (see command "fail_stage")
        self.spans = SpanRecorder()
        from virk_exporter.worker.analysis import Analysis

        self.analysis = Analysis(config, metrics, self.recorder, self.lock, reference_frames, self.spans, send_span)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; count and log (once per stage) what it raises."""
        started = time.perf_counter()
        try:
            with self.spans.child(f"virk.{name}"):
                if self.fail_stage == name:
                    raise RuntimeError(f"injected failure in stage {name!r}")
                yield
        except Exception as problem:  # noqa: BLE001 - monitoring errors never escape the worker
            self.metrics.errors.labels(self.model, name).inc()
            if name not in self._logged:
                self._logged.add(name)
                log.warning("monitoring stage %r failed (logged once per stage): %s", name, problem, exc_info=True)
            raise StageFailed(name) from problem
        finally:
            self.metrics.stage_seconds.labels(self.model, name).observe(time.perf_counter() - started)

    def process(self, info: BatchInfo, arrays: Arrays) -> SpanRecord | None:
        """Analyse one batch; returns its span record when tracing is on."""
        links = [(info.trace_id, info.span_id)] if info.trace_id else []
        self.spans.begin(
            "virk.monitor",
            {"virk.model": self.model, "virk.source": sorted(set(info.sources)), "virk.frame_ids": list(info.frame_ids)},
            links,
        )
        tags = info.tags or [{}] * len(info.frame_ids)
        try:
            with self.stage("normalize"):
                rgb = frame_io.normalize(frame_io.Captured(arrays.frames, info.channels_first), info.color)
            with self.stage("record"):
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
                # Analysis reads the batch's sources by key (its interface, kept while it changes).
                self.analysis.process(self, rgb, features, recorded, {"sources": info.sources})
                for frame in recorded:
                    self.recorder.add(frame)
                self.frames_processed += len(recorded)
            self.metrics.recorder_frames.labels(self.model).set(len(self.recorder))
            self.metrics.recorder_bytes.labels(self.model).set(self.recorder.nbytes)
        except StageFailed:
            pass
        return self.spans.finish()

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
        self.fail_stage = name

    def cmd_pause(self, seconds: float) -> None:
        threading.Thread(target=self._hold_lock, args=(seconds,), daemon=True).start()

    def _hold_lock(self, seconds: float) -> None:
        with self.lock:
            time.sleep(seconds)

    def cmd_rebase(self, source: str | None) -> dict[str, Any]:
        with self.lock:
            return self.analysis.rebase(self, source)

    def cmd_alert(self, notification: Any) -> dict[str, str]:
        return self.analysis.handle_alert(notification)

    def settle(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for bundles being built, so a leaving process still gets
        their spans. (Reads Analysis's incident manager: Analysis has no such call yet.)"""
        incidents = getattr(self.analysis, "_incidents", None)
        if incidents is not None:
            incidents.wait_idle(timeout)

    def close(self) -> None:
        self.analysis.close()


def _per_frame_output(summary: dict[str, Any] | None, outputs: np.ndarray | None, index: int) -> dict[str, Any] | None:
    """A short per-frame summary: the batch's output type plus top class and score when known."""
    result = dict(summary or {})
    if outputs is not None and outputs.shape[1] > 1:
        row = outputs[index]
        result["top_class"] = int(np.argmax(row))
        result["top_value"] = float(row.max())
    return result or None
