"""IncidentManager: idempotent under concurrent duplicate deliveries, resolution recorded,
answers fast, failures counted and retried."""

from __future__ import annotations

import threading
import time

from incident_helpers import MODEL, alert, context
from prometheus_client import CollectorRegistry

from virk_exporter.incidents.bundle import bundle_key, read_bundle
from virk_exporter.incidents.manager import IncidentManager
from virk_exporter.incidents.store import LocalStore, StoreUnavailable
from virk_exporter.incidents.webhook import AlertNotification
from virk_exporter.telemetry.metrics import WorkerMetrics


def note(*alerts) -> AlertNotification:
    return AlertNotification(receiver="virk", status=alerts[0].status, alerts=list(alerts))


class Counting:
    """A context provider that counts calls and can be held back."""

    def __init__(self, gate: threading.Event | None = None, fail: int = 0) -> None:
        self.calls = 0
        self.gate = gate
        self.fail = fail

    def __call__(self, a):
        self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.calls <= self.fail:
            raise RuntimeError("recorder unavailable")
        return context(n_frames=6)


def make(tmp_path, provider):
    registry = CollectorRegistry()
    manager = IncidentManager(MODEL, LocalStore(tmp_path / "store"), WorkerMetrics(registry), provider)
    return manager, registry


def count(registry, outcome: str) -> float:
    return registry.get_sample_value("virk_incident_bundles_total", {"model": MODEL, "outcome": outcome}) or 0.0


def test_concurrent_duplicate_deliveries_make_one_bundle(tmp_path):
    provider = Counting()
    manager, registry = make(tmp_path, provider)
    barrier = threading.Barrier(8)

    def deliver():
        barrier.wait()
        manager.handle(note(alert()))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert manager.wait_idle(30)
    manager.handle(note(alert()))  # a retry after the bundle exists
    assert manager.wait_idle(30)
    objects = manager.store.list(MODEL)
    assert [o.key for o in objects] == [bundle_key(MODEL, alert())]
    assert provider.calls == 1
    assert (count(registry, "uploaded"), count(registry, "duplicate")) == (1, 8)
    assert registry.get_sample_value("virk_bundle_build_seconds_count", {"model": MODEL}) == 1
    manager.close()


def test_handle_returns_before_the_build_and_resolution_waits_for_it(tmp_path):
    gate = threading.Event()
    manager, registry = make(tmp_path, Counting(gate))
    started = time.perf_counter()
    assert manager.handle(note(alert())) == {alert().fingerprint: "building"}
    assert manager.handle(note(alert(status="resolved"))) == {alert().fingerprint: "resolve-after-build"}
    assert time.perf_counter() - started < 0.5  # the build is held back by the gate
    gate.set()
    assert manager.wait_idle(30)
    bundle = read_bundle(manager.store.get(bundle_key(MODEL, alert())))
    assert bundle.manifest["resolved"] == {"status": "resolved", "endsAt": "2026-11-26T01:09:00.000000000Z"}
    assert count(registry, "resolved") == 1
    manager.handle(note(alert(status="resolved")))  # re-delivered resolution: no rewrite
    assert manager.wait_idle(30) and count(registry, "resolved") == 1
    manager.close()


def test_resolution_of_a_stored_bundle(tmp_path):
    manager, registry = make(tmp_path, Counting())
    manager.handle(note(alert()))
    assert manager.wait_idle(30)
    before = manager.store.get(bundle_key(MODEL, alert()))
    assert read_bundle(before).manifest["resolved"] is None
    manager.handle(note(alert(status="resolved")))
    assert manager.wait_idle(30)
    after = read_bundle(manager.store.get(bundle_key(MODEL, alert())))
    assert after.manifest["resolved"]["status"] == "resolved"
    assert count(registry, "resolved") == 1
    manager.close()


def test_failed_build_is_counted_and_a_later_delivery_retries(tmp_path):
    provider = Counting(fail=1)
    manager, registry = make(tmp_path, provider)
    manager.handle(note(alert()))
    assert manager.wait_idle(30)
    assert count(registry, "failed") == 1 and manager.store.list(MODEL) == []
    manager.handle(note(alert()))
    assert manager.wait_idle(30)
    assert count(registry, "uploaded") == 1 and len(manager.store.list(MODEL)) == 1
    manager.close()


def test_restarted_worker_does_not_rebuild_and_other_models_are_ignored(tmp_path):
    first, _ = make(tmp_path, Counting())
    first.handle(note(alert()))
    assert first.wait_idle(30)
    first.close()
    provider = Counting()
    second, registry = make(tmp_path, provider)
    assert second.handle(note(alert(model="other-model"))) == {alert().fingerprint: "ignored"}
    second.handle(note(alert()))
    assert second.wait_idle(30)
    assert provider.calls == 0 and count(registry, "duplicate") == 1
    second.close()


class FlakyStore(LocalStore):
    """A store whose reads fail as if S3 were unreachable, a given number of times."""

    def __init__(self, root, fail_gets: int) -> None:
        super().__init__(root)
        self.fail_gets = fail_gets

    def get(self, key: str) -> bytes:
        if self.fail_gets > 0:
            self.fail_gets -= 1
            raise StoreUnavailable("connection refused")
        return super().get(key)


def test_resolution_is_retried_while_the_store_is_unreachable(tmp_path):
    registry = CollectorRegistry()
    store = FlakyStore(tmp_path / "store", fail_gets=0)
    manager = IncidentManager(MODEL, store, WorkerMetrics(registry), Counting())
    manager.handle(note(alert()))
    assert manager.wait_idle(30)
    store.fail_gets = 1
    manager.handle(note(alert(status="resolved")))
    assert manager.wait_idle(30)
    assert store.fail_gets == 0
    assert read_bundle(store.get(bundle_key(MODEL, alert()))).manifest["resolved"]["status"] == "resolved"
    assert count(registry, "resolved") == 1
    manager.close()
