"""Setting the worker's drift, diagnosis and reference gauges from the analysis's results.

The analysis decides; this module only exports. Series whose labels change (the verdict of
``virk_drift_detected``, the ranked slices of ``virk_slice_drift_score``) are replaced, not
accumulated: each source has one ``virk_drift_detected`` series and at most ``TOP_K`` slice series.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from virk_exporter.config import ExporterConfig
from virk_exporter.fingerprint import CaptureResult
from virk_exporter.fingerprint.causes import CAUSES
from virk_exporter.reference.baseline import Baseline
from virk_exporter.telemetry.metrics import WorkerMetrics
from virk_exporter.drift.monitor import DriftUpdate
from virk_exporter.worker.results import DriftResult


def _remove(gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:  # never exported
        pass


class Publisher:
    """The exported view of every source: reference state, test statistics, verdict, slices."""

    def __init__(self, config: ExporterConfig, metrics: WorkerMetrics) -> None:
        self.config = config
        self.model = config.model
        self.metrics = metrics
        self._verdicts: dict[str, tuple[str, str]] = {}  # source -> exported (fingerprint, detector)
        self._slices: dict[str, set[str]] = {}  # source -> exported slice labels

    def learning(self, source: str, samples: int) -> None:
        """The source is learning its reference and holds ``samples`` of it so far."""
        self.metrics.reference_learning.labels(self.model, source).set(1.0)
        self.metrics.reference_samples.labels(self.model, source).set(samples)

    def reference(self, source: str, baseline: Baseline) -> None:
        """The source watches ``baseline``: its size, and each image property's reference band
        for dashboards to draw the live value against."""
        self.metrics.reference_learning.labels(self.model, source).set(0.0)
        self.metrics.reference_samples.labels(self.model, source).set(baseline.samples)
        self.metrics.publish_reference(self.model, source, baseline.properties, self.config.property_metrics)

    def rebased(self, source: str) -> None:
        self.metrics.reference_rebases.labels(self.model, source).inc()
        self.verdict(source, "none", "none", 0.0)

    def verdict(self, source: str, fingerprint: str, detector: str, value: float) -> None:
        """``virk_drift_detected``: the old series goes away when its labels change."""
        gauge = self.metrics.drift_detected
        old = self._verdicts.get(source, ("none", "none"))
        if (fingerprint, detector) != old:
            _remove(gauge, self.model, source, *old)
            self._verdicts[source] = (fingerprint, detector)
        gauge.labels(self.model, source, fingerprint, detector).set(value)

    def test(self, result: DriftResult, update: DriftUpdate, capture: CaptureResult, window: Mapping[str, np.ndarray]) -> None:
        """One drift test's statistics, thresholds, cause scores and window properties."""
        m, model, source = self.metrics, self.model, result.source
        m.drift_score.labels(model, source, "mmd").set(update.statistic)
        m.drift_threshold.labels(model, source, "mmd").set(update.threshold)
        m.drift_p_value.labels(model, source).set(update.p_value)
        m.drift_score.labels(model, source, "properties").set(capture.statistic)
        m.drift_threshold.labels(model, source, "properties").set(1.0)
        if update.online_statistic is not None:
            m.drift_score.labels(model, source, "online_mmd").set(update.online_statistic)
            m.drift_threshold.labels(model, source, "online_mmd").set(update.online_threshold)
        self.verdict(source, result.fingerprint, result.detector, 1.0 if result.detected else 0.0)
        scores = capture.diagnosis.scores
        for cause in CAUSES:
            m.fingerprint_score.labels(model, source, cause).set(float(scores.get(cause, 0.0)))
        m.publish_properties(model, source, window, self.config.property_metrics)

    def slices(self, source: str, scores: Mapping[str, float]) -> None:
        """``virk_slice_drift_score``: the given slices only; stale ones are removed."""
        gauge = self.metrics.slice_drift_score
        for name in self._slices.get(source, set()) - set(scores):
            _remove(gauge, self.model, source, name)
        for name, score in scores.items():
            gauge.labels(self.model, source, name).set(score)
        self._slices[source] = set(scores)

    def has_slices(self, source: str) -> bool:
        return bool(self._slices.get(source))
