"""Capture-fault detection on still-camera streams with a reference of the default size.

The clips cannot show the default reference (512 samples over 15 minutes: 32 independent
blocks); their first halves hold 4-8. Here a fixed camera looks at each photograph of a set
(``material.camera_frames``: sub-pixel vibration, flicker, sensor noise): ``--reference`` clean
samples are its reference period, the capture test (``CaptureDetector`` at the default window
and p_val) is calibrated on them, and each fault starts at an onset. Tests run as the exporter
schedules them (every ``test_every`` samples on the latest ``window``, hysteresis 2, a test whose
newest ``test_every`` samples alone flag counting among the consecutive ones, as in the worker):

* within two tests: the alarm is on by the second test after the onset (the one half a window
  after it, or its newest samples, and the first fully faulty one flag);
* detected: the alarm is on within the first five tests after the onset;
* named right: the cause of the first fully faulty test that flagged (accepted alternatives
  count);
* clean: the single-test false-alarm rate on fresh clean samples of the same camera;
* content: from the onset the camera shows the set's next photograph (a scene cut, a re-aimed
  camera): a capture alarm there (on within the first five tests) names a
  capture cause for content, the failure counted;
* an object enters and stays (``material.object_enters``: a part of the next photograph in a
  soft upright ellipse of 3, 6 or 10 % of the view, as lit as the region or darker): content
  too, a capture alarm there counted the same way.

Only the capture test runs (the embedding test needs the exporter's embedder; it can only add
alarms). The vibration is independent from frame to frame, an easier null than real footage:
this is the still-camera case, the clips the moving-scene one.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/stills_detection.py --set holdout
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import material  # noqa: E402
from benchmarks.material import seed_of  # noqa: E402
from benchmarks.real_footage import QUICK_FAULTS, RESULTS, band, fault_jobs  # noqa: E402
from virk_exporter.config import default  # noqa: E402
from virk_exporter.fingerprint import Fingerprinter  # noqa: E402
from virk_exporter.drift.monitor import Hysteresis  # noqa: E402
from virk_exporter.fingerprint.detector import CaptureDetector, CaptureResult  # noqa: E402
from virk_exporter.fingerprint.properties import compute_samples  # noqa: E402

WINDOW, EVERY, P_VAL = default("window"), default("test_every"), default("p_val")
CHUNK = 64  # reference frames made and measured at a time (512 frames of 1280x720 are 1.4 GB)
SEVERITIES = (2, 4)
CLEAN_TESTS = 6  # clean windows per photograph and resolution
OBJECT_AREAS = (0.03, 0.06, 0.10)  # objects entering the view per photograph and resolution: their share of it
OBJECT_DIMS = np.array([1.0, 0.8, 0.6])  # and their lighting against the region they cover (rotated per photograph)


def reference(photo: tuple[str, str], size: tuple[int, int], n: int, seed: int) -> Fingerprinter:
    parts = [compute_samples(material.camera_frames(photo, min(CHUNK, n - i), size, seed + i)) for i in range(0, n, CHUNK)]
    props = {k: np.concatenate([p[k] for p, _, _ in parts]) for k in parts[0][0]}
    smalls, cells = (np.concatenate([part[j] for part in parts]) for j in (1, 2))
    return Fingerprinter.from_samples(props, smalls, size, cast_cells=cells)


def verdict(flags: list[bool], recent: list[bool] | None = None, hysteresis: int = default("hysteresis")) -> tuple[bool, bool]:
    """(alarm on by the second test after the onset, alarm on at all) for the tests after an
    onset, through the worker's hysteresis: on after ``hysteresis`` consecutive flagged tests,
    the earlier ones flagged by the window or by its newest samples alone (``recent``)."""
    state = Hysteresis(hysteresis)
    on = [k for k, (flag, newest) in enumerate(zip(flags, recent or [False] * len(flags))) if state.update(flag, recent=newest)]
    return bool(on and on[0] <= 1), bool(on)


def _verdict(tests: list[CaptureResult]) -> tuple[bool, bool]:
    return verdict([t.drift for t in tests], [t.recent_drift for t in tests])


def _windows(fp: Fingerprinter, frames: np.ndarray) -> list[dict[str, np.ndarray]]:
    props = fp.properties(frames)
    return [{k: v[s : s + WINDOW] for k, v in props.items()} for s in range(0, len(frames) - WINDOW + 1, EVERY)]


def _content_run(detector: CaptureDetector, fp: Fingerprinter, frames: np.ndarray) -> dict[str, Any]:
    """Content from the onset (half a window into ``frames``): did a capture alarm come on, and what did it name."""
    tests = [detector.test(w) for w in _windows(fp, frames)]
    _, paged = _verdict(tests[:5])
    return {"paged": paged, "named": sorted({t.diagnosis.top for t in tests if t.drift}), "flagged": sum(t.drift for t in tests)}


def run(photographs: tuple[tuple[str, str], ...], faults: list[material.Fault], n_reference: int, progress: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r_index, size in enumerate(material.RESOLUTIONS):
        jobs = fault_jobs(faults, size, len(photographs), r_index, lambda f: tuple(s for s in SEVERITIES if s in f.severities) or f.severities[:1])
        for p_index, photo in enumerate(photographs):
            progress(f"{size[1]}x{size[0]} {photo[1]}")
            base = seed_of("detection", photo, size)
            fp = reference(photo, size, n_reference, base)
            detector = CaptureDetector(fp, WINDOW, P_VAL, recent=EVERY)
            common = dict(photo=photo[1], resolution=f"{size[1]}x{size[0]}")
            clean = material.camera_frames(photo, WINDOW + EVERY * (CLEAN_TESTS - 1), size, base + 10_000)
            for test in map(detector.test, _windows(fp, clean)):
                rows.append(dict(common, fault="clean", severity=0, band="clean", flagged=test.drift, recent=test.recent_drift))
            before = clean[-EVERY:]
            fresh = material.camera_frames(photo, WINDOW + EVERY * 3, size, base + 20_000)
            other = photographs[(p_index + 1) % len(photographs)]
            cut = material.camera_frames(other, WINDOW + EVERY * 3, size, base + 30_000)
            rows.append(dict(common, fault="content", severity=0, band="content", **_content_run(detector, fp, np.concatenate([before, cut]))))
            for area, dim in zip(OBJECT_AREAS, np.roll(OBJECT_DIMS, p_index)):
                placed = material.object_enters(fresh, material.scene(other, size), area, dim, seed_of("object", area, photo, size))
                outcome = _content_run(detector, fp, np.concatenate([before, placed]))
                rows.append(dict(common, fault="content/object", severity=0, band="object", area=area, dim=float(dim), **outcome))
            distinct = None if size[0] * size[1] <= 224 * 168 else 4
            for fault, severity in jobs[p_index]:
                faulty = fault(fresh, severity, seed_of(fault.name, severity, photo, size), distinct=distinct)
                tests = [detector.test(w) for w in _windows(fp, np.concatenate([before, faulty]))]  # half, full, full, ...
                within_two, detected = _verdict(tests[:5])
                named = next((t.diagnosis.top for t in tests[1:] if t.drift), "none")
                rows.append(
                    dict(
                        common,
                        fault=fault.name,
                        family=fault.family,
                        cause=fault.cause,
                        severity=severity,
                        band=band(severity),
                        within_two=within_two,
                        detected=detected,
                        named=named,
                        right=bool(fault.right(named)),
                    )
                )
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    faulty = [r for r in rows if r["band"] in ("1-2", "3-5")]
    clean = [r for r in rows if r["band"] == "clean"]
    content = [r for r in rows if r["band"] == "content"]
    objects = [r for r in rows if r["band"] == "object"]

    def share(items: list[dict[str, Any]], key: str) -> tuple[float, int]:
        return (float(np.mean([r[key] for r in items])) if items else float("nan")), len(items)

    out: dict[str, Any] = {"clean_flagged": share(clean, "flagged"), "clean_recent": share(clean, "recent"), "content_paged": share(content, "paged"), "object_paged": share(objects, "paged"), "bands": {}, "by_resolution": {}, "by_family": {}, "missed": defaultdict(int)}
    for b in ("1-2", "3-5"):
        rs = [r for r in faulty if r["band"] == b]
        out["bands"][b] = {k: share(rs, k) for k in ("detected", "within_two")} | {"right": share([r for r in rs if r["detected"]], "right")}
    for key, by in (("by_resolution", "resolution"), ("by_family", "family")):
        for group in sorted({r[by] for r in faulty}):
            rs = [r for r in faulty if r[by] == group and r["band"] == "3-5"]
            out[key][group] = {k: share(rs, k) for k in ("detected", "within_two")} | {"right": share([r for r in rs if r["detected"]], "right")}
    for r in faulty:
        if not r["detected"]:
            out["missed"][f"{r['fault']}@{r['severity']}"] += 1
    out["missed"] = dict(sorted(out["missed"].items(), key=lambda kv: -kv[1]))
    for key, items in (("content_named", content), ("object_named", objects)):
        named: dict[str, int] = defaultdict(int)
        for r in items:
            for cause in r["named"]:
                named[cause] += 1
        out[key] = dict(sorted(named.items()))
    out["object_paged_by_area"] = {f"{a:.0%}": share([r for r in objects if r["area"] == a], "paged") for a in OBJECT_AREAS}
    return out


def _pct(value: tuple[float, int]) -> str:
    return "-" if not value[1] else f"{100 * value[0]:.0f}% ({value[1]})"


def report(summary: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    for key, label in (("bands", "severity"), ("by_resolution", "resolution (sev 3-5)"), ("by_family", "implementation (sev 3-5)")):
        table = Table(title=f"{title}: capture test by {label}")
        for column in (label, "detected", "within two tests", "named right when detected"):
            table.add_column(column)
        for group, v in summary[key].items():
            table.add_row(group, _pct(v["detected"]), _pct(v["within_two"]), _pct(v["right"]))
        console.print(table)
    console.print(f"clean single tests flagged: {_pct(summary['clean_flagged'])}; newest samples alone (not an alarm by itself): {_pct(summary['clean_recent'])}")
    console.print(f"another scene from the onset paged as a capture fault: {_pct(summary['content_paged'])}; causes flagged there: {summary['content_named'] or '-'}")
    by_area = ", ".join(f"{a} {_pct(v)}" for a, v in summary["object_paged_by_area"].items())
    console.print(f"an object entering the view paged as a capture fault: {_pct(summary['object_paged'])} (by its share of the view: {by_area}); causes flagged there: {summary['object_named'] or '-'}")
    console.print("missed (fault@severity: windows): " + ", ".join(f"{k} {v}" for k, v in summary["missed"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=sorted(material.SETS), default="holdout")
    parser.add_argument("--reference", type=int, default=default("reference_frames"), help="reference samples per camera")
    parser.add_argument("--faults", default=QUICK_FAULTS, help="comma-separated substrings of fault names (default: other people's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(material.SETS[args.set], material.select(args.faults), args.reference, lambda s: print(f"detection: {s}", file=sys.stderr, flush=True))
    summary = summarize(rows)
    report(summary, f"still cameras ({args.set}, reference {args.reference} samples)")
    out = args.out or RESULTS / f"stills_detection_{args.set}.json"
    out.write_text(json.dumps({"set": args.set, "reference": args.reference, "seconds": round(time.perf_counter() - started, 1), "summary": summary, "rows": rows}, indent=1))
    print(f"results: {out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
