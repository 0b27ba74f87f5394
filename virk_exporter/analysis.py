"""Per-source analysis in the worker: reference, drift windows, diagnosis, incidents."""

from __future__ import annotations

from typing import Any

import numpy as np

from virk_exporter.config import ExporterConfig
from virk_exporter.metrics import WorkerMetrics


class Analysis:
    def __init__(self, config: ExporterConfig, metrics: WorkerMetrics, reference_frames: np.ndarray | None) -> None:
        self.config = config
        self.metrics = metrics

    def process(self, monitor: Any, rgb: np.ndarray, outputs: np.ndarray | None, recorded: list, meta: dict) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {}

    def handle_alert(self, monitor: Any, notification: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass
