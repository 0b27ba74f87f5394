"""``virk-exporter calibrate``: false-alarm rate on held-out clean frames, and recommended settings.

Both tests that raise the alarm are replayed: the embedding test and, when the reference holds
the fingerprinter, the capture-fault test on the frames' image properties."""

from __future__ import annotations

from collections import defaultdict

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from virk_exporter.config import default
from virk_exporter.drift.calibration import P_VALS, CalibrationReport, calibrate as run_calibration
from virk_exporter.embed.embedders import embedder_from_id
from virk_exporter.fingerprint.detector import replay_flags
from virk_exporter.reference.build import Reference, read_frames, source_batches


@click.command("calibrate")
@click.option("--reference", "reference_path", required=True, type=click.Path(exists=True, dir_okay=False), help="The .virkref the exporter will use.")
@click.option("--frames", "frames_path", required=True, type=click.Path(exists=True), help="Clean frames NOT used to build the reference (directory or video), in stream order.")
@click.option("--window", default=default("window"), show_default=True, type=click.IntRange(min=2))
@click.option("--test-every", default=default("test_every"), show_default=True, type=click.IntRange(min=1))
@click.option("--n-permutations", default=default("n_permutations"), show_default=True, type=click.IntRange(min=1))
@click.option("--target", default=0.01, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="Acceptable false alarms per test.")
@click.option("--every", default=1, show_default=True, type=click.IntRange(min=1), help="Keep one frame in N, as the exporter's sampling would.")
@click.option("--device", default=None, help="Torch device (default: CUDA when available, else CPU).")
@click.option("--seed", default=0, show_default=True)
def calibrate(
    reference_path: str,
    frames_path: str,
    window: int,
    test_every: int,
    n_permutations: int,
    target: float,
    every: int,
    device: str | None,
    seed: int,
) -> None:
    """Replay the drift tests over held-out clean FRAMES and print recommended settings."""
    console = Console()
    ref = Reference.load(reference_path)
    try:
        embedder = embedder_from_id(ref.embedder_id, device=device)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    by_source: dict[str, list[np.ndarray]] = defaultdict(list)
    properties: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    previous: dict[str, np.ndarray] = {}
    fingerprinters = {name: entry.fingerprinter() for name, entry in ref.sources.items()}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console) as bar:
        task = bar.add_task("embedding held-out frames", total=None)
        for source, frames in source_batches(read_frames(frames_path, every=every)):
            fingerprinter = fingerprinters[_reference_source(source, ref)]
            by_source[source].append(embedder.embed(frames))
            if fingerprinter is not None:
                properties[source].append(fingerprinter.properties(frames, previous=previous.get(source)))
                previous[source] = frames[-1]
            bar.advance(task, len(frames))
        reports: dict[str, CalibrationReport] = {}
        for name, parts in by_source.items():
            target_source = _reference_source(name, ref)
            heldout = np.concatenate(parts)
            n_tests = max(0, (len(heldout) - window) // test_every + 1)
            fingerprinter = fingerprinters[target_source]
            t = bar.add_task(f"testing {name}", total=n_tests * (1 + len(P_VALS) * (fingerprinter is not None)))
            advance = lambda n, t=t: bar.advance(t, n)  # noqa: E731
            capture = None
            if fingerprinter is not None and len(heldout) >= window:
                series = {k: np.concatenate([p[k] for p in properties[name]]) for k in properties[name][0]}
                capture = replay_flags(fingerprinter, series, window, test_every, P_VALS, progress=advance)
            try:
                reports[name] = run_calibration(
                    ref[target_source].embeddings, heldout, window=window, test_every=test_every,
                    n_permutations=n_permutations, target=target, seed=seed, device=device,
                    progress=advance, capture=capture,
                )
            except ValueError as exc:
                raise click.ClickException(f"{name}: {exc}") from exc
            if capture is None:
                reports[name].notes.append("the reference has no fingerprinter: only the embedding test was replayed")
    for name, report in reports.items():
        print_report(console, name, report)


def _reference_source(name: str, ref: Reference) -> str:
    """The reference's source a held-out source is tested against (a one-source reference serves any)."""
    if name in ref.sources:
        return name
    if len(ref.sources) == 1:
        return next(iter(ref.sources))
    raise click.ClickException(f"held-out source {name!r} is not in the reference ({', '.join(ref.sources)})")


def print_report(console: Console, name: str, report: CalibrationReport) -> None:
    table = Table(title=f"source {name}: {report.n_heldout} held-out frames, {len(report.p_values)} tests "
                        f"(window {report.window}, every {report.test_every}) vs {report.n_reference} reference frames")
    for col in ("p_val", "hysteresis", "false alarms", "embedding", "capture", "rate", "95% upper"):
        table.add_column(col, justify="right")
    for s in report.settings:
        mark = " ←" if s == report.recommended else ""
        counts = (f"{s.alarms}/{s.tests}", str(s.embedding_alarms), str(s.capture_alarms))
        table.add_row(f"{s.p_val:g}", str(s.hysteresis), *counts, f"{s.rate:.2%}", f"{s.upper95:.2%}{mark}")
    console.print(table)
    if report.recommended is None:
        console.print(f"[red]no setting keeps false alarms under {report.target:.1%}[/]")
    else:
        r = report.recommended
        console.print(
            f"recommended: p_val={r.p_val:g} hysteresis={r.hysteresis} window={report.window} "
            f"test_every={report.test_every} n_permutations={report.n_permutations} "
            f"(measured false alarms {r.rate:.2%}, 95% upper bound {r.upper95:.2%})"
        )
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
