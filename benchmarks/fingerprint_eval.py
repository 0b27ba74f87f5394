"""Evaluate the root-cause fingerprinter on corrupted camera streams of real photographs.

For each photograph of a set (``photos.SCORE`` by default; ``--photos tune`` is what the
signatures were tuned on), a reference stream and an independent test stream are made
(different seeds: no reference frame is ever tested). Every corruption in
``corruptions.CORRUPTIONS`` is applied to the test stream at each severity, giving one window
per (photograph, corruption, severity); independent clean windows measure false alarms.
Reports per-cause top-1 accuracy by severity, the confusion matrix, and saves a picture.

    .venv/bin/python benchmarks/fingerprint_eval.py            # full: 64-frame windows, 640x480
    .venv/bin/python benchmarks/fingerprint_eval.py --photos tune --frames 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from virk_exporter.demo import corruptions

from virk_exporter.demo import photos  # noqa: E402
from virk_exporter.fingerprint import Fingerprinter  # noqa: E402
from virk_exporter.fingerprint.causes import CAUSES  # noqa: E402

LABELS = CAUSES + ("none", "unknown")


@dataclass
class Result:
    rows: list[dict] = field(default_factory=list)  # one per window

    def accuracy(self, cause: str, severities: tuple[int, ...]) -> float:
        hits = [r["predicted"] == r["cause"] for r in self.rows if r["cause"] == cause and r["severity"] in severities]
        return float(np.mean(hits)) if hits else float("nan")

    def mean_accuracy(self, severities: tuple[int, ...]) -> float:
        return float(np.nanmean([self.accuracy(c, severities) for c in CAUSES]))

    def clean_none_rate(self) -> float:
        return self.accuracy("none", (0,))

    def confusion(self, severities: tuple[int, ...] | None = None) -> np.ndarray:
        m = np.zeros((len(LABELS), len(LABELS)), dtype=int)
        for r in self.rows:
            if severities is None or r["severity"] in severities or r["severity"] == 0:
                m[LABELS.index(r["cause"]), LABELS.index(r["predicted"])] += 1
        return m


def evaluate(
    photo_names: tuple[str, ...],
    *,
    n_frames: int = 64,
    n_reference: int = 128,
    size: tuple[int, int] = (480, 640),
    severities: tuple[int, ...] = corruptions.SEVERITIES,
    names: tuple[str, ...] | None = None,
    clean_windows: int = 8,
    progress=None,
) -> Result:
    """Run every (photo, corruption, severity) window plus clean windows; return the rows."""
    names = tuple(corruptions.CORRUPTIONS) if names is None else names
    result = Result()
    for p_index, photo in enumerate(photo_names):
        base_seed = 10_000 * (p_index + 1)
        fp = Fingerprinter(photos.camera_stream(photo, n_reference, size=size, seed=base_seed))
        stream = photos.camera_stream(photo, n_frames, size=size, seed=base_seed + 1)
        for k in range(clean_windows):
            clean = stream if k == 0 else photos.camera_stream(photo, n_frames, size=size, seed=base_seed + 2 + k)
            d = fp.diagnose(clean)
            result.rows.append(dict(photo=photo, corruption="clean", cause="none", severity=0, predicted=d.top, subkind=d.subkind))
            if progress:
                progress()
        for c_index, name in enumerate(names):
            corruption = corruptions.CORRUPTIONS[name]
            for severity in severities:
                seed = base_seed + 100 * (c_index + 1) + severity
                d = fp.diagnose(corruptions.apply(name, stream, severity, seed=seed))
                result.rows.append(
                    dict(photo=photo, corruption=name, cause=corruption.cause, severity=severity, predicted=d.top, subkind=d.subkind)
                )
                if progress:
                    progress()
    return result


def save_confusion_png(result: Result, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = result.confusion()
    keep = [i for i in range(len(LABELS)) if m[i].sum() or m[:, i].sum()]
    m = m[np.ix_(keep, keep)]
    labels = [LABELS[i] for i in keep]
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(9, 8))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true cause")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", choices=["score", "tune", "fresh"], default="score", help="fresh: the untouched hold-out set")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--reference", type=int, default=128)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--clean", type=int, default=8, help="clean windows per photograph")
    parser.add_argument("--only", nargs="*", help="corruption names (default: all)")
    parser.add_argument("--png", default=str(ROOT / "benchmarks/results/fingerprint_confusion.png"))
    parser.add_argument("--json", default=None, help="write per-window rows here")
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    photo_names = {"score": photos.SCORE, "tune": photos.TUNE, "fresh": photos.FRESH}[args.photos]
    names = tuple(args.only) if args.only else tuple(corruptions.CORRUPTIONS)
    total = len(photo_names) * (args.clean + len(names) * len(corruptions.SEVERITIES))
    console = Console()
    start = time.time()
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(f"windows ({args.photos} photos)", total=total)
        result = evaluate(
            photo_names,
            n_frames=args.frames,
            n_reference=args.reference,
            size=(args.height, args.width),
            names=names,
            clean_windows=args.clean,
            progress=lambda: bar.advance(task),
        )
    elapsed = time.time() - start

    table = Table(title=f"Top-1 accuracy per cause ({args.photos.upper()} photos: {', '.join(photo_names)}; {args.frames}-frame windows)")
    table.add_column("cause")
    for s in corruptions.SEVERITIES:
        table.add_column(f"sev {s}", justify="right")
    table.add_column("sev 1-2", justify="right")
    table.add_column("sev 3-5", justify="right")
    causes = tuple(dict.fromkeys(corruptions.CORRUPTIONS[n].cause for n in names))
    for cause in causes:
        cells = [f"{result.accuracy(cause, (s,)):.0%}" for s in corruptions.SEVERITIES]
        table.add_row(cause, *cells, f"{result.accuracy(cause, (1, 2)):.0%}", f"{result.accuracy(cause, (3, 4, 5)):.0%}")
    low = float(np.nanmean([result.accuracy(c, (1, 2)) for c in causes]))
    high = float(np.nanmean([result.accuracy(c, (3, 4, 5)) for c in causes]))
    table.add_row("[b]mean over causes", *[f"{np.nanmean([result.accuracy(c, (s,)) for c in causes]):.0%}" for s in corruptions.SEVERITIES], f"[b]{low:.1%}", f"[b]{high:.1%}")
    console.print(table)
    console.print(f"clean windows diagnosed 'none': {result.clean_none_rate():.1%} of {sum(r['severity'] == 0 for r in result.rows)}")

    per_corruption = Table(title="Top-1 accuracy per corruption (all severities) and the most common wrong answer")
    for col in ("corruption", "cause", "accuracy", "most common error"):
        per_corruption.add_column(col)
    for name in names:
        rows = [r for r in result.rows if r["corruption"] == name]
        wrong = [r["predicted"] for r in rows if r["predicted"] != r["cause"]]
        common = max(set(wrong), key=wrong.count) if wrong else ""
        per_corruption.add_row(name, corruptions.CORRUPTIONS[name].cause, f"{np.mean([r['predicted'] == r['cause'] for r in rows]):.0%}", f"{common} ({wrong.count(common)})" if wrong else "")
    console.print(per_corruption)

    m = result.confusion()
    confusion = Table(title="Confusion matrix (rows: true, columns: predicted)")
    confusion.add_column("")
    shown = [i for i in range(len(LABELS)) if m[i].sum() or m[:, i].sum()]
    for i in shown:
        confusion.add_column(LABELS[i][:6], justify="right")
    for i in shown:
        confusion.add_row(LABELS[i], *[str(m[i, j]) if m[i, j] else "." for j in shown])
    console.print(confusion)
    console.print(f"{len(result.rows)} windows in {elapsed:.0f} s")

    png = Path(args.png)
    save_confusion_png(result, png, f"Fingerprinter confusion, {args.photos.upper()} photos, severities 1-5 + clean")
    console.print(f"confusion matrix picture: {png}")
    if args.json:
        Path(args.json).write_text(json.dumps(result.rows, indent=1))


if __name__ == "__main__":
    main()
