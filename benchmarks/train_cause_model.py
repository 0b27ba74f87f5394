"""Fit the naming model (``virk_exporter/fingerprint/naming.py``) on the TUNE photographs.

Every fault of ``benchmarks/material.py`` (ImageNet-C's reference code, albumentations, real
codecs, camera faults and the project's own generators) is applied at each of its severities to
TUNE photographs at the four resolutions, ``--rounds`` times with the photographs rotated so
each meets each fault more than once. Each window is diagnosed with the rules alone (fitting
never depends on a previous model) and its evidence kept. The L2 penalty is fixed (``PENALTY``):
choosing it anew on each refit moved more windows than the rule changes being judged
(BENCHMARKS.md, "A fixed penalty for the naming refit"). Leave-one-photograph-out cross-validation, scored the
way the evaluation scores (the top cause right, the fault's accepted alternatives included, on
windows whose rules name a cause, chosen among the causes they name), is printed for every
penalty of ``PENALTIES`` as a check, and the model fitted on everything is written to the package.
SCORE, HOLDOUT and FRESH photographs are never touched here: ``benchmarks/real_footage.py
--part stills --set holdout`` and ``benchmarks/stills_detection.py --set fresh`` measure the result.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/train_cause_model.py            # ~12 min on 2 cores
    PYTHONPATH=$PWD .venv/bin/python benchmarks/train_cause_model.py --rows R.json  # refit from kept windows
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import material  # noqa: E402
from benchmarks.real_footage import RESULTS, StillsPlan, run_stills  # noqa: E402
from virk_exporter.fingerprint.causes import CAUSES, MIN_SCORE  # noqa: E402
from virk_exporter.fingerprint.naming import MODEL_FILE, CauseModel, feature_names  # noqa: E402

PLAN = StillsPlan(window=16, reference=32, distinct=4, clean_windows=0)
PENALTIES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
# TUNE, nested leave-one-photograph-out (the penalty never chosen on the photograph scored):
# L2 30 fixed 92.2 % right, 4 of 2,296 picks moved by dropping 2 % of the training windows;
# L2 100 fixed 91.8 %, 9 moved; the one-standard-error choice it replaces 92.2 %, 9 moved (and
# across refits it picked 30 seven times in eight, 100 on a change to 7 windows' features).
PENALTY = 30.0
MODEL_PATH = ROOT / "virk_exporter" / "fingerprint" / MODEL_FILE


def gather(rounds: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    faults = list(material.FAULTS.values())
    for rotation in range(rounds):
        progress = lambda s, r=rotation: print(f"round {r + 1}/{rounds}: {s}", file=sys.stderr, flush=True)  # noqa: E731
        rows += run_stills(material.TUNE, faults, PLAN, progress=progress, rotation=rotation * 3, features=True, by_rules=True)
    return [r for r in rows if r["severity"] > 0]


def right(model: CauseModel, rows: list[dict[str, Any]], among_named: bool = True) -> float:
    """Share of windows the rules name a cause in whose model-named cause is right (the model
    choosing among the causes the rules name, as diagnose does, or among all causes)."""
    named = [r for r in rows if r["by_rules"] != "none"]
    picks = [model.best(np.asarray(r["features"]), among=_named(r) if among_named else None)[0] for r in named]
    return float(np.mean([material.FAULTS[r["fault"]].right(p) for r, p in zip(named, picks)]))


def _named(row: dict[str, Any]) -> tuple[str, ...]:
    scores = row["features"][-len(CAUSES) :]  # the rules' scores close the feature vector
    return tuple(c for c, s in zip(CAUSES, scores) if s >= MIN_SCORE)


def _fit(rows: list[dict[str, Any]], l2: float, provenance: dict[str, Any] | None = None) -> CauseModel:
    x = np.array([r["features"] for r in rows])
    return CauseModel.fit(x, [r["cause"] for r in rows], CAUSES, feature_names(CAUSES), l2=l2, groups=[r["fault"] for r in rows], provenance=provenance)


def cross_validate(rows: list[dict[str, Any]], l2: float, among_named: bool = True) -> float:
    photos = sorted({r["photo"] for r in rows})
    scores, sizes = [], []
    for held in photos:
        train = [r for r in rows if r["photo"] != held]
        test = [r for r in rows if r["photo"] == held and r["by_rules"] != "none"]
        model = _fit(train, l2)
        scores.append(right(model, test, among_named))
        sizes.append(len(test))
    return float(np.average(scores, weights=sizes))


def leave_family_out(rows: list[dict[str, Any]], l2: float) -> dict[str, tuple[float, int, float]]:
    """Each family of implementations (imagenet-c, albumentations, codec, camera, virk) scored by a
    model fitted without it: how the naming carries to corruption code it was never fitted on."""
    out = {}
    for family in sorted({material.FAULTS[r["fault"]].family for r in rows}):
        held = [r for r in rows if material.FAULTS[r["fault"]].family == family and r["by_rules"] != "none"]
        model = _fit([r for r in rows if material.FAULTS[r["fault"]].family != family], l2)
        rules = float(np.mean([material.FAULTS[r["fault"]].right(r["by_rules"]) for r in held]))
        out[family] = (right(model, held), len(held), rules)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="photograph rotations (more windows per fault)")
    parser.add_argument("--rows", type=Path, default=None, help="refit from windows kept by an earlier run")
    parser.add_argument("--out", type=Path, default=MODEL_PATH)
    parser.add_argument("--l2", type=float, default=PENALTY, help="L2 penalty of the fit")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.rows:
        rows = json.loads(args.rows.read_text())
    else:
        rows = gather(args.rounds)
        kept = RESULTS / "cause_model_rows.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(rows))
        print(f"windows kept: {kept}", file=sys.stderr)
    if len(rows[0]["features"]) != len(feature_names(CAUSES)):
        raise SystemExit("the kept windows were made with other features: gather them again (drop --rows)")
    by_rules = float(np.mean([material.FAULTS[r["fault"]].right(r["by_rules"]) for r in rows if r["by_rules"] != "none"]))
    print(f"{len(rows)} faulty windows from {len({r['photo'] for r in rows})} TUNE photographs; named by the largest rule score: {by_rules:.1%} right")
    penalty = args.l2
    cv = {l2: cross_validate(rows, l2) for l2 in sorted({*PENALTIES, penalty})}
    for l2, score in cv.items():
        print(f"  L2 {l2:>5}: leave-one-photograph-out {score:.1%} right{'  (the fixed penalty)' if l2 == penalty else ''}")
    # A check, not a choice: ties are within the noise of ~2000 windows.
    named = sum(r["by_rules"] != "none" for r in rows)
    top = max(cv.values())
    if cv[penalty] < top - float(np.sqrt(top * (1 - top) / named)):
        print(f"  note: L2 {max(cv, key=cv.get)} beats L2 {penalty} by more than one standard error on these windows")
    print(f"  L2 {penalty}, choosing among all causes, not only those the rules name: {cross_validate(rows, penalty, among_named=False):.1%} right")
    unseen = leave_family_out(rows, penalty)
    for family, (score, n, rules) in unseen.items():
        print(f"  L2 {penalty}, {family} left out of the fit (code it never saw): {score:.1%} right of {n} (largest rule score: {rules:.1%})")
    provenance = {
        "fitted": time.strftime("%Y-%m-%d", time.gmtime()),
        "by": "benchmarks/train_cause_model.py",
        "photographs": [p[1] for p in material.TUNE],
        "windows": len(rows),
        "faults": len({r["fault"] for r in rows}),
        "l2": penalty,
        "leave_one_photograph_out_right": round(cv[penalty], 4),
        "largest_rule_score_right": round(by_rules, 4),
        "leave_one_family_out_right": {f: round(v[0], 4) for f, v in unseen.items()},
        "environment": material.environment(),
    }
    model = _fit(rows, penalty, provenance)
    args.out.write_text(model.to_json())
    print(f"L2 {penalty}: fitted on all {len(rows)} windows, {right(model, rows):.1%} right on them; written to {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
