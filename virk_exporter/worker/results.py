"""One drift test of one source, in one schema: span events, the timeline, status, bundles and
replay all read and write :class:`DriftResult` (``to_dict``/``from_dict``), never their own keys.

The dict form is the bundle manifest's ``drift_timeline`` entry, so its key names are part of
the bundle format: ``from_dict`` accepts bundles written before a field existed (missing keys
read as unknown) so old bundles still replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _number(value: Any) -> float | None:
    """A float from a bundle value, or None (a bundle may come from anywhere)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


@dataclass(frozen=True)
class DriftResult:
    """The embedding (content) test, the capture-fault test and the verdict they give together."""

    timestamp: float  # unix seconds of the newest sample in the tested window
    source: str
    statistic: float | None  # embedding test: MMD² of the window vs the reference
    p_value: float | None
    threshold: float | None
    drift: bool | None  # the embedding test alone, before hysteresis
    detected: bool  # the exported verdict (either test, after hysteresis)
    capture_statistic: float | None = None
    capture_p_value: float | None = None
    capture_drift: bool | None = None
    detector: str = "none"  # "embedding", "properties", "both" or "none"
    fingerprint: str = "none"  # the cause named by virk_drift_detected ("content": the scene changed)
    top_cause: str | None = None  # the capture diagnosis's top cause, detected or not
    onset: bool = False  # detected now and not at the source's previous test
    slices_top: tuple[str, ...] = ()  # the most drifted tagged slices, while detected
    capture_recent: bool | None = None  # the capture test's newest samples alone flagged (not an alarm by itself)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``drift_timeline`` entry (and the status of a source)."""
        return {
            "timestamp": self.timestamp,
            "source": self.source,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "threshold": self.threshold,
            "drift": self.drift,
            "detected": self.detected,
            "capture": {"statistic": self.capture_statistic, "p_value": self.capture_p_value, "drift": self.capture_drift, "recent_drift": self.capture_recent},
            "detector": self.detector,
            "fingerprint": self.fingerprint,
            "top_cause": self.top_cause,
            "onset": self.onset,
            "slices_top": list(self.slices_top),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftResult:
        """Read a timeline entry, tolerating older bundles (no capture, detector, onset, ...)
        and hostile ones (wrong types read as unknown)."""
        capture = data.get("capture") if isinstance(data.get("capture"), dict) else {}
        slices = data.get("slices_top")
        return cls(
            timestamp=_number(data.get("timestamp")) or 0.0,
            source=str(data.get("source", "")),
            statistic=_number(data.get("statistic")),
            p_value=_number(data.get("p_value")),
            threshold=_number(data.get("threshold")),
            drift=_flag(data.get("drift")),
            detected=bool(data.get("detected")),
            capture_statistic=_number(capture.get("statistic")),
            capture_p_value=_number(capture.get("p_value")),
            capture_drift=_flag(capture.get("drift")),
            capture_recent=_flag(capture.get("recent_drift")),
            detector=str(data.get("detector") or "none"),
            fingerprint=str(data.get("fingerprint") or "none"),
            top_cause=None if data.get("top_cause") is None else str(data["top_cause"]),
            onset=bool(data.get("onset")),
            slices_top=tuple(str(s) for s in slices) if isinstance(slices, list) else (),
        )

    def span_attributes(self) -> dict[str, Any]:
        """The ``virk.drift_test`` / ``virk.drift_detected`` span event's attributes (OpenTelemetry
        attribute values cannot be None: unknown values are left out)."""
        attributes = {
            "virk.source": self.source,
            "virk.drift.statistic": self.statistic,
            "virk.drift.p_value": self.p_value,
            "virk.drift.threshold": self.threshold,
            "virk.drift.drift": self.drift,
            "virk.capture.statistic": self.capture_statistic,
            "virk.capture.p_value": self.capture_p_value,
            "virk.capture.drift": self.capture_drift,
            "virk.drift.detected": self.detected,
            "virk.drift.detector": self.detector,
            "virk.fingerprint.top": self.fingerprint,
        }
        if self.slices_top:
            attributes["virk.slices.top"] = ",".join(self.slices_top)
        return {k: v for k, v in attributes.items() if v is not None}
