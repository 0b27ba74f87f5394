"""The incident manager: runs in the monitoring worker, turns alerts into stored bundles.

``handle(notification)`` only books the work and returns; bundles are built on a small
thread pool. Idempotency is on (alert fingerprint, startsAt): an in-memory state table under
one lock makes concurrent duplicate deliveries book a single build, and the store itself is
asked before building, so a restarted worker does not rebuild what is already stored.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Literal

from virk_exporter.incidents.bundle import IncidentContext, build_bundle, bundle_key, bundle_tags, read_bundle, with_resolution
from virk_exporter.incidents.store import S3Store, SpoolingStore, Store, StoreError, StoreUnavailable, open_store
from virk_exporter.incidents.webhook import Alert, AlertNotification
from virk_exporter.metrics import WorkerMetrics

log = logging.getLogger("virk_exporter.incidents")

# Outcomes of virk_incident_bundles_total: uploaded (in the store), spooled (S3 unreachable,
# on local disk; counted "uploaded" too once it lands), failed (not built or not even spooled),
# duplicate (a re-delivery, no new bundle), resolved (resolution written into the manifest).
Outcome = Literal["uploaded", "spooled", "failed", "duplicate", "resolved"]
_State = Literal["building", "stored"]
_MAX_REMEMBERED = 10_000
_RESOLVE_ATTEMPTS = 12  # backoff 1, 2, 4 ... 60 s: about 8 minutes of S3 outage


def default_spool_dir() -> Path:
    return Path(os.environ.get("VIRK_SPOOL_DIR", Path.home() / ".cache" / "virk-exporter" / "spool"))


class IncidentManager:
    def __init__(
        self,
        model: str,
        store: Store | str | Path,
        metrics: WorkerMetrics,
        context: Callable[[Alert], IncidentContext],
        *,
        spool_dir: str | Path | None = None,
        workers: int = 2,
        on_built: Callable[[Alert, IncidentContext, int, str], None] | None = None,
    ) -> None:
        self.model = model
        self.metrics = metrics
        self.context = context
        self.on_built = on_built  # (alert, context, start in unix ns, outcome): e.g. to trace the build
        store = open_store(store)
        if isinstance(store, S3Store):  # only a remote store can be "down"; a local one is the disk
            store = SpoolingStore(store, spool_dir or default_spool_dir() / store.bucket, on_uploaded=self._landed)
        self.store: Store = store
        self._states: dict[tuple[str, str], _State] = {}
        self._pending_resolved: dict[tuple[str, str], Alert] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="virk-bundle")

    # -- booking (fast, on the caller of handle) --------------------------------------------

    def handle(self, notification: AlertNotification) -> dict[str, str]:
        """Book the work for each alert of this model; returns {alert fingerprint: action}."""
        received = time.monotonic()
        actions: dict[str, str] = {}
        for alert in notification.alerts:
            if alert.labels.get("model") != self.model:
                actions[alert.fingerprint] = "ignored"
                continue
            with self._lock:
                state = self._states.get(alert.key)
                if alert.status == "firing":
                    if state is not None:
                        actions[alert.fingerprint] = "duplicate"
                        self._count("duplicate")
                        continue
                    self._states[alert.key] = "building"
                    job: Callable[[], None] = lambda a=alert: self._build(a, received)  # noqa: E731
                    actions[alert.fingerprint] = "building"
                elif state == "building":  # resolved before the bundle exists: apply after the build
                    self._pending_resolved[alert.key] = alert
                    actions[alert.fingerprint] = "resolve-after-build"
                    continue
                else:
                    job = lambda a=alert: self._resolve(a)  # noqa: E731
                    actions[alert.fingerprint] = "resolving"
                self._in_flight += 1
            self._pool.submit(self._run, job)
        return actions

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:  # noqa: BLE001 - a failed bundle is counted, never raised into the worker
            log.exception("incident job failed")
        finally:
            with self._lock:
                self._in_flight -= 1
                self._idle.notify_all()

    # -- work (pool threads) -------------------------------------------------------------------

    def _build(self, alert: Alert, received: float) -> None:
        key = bundle_key(self.model, alert)
        started_ns = time.time_ns()
        context = None
        try:
            if self._stored(key):  # built before a restart, or by a peer sharing the store
                self._count("duplicate")
                outcome: Outcome | None = None
            else:
                context = self.context(alert)
                data, manifest = build_bundle(alert, self.model, context)
                put = self.store.put(key, data, bundle_tags(manifest))
                outcome = put if put in ("uploaded", "spooled") else "uploaded"
        except Exception:
            log.exception("incident bundle %s failed", key)
            with self._lock:
                del self._states[alert.key]  # a later delivery (repeat_interval) may try again
                pending = self._pending_resolved.pop(alert.key, None)
            self._count("failed")
            if pending is not None:
                log.warning("resolution of %s dropped: its bundle failed", key)
            return
        if outcome is not None:
            self.metrics.bundle_seconds.labels(self.model).observe(time.monotonic() - received)
            self._count(outcome)
            log.info("incident bundle %s: %s", key, outcome)
            if self.on_built is not None and context is not None:
                try:
                    self.on_built(alert, context, started_ns, outcome)
                except Exception:  # noqa: BLE001 - tracing must not fail a stored bundle
                    log.exception("on_built hook failed for %s", key)
        with self._lock:
            self._states[alert.key] = "stored"
            pending = self._pending_resolved.pop(alert.key, None)
            self._forget_old()
        if pending is not None:
            self._resolve(pending)

    def _stored(self, key: str) -> bool:
        try:
            return self.store.exists(key)
        except StoreUnavailable:  # S3 down: build anyway, the put spools it (same bytes if it exists)
            return False

    def _resolve(self, alert: Alert, attempt: int = 0) -> None:
        key = bundle_key(self.model, alert)
        try:
            data = self.store.get(key)
        except StoreUnavailable as error:
            if attempt >= _RESOLVE_ATTEMPTS:
                log.warning("resolution of %s dropped after %d attempts: %s", key, attempt + 1, error)
                self._count("failed")
                return
            delay = min(2.0**attempt, 60.0)
            log.info("store unavailable, recording the resolution of %s in %.0fs", key, delay)
            self._later(delay, lambda: self._resolve(alert, attempt + 1))
            return
        except StoreError as error:
            log.info("resolved alert %s has no bundle here (%s)", key, error)
            return
        resolution = {"status": "resolved", "endsAt": alert.ends_at.isoformat()}
        manifest = read_bundle(data).manifest
        if manifest.get("resolved") == resolution:
            return  # a re-delivered resolution: nothing changes
        self.store.put(key, with_resolution(data, resolution), bundle_tags(manifest))
        self._count("resolved")

    def _later(self, delay: float, job: Callable[[], None]) -> None:
        """Run ``job`` on the pool after ``delay`` seconds (counted in flight meanwhile)."""
        with self._lock:
            self._in_flight += 1

        def fire() -> None:
            try:
                self._pool.submit(self._run, job)
            except RuntimeError:  # closed meanwhile
                with self._lock:
                    self._in_flight -= 1
                    self._idle.notify_all()
            # on success the count taken above is released by _run when the job ends

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        timer.start()

    def _landed(self, key: str) -> None:
        """A spooled bundle reached S3."""
        self._count("uploaded")

    def _count(self, outcome: Outcome) -> None:
        self.metrics.bundles.labels(self.model, outcome).inc()

    def _forget_old(self) -> None:
        # Bound memory over months of alerts; the store check in _build still catches very old repeats.
        while len(self._states) > _MAX_REMEMBERED:
            self._states.pop(next(iter(self._states)))

    # -- lifecycle ------------------------------------------------------------------------------

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once no build or resolution is running or booked (tests, benchmarks, close)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        self.wait_idle(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if isinstance(self.store, SpoolingStore):
            self.store.close()  # spooled bundles stay on disk and upload at the next start
