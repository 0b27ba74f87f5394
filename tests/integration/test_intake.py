"""Durable, bounded incident intake: the journal survives a worker crash, builds run newest
alert first, a queued build is superseded by a newer firing of the same alert."""

from __future__ import annotations

import os
import signal
import threading
import urllib.request
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from incident_helpers import MODEL, alert
from prometheus_client import CollectorRegistry
from servers import wait_until
from test_incidents_manager import Counting, count, note

from virk_exporter.incidents.bundle import bundle_key
from virk_exporter.incidents.journal import Journal
from virk_exporter.incidents.manager import IncidentManager
from virk_exporter.incidents.store import LocalStore
from virk_exporter.incidents.webhook import make_alert_payload, parse_notification
from virk_exporter.telemetry.metrics import WorkerMetrics


def firing(fingerprint: str, minute: int, source: str = "cam1"):
    body = make_alert_payload(MODEL, labels={"source": source}, fingerprint=fingerprint,
                              starts_at=datetime(2026, 11, 26, 1, minute, tzinfo=timezone.utc))
    return parse_notification(body).alerts[0]


class Recording(Counting):
    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate
        self.order: list[tuple[str, str]] = []

    def __call__(self, a):
        self.order.append((a.fingerprint, a.starts_at.stamp()))
        return super().__call__(a)


@pytest.mark.slow
def test_builds_run_newest_first_and_a_newer_firing_supersedes_a_queued_one(tmp_path):
    gate = threading.Event()
    provider = Recording(gate)
    registry = CollectorRegistry()
    journal = Journal(tmp_path / "journal")
    manager = IncidentManager(MODEL, LocalStore(tmp_path / "store"), WorkerMetrics(registry), provider, workers=1, journal=journal)
    first = firing("aaaa", 0)
    manager.handle(note(first))  # occupies the only build thread until the gate opens
    wait_until(lambda: provider.order, timeout=10, what="the first build to start")
    storm = [firing(f"s{i:03d}", 1 + i % 30) for i in range(20)]
    old, new = firing("bbbb", 40), firing("bbbb", 50)
    for a in [*storm, old, new]:
        journal.add(a)
    manager.handle(note(*storm))
    manager.handle(note(old))
    assert manager.handle(note(new)) == {"bbbb": "building"}
    assert manager.handle(note(firing("bbbb", 45))) == {"bbbb": "coalesced"}  # older than the queued one
    gate.set()
    assert manager.wait_idle(60)
    built = [fp for fp, _ in provider.order]
    assert built[:2] == ["aaaa", "bbbb"]  # the newest alert jumps the storm
    assert provider.order[1][1] == new.starts_at.stamp()
    assert [a.starts_at.unix() for a in storm if a.fingerprint in built] and built.count("bbbb") == 1
    stamps = [s for fp, s in provider.order[2:]]
    assert stamps == sorted(stamps, reverse=True)
    assert count(registry, "coalesced") == 2 and count(registry, "uploaded") == 22
    assert len(journal) == 0  # every entry done, the superseded ones too
    manager.close()


def test_a_new_manager_books_what_the_journal_holds(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.add(alert())
    journal.add(alert(status="resolved"))
    registry = CollectorRegistry()
    manager = IncidentManager(MODEL, LocalStore(tmp_path / "store"), WorkerMetrics(registry), Counting(), journal=journal)
    assert manager.wait_idle(30)
    assert manager.store.exists(bundle_key(MODEL, alert()))
    assert (count(registry, "uploaded"), count(registry, "resolved")) == (1, 1)
    assert len(journal) == 0
    manager.close()


def test_a_journal_entry_that_is_not_an_alert_is_set_aside(tmp_path):
    journal = Journal(tmp_path / "journal")
    (journal.directory / "0123.json").write_text('{"status": "firing"}')
    assert journal.pending() == [] and (journal.directory / "0123.bad").exists()


@pytest.mark.slow
def test_an_accepted_alert_survives_kill_9_of_the_worker(tmp_path):
    """The worker is killed right after the 202, before it can have built the bundle; the
    restarted worker finds the alert in the journal and builds it."""
    from virk_exporter import Exporter

    exporter = Exporter(model=MODEL, store=str(tmp_path / "store"))
    server = exporter.serve(port=0)
    try:
        assert exporter.wait_ready(120)
        worker = exporter._worker._started  # noqa: SLF001 - the test needs the real process to kill
        pid = worker.pid
        os.kill(pid, signal.SIGSTOP)  # frozen: it cannot build before it dies
        body = make_alert_payload(MODEL, fingerprint="feedfacecafe0001", starts_at=datetime.now(timezone.utc) - timedelta(seconds=5))
        request = urllib.request.Request(f"{server.url}/api/v1/alerts", data=body, method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        os.kill(pid, signal.SIGKILL)
        # this process, not the handle's current one: the supervisor may have started the next
        wait_until(lambda: worker.poll() is not None, timeout=10, what="the worker to die")

        @exporter.monitor
        def predict(frames):
            return np.zeros(len(frames))

        def rebuilt():
            predict(np.zeros((1, 32, 32, 3), np.uint8))  # calls go on across the restart (the supervisor starts the next worker)
            return LocalStore(tmp_path / "store").list(MODEL)

        objects = wait_until(rebuilt, timeout=120, interval=1.0, what="the bundle after the restart")
        assert [o.key.split("/")[1] for o in objects if o.key.endswith("bundle.zip")] == ["feedfacecafe0001"]
        wait_until(lambda: len(Journal.for_model(MODEL)) == 0, timeout=30, what="the journal entry to be done")
    finally:
        exporter.close()
