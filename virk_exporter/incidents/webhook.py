"""Alertmanager webhook (payload version 4): parsing, validation, credentials, replica forwarding.

Everything here is pure and synchronous so it can run on the HTTP thread of the caller's
process; the heavy work (bundles) happens in the monitoring worker (see ``manager.py``).
A bad request raises :class:`WebhookError` carrying the HTTP status and a message that says
what is wrong, so Alertmanager's log shows the cause of a misconfiguration.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

PAYLOAD_VERSION = "4"
FORWARDED_HEADER = "x-virk-forwarded"  # set on replica-to-replica forwards; they are never forwarded again

# Alert fingerprints become object keys and URL path segments: allow only what Alertmanager
# produces (hex) plus the characters a hand-made alert may reasonably use. No dots, no slashes.
FINGERPRINT_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")  # use fullmatch: "$" would accept a final newline
_RFC3339_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


class WebhookError(ValueError):
    """A request the webhook refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Timestamp:
    """An RFC 3339 instant kept to the nanosecond (Alertmanager sends nanoseconds)."""

    seconds: datetime  # UTC, microsecond=0
    nanos: int

    @classmethod
    def parse(cls, text: str, what: str) -> "Timestamp":
        match = _RFC3339_RE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise WebhookError(400, f"{what}: {text!r} is not an RFC 3339 timestamp")
        day, clock, frac, zone = match.groups()
        zone = "+00:00" if zone in ("Z", "z") else zone
        try:
            moment = datetime.fromisoformat(f"{day}T{clock}{zone}").astimezone(timezone.utc)
        except (ValueError, OverflowError) as error:  # Feb 30; 9999-12-31T23:59:59-23:59 leaves datetime's range
            raise WebhookError(400, f"{what}: {text!r}: {error}") from None
        return cls(moment, int((frac or "0").ljust(9, "0")))

    @property
    def zero(self) -> bool:
        """Alertmanager's "not set" value, 0001-01-01T00:00:00Z."""
        return self.seconds.year == 1

    def stamp(self) -> str:
        """A compact, path-safe, sortable form used in object keys: 20240101T120000.123456789Z."""
        return f"{self.seconds.year:04d}{self.seconds:%m%dT%H%M%S}.{self.nanos:09d}Z"  # %Y does not pad year 1

    def unix(self) -> float:
        return self.seconds.timestamp() + self.nanos / 1e9

    def isoformat(self) -> str:
        if self.zero:
            return "0001-01-01T00:00:00Z"  # as Alertmanager writes "not set"
        return f"{self.seconds.year:04d}-{self.seconds:%m-%dT%H:%M:%S}.{self.nanos:09d}Z"


@dataclass(frozen=True)
class Alert:
    """One alert of a notification; ``key`` identifies one firing of it."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: Timestamp
    ends_at: Timestamp
    generator_url: str
    fingerprint: str

    @property
    def key(self) -> tuple[str, str]:
        """The idempotency key: the same alert firing once makes one bundle, however often delivered."""
        return self.fingerprint, self.starts_at.stamp()

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "labels": dict(sorted(self.labels.items())),
            "annotations": dict(sorted(self.annotations.items())),
            "startsAt": self.starts_at.isoformat(),
            "endsAt": self.ends_at.isoformat(),
            "generatorURL": self.generator_url,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class AlertNotification:
    """One Alertmanager webhook body (version 4), parsed and validated."""

    receiver: str
    status: Literal["firing", "resolved"]
    alerts: list[Alert]
    group_key: str = ""
    external_url: str = ""
    truncated_alerts: int = 0
    group_labels: dict[str, str] = field(default_factory=dict)
    common_labels: dict[str, str] = field(default_factory=dict)
    common_annotations: dict[str, str] = field(default_factory=dict)


def _require(obj: dict, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise WebhookError(400, f"{where}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):  # JSON true is no count
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise WebhookError(400, f"{where}: field {name!r} must be {expected}, got {type(value).__name__}")
    return value


def _string_map(obj: dict, name: str, where: str, required: bool = True) -> dict[str, str]:
    if not required and name not in obj:
        return {}
    value = _require(obj, name, dict, where)
    bad = [k for k, v in value.items() if not isinstance(v, str)]
    if bad:
        raise WebhookError(400, f"{where}: {name}[{bad[0]!r}] must be a string")
    return dict(value)


def _status(value: str, where: str) -> Literal["firing", "resolved"]:
    if value not in ("firing", "resolved"):
        raise WebhookError(400, f"{where}: status must be 'firing' or 'resolved', got {value!r}")
    return value  # type: ignore[return-value]


def parse_alert(raw: Any, where: str) -> Alert:
    """One alert object of the payload (also how the intake journal reads its entries back)."""
    if not isinstance(raw, dict):
        raise WebhookError(400, f"{where} must be an object")
    fingerprint = _require(raw, "fingerprint", str, where)
    if not FINGERPRINT_RE.fullmatch(fingerprint):
        raise WebhookError(400, f"{where}: fingerprint {fingerprint!r} must be 1-128 of [A-Za-z0-9_-]")
    return Alert(
        status=_status(_require(raw, "status", str, where), where),
        labels=_string_map(raw, "labels", where),
        annotations=_string_map(raw, "annotations", where, required=False),
        starts_at=Timestamp.parse(_require(raw, "startsAt", str, where), f"{where}.startsAt"),
        ends_at=Timestamp.parse(raw.get("endsAt") or "0001-01-01T00:00:00Z", f"{where}.endsAt"),
        generator_url=_require({"generatorURL": "", **raw}, "generatorURL", str, where),
        fingerprint=fingerprint,
    )


def parse_notification(body: bytes, max_alerts: int | None = None) -> AlertNotification:
    """Parse and validate an Alertmanager webhook body; raises :class:`WebhookError` (400, or
    413 for more than ``max_alerts`` alerts)."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise WebhookError(400, "body is not valid JSON: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, bad UTF-8, an integer of thousands of digits
        raise WebhookError(400, f"body is not valid JSON: {error}") from None
    try:
        # JSON may escape lone surrogates ("\ud800"): valid JSON, no valid text, and a label
        # value that cannot be written into the bundle. Refused here, not after the 202.
        json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise WebhookError(400, "body contains a lone surrogate (\\ud800-\\udfff) in a string: not valid text") from None
    if not isinstance(payload, dict):
        raise WebhookError(400, f"body must be a JSON object, got {type(payload).__name__}")
    version = _require(payload, "version", str, "payload")
    if version != PAYLOAD_VERSION:
        raise WebhookError(400, f"payload: unsupported webhook version {version!r} (expected {PAYLOAD_VERSION!r})")
    raw_alerts = _require(payload, "alerts", list, "payload")
    if max_alerts is not None and len(raw_alerts) > max_alerts:
        raise WebhookError(
            413,
            f"{len(raw_alerts)} alerts in one notification, over the limit of {max_alerts}: set max_alerts "
            f"(<= {max_alerts}) in the Alertmanager receiver's webhook_config, or group alerts by fewer labels",
        )
    truncated = _require({"truncatedAlerts": 0, **payload}, "truncatedAlerts", int, "payload")
    if not 0 <= truncated < 2**63:
        raise WebhookError(400, f"payload: truncatedAlerts must be a count, got {truncated}")
    return AlertNotification(
        receiver=_require(payload, "receiver", str, "payload"),
        status=_status(_require(payload, "status", str, "payload"), "payload"),
        alerts=[parse_alert(raw, f"alerts[{i}]") for i, raw in enumerate(raw_alerts)],
        group_key=_require({"groupKey": "", **payload}, "groupKey", str, "payload"),
        external_url=_require({"externalURL": "", **payload}, "externalURL", str, "payload"),
        truncated_alerts=truncated,
        group_labels=_string_map(payload, "groupLabels", "payload", required=False),
        common_labels=_string_map(payload, "commonLabels", "payload", required=False),
        common_annotations=_string_map(payload, "commonAnnotations", "payload", required=False),
    )


# --- credentials and size -------------------------------------------------------------------


def check_size(headers: dict[str, str], body: bytes, max_bytes: int) -> None:
    declared = headers.get("content-length", "")
    if (declared.isdigit() and int(declared) > max_bytes) or len(body) > max_bytes:
        raise WebhookError(413, f"body larger than the limit of {max_bytes} bytes")


def auth_configured(token: str | None, basic: tuple[str, str] | None) -> bool:
    return bool(token) or basic is not None


def check_credentials(headers: dict[str, str], token: str | None, basic: tuple[str, str] | None) -> None:
    """Accept a bearer token or basic auth, whichever is configured (both: either one).

    Nothing configured means the endpoint is open (the embedded default on loopback).
    Comparisons are constant-time so the token cannot be guessed byte by byte.
    """
    if not auth_configured(token, basic):
        return
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    value = value.strip()
    if token and scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), token.encode()):
        return
    if basic is not None and scheme.lower() == "basic":
        expected = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        if hmac.compare_digest(value.encode(), expected.encode()):
            return
    raise WebhookError(401, "missing or wrong credentials" if scheme else "credentials required")


def authorization_header(token: str | None, basic: tuple[str, str] | None) -> dict[str, str]:
    """The header this exporter sends to a peer replica (replicas share one credential)."""
    if token:
        return {"Authorization": f"Bearer {token}"}
    if basic is not None:
        return {"Authorization": "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()}
    return {}


# --- which alerts are ours, and replicas ----------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """Which alerts of a notification this replica builds, forwards to a peer, or ignores."""

    local: list[Alert]  # alerts this replica handles
    forward: dict[str, str]  # instance -> peer base URL to forward the whole body to
    ignored: list[tuple[Alert, str]]  # alert, reason


def route(
    notification: AlertNotification,
    model: str,
    instance: str | None = None,
    peers: dict[str, str] | None = None,
    forwarded: bool = False,
) -> Routing:
    """Decide, per alert, whether this replica handles it, forwards it or ignores it.

    The alert's ``instance`` label names the replica whose flight recorder holds the frames
    (it only matters once ``peers`` are configured: a lone replica handles every alert).
    Forwarding goes only to peers on the allow-list, and never twice (``forwarded``), so the
    webhook is no open relay and two replicas cannot bounce a notification between them.
    """
    peers = peers or {}
    local: list[Alert] = []
    forward: dict[str, str] = {}
    ignored: list[tuple[Alert, str]] = []
    for alert in notification.alerts:
        alert_model = alert.labels.get("model")
        if alert_model != model:
            ignored.append((alert, f"label model={alert_model!r} is not this exporter's model {model!r}"))
            continue
        target = alert.labels.get("instance")
        # No peers configured: a single replica, every alert of the model is ours.
        if not peers or target is None or target == instance:
            local.append(alert)
        elif target in peers and not forwarded:
            forward[target] = peers[target]
        elif forwarded:
            ignored.append((alert, f"forwarded alert names instance {target!r}, not this replica {instance!r}"))
        else:
            ignored.append((alert, f"instance {target!r} is neither this replica {instance!r} nor an allowed peer"))
    return Routing(local, forward, ignored)


def forward(body: bytes, base_url: str, auth: dict[str, str], timeout: float = 5.0) -> None:
    """POST the raw webhook body to a peer replica; raises WebhookError(502) when it fails,
    so Alertmanager retries (delivery is idempotent on every replica)."""
    request = urllib.request.Request(
        base_url.rstrip("/") + "/api/v1/alerts",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", FORWARDED_HEADER: "1", **auth},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as error:
        raise WebhookError(502, f"peer {base_url} answered {error.code}: {error.read()[:200]!r}") from None
    except OSError as error:
        raise WebhookError(502, f"peer {base_url} unreachable: {error}") from None


def make_alert_payload(
    model: str,
    labels: dict[str, str] | None = None,
    status: Literal["firing", "resolved"] = "firing",
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    fingerprint: str | None = None,
    annotations: dict[str, str] | None = None,
) -> bytes:
    """An Alertmanager-shaped webhook body for one alert, so the demo's own drift alarm (no
    Alertmanager running) goes through exactly the code path a real page takes."""
    import hashlib

    all_labels = {"alertname": "VisionModelDrift", "model": model, **(labels or {})}
    # Alertmanager hashes the sorted label set; any stable hash of it keeps re-fires together.
    fingerprint = fingerprint or hashlib.sha256(json.dumps(all_labels, sort_keys=True).encode()).hexdigest()[:16]
    starts = (starts_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    ends = f"{ends_at.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ}" if ends_at else "0001-01-01T00:00:00Z"
    alert = {
        "status": status,
        "labels": all_labels,
        "annotations": annotations or {},
        "startsAt": f"{starts:%Y-%m-%dT%H:%M:%S.%fZ}",
        "endsAt": ends,
        "generatorURL": "",
        "fingerprint": fingerprint,
    }
    payload = {
        "version": PAYLOAD_VERSION,
        "receiver": "virk-exporter",
        "status": status,
        "groupKey": "{}:{alertname=\"%s\"}" % all_labels["alertname"],
        "externalURL": "",
        "truncatedAlerts": 0,
        "groupLabels": {"alertname": all_labels["alertname"]},
        "commonLabels": all_labels,
        "commonAnnotations": annotations or {},
        "alerts": [alert],
    }
    return json.dumps(payload).encode()
