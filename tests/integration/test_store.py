"""Bundle stores against a real S3 server (SeaweedFS, signature-checking, MinIO SDK compatible):
put/get, tags, presigned links, bucket creation, credentials, and S3 down during an incident."""

from __future__ import annotations

import time

import pytest
from incident_helpers import MODEL, alert, context
from prometheus_client import CollectorRegistry
from servers import Server, _start, http_get, start_seaweedfs, wait_until

from virk_exporter.incidents.bundle import build_bundle, bundle_key, read_bundle
from virk_exporter.incidents.journal import Journal
from virk_exporter.incidents.manager import IncidentManager
from virk_exporter.incidents.store import (
    LocalStore,
    S3Store,
    SpoolingStore,
    StoreError,
    StoreUnavailable,
    open_store,
)
from virk_exporter.incidents.webhook import AlertNotification
from virk_exporter.telemetry.metrics import WorkerMetrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


def env_for(server: Server, **extra: str) -> dict[str, str]:
    return {"VIRK_S3_ENDPOINT": server.url, "VIRK_S3_ACCESS_KEY": server.extra["access_key"], "VIRK_S3_SECRET_KEY": server.extra["secret_key"], **extra}


def restart(server: Server) -> None:
    """Start the stopped server again on the same ports and data directory."""
    server.process = _start(server.name, list(server.process.args), server.log.parent, f"{server.url}/healthz", timeout=60.0)


@pytest.fixture(scope="module")
def bundle_bytes() -> bytes:
    return build_bundle(alert(), MODEL, context(n_frames=4))[0]


def test_local_store(tmp_path, bundle_bytes):
    store = open_store(str(tmp_path / "bundles"))
    assert isinstance(store, LocalStore)
    key = bundle_key(MODEL, alert())
    store.put(key, bundle_bytes, {"model": MODEL, "cause": "brightness"})
    assert store.get(key) == bundle_bytes and store.exists(key)
    assert store.tags(key)["cause"] == "brightness"
    assert [o.key for o in store.list(MODEL)] == [key]
    for bad in ("../escape.zip", "/etc/passwd", "a//b", "a/./b", "a/../../b"):
        with pytest.raises(StoreError, match="invalid object key"):
            store.put(bad, b"x", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundles"]


def test_s3_put_get_tags_list_and_presigned_link(s3, monkeypatch, bundle_bytes):
    for name, value in env_for(s3).items():
        monkeypatch.setenv(name, value)
    store = open_store("s3://virk-created-on-demand/prod/eu")  # bucket does not exist yet
    assert isinstance(store, S3Store) and store.url == "s3://virk-created-on-demand/prod/eu"
    key = bundle_key(MODEL, alert())
    store.put(key, bundle_bytes, {"model": MODEL, "cause": "brightness", "alertname": "Virk Drift (cam#1)"})
    assert store.client.bucket_exists("virk-created-on-demand")
    stat = store.client.stat_object("virk-created-on-demand", f"prod/eu/{key}")
    assert stat.size == len(bundle_bytes)
    assert store.get(key) == bundle_bytes and store.exists(key) and not store.exists(f"{MODEL}/nope/x/bundle.zip")
    assert store.tags(key) == {"model": MODEL, "cause": "brightness", "alertname": "Virk Drift _cam_1_"}
    assert [o.key for o in store.list(MODEL)] == [key]

    status, body = http_get(store.link(key, 60))
    assert status == 200 and body == bundle_bytes
    read_bundle(body)  # downloaded through the link, it verifies
    # links name the endpoint browsers use when it differs from the exporter's
    public = S3Store.from_env("virk-created-on-demand", "prod/eu", env_for(s3, VIRK_S3_PUBLIC_ENDPOINT=s3.url.replace("127.0.0.1", "localhost")))
    public_link = public.link(key, 60)
    assert public_link.startswith("http://localhost:") and http_get(public_link) == (200, bundle_bytes)
    with pytest.raises(ValueError, match="bucket name"):
        open_store("s3://No_Such..Bucket/x")

    short = store.link(key, 1)
    time.sleep(2.1)
    assert http_get(short)[0] == 403  # the expiry is enforced by the server


def test_s3_wrong_credentials_are_not_mistaken_for_an_outage(s3):
    store = S3Store.from_env("virk-incidents", "", env_for(s3, VIRK_S3_SECRET_KEY="wrong"))
    with pytest.raises(StoreError) as caught:
        store.put("m/f/s/bundle.zip", b"x", {})
    assert not isinstance(caught.value, StoreUnavailable)


@pytest.mark.slow
def test_s3_down_during_an_incident_then_back(s3, tmp_path):
    """S3 stops; two alerts fire: both bundles spool on disk. The worker even restarts while S3
    is down. S3 returns: both bundles arrive, byte-identical and verifying; outcomes counted."""
    store = S3Store.from_env("virk-outage", "", env_for(s3))
    spool = tmp_path / "spool"
    registry = CollectorRegistry()
    provider = lambda a: context(n_frames=4)  # noqa: E731
    first = alert(fingerprint="00000000000000a1")
    second = alert(fingerprint="00000000000000a2")
    s3.stop()
    try:
        manager = IncidentManager(MODEL, store, WorkerMetrics(registry), provider, spool_dir=spool)
        assert isinstance(manager.store, SpoolingStore)
        manager.handle(AlertNotification("virk", "firing", [first]))
        manager.handle(AlertNotification("virk", "firing", [second]))
        assert manager.wait_idle(60)
        assert registry.get_sample_value("virk_incident_bundles_total", {"model": MODEL, "outcome": "spooled"}) == 2
        assert sorted(manager.store.pending()) == sorted([bundle_key(MODEL, first), bundle_key(MODEL, second)])
        manager.close()  # the worker goes away with S3 still down: the spool survives on disk
    finally:
        restart(s3)
    registry = CollectorRegistry()
    manager = IncidentManager(MODEL, S3Store.from_env("virk-outage", "", env_for(s3)), WorkerMetrics(registry), provider, spool_dir=spool)
    try:
        wait_until(lambda: not manager.store.pending(), timeout=30, what="the spool to drain")
        for a in (first, second):
            data = store.get(bundle_key(MODEL, a))
            assert data == build_bundle(a, MODEL, context(n_frames=4))[0]
            assert read_bundle(data).alert["fingerprint"] == a.fingerprint
        assert registry.get_sample_value("virk_incident_bundles_total", {"model": MODEL, "outcome": "uploaded"}) == 2
        assert not list(spool.glob("*"))
    finally:
        manager.close()


def _spooling_manager(store, spool, registry):
    return IncidentManager(MODEL, store, WorkerMetrics(registry), lambda a: context(n_frames=4), spool_dir=spool, journal=Journal(spool / "journal"))


def test_s3_wrong_credentials_spool_the_bundle_count_and_name_the_fix(s3, tmp_path, caplog):
    """The secret is wrong: the bundle is not lost after the 202 but spooled, every refused
    attempt counted, the log says which variables to check; once fixed, it uploads."""
    spool = tmp_path / "spool"
    registry = CollectorRegistry()
    manager = _spooling_manager(S3Store.from_env("virk-creds", "", env_for(s3, VIRK_S3_SECRET_KEY="wrong")), spool, registry)
    manager.store.backoff = (0.2, 0.5)
    try:
        manager.handle(AlertNotification("virk", "firing", [alert()]))
        assert manager.wait_idle(60)
        assert registry.get_sample_value("virk_incident_bundles_total", {"model": MODEL, "outcome": "spooled"}) == 1
        assert manager.store.pending() == [bundle_key(MODEL, alert())]
        wait_until(lambda: registry.get_sample_value("virk_errors_total", {"model": MODEL, "stage": "store"}) >= 3,
                   timeout=30, what="retries to be counted")
        assert any("VIRK_S3_SECRET_KEY" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    finally:
        manager.close()
    registry = CollectorRegistry()  # the operator fixes the secret and restarts
    fixed = _spooling_manager(S3Store.from_env("virk-creds", "", env_for(s3)), spool, registry)
    try:
        wait_until(lambda: not fixed.store.pending(), timeout=30, what="the spool to drain")
        assert read_bundle(fixed.store.get(bundle_key(MODEL, alert()))).alert["fingerprint"] == alert().fingerprint
    finally:
        fixed.close()

