"""The `virk-exporter` command line.

Subcommands are imported when they run (:class:`LazyGroup`): `virk-exporter --help` must not pay
for torch, SciPy and OpenCV (seconds), so nothing heavy is imported at module level here.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from typing import Any, Iterator

import click

from virk_exporter._version import __version__
from virk_exporter.config import default

DEFAULT_PORT = 10098  # 9400 is NVIDIA dcgm-exporter's (README)


class LazyGroup(click.Group):
    """A group whose subcommands live in modules imported on first use.

    ``lazy`` maps a command name to ``("module:attribute", short help)``: the short help is what
    the group's ``--help`` lists, so listing never imports a subcommand's module.
    """

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, _, attribute = self.lazy[name][0].partition(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help) for name, (_, help) in self.lazy.items()]
        rows += [(name, self.commands[name].get_short_help_str(200)) for name in super().list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(
    cls=LazyGroup,
    lazy={
        "bundle": ("virk_exporter.commands.bundle:bundle", "Inspect, verify, fetch and replay incident bundles."),
        "calibrate": ("virk_exporter.commands.calibrate:calibrate", "Measure the false-alarm rate on held-out clean frames."),
        "reference": ("virk_exporter.commands.reference:reference", "Build and inspect saved references (.virkref)."),
        "stack": ("virk_exporter.commands.stack:stack", "The Prometheus, Alertmanager, Grafana and compose files."),
    },
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "-V", "--version", prog_name="virk-exporter")
@click.option("-v", "--verbose", is_flag=True, help="Log what the monitoring worker does.")
def main(verbose: bool) -> None:
    """virk-exporter: a flight recorder for production vision models."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")


@main.command()
@click.option("--duration", type=float, default=36.0, show_default=True, help="Seconds to stream; 0 runs until Ctrl-C, repeating the incidents every --cycle seconds.")
@click.option("--fps", type=float, default=12.0, show_default=True, help="Frames per second per camera.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port for /metrics and the webhook (0: any free port).")
@click.option("--store", envvar="VIRK_STORE", help="Where bundles go: a directory or s3://bucket/prefix (default ./virk-incidents).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--self-page/--no-self-page", default=True, show_default=True, help="Page each detection through the exporter's own webhook (turn off when Alertmanager pages it).")
@click.option("--cycle", type=float, default=150.0, show_default=True, help="With --duration 0: seconds between repeats of the scripted incidents.")
def demo(duration: float, fps: float, host: str, port: int, store: str | None, seed: int, self_page: bool, cycle: float) -> None:
    """Stream two real-photograph cameras through a monitored model with a scripted incident."""
    from rich.console import Console

    from virk_exporter.demo.app import run
    from virk_exporter.commands.lifecycle import stop_signals_as_interrupt
    from virk_exporter.http.server import PortInUseError

    stop_signals_as_interrupt()  # the demo's finally drains and closes the exporter
    try:
        summary = run(duration=duration, fps=fps, host=host, port=port, store=store, seed=seed, console=Console(), self_page=self_page, cycle=cycle)
    except PortInUseError as problem:
        raise click.ClickException(str(problem)) from problem
    if duration and len(summary["detections"]) < 2:
        Console(stderr=True).print("[yellow]the scripted incidents were not all detected in this run[/]")


@main.command()
@click.option("--frames", "frames_path", required=True, type=click.Path(exists=True), help="A directory of images (one subdirectory per source) or a video file.")
@click.option("--model", required=True, help="The `model` label.")
@click.option("--reference", "reference_path", type=click.Path(exists=True, dir_okay=False), help="A .virkref file (default: learn from the first frames).")
@click.option("--store", envvar="VIRK_STORE", help="Where bundles go: a directory or s3://bucket/prefix.")
@click.option("--fps", type=float, default=10.0, show_default=True, help="Frames per second to replay at.")
@click.option("--loop/--no-loop", default=False, help="Start over at the end.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True)
@click.option("--webhook-token", envvar="VIRK_WEBHOOK_TOKEN", help="Bearer token Alertmanager must send (recommended).")
@click.option("--reference-period", "reference_period_s", type=float, default=default("reference_period_s"), show_default=True,
              help="Seconds of footage a learned reference samples (0: the first frames).")
def serve(frames_path: str, model: str, reference_path: str | None, store: str | None, fps: float, loop: bool, host: str, port: int,
          webhook_token: str | None, reference_period_s: float) -> None:
    """Watch recorded frames (a directory or a video) and serve the exporter's routes."""
    from rich.console import Console

    from virk_exporter.caller.exporter import Exporter
    from virk_exporter.commands.lifecycle import stop_signals_as_interrupt
    from virk_exporter.reference.build import read_frames
    from virk_exporter.http.server import PortInUseError

    stop_signals_as_interrupt()  # drain and close on SIGTERM or SIGINT, even if SIGINT came ignored
    frames = _frames_or_fail(read_frames, frames_path)
    exporter = Exporter(model=model, reference=reference_path, store=store, webhook_token=webhook_token, reference_period_s=reference_period_s)
    try:
        server = exporter.serve(host=host, port=port)
    except PortInUseError as problem:
        exporter.close()
        raise click.ClickException(str(problem)) from problem
    if server is None:  # another process of this model serves the port (Exporter.serve)
        exporter.close()
        raise click.ClickException(f"{host}:{port} is already served by another virk-exporter process of model {model!r}")
    console = Console()
    console.print(f"serving {server.url}/metrics for model {model!r}; frames from {frames_path}")
    watch = exporter.monitor(source=lambda frames, source: source)(lambda frames, source: None)
    progress = _Progress(exporter, console)
    try:
        while True:
            for source, frame in frames:
                watch(frame, source=source)
                progress.frame()
                time.sleep(1.0 / fps)
            if not loop:
                break
            frames = _frames_or_fail(read_frames, frames_path)
        exporter.flush()
        progress.report(final=True)
        console.print("all frames processed; serving until Ctrl-C")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        exporter.close()


def _frames_or_fail(read_frames: Any, path: str) -> Iterator[tuple[str, Any]]:
    """The frames of ``path``, or a clear error (no traceback) when there are none to read."""
    import itertools

    frames = iter(read_frames(path))
    try:
        first = next(frames, None)
    except (OSError, ValueError) as problem:
        raise click.ClickException(str(problem)) from problem
    if first is None:
        raise click.ClickException(f"no frames in {path}: give a directory of images (one subdirectory per source) or a video file")
    return itertools.chain([first], frames)


class _Progress:
    """`serve`'s running commentary: frames so far every few seconds, and each change of a
    source's drift state (read from the exporter's own ``virk_drift_detected`` series)."""

    EVERY_S = 5.0

    def __init__(self, exporter: Any, console: Any) -> None:
        self.exporter, self.console = exporter, console
        self.count, self.last = 0, time.monotonic()
        self.drift: dict[str, str] = {}

    def frame(self) -> None:
        self.count += 1
        if time.monotonic() - self.last >= self.EVERY_S:
            self.report()

    def report(self, final: bool = False) -> None:
        self.last = time.monotonic()
        self.console.print(f"{self.count} frames sent" + (" (done)" if final else ""))
        for family in self.exporter.collect():
            if family.name != "virk_drift_detected":
                continue
            now: dict[str, str] = {}
            for sample in family.samples:
                source, cause = sample.labels["source"], sample.labels["fingerprint"]
                if sample.value == 1:
                    now[source] = cause
                else:
                    now.setdefault(source, "none")
            for source, cause in sorted(now.items()):
                if self.drift.get(source, "none") != cause:
                    self.console.print(f"  {source}: " + (f"[red]DRIFT[/] (cause: {cause})" if cause != "none" else "no drift"))
            self.drift = now


if __name__ == "__main__":
    sys.exit(main())
