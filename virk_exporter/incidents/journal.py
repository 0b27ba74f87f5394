"""The intake journal: alerts accepted by the webhook and not yet turned into stored bundles.

The webhook (caller's process) writes one entry per accepted alert *before* it answers 202;
the incident manager (worker process) deletes the entry once the bundle is stored or spooled
(or the resolution recorded), and books every entry left over when it starts. So an alert
Alertmanager was told is accepted survives a ``kill -9`` of the worker or of the whole
process, and the number of entries is the intake queue the webhook bounds.

One file per (fingerprint, startsAt, status) under ``<spool dir>/journal/<model>/``, written
atomically and fsynced: a crash leaves an entry whole or absent, never half.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from virk_exporter.incidents.bundle import alert_prefix
from virk_exporter.incidents.store import atomic_write, default_spool_dir
from virk_exporter.incidents.webhook import Alert, WebhookError, parse_alert

log = logging.getLogger("virk_exporter.incidents")


_RECENT = 10_000  # keys remembered per process as accepted before


class Journal:
    """Alerts accepted by the webhook but not yet booked, on disk, so a crash loses none."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # What this process journalled before (its entry may be done and gone): a re-delivery
        # of it is a duplicate and must not take room in the queue again.
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model: str, spool_dir: str | Path | None = None) -> "Journal":
        return cls(Path(spool_dir or default_spool_dir()) / "journal" / alert_prefix(model, "_").split("/")[0])

    def _path(self, alert: Alert) -> Path:
        name = hashlib.sha256("\0".join((alert.fingerprint, alert.starts_at.stamp(), alert.status)).encode()).hexdigest()[:32]
        return self.directory / f"{name}.json"

    def add(self, alert: Alert) -> None:
        path = self._path(alert)
        if not path.exists():
            atomic_write(path, json.dumps(alert.to_dict(), sort_keys=True).encode(), fsync=True)
        with self._lock:
            self._recent[path.name] = None
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)

    def accepted_before(self, alert: Alert) -> bool:
        """Pending now, or journalled by this process earlier (then built, or being built)."""
        path = self._path(alert)
        with self._lock:
            if path.name in self._recent:
                return True
        return path.exists()

    def remove(self, alert: Alert) -> None:
        self._path(alert).unlink(missing_ok=True)

    def __len__(self) -> int:
        with os.scandir(self.directory) as entries:
            return sum(1 for e in entries if e.name.endswith(".json"))

    def pending(self) -> list[Alert]:
        """Every entry, oldest file first; an unreadable one is set aside (``.bad``) and logged."""
        alerts = []
        for path in sorted(self.directory.glob("*.json"), key=_mtime):
            try:
                alerts.append(parse_alert(json.loads(path.read_bytes()), str(path)))
            except FileNotFoundError:  # done meanwhile
                continue
            except (OSError, ValueError, WebhookError) as error:
                log.error("intake journal entry %s is unreadable (%s); moved aside as .bad", path, error)
                path.replace(path.with_suffix(".bad"))
        return alerts


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
