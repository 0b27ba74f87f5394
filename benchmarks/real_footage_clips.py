"""The clip part of benchmarks/real_footage.py: real footage end to end through the Exporter.

Each clip of ``material.CLIPS`` feeds several *sources* of one Exporter in lockstep (one
``@exporter.monitor``-decorated ``predict`` call of ``batch`` frames per source and step): all
sources see the reference period (the clip's first part, ping-pong, until the worker says the
source is watching), then the rest of the clip played back. The ``clean`` source stays clean;
every other source carries one fault from ``onset`` frames after the reference period on.

After every step the harness flushes the Exporter and reads what a user reads: the ``/metrics``
families (``virk_drift_detected`` with its ``fingerprint`` and, when present, ``detector``
labels; ``virk_drift_p_value``) and the worker's ``status`` (for the single test's verdict). A
drift test is counted when a source's latest test changed (statistic / p-value).

Only Exporter keyword arguments given on the command line differ from the defaults.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from benchmarks import material
from benchmarks.material import seed_of
from virk_exporter.fingerprint import CAUSES

# One or two faults per cause, all but two written by other people; severities 2 and 4.
CLIP_FAULTS: tuple[str, ...] = (
    "imagenet-c/defocus_blur",
    "imagenet-c/gaussian_noise",
    "imagenet-c/brightness",
    "imagenet-c/contrast",
    "imagenet-c/fog",
    "imagenet-c/jpeg_compression",
    "imagenet-c/pixelate",
    "albumentations/rain",
    "albumentations/sun_flare",
    "codec/h264",
    "camera/colour_cast",
    "camera/translation",
    "camera/rotation",
    "camera/occlusion",
    "camera/frozen",
)
# On 1280x720 a frame costs the worker ~0.1 s: there, a core of one fault per main cause.
CLIP_CORE: tuple[str, ...] = (
    "imagenet-c/defocus_blur",
    "imagenet-c/gaussian_noise",
    "imagenet-c/brightness",
    "imagenet-c/fog",
    "imagenet-c/jpeg_compression",
    "camera/translation",
    "camera/occlusion",
    "camera/frozen",
)
REENCODE = "clip/real_reencode"  # carphone_distorted.mp4 from the onset: a real lossy re-encode
SCENE_CUT = "clip/scene_cut"  # the clip's second shot from the onset: content, never a capture cause
QUEUE_SHARE = 0.25  # flush before the unflushed frames exceed this share of queue_bytes
CALL_SHARE = 0.125  # one call's frames stay below this share (the transport refuses > 1/4)


@dataclass(frozen=True)
class ClipPlan:
    clean_frames: int = 640  # clean playback after the reference period (the clean source)
    onset: int = 96  # clean frames after the reference period before a fault starts
    faulty: int = 128  # frames after the onset
    batch: int = 8  # frames per predict call
    severities: tuple[int, ...] = (2, 4)
    large_severities: tuple[int, ...] = (4,)  # on clips larger than 224x168 (the budget)
    huge_faults: tuple[str, ...] | None = CLIP_CORE  # on clips larger than 640x480 (None: all)
    clips: tuple[str, ...] = tuple(material.CLIPS)
    fault_clips: tuple[str, ...] = tuple(material.CLIPS)  # clips that also get the faults
    sources_per_worker: int = 16  # sources per Exporter (at 1280x720: a quarter of this)
    max_reference_frames: int = 5_000  # give up when a source is still learning after this many
    fps: float = 0.0  # pace the feed at this many frames per second per source (0: flat out)
    reference_part: bool = False  # learn from every frame of the clip's reference part (overrides reference_* args)
    stride: int = 1  # play every stride-th frame of each clip (samples spaced in time)

    @classmethod
    def quick(cls) -> "ClipPlan":
        return cls(clean_frames=320, severities=(4,), faulty=96, fault_clips=("carphone",))

    def for_size(self, size: tuple[int, int], faults: list[material.Fault], explicit: bool) -> tuple[tuple[int, ...], list[material.Fault]]:
        """Severities and faults for a clip of ``size`` (explicitly chosen faults are all kept)."""
        pixels = size[0] * size[1]
        severities = self.severities if pixels <= 224 * 168 else self.large_severities
        if pixels > 640 * 480 and self.huge_faults is not None and not explicit:
            faults = [f for f in faults if f.name in self.huge_faults]
        return severities, faults


@dataclass
class Run:
    """One source of one clip: clean, or a fault from the onset."""

    clip: str
    source: str
    fault: material.Fault | None
    severity: int
    onset: int | None  # frames after the reference period; None for the clean run
    length: int  # frames after the reference period
    tests: list[dict[str, Any]] = field(default_factory=list)
    frames: Callable[[int, int], np.ndarray] | None = None  # (start, stop) after the reference period
    cut: bool = False  # from the onset another scene (content), not a fault


def _runs(clip: str, stream: material.ClipStream, faults: list[material.Fault], plan: ClipPlan, set_name: str, explicit: bool) -> list[Run]:
    size = stream.rest.shape[1:3]
    severities, faults = plan.for_size(size, faults, explicit)
    runs = [Run(clip, "clean", None, 0, None, plan.clean_frames)]
    runs[0].frames = _player(stream.rest, stream.rest, stream, 0)
    if stream.next_scene is not None:
        cut = Run(clip, SCENE_CUT, None, 0, plan.onset, plan.onset + plan.faulty, cut=True)
        cut.frames = _cut_player(stream, stream.next_scene, plan.onset)
        runs.append(cut)
    if clip not in plan.fault_clips:
        return runs
    for fault in faults:
        if not fault.fits(size) or (fault.slow and size[0] * size[1] > 224 * 168):
            continue  # per-image Python loops: minutes per clip at this size
        for severity in [s for s in severities if s in fault.severities] or list(fault.severities[:1]):
            run = Run(clip, f"{fault.name}@{severity}", fault, severity, plan.onset, plan.onset + plan.faulty)
            seed = seed_of(set_name, clip, fault.name, severity)
            run.frames = _faulty_player(stream, fault, severity, seed, plan)
            runs.append(run)
    if stream.distorted_rest is not None:
        run = Run(clip, REENCODE, None, 0, plan.onset, plan.onset + plan.faulty)
        run.frames = _player(stream.rest, stream.distorted_rest, stream, plan.onset)
        runs.append(run)
    return runs


def _player(clean: np.ndarray, after: np.ndarray, stream: material.ClipStream, onset: int) -> Callable[[int, int], np.ndarray]:
    """Frames [start, stop) after the reference period: ``clean`` before ``onset``, ``after`` from it."""

    def frames(start: int, stop: int) -> np.ndarray:
        index = stream.playback(stop - start, start)
        positions = np.arange(start, stop)
        return np.where((positions >= onset)[:, None, None, None], after[index], clean[index])

    return frames


def _cut_player(stream: material.ClipStream, scene: np.ndarray, onset: int) -> Callable[[int, int], np.ndarray]:
    """The clip's playback before ``onset``, then ``scene`` played from its start (ping-pong)."""

    def frames(start: int, stop: int) -> np.ndarray:
        before = stream.rest[stream.playback(stop - start, start)]
        after = scene[material.ping_pong(len(scene), stop - start, start - onset)]
        return np.where((np.arange(start, stop) >= onset)[:, None, None, None], after, before)

    return frames


def _faulty_player(stream: material.ClipStream, fault: material.Fault, severity: int, seed: int, plan: ClipPlan) -> Callable[[int, int], np.ndarray]:
    """The fault is applied once to the whole faulty stretch (so per-window draws, e.g. an
    occluder's place, stay put and per-frame draws, e.g. noise, differ per frame)."""
    cache: dict[str, np.ndarray] = {}

    def frames(start: int, stop: int) -> np.ndarray:
        if "faulty" not in cache:
            index = stream.playback(plan.faulty, plan.onset)
            cache["faulty"] = fault(stream.rest[index], severity, seed)
        index = stream.playback(stop - start, start)
        out = stream.rest[index].copy()
        positions = np.arange(start, stop)
        late = positions >= plan.onset
        if late.any():
            out[late] = cache["faulty"][positions[late] - plan.onset]
        return out

    return frames


# ---------------------------------------------------------------------------- reading the exporter


def read_metrics(exporter: Any) -> dict[str, dict[str, Any]]:
    """Per source: the ``virk_drift_detected`` series (labels and value) and the p-value."""
    out: dict[str, dict[str, Any]] = {}
    for family in exporter.collect():
        if family.name == "virk_drift_detected":
            for sample in family.samples:
                labels = dict(sample.labels)
                entry = out.setdefault(labels.get("source", ""), {"detected": [], "p_value": None})
                entry["detected"].append({k: v for k, v in labels.items() if k not in ("model", "source")} | {"value": sample.value})
        elif family.name == "virk_drift_p_value":
            for sample in family.samples:
                labels = dict(sample.labels)
                out.setdefault(labels.get("source", ""), {"detected": [], "p_value": None})["p_value"] = sample.value
        elif family.name == "virk_frames_dropped":
            out.setdefault("", {"detected": [], "p_value": None}).setdefault("dropped", 0.0)
            out[""]["dropped"] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return out


def read_status(exporter: Any) -> dict[str, Any]:
    try:
        status = exporter.request("status")
    except Exception:  # noqa: BLE001 - an Exporter without the command: metrics only
        return {}
    return status.get("sources", {}) if isinstance(status, dict) else {}


def _observe(runs: list[Run], exporter: Any, position: int, last: dict[str, Any]) -> None:
    """Record a test for every source whose latest test changed since the last look."""
    metrics, status = read_metrics(exporter), read_status(exporter)
    for run in runs:
        m = metrics.get(run.source, {"detected": [], "p_value": None})
        s = status.get(run.source, {})
        key = (s.get("statistic"), s.get("p_value"), m["p_value"])
        if key == last.get(run.source) or (m["p_value"] is None and s.get("statistic") is None):
            continue
        last[run.source] = key
        firing = [d for d in m["detected"] if d["value"] == 1.0]
        capture = s.get("capture") or {}
        run.tests.append(
            {
                "position": position,  # frames of this source after the reference period, so far
                "p_value": m["p_value"] if m["p_value"] is not None else s.get("p_value"),
                "drift": s.get("drift"),  # the embedding test's verdict, before hysteresis
                "capture_drift": capture.get("drift"),  # the capture-fault test's verdict
                "capture_p_value": capture.get("p_value"),
                "capture_statistic": capture.get("statistic"),
                "capture_recent": capture.get("recent_drift"),
                "detected": bool(firing),
                "fingerprint": firing[0].get("fingerprint") if firing else None,
                "detector": firing[0].get("detector") if firing else None,
                "series": m["detected"],
                "top_cause": s.get("top_cause"),
                "causes": s.get("causes"),
            }
        )


def _watching(exporter: Any, sources: list[str]) -> set[str]:
    """Sources past their reference period: the worker's status says so, or (an Exporter
    without a status phase) a drift test has been published for them."""
    status = read_status(exporter)
    if status and all("phase" in status.get(s, {"phase": None}) for s in sources):
        return {s for s in sources if status.get(s, {}).get("phase") == "watching"}
    metrics = read_metrics(exporter)
    return {s for s in sources if metrics.get(s, {}).get("p_value") is not None}


class _Feeder:
    """One Exporter, a trivial monitored predict, and flushes that keep its queue from dropping."""

    def __init__(self, clip: str, exporter_args: dict[str, Any], store: str) -> None:
        from virk_exporter import Exporter

        self.exporter = Exporter(model=f"real-footage-{clip}", store=store, **exporter_args)
        if not self.exporter.wait_ready():
            raise RuntimeError("the monitoring worker did not start")
        self.limit = QUEUE_SHARE * self.exporter.config.queue_bytes
        self.unflushed = 0

        @self.exporter.monitor(source=lambda frames, camera: camera)
        def predict(frames: np.ndarray, camera: str) -> np.ndarray:
            return np.zeros((len(frames), 10), np.float32)

        self.predict = predict

    def feed(self, frames: np.ndarray, source: str) -> None:
        per_call = max(1, int(CALL_SHARE * self.exporter.config.queue_bytes // frames[0].nbytes))
        for i in range(0, len(frames), per_call):
            part = frames[i : i + per_call]
            if self.unflushed + part.nbytes > self.limit:
                self.flush()
            self.predict(part, camera=source)
            self.unflushed += part.nbytes

    def flush(self) -> None:
        """Wait for the worker; a dropped frame would make every count below wrong, so stop."""
        self.exporter.flush(timeout=300.0)
        self.unflushed = 0
        dropped = read_metrics(self.exporter).get("", {}).get("dropped", 0.0)
        if dropped:
            raise RuntimeError(f"the Exporter dropped {dropped:.0f} frames (virk_frames_dropped); the evaluation needs every frame")


def run_group(stream: material.ClipStream, runs: list[Run], plan: ClipPlan, exporter_args: dict[str, Any]) -> dict[str, Any]:
    sources = [r.source for r in runs]
    with tempfile.TemporaryDirectory(prefix="virk-real-footage-") as store:
        feeder = _Feeder(stream.name, exporter_args, store)
        try:
            started = time.perf_counter()
            fed, watching = 0, set()
            while len(watching) < len(runs):
                if fed >= plan.max_reference_frames:
                    raise RuntimeError(f"{sorted(set(sources) - watching)} still learning after {fed} reference frames")
                frames = stream.reference[material.ping_pong(len(stream.reference), plan.batch, fed)]
                for source in sources:
                    feeder.feed(frames, source)
                fed += plan.batch
                _pace(plan, started, fed)
                feeder.flush()
                watching = _watching(feeder.exporter, sources)
            reference_s = time.perf_counter() - started
            last: dict[str, Any] = {}
            _observe(runs, feeder.exporter, 0, last)  # tests published during the reference period
            for run in runs:
                run.tests.clear()
            length = max(r.length for r in runs)
            for start in range(0, length, plan.batch):
                stop = min(start + plan.batch, length)
                for run in runs:
                    if start < run.length:
                        feeder.feed(run.frames(start, min(stop, run.length)), run.source)
                _pace(plan, started, fed + stop)
                feeder.flush()
                _observe(runs, feeder.exporter, stop, last)
        finally:
            feeder.exporter.close()
    return {"reference_frames": fed, "reference_s": round(reference_s, 1), "seconds": round(time.perf_counter() - started, 1)}


def _pace(plan: ClipPlan, started: float, frames: int) -> None:
    if plan.fps > 0:
        delay = started + frames / plan.fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


# ---------------------------------------------------------------------------- scoring


def score_run(run: Run) -> dict[str, Any]:
    """What a user would conclude from the metrics of one source."""
    out: dict[str, Any] = {"clip": run.clip, "source": run.source, "severity": run.severity, "tests": len(run.tests)}
    if run.onset is None:  # clean
        flagged = [bool(t["drift"]) or bool(t.get("capture_drift")) for t in run.tests if t["drift"] is not None]
        out.update(
            kind="clean",
            flagged=int(sum(flagged)),
            flagged_embedding=int(sum(bool(t["drift"]) for t in run.tests)),
            flagged_capture=int(sum(bool(t.get("capture_drift")) for t in run.tests)),
            flagged_recent=int(sum(bool(t.get("capture_recent")) for t in run.tests)),  # the newest samples alone: not an alarm by itself
            flag_rate=float(np.mean(flagged)) if flagged else float("nan"),
            ever_detected=any(t["detected"] for t in run.tests),
            fingerprints=sorted({t["fingerprint"] for t in run.tests if t["fingerprint"]}),
        )
        return out
    if run.cut:
        after = [t for t in run.tests if t["position"] > run.onset]
        labels = [t["fingerprint"] for t in after if t["detected"]]
        out.update(
            kind="scene",
            tests_after_onset=len(after),
            detected_before_onset=any(t["detected"] for t in run.tests if t["position"] <= run.onset),
            alarms_after_onset=len(labels),
            fingerprints=sorted(set(labels)),
            capture_cause_named=any(label in CAUSES for label in labels),  # the failure: a new scene paged as a capture fault
            capture_flagged=sum(bool(t.get("capture_drift")) for t in after),
        )
        return out
    cause = run.fault.cause if run.fault else "compression"
    right = run.fault.right if run.fault else (lambda top: top == "compression")
    before = [t for t in run.tests if t["position"] <= run.onset]
    after = [t for t in run.tests if t["position"] > run.onset]
    first = next((i for i, t in enumerate(after) if t["detected"]), None)
    # The cause is judged where the fault has settled: the last alarm after the onset (the first
    # post-onset windows still hold clean frames, and an alarm already on at the onset names
    # whatever the clean footage looked like).
    label = next((t["fingerprint"] for t in reversed(after) if t["detected"]), None)
    out.update(
        kind="fault",
        fault=run.fault.name if run.fault else REENCODE,
        family=run.fault.family if run.fault else "clip",
        cause=cause,
        band="1-2" if 0 < run.severity <= 2 else "3-5",
        detected_before_onset=any(t["detected"] for t in before),
        flagged_before_onset=sum(bool(t["drift"]) or bool(t.get("capture_drift")) for t in before),
        tests_after_onset=len(after),
        detected=first is not None,
        tests_to_detect=None if first is None else first + 1,
        fingerprint_first=None if first is None else after[first]["fingerprint"],
        fingerprint=label,
        cause_right=bool(label is not None and right(label)),
        diagnosis_named_it=any(t["top_cause"] is not None and right(t["top_cause"]) for t in after),
        p_values=[t["p_value"] for t in after],
    )
    return out


def run_clips(
    set_name: str, faults: list[material.Fault], plan: ClipPlan, exporter_args: dict[str, Any], progress: Callable[[str], None], explicit: bool = False
) -> dict[str, Any]:
    groups, scored = [], []
    for clip in plan.clips:
        stream = material.clip_stream(clip, stride=plan.stride)
        runs = _runs(clip, stream, faults, plan, set_name, explicit)
        h, w = stream.rest.shape[1:3]
        per_worker = max(1, plan.sources_per_worker // 4) if h * w > 640 * 480 else plan.sources_per_worker
        for i in range(0, len(runs), per_worker):
            group = runs[i : i + per_worker]
            progress(f"{clip} ({w}x{h}): sources {i + 1}-{i + len(group)} of {len(runs)}")
            args = dict(exporter_args)
            if plan.reference_part:  # the whole first part, every frame: the clip's stand-in for a long period
                args.update(reference_period_s=0, reference_frames=len(stream.reference))
            info = run_group(stream, group, plan, args)
            groups.append(dict(info, clip=clip, sources=[r.source for r in group]))
            scored += [score_run(r) | {"raw_tests": r.tests} for r in group]
    return {"plan": asdict(plan), "groups": groups, "runs": scored, "summary": summarize_clips(scored)}


def summarize_clips(runs: list[dict[str, Any]]) -> dict[str, Any]:
    clean = [r for r in runs if r["kind"] == "clean"]
    faults = [r for r in runs if r["kind"] == "fault"]
    cuts = [r for r in runs if r["kind"] == "scene"]
    tests = sum(r["tests"] for r in clean)
    flagged = sum(r["flagged"] for r in clean)

    def share(rows: list[dict[str, Any]], key: str) -> tuple[float, int]:
        return (float(np.mean([bool(r[key]) for r in rows])) if rows else float("nan")), len(rows)

    by_band = {b: [r for r in faults if r["band"] == b] for b in ("1-2", "3-5")}
    detected = [r for r in faults if r["detected"]]
    return {
        "clean_tests": tests,
        "clean_flagged": flagged,
        "clean_flag_rate": flagged / tests if tests else float("nan"),
        "clean_recent_flagged": {r["clip"]: r.get("flagged_recent", 0) for r in clean},
        "clean_ever_detected": {r["clip"]: r["ever_detected"] for r in clean},
        "detected": {b: share(rs, "detected") for b, rs in by_band.items()},
        "within_two_tests": {b: share([dict(r, fast=r["detected"] and r["tests_to_detect"] <= 2) for r in rs], "fast") for b, rs in by_band.items()},
        "cause_right_when_detected": {b: share([r for r in rs if r["detected"]], "cause_right") for b, rs in by_band.items()},
        "alarm_before_onset": sum(1 for r in faults if r["detected_before_onset"]),
        "faults": len(faults),
        "missed_but_diagnosis_named_it": sum(1 for r in faults if not r["detected"] and r["diagnosis_named_it"]),
        "missed": sum(1 for r in faults if not r["detected"]),
        "median_tests_to_detect": float(np.median([r["tests_to_detect"] for r in detected])) if detected else float("nan"),
        "scene_cuts": len(cuts),
        "scene_cuts_named_a_capture_cause": sum(r["capture_cause_named"] for r in cuts),
        "scene_cut_labels": {r["clip"]: r["fingerprints"] for r in cuts},
    }


def print_clips(result: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    runs = result["runs"]
    table = Table(title=f"clips ({title}): clean footage after the reference period")
    for c in ("clip", "drift tests", "flagged (either test)", "embedding", "capture", "virk_drift_detected ever 1", "fingerprints"):
        table.add_column(c)
    for r in runs:
        if r["kind"] == "clean":
            table.add_row(
                r["clip"], str(r["tests"]), f"{r['flagged']} ({100 * r['flag_rate']:.0f}%)", str(r["flagged_embedding"]), str(r["flagged_capture"]),
                "yes" if r["ever_detected"] else "no", ", ".join(r["fingerprints"]),
            )
    console.print(table)
    table = Table(title=f"clips ({title}): faults from the onset (tests counted after the onset)")
    for c in ("clip", "fault", "sev", "detected", "tests to detect", "fingerprint (settled)", "right", "alarm before onset", "diagnosis named it"):
        table.add_column(c)
    for r in runs:
        if r["kind"] == "fault":
            table.add_row(
                r["clip"],
                r["fault"],
                str(r["severity"] or "-"),
                "yes" if r["detected"] else "no",
                str(r["tests_to_detect"] or "-"),
                r["fingerprint"] or "-",
                "yes" if r["cause_right"] else "no",
                "yes" if r["detected_before_onset"] else "",
                "yes" if r["diagnosis_named_it"] else "no",
            )
    console.print(table)
    table = Table(title=f"clips ({title}): a cut to another scene at the onset (content: never a capture cause)")
    for c in ("clip", "tests after the cut", "alarms", "capture test flagged", "fingerprints", "capture cause named"):
        table.add_column(c)
    for r in runs:
        if r["kind"] == "scene":
            table.add_row(
                r["clip"], str(r["tests_after_onset"]), str(r["alarms_after_onset"]), str(r["capture_flagged"]),
                ", ".join(r["fingerprints"]) or "-", "YES" if r["capture_cause_named"] else "no",
            )
    console.print(table)
    s = result["summary"]

    def pct(v: tuple[float, int]) -> str:
        return "-" if not v[1] else f"{100 * v[0]:.0f}% of {v[1]}"

    console.print(
        f"[bold]clips ({title})[/bold]: clean single tests flagged {s['clean_flagged']} of {s['clean_tests']}; "
        f"virk_drift_detected ever 1 on clean: {s['clean_ever_detected']}; "
        f"clean tests whose newest samples alone flagged: {s.get('clean_recent_flagged')}\n"
        f"faults detected: sev 1-2 {pct(s['detected']['1-2'])}, sev 3-5 {pct(s['detected']['3-5'])}; "
        f"within two tests: 1-2 {pct(s['within_two_tests']['1-2'])}, 3-5 {pct(s['within_two_tests']['3-5'])}; "
        f"cause right when detected: 1-2 {pct(s['cause_right_when_detected']['1-2'])}, 3-5 {pct(s['cause_right_when_detected']['3-5'])}; "
        f"missed {s['missed']}, of which the diagnosis named the cause in {s['missed_but_diagnosis_named_it']}; "
        f"already in alarm before the onset: {s['alarm_before_onset']} of {s['faults']}; "
        f"scene cuts named a capture cause: {s['scene_cuts_named_a_capture_cause']} of {s['scene_cuts']}"
    )


def run_and_print_clips(
    set_name: str,
    faults: list[material.Fault],
    quick: bool,
    exporter_args: dict[str, Any],
    title: str,
    explicit_faults: bool,
    reference_part: bool = False,
    clips: tuple[str, ...] = tuple(material.CLIPS),
    stride: int = 1,
) -> dict[str, Any]:
    base = ClipPlan.quick() if quick else ClipPlan()
    # the chosen clips; faults on those of them the plan puts faults on (or on all, if none)
    fault_clips = tuple(c for c in base.fault_clips if c in clips) or clips
    plan = dataclasses.replace(base, reference_part=reference_part, clips=clips, fault_clips=fault_clips, stride=stride)
    chosen = faults if explicit_faults else [material.FAULTS[name] for name in CLIP_FAULTS]
    started = time.perf_counter()
    result = run_clips(set_name, chosen, plan, exporter_args, progress=lambda s: print(f"clips: {s}", file=sys.stderr, flush=True), explicit=explicit_faults)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print_clips(result, title)
    return result
