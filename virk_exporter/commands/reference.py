"""``virk-exporter reference build``: embed reference frames and save a ``.virkref``."""

from __future__ import annotations

import click
from rich.console import Console

from virk_exporter.embed.embedders import RandomConvEncoder
from virk_exporter.reference.baseline import SHORT_SPAN_S
from virk_exporter.reference.build import build_reference_pairs, count_frames, footage_span_s, read_frames


@click.group("reference")
def reference() -> None:
    """Build and inspect saved references (.virkref)."""


@reference.command("build")
@click.option("--frames", "frames_path", required=True, type=click.Path(exists=True), help="A directory of images (sub-directories = sources) or a video file.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Where to write the .virkref.")
@click.option("--every", default=1, show_default=True, type=click.IntRange(min=1), help="Keep one frame in N (video frames are near-duplicates).")
@click.option("--seed", default=0, show_default=True, help="Seed of the default random-conv encoder.")
@click.option("--device", default=None, help="Torch device (default: CUDA when available, else CPU).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def build(frames_path: str, out: str, every: int, seed: int, device: str | None, progress: bool) -> None:
    """Embed FRAMES with the default encoder and save the reference to OUT."""
    console = Console(stderr=True)
    encoder = RandomConvEncoder(seed=seed, device=device)
    total = count_frames(frames_path)
    span = footage_span_s(frames_path)
    try:
        ref = build_reference_pairs(
            read_frames(frames_path, every=every),
            encoder,
            progress=progress,
            total=None if total is None else -(-total // every),
            span_s=span,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    path = ref.save(out)
    for name, src in ref.sources.items():
        console.print(f"source [bold]{name}[/]: {src.n_frames} frames, {src.embeddings.shape[1]}-d embeddings, {_span_text(src.span_s)}")
    console.print(f"wrote {path} (embedder {ref.embedder_id})")
    if span is not None and span < SHORT_SPAN_S:
        console.print(
            f"[yellow]warning:[/] the video spans {span:.1f} s, under {SHORT_SPAN_S:.0f} s; on a real fixed camera references "
            "of 3-26 s flagged 8-25 % of clean tests (BENCHMARKS.md): build from minutes of the camera's normal footage"
        )


def _span_text(span_s: float | None) -> str:
    return "footage span not known" if span_s is None else f"spanning {span_s:.1f} s of footage"



@reference.command("show")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def show(path: str) -> None:
    """Print what a .virkref holds: embedder, sources, frame counts."""
    from virk_exporter.reference.build import Reference

    console = Console()
    try:
        ref = Reference.load(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(f"{path}: embedder {ref.embedder_id} ({ref.dim}-d), created {ref.created or 'unknown'}")
    for name, src in ref.sources.items():
        fp = "yes" if src.fingerprint_state is not None else "no"
        console.print(
            f"  source [bold]{name}[/]: {src.n_frames} frames {src.frame_shape}, "
            f"{len(src.properties)} properties, fingerprinter state: {fp}, {len(src.thumbnails)} thumbnails, {_span_text(src.span_s)}"
        )


@reference.command("rebase")
@click.option("--url", required=True, help="The exporter's base URL, e.g. http://127.0.0.1:10098.")
@click.option("--source", default=None, help="The source (camera) to rebase; default: every source.")
@click.option("--token", envvar="VIRK_WEBHOOK_TOKEN", help="The exporter's webhook token ($VIRK_WEBHOOK_TOKEN).")
def rebase(url: str, source: str | None, token: str | None) -> None:
    """Make a running exporter learn a new reference (after a camera was re-aimed on purpose)."""
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({} if source is None else {"source": source}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url.rstrip("/") + "/api/v1/rebase", body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise click.ClickException(f"{error.code}: {error.read().decode(errors='replace').strip()}") from None
    except (urllib.error.URLError, OSError) as error:
        raise click.ClickException(f"cannot reach {url}: {error}") from None
    click.echo(f"rebased {', '.join(answer['rebased']) or 'no source'}: learning a new reference over {answer['reference_period_s']:g}s")
