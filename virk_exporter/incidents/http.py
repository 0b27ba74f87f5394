"""HTTP handlers for the incident routes (the server in ``virk_exporter/http/server.py`` routes here).

* ``POST /api/v1/alerts``: the Alertmanager webhook. Checks size and alert count (413),
  credentials (401) and the payload (400), forwards other replicas' alerts to allow-listed
  peers, journals this replica's alerts (``journal.py``), hands them to the monitoring worker
  and answers at once (202). A full intake queue answers 503 with Retry-After for what did
  not fit, so Alertmanager retries; nothing accepted is lost if the worker dies.
* ``GET /incidents/<alert fingerprint>``: that alert's bundles; redirects (302) to a short-lived
  link of the latest. ``?format=json`` lists without redirecting.
  ``GET /incidents/<fingerprint>/<startsAt stamp>``: one bundle (a presigned redirect for S3,
  the bytes themselves for a local store). Fingerprints are computable by anyone, so this
  route needs the configured credential; with none configured it answers loopback only.

Reads from ``exporter``: ``model``, ``config`` (``webhook_token``, ``webhook_basic_auth``,
``webhook_max_bytes``, ``instance``, ``peers``, ``store``, ``link_expiry_s``),
``submit_alert(notification)`` and ``store`` (opened here on first use when ``None``).
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import urllib.parse
from dataclasses import replace
from typing import Any

from virk_exporter.incidents.bundle import BundleKey, alert_prefix
from virk_exporter.incidents.store import LocalStore, Store, StoreError, StoreUnavailable
from virk_exporter.incidents.journal import Journal
from virk_exporter.incidents.webhook import (
    FINGERPRINT_RE,
    Alert,
    AlertNotification,
    FORWARDED_HEADER,
    WebhookError,
    auth_configured,
    authorization_header,
    check_credentials,
    check_size,
    forward,
    parse_notification,
    route,
)
from virk_exporter.http.messages import Request, Response

_STAMP_RE = re.compile(r"\d{8}T\d{6}\.\d{9}Z")  # fullmatch only
_store_lock = threading.Lock()
_journals: dict[str, Journal] = {}


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode(), "application/json", headers or {})


def _error(error: WebhookError) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="virk-exporter", Basic realm="virk-exporter"'} if error.status == 401 else {}
    return _json(error.status, {"error": error.message}, headers)


def _credentials(exporter: Any) -> tuple[str | None, tuple[str, str] | None]:
    basic = exporter.config.webhook_basic_auth
    return exporter.config.webhook_token, tuple(basic) if basic else None  # type: ignore[return-value]


def intake_journal(exporter: Any) -> Journal:
    """The exporter's intake journal (shared with its worker through the spool directory)."""
    with _store_lock:
        journal = _journals.get(exporter.model)
        if journal is None or journal.directory != Journal.for_model(exporter.model).directory:
            journal = _journals[exporter.model] = Journal.for_model(exporter.model)
        return journal


def handle_alerts(exporter: Any, request: Request) -> Response:
    config = exporter.config
    token, basic = _credentials(exporter)
    try:
        check_size(request.headers, request.body, config.webhook_max_bytes)
        check_credentials(request.headers, token, basic)
        notification = parse_notification(request.body, config.webhook_max_alerts)
    except WebhookError as error:
        if error.status == 413:
            exporter.metrics.errors.labels(exporter.model, "webhook_limit").inc()
        return _error(error)
    routing = route(
        notification, exporter.model, config.instance, config.peers, forwarded=FORWARDED_HEADER in request.headers
    )
    ignored = [{"fingerprint": a.fingerprint, "reason": reason} for a, reason in routing.ignored]
    if notification.alerts and not routing.local and not routing.forward:
        # Every alert belongs elsewhere: say so, so a misrouted Alertmanager shows an error.
        return _json(422, {"error": "no alert in this notification is for this exporter", "ignored": ignored})
    accepted, overflow, notes = _accept(exporter, notification, routing.local)
    failures = []
    for instance, base_url in sorted(routing.forward.items()):
        try:
            forward(request.body, base_url, authorization_header(token, basic))
        except WebhookError as error:
            failures.append(error.message)
    body: dict[str, Any] = {
        "accepted": [a.fingerprint for a in accepted],
        "forwarded": dict(sorted(routing.forward.items())),
        "ignored": ignored,
    }
    if notes:
        body["note"] = "; ".join(notes)
    if overflow:
        # 5xx makes Alertmanager retry the whole notification later; what was accepted is
        # journalled, so the retry books it as a duplicate and only the overflow is new.
        exporter.metrics.errors.labels(exporter.model, "incident_overflow").inc(len(overflow))
        body["overflow"] = [a.fingerprint for a in overflow]
        failures.append(f"incident queue full ({config.incident_queue} alerts waiting to be built): "
                        f"{len(overflow)} alerts not accepted, retry later")
        return _json(503, dict(body, error="; ".join(failures)), {"Retry-After": "30"})
    if failures:
        # 5xx makes Alertmanager retry; the local part is idempotent, so a retry is harmless.
        return _json(502, dict(body, error="; ".join(failures)))
    return _json(202, body)


def _accept(exporter: Any, notification: AlertNotification, alerts: list[Alert]) -> tuple[list[Alert], list[Alert], list[str]]:
    """Journal what fits in the intake queue (newest first), hand it to the worker.

    Returns (accepted, overflow, notes). An alert already journalled is accepted again (a
    re-delivery) without taking room. Once journalled, an alert is safe even if the worker
    is down: it is booked when the worker (re)starts.
    """
    if not alerts:
        return [], [], []
    journal = intake_journal(exporter)
    room = exporter.config.incident_queue - len(journal)
    accepted, overflow = [], []
    for alert in sorted(alerts, key=lambda a: a.starts_at.unix(), reverse=True):
        if journal.accepted_before(alert):
            accepted.append(alert)
        elif room > 0:
            journal.add(alert)
            accepted.append(alert)
            room -= 1
        else:
            overflow.append(alert)
    notes = []
    if accepted:
        try:
            exporter.submit_alert(replace(notification, alerts=accepted))
        except Exception as problem:  # noqa: BLE001 - journalled: the worker books it when it is back
            exporter.metrics.errors.labels(exporter.model, "worker").inc()
            notes.append(f"the monitoring worker is not reachable ({type(problem).__name__}); "
                         "the alerts are journalled and built when it is back")
    return accepted, overflow, notes


def incident_store(exporter: Any) -> Store:
    """The exporter's incident store (``exporter.store``, a LazyStore, opens it once)."""
    return exporter.store.open()


def _loopback(remote: str) -> bool:
    host = remote.rsplit(":", 1)[0].strip("[]") if remote.count(":") == 1 else remote.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def handle_incident(exporter: Any, request: Request) -> Response:
    token, basic = _credentials(exporter)
    try:
        if auth_configured(token, basic):
            check_credentials(request.headers, token, basic)
        elif not _loopback(request.remote):
            raise WebhookError(401, "incident links need a configured credential (webhook_token or webhook_basic_auth)")
    except WebhookError as error:
        return _error(error)

    parts = [urllib.parse.unquote(p) for p in request.path.split("/")[2:]]
    if parts and parts[-1] == "":
        parts.pop()
    if not parts or len(parts) > 2 or not FINGERPRINT_RE.fullmatch(parts[0]) or (len(parts) == 2 and not _STAMP_RE.fullmatch(parts[1])):
        return _json(400, {"error": "expected /incidents/<alert fingerprint>[/<startsAt stamp>] ([A-Za-z0-9_-] only)"})
    fingerprint = parts[0]
    prefix = alert_prefix(exporter.model, fingerprint)
    store = incident_store(exporter)
    expiry = int(exporter.config.link_expiry_s)
    try:
        if len(parts) == 2:
            return _one_bundle(store, f"{prefix}/{parts[1]}/bundle.zip", fingerprint, expiry)
        bundles = sorted(((o, k) for o in store.list(prefix) if (k := BundleKey.parse(o.key))), key=lambda ok: ok[1].stamp)
        if not bundles:
            return _json(404, {"error": f"no bundle for alert {fingerprint} of model {exporter.model!r}"})
        listing = [{"startsAt": k.stamp, "size": o.size, "url": f"/incidents/{fingerprint}/{k.stamp}"} for o, k in bundles]
        latest = listing[-1]
        location = latest["url"] if isinstance(store, LocalStore) else store.link(bundles[-1][0].key, expiry)
        if request.query.get("format", [""])[0] == "json":
            return _json(200, {"fingerprint": fingerprint, "bundles": listing, "latest": location})
        return _json(302, {"fingerprint": fingerprint, "bundles": listing, "latest": location}, {"Location": location})
    except StoreUnavailable as error:
        return _json(503, {"error": f"store unavailable: {error}"})
    except StoreError as error:
        return _json(404, {"error": str(error)})


def _one_bundle(store: Store, key: str, fingerprint: str, expiry: int) -> Response:
    if isinstance(store, LocalStore):  # no signed URLs for a directory: serve the bytes here
        data = store.get(key)
        name = f"virk-{fingerprint}-{key.split('/')[-2]}.zip"
        return Response(200, data, "application/zip", {"Content-Disposition": f'attachment; filename="{name}"'})
    if not store.exists(key):
        return _json(404, {"error": f"no bundle {key}"})
    location = store.link(key, expiry)
    return _json(302, {"url": location}, {"Location": location})

