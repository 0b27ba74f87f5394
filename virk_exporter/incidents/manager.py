"""The incident manager: runs in the monitoring worker, turns alerts into stored bundles.

``handle(notification)`` only books the work and returns; bundles are built on a small
thread pool. Idempotency is on (alert fingerprint, startsAt): an in-memory state table under
one lock makes concurrent duplicate deliveries book a single build, and the store itself is
asked before building, so a restarted worker does not rebuild what is already stored.

Booked work waits in a queue served newest alert first (an alert storm must not delay the
page that just fired), and a queued build is superseded by a newer firing of the same
(source, fingerprint): one bundle for what is happening now. The webhook journals every
accepted alert (``journal.py``) before answering; the manager deletes the entry once the
work is done and books whatever entries an earlier, crashed worker left.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from virk_exporter.incidents.bundle import IncidentContext, build_bundle, bundle_key, bundle_tags, read_bundle, with_resolution
from virk_exporter.incidents.journal import Journal
from virk_exporter.incidents.store import S3Store, SpoolingStore, Store, StoreError, StoreUnavailable, default_spool_dir, open_store
from virk_exporter.incidents.webhook import Alert, AlertNotification
from virk_exporter.telemetry.metrics import WorkerMetrics

log = logging.getLogger("virk_exporter.incidents")

# Outcomes of virk_incident_bundles_total: uploaded (in the store), spooled (S3 unreachable,
# on local disk; counted "uploaded" too once it lands), failed (not built or not even spooled),
# duplicate (a re-delivery, no new bundle), resolved (resolution written into the manifest),
# coalesced (a queued build superseded by a newer firing of the same source and fingerprint).
Outcome = Literal["uploaded", "spooled", "failed", "duplicate", "resolved", "coalesced"]
_State = Literal["building", "stored"]
_MAX_REMEMBERED = 10_000
_RESOLVE_ATTEMPTS = 12  # backoff 1, 2, 4 ... 60 s: about 8 minutes of S3 outage


@dataclass(order=True)
class _Job:
    """One queued piece of incident work, newest alert first."""

    priority: float  # minus the alert's startsAt: the heap pops the newest first
    seq: int
    run: Callable[[], None] = field(compare=False)
    alert: Alert | None = field(default=None, compare=False)  # a queued build, while it may be superseded
    cancelled: bool = field(default=False, compare=False)


class IncidentManager:
    """Turns alerts into bundles on worker threads: deduplicated, bounded, retried, stored."""

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
        journal: Journal | None = None,
    ) -> None:
        self.model = model
        self.metrics = metrics
        self.context = context
        self.on_built = on_built  # (alert, context, start in unix ns, outcome): e.g. to trace the build
        store = open_store(store)
        if isinstance(store, S3Store):  # only a remote store can be "down"; a local one is the disk
            store = SpoolingStore(store, spool_dir or default_spool_dir() / store.bucket, on_uploaded=self._landed, on_failed=self._upload_failed)
        self.store: Store = store
        self._states: dict[tuple[str, str], _State] = {}
        self._pending_resolved: dict[tuple[str, str], Alert] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="virk-bundle")
        self._queue: list[_Job] = []
        self._queued_builds: dict[tuple[str | None, str], _Job] = {}  # (source, fingerprint) -> queued build
        self._seq = itertools.count()
        self.journal = journal if journal is not None else Journal.for_model(model)
        left = self.journal.pending()
        if left:
            log.warning("booking %d accepted alerts an earlier worker left unbuilt (intake journal %s)", len(left), self.journal.directory)
            self.handle(AlertNotification("intake-journal", left[0].status, left))

    # -- booking (fast, on the caller of handle) --------------------------------------------

    def handle(self, notification: AlertNotification) -> dict[str, str]:
        """Book the work for each alert of this model; returns {alert fingerprint: action}."""
        received = time.monotonic()
        actions: dict[str, str] = {}
        for alert in notification.alerts:
            if alert.labels.get("model") != self.model:
                actions[alert.fingerprint] = "ignored"
                self.journal.remove(alert)
                continue
            with self._lock:
                actions[alert.fingerprint] = self._book(alert, received)
        return actions

    def _book(self, alert: Alert, received: float) -> str:
        """Under the lock: queue the alert's work, or say why not."""
        state = self._states.get(alert.key)
        if alert.status == "firing":
            if state is not None:
                if state == "stored":  # the webhook journalled a re-delivery: nothing left to do
                    self.journal.remove(alert)
                self._count("duplicate")
                return "duplicate"
            source_key = (alert.labels.get("source"), alert.fingerprint)
            queued = self._queued_builds.get(source_key)
            if queued is not None and queued.alert is not None:
                if queued.alert.starts_at.unix() >= alert.starts_at.unix():
                    self.journal.remove(alert)
                    self._count("coalesced")
                    return "coalesced"
                self._supersede(queued)
            self._states[alert.key] = "building"
            job = self._enqueue(alert, lambda: self._build(alert, received), build=True)
            self._queued_builds[source_key] = job
            return "building"
        if state == "building":  # resolved before the bundle exists: apply after the build
            self._pending_resolved[alert.key] = alert
            return "resolve-after-build"
        self._enqueue(alert, lambda: self._resolve(alert))
        return "resolving"

    def _supersede(self, job: _Job) -> None:
        """Under the lock: a newer firing replaces a build that has not started."""
        old = job.alert
        assert old is not None
        job.cancelled = True
        del self._states[old.key]
        self.journal.remove(old)
        pending = self._pending_resolved.pop(old.key, None)
        if pending is not None:
            self.journal.remove(pending)
        self._count("coalesced")
        log.info("queued bundle for %s superseded by a newer firing of the same alert", bundle_key(self.model, old))

    def _enqueue(self, alert: Alert, run: Callable[[], None], build: bool = False) -> _Job:
        """Under the lock: queue ``run`` by the alert's startsAt (newest first)."""
        job = _Job(-alert.starts_at.unix(), next(self._seq), run, alert if build else None)
        self._pool.submit(self._run_next)  # first: a closed pool raises before anything is queued
        heapq.heappush(self._queue, job)  # the pool thread waits for the lock we hold
        self._in_flight += 1
        return job

    def _run_next(self) -> None:
        """One pool task per queued job: run the best job waiting now (not necessarily its own)."""
        with self._lock:
            job = heapq.heappop(self._queue)
            if job.alert is not None:
                source_key = (job.alert.labels.get("source"), job.alert.fingerprint)
                if self._queued_builds.get(source_key) is job:
                    del self._queued_builds[source_key]
        try:
            if not job.cancelled:
                job.run()
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
            self.journal.remove(alert)  # counted and logged: retrying a broken build forever helps no one
            if pending is not None:
                self.journal.remove(pending)
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
        self.journal.remove(alert)  # stored or spooled: durable from here on
        if pending is not None:
            self._resolve(pending)

    def _stored(self, key: str) -> bool:
        try:
            return self.store.exists(key)
        except StoreUnavailable:  # S3 down: build anyway, the put spools it (same bytes if it exists)
            return False

    def _resolve(self, alert: Alert, attempt: int = 0) -> None:
        done = True  # a failure is logged by _run_next and not retried: the entry goes too
        try:
            done = self._record_resolution(alert, attempt)
        finally:
            if done:
                self.journal.remove(alert)

    def _record_resolution(self, alert: Alert, attempt: int) -> bool:
        """Write the resolution into the bundle; False when a retry was scheduled."""
        key = bundle_key(self.model, alert)
        try:
            data = self.store.get(key)
        except StoreUnavailable as error:
            if attempt >= _RESOLVE_ATTEMPTS:
                log.warning("resolution of %s dropped after %d attempts: %s", key, attempt + 1, error)
                self._count("failed")
                return True
            delay = min(2.0**attempt, 60.0)
            log.info("store unavailable, recording the resolution of %s in %.0fs", key, delay)
            self._later(delay, alert, lambda: self._resolve(alert, attempt + 1))
            return False
        except StoreError as error:
            log.info("resolved alert %s has no bundle here (%s)", key, error)
            return True
        resolution = {"status": "resolved", "endsAt": alert.ends_at.isoformat()}
        manifest = read_bundle(data).manifest
        if manifest.get("resolved") == resolution:
            return True  # a re-delivered resolution: nothing changes
        self.store.put(key, with_resolution(data, resolution), bundle_tags(manifest))
        self._count("resolved")
        return True

    def _later(self, delay: float, alert: Alert, run: Callable[[], None]) -> None:
        """Queue ``run`` after ``delay`` seconds (the wait counts as in flight)."""
        with self._lock:
            self._in_flight += 1

        def fire() -> None:
            with self._lock:
                try:
                    self._enqueue(alert, run)
                except RuntimeError:  # closed meanwhile: the journal entry stays for the next start
                    pass
                self._in_flight -= 1
                self._idle.notify_all()

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        timer.start()

    def _upload_failed(self, key: str, error: StoreError) -> None:
        """An upload attempt that did not reach S3 (the bundle is spooled, retried)."""
        self.metrics.errors.labels(self.model, "store").inc()

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
