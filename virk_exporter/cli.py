"""The `virk-exporter` command line."""

from __future__ import annotations

import logging
import sys
import time

import click
from rich.console import Console

from virk_exporter.commands.bundle import bundle
from virk_exporter.commands.calibrate import calibrate
from virk_exporter.commands.reference import reference


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what the monitoring worker does.")
def main(verbose: bool) -> None:
    """virk-exporter: a flight recorder for production vision models."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")


@main.command()
@click.option("--duration", type=float, default=36.0, show_default=True, help="Seconds to stream; 0 runs until Ctrl-C, repeating the incidents every --cycle seconds.")
@click.option("--fps", type=float, default=12.0, show_default=True, help="Frames per second per camera.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9400, show_default=True, help="Port for /metrics and the webhook (0: any free port).")
@click.option("--store", envvar="VIRK_STORE", help="Where bundles go: a directory or s3://bucket/prefix (default ./virk-incidents).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--self-page/--no-self-page", default=True, show_default=True, help="Page each detection through the exporter's own webhook (turn off when Alertmanager pages it).")
@click.option("--cycle", type=float, default=150.0, show_default=True, help="With --duration 0: seconds between repeats of the scripted incidents.")
def demo(duration: float, fps: float, host: str, port: int, store: str | None, seed: int, self_page: bool, cycle: float) -> None:
    """Stream two real-photograph cameras through a monitored model with a scripted incident."""
    from virk_exporter.demo import run
    from virk_exporter.lifecycle import sigterm_as_interrupt
    from virk_exporter.server import PortInUseError

    sigterm_as_interrupt()  # the demo's finally drains and closes the exporter
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
@click.option("--port", type=int, default=9400, show_default=True)
@click.option("--webhook-token", envvar="VIRK_WEBHOOK_TOKEN", help="Bearer token Alertmanager must send (recommended).")
def serve(frames_path: str, model: str, reference_path: str | None, store: str | None, fps: float, loop: bool, host: str, port: int, webhook_token: str | None) -> None:
    """Watch recorded frames (a directory or a video) and serve the exporter's routes."""
    from virk_exporter.exporter import Exporter
    from virk_exporter.lifecycle import sigterm_as_interrupt
    from virk_exporter.reference import read_frames
    from virk_exporter.server import PortInUseError

    sigterm_as_interrupt()  # drain and close on SIGTERM as on Ctrl-C
    exporter = Exporter(model=model, reference=reference_path, store=store, webhook_token=webhook_token)
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
    try:
        while True:
            count = 0
            for source, frame in read_frames(frames_path):
                watch(frame, source=source)
                count += 1
                time.sleep(1.0 / fps)
            if not loop:
                break
            if count == 0:
                raise click.ClickException(f"no frames in {frames_path}")
        exporter.flush()
        console.print("all frames processed; serving until Ctrl-C")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        exporter.close()


main.add_command(reference)
main.add_command(calibrate)
main.add_command(bundle)


if __name__ == "__main__":
    sys.exit(main())
