"""`virk-exporter demo`: two cameras, a small torch classifier, and a scripted incident.

Real photographs (shipped in scikit-image / scikit-learn) become two static-camera feeds.
Each frame goes through a monitored ``predict``. The exporter learns each camera's reference
from its first frames; then camera ``cam-1`` goes out of focus and, later, camera ``cam-2``
is bumped (its view shifts). The drift tests detect both, the fingerprinter names the causes,
and each detection is paged through the exporter's own Alertmanager webhook (the same code
path a real Alertmanager uses), which freezes an incident bundle into the store.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import cv2
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from virk_exporter.demo import corruptions

from virk_exporter.demo import photos
from virk_exporter.commands.invocation import invocation
from virk_exporter.caller.exporter import Exporter
from virk_exporter.incidents.webhook import make_alert_payload

MODEL = "demo-classifier"
FRAME_SIZE = (480, 640)
POOL = 40  # distinct frames rendered per camera


@dataclass(frozen=True)
class Camera:
    """One simulated camera of the demo and the incident it is scripted to have."""

    name: str
    photo: str
    incident: str | None  # corruption name (virk_exporter.demo.corruptions)
    severity: int
    starts_at: float  # fraction of the run


CAMERAS = (
    Camera("cam-1", "chelsea", "defocus_blur", 4, 0.4),
    Camera("cam-2", "rocket", "translation", 4, 0.65),
)


class TinyClassifier(torch.nn.Module):
    """A fixed-seed convolutional classifier standing in for the production model.

    Its first layer works at full (64x64) resolution, so like a real model it leans on fine
    texture. Random weights mostly give a constant answer; the seed is one (of the first 40
    tried) whose answers on cam-1 change when that camera blurs, so the late labels show the
    accuracy drop that follows the drift alarm.
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(8)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 5, stride=1, padding=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4),
            torch.nn.Flatten(),
            torch.nn.Linear(512, classes),
        )
        for parameter in self.net.parameters():  # fan-in scaled weights, zero biases
            fan_in = int(np.prod(parameter.shape[1:])) if parameter.ndim > 1 else 0
            parameter.data = torch.randn(parameter.shape, generator=generator) / np.sqrt(fan_in) if fan_in else torch.zeros(parameter.shape)
        self.eval()

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: uint8 (N, 3, 64, 64)."""
        return self.net((frames.float() / 255.0 - 0.5) / 0.25)


@lru_cache(maxsize=1)
def _model() -> TinyClassifier:
    return TinyClassifier()


def predict(frames: np.ndarray) -> torch.Tensor:
    """The demo model's predict: uint8 RGB (N, H, W, 3) → class logits (N, 10).

    Also what `virk-exporter bundle replay BUNDLE --predict virk_exporter.demo:predict` runs.
    """
    small = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in frames])
    return _model()(torch.from_numpy(small).permute(0, 3, 1, 2))


class Feed:
    """A camera: a pool of jittered frames (and their corrupted twins) replayed in random order.

    Rendering camera jitter and corruptions costs more than the monitoring being shown, so
    the pools are rendered once up front; a fresh permutation per cycle keeps consecutive
    frames distinct, as a live feed's are.
    """

    def __init__(self, camera: Camera, seed: int, pool: int = POOL) -> None:
        self.camera = camera
        self.clean = photos.camera_stream(photos.load(camera.photo), pool, size=FRAME_SIZE, seed=seed)
        self.corrupted = corruptions.apply(camera.incident, self.clean, camera.severity, seed=seed) if camera.incident else self.clean
        self._rng = np.random.default_rng(seed)
        self._order: list[int] = []

        # Ground truth for late labels: what the model says about the clean view of each frame.
        self.truth = predict(self.clean).argmax(dim=1).tolist()

    def next(self, incident: bool) -> tuple[np.ndarray, int]:
        """The next frame (batch of one) and its true class."""
        if not self._order:
            self._order = list(self._rng.permutation(len(self.clean)))
        index = self._order.pop()
        frames = self.corrupted if incident else self.clean
        return frames[index : index + 1], self.truth[index]


def _post(url: str, token: str, body: bytes) -> int:
    """POST an alert to the exporter's own webhook over HTTP, as Alertmanager would."""
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def describe(source_status: dict[str, Any]) -> str:
    """One line on a source's diagnosis, e.g. 'blur (defocus): sharpness -68% vs reference, q=1e-9'."""
    evidence = source_status.get("evidence") or []
    cause = source_status.get("fingerprint") or source_status.get("top_cause")
    parts = []
    for item in evidence[:2]:
        parts.append(f"{item['property']} {item['reference']:.3g} → {item['current']:.3g} (q={item['q_value']:.1e})")
    subkind = next((e["subkind"] for e in evidence if e.get("subkind")), "")
    label = f"{cause} ({subkind})" if subkind else str(cause)
    return f"{label}: " + "; ".join(parts) if parts else label


def run(
    duration: float = 36.0,
    fps: float = 12.0,
    host: str = "127.0.0.1",
    port: int = 10098,
    store: str | None = None,
    seed: int = 0,
    console: Console | None = None,
    exporter_options: dict[str, Any] | None = None,
    on_tick: Callable[[Exporter], None] | None = None,
    self_page: bool = True,
    cycle: float = 150.0,
    label_delay: float = 6.0,
) -> dict[str, Any]:
    """Run the demo; returns a summary (detections, bundles).

    ``duration`` 0 runs until Ctrl-C, repeating the scripted incidents every ``cycle`` seconds
    (each camera recovers near the end of a cycle, so alerts fire and resolve). ``self_page``
    posts each detection to the exporter's own webhook; turn it off when a real Alertmanager
    pages the exporter (compose.yaml does). Ground-truth labels reach the exporter
    ``label_delay`` seconds after each frame (``record_labels``), as late labels do: accuracy
    falls after the drift is already on the dashboard. Frames are tagged with the camera's
    ``shift`` (day/night, alternating every 10 s) so slices can be ranked.
    """
    console = console or Console()
    token = os.environ.get("VIRK_WEBHOOK_TOKEN") or secrets.token_urlsafe(16)
    # Every frame counts (reference_period_s=0): a demo cannot wait a reference period of minutes;
    # each run learns afresh (persist_reference=False) so reruns show the same story.
    options = {"reference_period_s": 0, "persist_reference": False, "reference_frames": 64, "window": 64, "test_every": 16, "hysteresis": 2, "webhook_token": token}
    options.update(exporter_options or {})
    exporter = Exporter(model=MODEL, store=store, **options)
    monitored = exporter.monitor(
        source=lambda frames, camera, shift: camera,
        tags=lambda frames, camera, shift: {"shift": shift},
    )(lambda frames, camera, shift: predict(frames))
    summary: dict[str, Any] = {"detections": {}, "bundles": [], "alerts": [], "onsets": {}, "store": exporter.config.store}
    try:
        server = exporter.serve(host=host, port=port)
        console.print(f"[bold]virk-exporter demo[/]: model [cyan]{MODEL}[/], cameras {', '.join(c.name for c in CAMERAS)}; "
                      f"metrics at [link]{server.url}/metrics[/]; bundles in {exporter.config.store}")
        with console.status("rendering the camera feeds and starting the monitoring worker…"):
            feeds = [Feed(camera, seed + 101 * i) for i, camera in enumerate(CAMERAS)]
            exporter.wait_ready()
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        narrator = Narrator(exporter, console, summary, f"http://{local}:{server.port}/api/v1/alerts" if self_page else None, token)
        _stream(exporter, monitored, feeds, duration or None, cycle if not duration else duration, fps, narrator, on_tick, label_delay)
        summary["bundles"] = _wait_for_bundles(exporter, summary, console)
        exporter.flush()
        summary["accuracy"] = {
            sample.labels["source"]: sample.value
            for family in exporter.collect()
            if family.name == "virk_label_accuracy_ratio"
            for sample in family.samples
        }
    finally:
        exporter.close()
    _print_summary(console, summary)
    return summary


def _stream(exporter, monitored, feeds, duration: float | None, period: float, fps: float, narrator: "Narrator", on_tick, label_delay: float) -> None:
    """Feed the cameras at ``fps`` for ``duration`` seconds (None: until Ctrl-C)."""
    started = time.monotonic()
    labels: deque[tuple[float, range, int]] = deque()  # (due, frame ids, true class)
    next_status = started + 1.0
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), TimeElapsedColumn(), console=narrator.console, transient=True) as bar:
        task = bar.add_task("streaming", total=duration)
        tick = 0
        try:
            while duration is None or time.monotonic() - started < duration:
                elapsed = time.monotonic() - started
                phase = (elapsed % period) / period
                shift = "day" if int(elapsed // 10) % 2 == 0 else "night"
                for feed in feeds:
                    # a finite run keeps its incidents to the end; an endless one recovers each cycle
                    incident = feed.camera.starts_at <= phase < (1.0 if duration else 0.9)
                    narrator.incident(feed.camera, incident, elapsed)
                    frame, truth = feed.next(incident)
                    monitored(frame, camera=feed.camera.name, shift=shift)
                    labels.append((elapsed + label_delay, exporter.last_frame_ids(), truth))
                due = []
                while labels and labels[0][0] <= elapsed:
                    _, ids, truth = labels.popleft()
                    due += [(i, truth) for i in ids]
                if due:
                    exporter.record_labels(dict(due))
                if time.monotonic() >= next_status:
                    next_status += 1.0
                    narrator.report(elapsed)
                    if on_tick:
                        on_tick(exporter)
                bar.update(task, completed=elapsed)
                tick += 1
                time.sleep(max(0.0, started + tick / fps - time.monotonic()))
        except KeyboardInterrupt:
            narrator.console.print("stopped")


class Narrator:
    """Prints the demo's timeline and pages each new detection through the exporter's webhook."""

    def __init__(self, exporter: Exporter, console: Console, summary: dict[str, Any], alerts_url: str | None, token: str) -> None:
        self.exporter, self.console, self.summary = exporter, console, summary
        self.alerts_url, self.token = alerts_url, token
        self.seen: dict[str, Any] = {}

    def incident(self, camera: Camera, active: bool, elapsed: float) -> None:
        if self.seen.get(f"{camera.name}:incident", False) == active:
            return
        self.seen[f"{camera.name}:incident"] = active
        if active:
            self.console.print(f"[dim]{elapsed:5.1f}s[/] {camera.name}: [yellow]scripted incident begins[/] ({camera.incident}, severity {camera.severity})")
            self.summary["onsets"][camera.name] = time.time()
        else:
            self.console.print(f"[dim]{elapsed:5.1f}s[/] {camera.name}: [green]scripted incident ends[/]")

    def report(self, elapsed: float) -> None:
        """Print what changed since the last second; page each new detection."""
        status = self.exporter.request("status", timeout=10)
        for name, source in sorted(status.get("sources", {}).items()):
            stamp = f"[dim]{elapsed:5.1f}s[/] {name}:"
            if source["phase"] == "watching" and self.seen.get(f"{name}:phase") != "watching":
                self.console.print(f"{stamp} reference learned from {source['reference_frames']} frames; drift tests start")
            self.seen[f"{name}:phase"] = source["phase"]
            if source["p_value"] is None:
                continue
            state = "detected" if source["detected"] else ("suspect" if source["drift"] else "ok")
            if self.seen.get(f"{name}:state") == state:
                continue
            self.seen[f"{name}:state"] = state
            if state == "ok":
                self.console.print(f"{stamp} [green]no drift[/] (p={source['p_value']:.3f})")
            elif state == "suspect":
                self.console.print(f"{stamp} [yellow]drift in the latest window[/] (p={source['p_value']:.4f}); waiting for the next to confirm")
            else:
                line = describe(source)
                self.console.print(f"{stamp} [bold red]DRIFT[/] p={source['p_value']:.4f} → {line}")
                self.summary["detections"][name] = {"at": time.time(), "cause": source["fingerprint"], "line": line}
                self.page(name, source["fingerprint"], line, stamp)

    def page(self, source: str, cause: str, line: str, stamp: str) -> None:
        if self.alerts_url is None:
            return
        body = make_alert_payload(
            self.exporter.model,
            labels={"source": source, "fingerprint": cause, "severity": "critical", "instance": self.exporter.config.instance},
            annotations={"summary": f"{source} drifted: {line}"},
        )
        _post(self.alerts_url, self.token, body)
        fingerprint = json.loads(body)["alerts"][0]["fingerprint"]
        self.summary["alerts"].append(fingerprint)
        self.console.print(f"{stamp} paged (alert {fingerprint}); building the incident bundle")


def _wait_for_bundles(exporter: Exporter, summary: dict[str, Any], console: Console, timeout: float = 60.0) -> list[str]:
    from virk_exporter.incidents.bundle import alert_prefix
    from virk_exporter.incidents.store import open_store

    store = open_store(exporter.config.store)
    wanted = summary["alerts"]
    deadline = time.monotonic() + timeout
    found: dict[str, str] = {}
    while len(found) < len(wanted) and time.monotonic() < deadline:
        for fingerprint in wanted:
            objects = store.list(alert_prefix(exporter.model, fingerprint) + "/")
            if objects:
                found[fingerprint] = f"{exporter.config.store.rstrip('/')}/{objects[-1].key}"
        time.sleep(0.2)
    if len(found) < len(wanted):
        console.print(f"[red]{len(wanted) - len(found)} bundle(s) did not arrive within {timeout:.0f}s[/]")
    return list(found.values())


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="demo summary")
    for column in ("camera", "scripted incident", "detected", "diagnosis", "accuracy (late labels)"):
        table.add_column(column)
    for camera in CAMERAS:
        detection = summary["detections"].get(camera.name)
        onset = summary["onsets"].get(camera.name)
        delay = f" after {detection['at'] - onset:.1f}s" if detection and onset else ""
        accuracy = summary.get("accuracy", {}).get(camera.name)
        table.add_row(camera.name, f"{camera.incident} (severity {camera.severity})",
                      f"yes{delay}" if detection else "no", detection["line"] if detection else "—",
                      "—" if accuracy is None else f"{accuracy:.0%}")
    console.print(table)
    command = invocation()  # runnable as printed, e.g. .venv/bin/virk-exporter after `make demo`
    for path in summary["bundles"]:
        # soft_wrap: long paths stay on one line, ready to copy
        console.print(f"incident bundle: [bold]{path}[/]", soft_wrap=True)
        console.print(f"  replay:  {command} bundle replay {path} --predict virk_exporter.demo:predict", soft_wrap=True)
        console.print(f"  verify:  {command} bundle verify {path}", soft_wrap=True)
        console.print(f"  report:  {command} bundle show {path}  (report.html inside the zip)", soft_wrap=True)
