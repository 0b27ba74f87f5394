"""The worker's stages: each named step of a batch is timed, traced as a child span, and what it
raises is counted (``virk_errors_total{stage}``) and logged once per stage — never propagated
out of the worker."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

from virk_exporter.telemetry.metrics import WorkerMetrics
from virk_exporter.telemetry.tracing import SpanRecorder

log = logging.getLogger("virk_exporter.worker")


class StageFailed(Exception):
    """A stage raised; it was counted and logged, and the batch goes no further."""


class Stages:
    """Runs the named steps of the worker (``with stages.stage("embed"): ...``).

    Shared by the pipeline and the analysis it drives, so that both count failures the same way
    without the analysis knowing about the pipeline."""

    def __init__(self, model: str, metrics: WorkerMetrics, spans: SpanRecorder) -> None:
        self.model = model
        self.metrics = metrics
        self.spans = spans
        self.fail: str | None = None  # fault drill: this stage raises (worker command "fail_stage")
        self._logged: set[str] = set()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; count and log (once per stage) what it raises, then raise StageFailed."""
        started = time.perf_counter()
        try:
            with self.spans.child(f"virk.{name}"):
                if self.fail == name:
                    raise RuntimeError(f"injected failure in stage {name!r}")
                yield
        except StageFailed:
            raise  # an inner stage already counted it
        except Exception as problem:  # noqa: BLE001 - monitoring errors never escape the worker
            self.count(name, problem)
            raise StageFailed(name) from problem
        finally:
            self.metrics.stage_seconds.labels(self.model, name).observe(time.perf_counter() - started)

    def count(self, name: str, problem: BaseException) -> None:
        """Count one failure of ``name`` and log the first one, with its traceback."""
        self.metrics.errors.labels(self.model, name).inc()
        if name not in self._logged:
            self._logged.add(name)
            log.warning("monitoring stage %r failed (logged once per stage): %s", name, problem, exc_info=problem)
