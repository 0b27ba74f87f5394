"""Exporter settings: one dataclass, shared by the caller's process and the worker."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

ColorOrder = Literal["rgb", "bgr"]


def default_store() -> str:
    """The embedded default: a local directory of bundles (``$VIRK_STORE`` overrides)."""
    return os.environ.get("VIRK_STORE", str(Path.cwd() / "virk-incidents"))


@dataclass
class ExporterConfig:
    """Every setting of one exporter, validated on construction; the one source of defaults
    (:func:`default`), passed to the worker process as is."""

    model: str
    store: str = field(default_factory=default_store)
    reference_path: str | None = None  # a .virkref file; frames are passed separately
    # Monitoring
    color: ColorOrder = "rgb"
    sample: float | int = 1.0  # a rate in (0, 1], or an int N >= 1: every N-th frame
    max_sources: int = 32  # distinct `source` label values; the rest become "other"
    # drift features: the seeded image encoder, predict's scores, or monitor(features=...)'s rows
    embedder: Literal["image", "outputs", "features"] = "image"
    # A learned reference samples a source over `reference_period_s` (one frame every
    # reference_period_s / reference_frames seconds, reference/baseline.py); live test windows are sampled
    # at the same spacing. reference_period_s=0 takes every frame: the first `reference_frames`.
    reference_period_s: float = 900.0
    reference_frames: int = 512  # samples per learned reference (the cap)
    persist_reference: bool = True  # keep learned references in the store; load them at start
    window: int = 16  # samples per drift test window, per source
    test_every: int = 8  # new samples between drift tests, per source
    n_permutations: int = 200
    p_val: float = 0.01  # per test and detector; at least 1 / (1 + n_permutations)
    hysteresis: int = 2  # consecutive drifting tests before `virk_drift_detected` = 1
    device: str | None = None  # torch device for embeddings (None: CUDA when available)
    # image properties exported as metrics: "core" (metrics.CORE_PROPERTIES), "all", "none" or names
    property_metrics: str | tuple[str, ...] = "core"
    # Transport and recorder
    queue_batches: int = 64
    queue_bytes: int = 64 * 2**20
    recorder_bytes: int = 256 * 2**20
    record_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = 90
    # Incidents
    instance: str = field(default_factory=socket.gethostname)
    webhook_token: str | None = field(default_factory=lambda: os.environ.get("VIRK_WEBHOOK_TOKEN") or None)
    webhook_basic_auth: tuple[str, str] | None = field(default_factory=lambda: _basic_auth_from_env())
    webhook_max_bytes: int = 1 * 2**20
    peers: dict[str, str] = field(default_factory=dict)  # instance -> base URL, forwarding allow-list
    link_expiry_s: int = 3600
    bundle_frames: int = 128  # newest frames put into a bundle (plus the last test window's samples)
    webhook_max_alerts: int = 1000  # alerts in one notification (Alertmanager's max_alerts caps it)
    incident_queue: int = 64  # alerts accepted but not yet built; beyond it the webhook answers 503
    # Standalone HTTP server (waitress): serve() only; a mounted app gets its host server's limits
    http_backlog: int = 1024  # listen backlog (the kernel caps it at net.core.somaxconn)
    http_threads: int = 8  # requests handled at once; the rest wait, already accepted
    http_connection_limit: int = 512  # open connections; at the cap the longest-waiting ones close
    http_idle_timeout_s: int = 30  # a connection with no bytes for this long is closed
    http_request_timeout_s: float = 10.0  # a request must arrive whole within this (slow senders)
    # Worker
    log_level: int | None = None  # the worker's logging level (default: the caller's "virk_exporter" logger's)
    worker_start_timeout_s: float = 120.0
    close_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.model or not isinstance(self.model, str):
            raise ValueError("model must be a non-empty string (it becomes the `model` label)")
        if self.color not in ("rgb", "bgr"):
            raise ValueError(f"color must be 'rgb' or 'bgr', got {self.color!r}")
        check_sample(self.sample)
        self._check_limits()
        from virk_exporter.incidents.store import PRESIGN_MAX_S, check_store_url  # stdlib-only module

        check_store_url(self.store)
        if isinstance(self.link_expiry_s, bool) or not 1 <= self.link_expiry_s <= PRESIGN_MAX_S:
            raise ValueError(f"link_expiry_s must lie in 1..{PRESIGN_MAX_S} seconds (S3 presigned links last 7 days at most), "
                             f"got {self.link_expiry_s!r}")
        if not 0.0 < self.p_val < 1.0:
            raise ValueError("p_val must lie in (0, 1)")
        for choice, allowed in (("record_format", ("jpeg", "png")), ("embedder", ("image", "outputs", "features"))):
            if getattr(self, choice) not in allowed:
                raise ValueError(f"{choice} must be one of {', '.join(map(repr, allowed))}, got {getattr(self, choice)!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must lie in 1..100, got {self.jpeg_quality!r}")
        for instance, url in self.peers.items():
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"peers[{instance!r}] must be an http(s):// base URL, got {url!r}")
        check_reachable(self.p_val, self.n_permutations)
        if self.reference_period_s < 0:
            raise ValueError("reference_period_s must be >= 0 (0: the first reference_frames frames)")
        if self.reference_frames < max(8, self.window):
            raise ValueError(f"reference_frames must be at least max(8, window) = {max(8, self.window)}")
        if self.window < 2 or self.hysteresis < 1:
            raise ValueError("window must be >= 2 and hysteresis >= 1")

    _POSITIVE = ("max_sources", "reference_frames", "window", "test_every", "n_permutations", "hysteresis", "queue_batches",
                 "queue_bytes", "recorder_bytes", "webhook_max_bytes", "bundle_frames", "webhook_max_alerts", "incident_queue",
                 "http_backlog", "http_threads", "http_connection_limit", "http_idle_timeout_s", "http_request_timeout_s",
                 "worker_start_timeout_s")

    def _check_limits(self) -> None:
        for name in self._POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.close_timeout_s < 0:
            raise ValueError(f"close_timeout_s must be >= 0, got {self.close_timeout_s!r}")

    @property
    def calibration_samples(self) -> int:
        """Reference samples below which the time-aware calibration has no block to replay."""
        return 2 * self.window + 8


def _basic_auth_from_env() -> tuple[str, str] | None:
    """``VIRK_WEBHOOK_BASIC_AUTH=user:password`` (for people opening bundle links in a browser)."""
    value = os.environ.get("VIRK_WEBHOOK_BASIC_AUTH", "")
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise ValueError("VIRK_WEBHOOK_BASIC_AUTH must be user:password")
    return user, password


def check_reachable(p_val: float, n_permutations: int) -> None:
    """A permutation p-value is at least 1 / (1 + B): a smaller p_val could never fire."""
    if n_permutations < 1:
        raise ValueError("n_permutations must be >= 1")
    floor = 1.0 / (1 + n_permutations)
    if p_val < floor:
        raise ValueError(
            f"p_val={p_val:g} can never be reached with n_permutations={n_permutations} (smallest p-value "
            f"1/(1+{n_permutations}) = {floor:.4g}); raise n_permutations to at least {math.ceil(1 / p_val) - 1}"
        )


def check_sample(sample: float | int) -> None:
    if isinstance(sample, bool):
        raise ValueError("sample must be a rate in (0, 1] or an integer N >= 1 (every N-th frame)")
    if isinstance(sample, int):
        if sample < 1:
            raise ValueError("sample as an integer means every N-th frame: N must be >= 1")
    elif not 0.0 < float(sample) <= 1.0:
        raise ValueError("sample as a float is a rate in (0, 1]")


def default(name: str) -> Any:
    """The default of one :class:`ExporterConfig` setting: the CLI, calibration, replay and the
    drift tests' own defaults read it here, so there is one source of defaults."""
    spec = next((f for f in fields(ExporterConfig) if f.name == name), None)
    if spec is None:
        raise KeyError(f"ExporterConfig has no setting {name!r}")
    return spec.default_factory() if spec.default is MISSING else spec.default
