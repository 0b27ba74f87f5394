"""How much footage a reference must hold: false alarms of single capture tests on the real
footage that follows a reference of R consecutive samples.

The capture detector's bars come from its reference period replayed block by block
(``virk_exporter.drift.null``); they hold at the configured ``p_val`` only when that period shows
the scene's own variety. Here references of R samples are cut at many offsets of each clip of
``material.CLIPS`` (every frame, or every ``stride``-th), the detector is built on each as the
worker builds it (``window``, ``test_every`` and ``p_val`` at their defaults), and the real windows
that follow are tested (contiguous, never ping-pong, at most ``--horizon`` tests per reference): the
share flagged is the single-test false-alarm rate on normal footage, to read against ``p_val``.

Beside the shipped tail (exponential in the cause scores' own log1p space) the same null values
get an exponential tail on the effect itself (``expm1`` of the score): the lighter family that
short references seemed to call for (a bar near 3 instead of 8 on carphone's contrast), judged
here on clean footage only, as its comparison row.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/reference_span.py
    PYTHONPATH=$PWD .venv/bin/python benchmarks/reference_span.py --clips vtest --strides 1 --lengths 64,256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import material  # noqa: E402
from benchmarks.real_footage import RESULTS  # noqa: E402
from virk_exporter.config import default  # noqa: E402
from virk_exporter.drift.null import EmpiricalNull  # noqa: E402
from virk_exporter.fingerprint import CAUSES, Fingerprinter  # noqa: E402
from virk_exporter.fingerprint.causes import MIN_SCORE  # noqa: E402
from virk_exporter.fingerprint.detector import NULL_MIN_SCALE, CaptureDetector  # noqa: E402

WINDOW, EVERY, P_VAL = default("window"), default("test_every"), default("p_val")


def effect_tail_bar(null: EmpiricalNull, alpha: float) -> float:
    """The bar of the comparison family: ``null``'s own construction (``EmpiricalNull`` with the
    same effective size, floor and minimum scale) on ``expm1`` of the scores, mapped back."""
    effects = EmpiricalNull(np.expm1(null.values), min_scale=float(np.expm1(NULL_MIN_SCALE)), effective_size=null.effective_size, floor=0.0)
    return max(MIN_SCORE, float(np.log1p(effects.threshold(alpha))))


def reference_runs(frames: np.ndarray, length: int, every: int, horizon: int) -> list[dict[str, Any]]:
    """One entry per reference of ``length`` samples starting every ``every`` samples: the
    single tests of the windows that follow it, under the shipped and the comparison bars."""
    runs = []
    for start in range(0, len(frames) - length - WINDOW + 1, every):
        fingerprinter = Fingerprinter(frames[start : start + length])
        detector = CaptureDetector(fingerprinter, WINDOW, P_VAL, recent=EVERY)
        lighter = {c: effect_tail_bar(null, P_VAL / len(CAUSES)) for c, null in detector.nulls.items()}
        following = frames[start + length : start + length + WINDOW + EVERY * (horizon - 1)]
        shipped, compared, named = 0, 0, Counter()
        tests = range(0, len(following) - WINDOW + 1, EVERY)
        for s in tests:
            result = detector.test(fingerprinter.properties(following[s : s + WINDOW]))
            scores = result.diagnosis.scores
            shipped += result.drift
            compared += any(scores.get(c, 0.0) > bar for c, bar in lighter.items())
            if result.drift:
                named[result.diagnosis.top] += 1
        runs.append({"start": start, "tests": len(tests), "flagged": shipped, "flagged_effect_tail": compared, "named": dict(named)})
    return runs


def summarize(clip: str, stride: int, fps: float, length: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    tests = sum(r["tests"] for r in runs)
    named: Counter[str] = Counter()
    for r in runs:
        named.update(r["named"])
    return {
        "clip": clip,
        "stride": stride,
        "samples": length,
        "span_s": round(length / fps, 1),
        "references": len(runs),
        "tests": tests,
        "flagged": sum(r["flagged"] for r in runs) / max(tests, 1),
        "flagged_effect_tail": sum(r["flagged_effect_tail"] for r in runs) / max(tests, 1),
        "named": dict(named.most_common()),
    }


def report(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"clean single capture tests flagged after a reference of R samples (p_val {P_VAL}, window {WINDOW}, a test every {EVERY})")
    for column in ("clip", "stride", "R", "span", "references", "tests", "flagged (shipped tail)", "flagged (effect tail)", "named (shipped)"):
        table.add_column(column)
    for r in rows:
        named = ", ".join(f"{c} {n}" for c, n in r["named"].items()) or "-"
        counts = (str(r["stride"]), str(r["samples"]), f"{r['span_s']} s", str(r["references"]), str(r["tests"]))
        table.add_row(r["clip"], *counts, f"{100 * r['flagged']:.1f} %", f"{100 * r['flagged_effect_tail']:.1f} %", named)
    Console(width=None if sys.stdout.isatty() else 170).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", default=",".join(material.CLIPS), help="comma-separated clip names (material.CLIPS)")
    parser.add_argument("--strides", default="1,4", help="comma-separated: keep every stride-th frame")
    parser.add_argument("--lengths", default="32,64,128,256,384", help="comma-separated reference sizes R (samples)")
    parser.add_argument("--every", type=int, default=32, help="samples between the starts of successive references")
    parser.add_argument("--horizon", type=int, default=20, help="tests after each reference")
    parser.add_argument("--out", type=Path, default=RESULTS / "reference_span.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows, runs = [], {}
    for clip in args.clips.split(","):
        for stride in map(int, args.strides.split(",")):
            frames, fps, _ = material.first_shot(clip, stride)
            for length in map(int, args.lengths.split(",")):
                found = reference_runs(frames, length, args.every, args.horizon)
                if found:
                    rows.append(summarize(clip, stride, fps, length, found))
                    runs[f"{clip}/{stride}/{length}"] = found
                    print(f"reference span: {clip} stride {stride} R {length}: {len(found)} references", file=sys.stderr, flush=True)
    report(rows)
    args.out.write_text(json.dumps({"window": WINDOW, "test_every": EVERY, "p_val": P_VAL, "rows": rows, "runs": runs, "environment": material.environment(), "seconds": round(time.perf_counter() - started, 1)}, indent=1))
    print(f"results: {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
