"""Prometheus metric families (names as in docs/design.md and the README: dashboards and rules depend on them).

The exporter runs in two processes. The caller's process owns the families it can fill on
the caller's thread (:class:`CallerMetrics`); the monitoring worker owns the rest
(:class:`WorkerMetrics`). Each set lives on its own ``CollectorRegistry`` so that two
Exporters in one process never collide; ``/metrics`` merges both (see :func:`merge_families`).
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Collection, Iterable, Literal, Mapping

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from virk_exporter._version import __version__

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BUNDLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


DROP_REASONS = ("queue_full", "batch_too_large", "worker_down", "not_started")
CALLER_STAGES = ("input", "caller", "handoff", "worker", "http", "tracing", "tags", "features", "labels", "webhook_limit", "incident_overflow")
WORKER_STAGES = ("normalize", "record", "properties", "embed", "drift", "fingerprint", "reference", "control", "slices", "store", "reference_store")
BUNDLE_OUTCOMES = ("uploaded", "spooled", "failed", "duplicate", "resolved", "coalesced")

# The image properties exported per source by default (``property_metrics="core"``). All 28
# properties with their reference bands would be ~110 series per source; these eight cover the
# usual capture faults (exposure, contrast, focus, sensor noise, colour, haze, a moved camera, a
# frozen stream). The diagnosis always uses every property, whatever is exported.
CORE_PROPERTIES = ("brightness", "contrast", "sharpness", "noise", "saturation", "haze", "shift_px", "frame_diff")
PropertyMetrics = Literal["core", "all", "none"] | Collection[str]
# The reference band of each exported property: its 5th, 50th and 95th percentile.
REFERENCE_BANDS = (("p05", 0.05), ("p50", 0.5), ("p95", 0.95))


def exported_properties(names: Iterable[str], choice: PropertyMetrics) -> list[str]:
    """The property names ``choice`` exports out of ``names`` ("core", "all", "none" or a list)."""
    if choice == "all":
        return list(names)
    if choice == "none":
        return []
    wanted = set(CORE_PROPERTIES if choice == "core" else choice)
    return [name for name in names if name in wanted]


def errors_counter(registry: CollectorRegistry) -> Counter:
    """``virk_errors_total``: both processes count into one family (their stages differ)."""
    return Counter("virk_errors", "Monitoring errors by stage (never raised to the caller).", ["model", "stage"], registry=registry)


class CallerMetrics:
    """Families filled in the caller's process (cheap updates on the predict path)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.frames = Counter("virk_frames", "Frames passed to the monitored function.", ["model", "source"], registry=registry)
        self.sampled = Counter(
            "virk_frames_sampled", "Frames selected for monitoring.", ["model", "source"], registry=registry
        )
        self.dropped = Counter(
            "virk_frames_dropped", "Sampled frames monitoring did not process, by reason.", ["model", "reason"], registry=registry
        )
        self.predict_duration = Histogram(
            "virk_predict_duration_seconds",
            "Duration of the monitored function itself.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = errors_counter(registry)
        self.queue_depth = Gauge("virk_queue_depth", "Batches waiting for the monitoring worker.", ["model"], registry=registry)
        # Late labels are scored in the caller's process (see labels.py: the ledger lives there).
        self.labels_total = Counter(
            "virk_labels",
            "Labels received by record_label, by outcome (correct, incorrect, no_prediction, duplicate, expired, unknown).",
            ["model", "source", "outcome"],
            registry=registry,
        )
        self.label_accuracy = Gauge(
            "virk_label_accuracy_ratio", "Fraction correct among the source's most recent scored labels.", ["model", "source"], registry=registry
        )

    def start_at_zero(self, model: str) -> None:
        """Create every known label set at 0, so rate()/increase() see the first event."""
        for reason in DROP_REASONS:
            self.dropped.labels(model, reason)
        for stage in CALLER_STAGES:
            self.errors.labels(model, stage)


class WorkerMetrics:
    """Families filled by the monitoring worker process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.stage_seconds = Histogram(
            "virk_monitor_stage_seconds",
            "Time spent in each monitoring stage (worker process).",
            ["model", "stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.drift_score = Gauge(
            "virk_drift_score", "Drift statistic of the latest test.", ["model", "source", "detector"], registry=registry
        )
        self.drift_p_value = Gauge("virk_drift_p_value", "p-value of the latest batch drift test.", ["model", "source"], registry=registry)
        self.drift_threshold = Gauge(
            "virk_drift_threshold", "Decision threshold of the latest test.", ["model", "source", "detector"], registry=registry
        )
        self.drift_detected = Gauge(
            "virk_drift_detected",
            "1 while drift is detected (after hysteresis); fingerprint names the cause, detector the test "
            "that detected it (properties: a capture fault; embedding: content change).",
            ["model", "source", "fingerprint", "detector"],
            registry=registry,
        )
        self.fingerprint_score = Gauge(
            "virk_fingerprint_score", "Evidence score of each root cause.", ["model", "source", "cause"], registry=registry
        )
        self.image_property = Gauge(
            "virk_image_property", "Median of an image property over the latest window.", ["model", "source", "property"], registry=registry
        )
        # A `band` label, not `quantile`: that label is reserved for summaries (promtool lints it).
        self.image_property_reference = Gauge(
            "virk_image_property_reference",
            "An image property's reference distribution (band p05, p50, p95): the band dashboards draw.",
            ["model", "source", "property", "band"],
            registry=registry,
        )
        self.build_info = Gauge(
            "virk_build_info",
            "Always 1: the exporter's version, Python, torch and the device the worker embeds on.",
            ["version", "python", "torch", "device"],
            registry=registry,
        )
        self.bundles = Counter(
            "virk_incident_bundles", "Incident bundles by outcome.", ["model", "outcome"], registry=registry
        )
        self.bundle_seconds = Histogram(
            "virk_bundle_build_seconds", "Time to build and store an incident bundle.", ["model"], buckets=BUNDLE_BUCKETS, registry=registry
        )
        self.errors = errors_counter(registry)
        self.slice_drift_score = Gauge(
            "virk_slice_drift_score",
            "Standardized drift statistic of the top significant slices (tag key=value) while drift is detected.",
            ["model", "source", "slice"],
            registry=registry,
        )
        self.reference_samples = Gauge(
            "virk_reference_samples", "Samples in the source's reference (while learning: collected so far).", ["model", "source"], registry=registry
        )
        self.reference_learning = Gauge(
            "virk_reference_learning", "1 while the source learns its reference (no drift test runs).", ["model", "source"], registry=registry
        )
        self.reference_rebases = Counter(
            "virk_reference_rebases", "Rebase requests: the source learns a new reference.", ["model", "source"], registry=registry
        )
        self.recorder_frames = Gauge("virk_recorder_frames", "Frames held by the flight recorder.", ["model"], registry=registry)
        self.recorder_bytes = Gauge("virk_recorder_bytes", "Compressed bytes held by the flight recorder.", ["model"], registry=registry)

    def start_at_zero(self, model: str, device: str | None = None) -> None:
        """Create every known label set at 0, so rate()/increase() see the first event.

        Also publishes ``virk_build_info`` with the torch device ``device`` resolves to (the
        worker's: the caller's process never touches CUDA).
        """
        from virk_exporter.drift._torch import pick_device  # torch: the worker has it loaded

        self.build_info.labels(__version__, platform.python_version(), _version_of("torch"), str(pick_device(device))).set(1)
        for stage in WORKER_STAGES:
            self.errors.labels(model, stage)
        for outcome in BUNDLE_OUTCOMES:
            self.bundles.labels(model, outcome)
        self.recorder_frames.labels(model)
        self.recorder_bytes.labels(model)

    def publish_properties(self, model: str, source: str, window: Mapping[str, np.ndarray], choice: PropertyMetrics) -> None:
        """``virk_image_property``: the window's median of each exported property."""
        for name in exported_properties(window, choice):
            finite = window[name][np.isfinite(window[name])]
            if len(finite):
                self.image_property.labels(model, source, name).set(float(np.median(finite)))

    def publish_reference(self, model: str, source: str, reference: Mapping[str, np.ndarray], choice: PropertyMetrics) -> None:
        """``virk_image_property_reference``: each exported property's reference band."""
        for name in exported_properties(reference, choice):
            values = np.asarray(reference[name], np.float64)
            finite = values[np.isfinite(values)]
            if len(finite):
                for (band, _), value in zip(REFERENCE_BANDS, np.quantile(finite, [q for _, q in REFERENCE_BANDS])):
                    self.image_property_reference.labels(model, source, name, band).set(float(value))


def _version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def merge_families(*sources: Iterable[Metric]) -> list[Metric]:
    """Merge metric families of the same name (e.g. ``virk_errors`` from both processes)."""
    merged: dict[str, Metric] = {}
    for families in sources:
        for family in families:
            have = merged.get(family.name)
            if have is None:
                copy = Metric(family.name, family.documentation, family.type, family.unit)
                copy.samples = list(family.samples)
                merged[family.name] = copy
            else:
                have.samples.extend(family.samples)
    return list(merged.values())
