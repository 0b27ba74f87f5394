"""`virk-exporter stack export DIR`: the stack files shipped in the wheel, written out to use.

The files are the repository's ``prometheus/``, ``grafana/``, ``compose.yaml`` and
``.env.example`` (package data under ``virk_exporter/stack/``), exactly as the tests check them.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import click

# Package-data names that are hidden files in a checkout (a wheel cannot hold dot files safely).
_RENAMED = {"env.example": ".env.example"}


def stack_files() -> dict[str, Traversable]:
    """Relative path in the exported tree -> the shipped file."""
    files: dict[str, Traversable] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{_RENAMED.get(child.name, child.name)}"
            if child.is_dir():
                walk(child, f"{name}/")
            elif child.is_file() and not child.name.startswith("."):
                files[name] = child

    walk(resources.files("virk_exporter") / "stack", "")
    return files


def export_stack(directory: Path, force: bool = False) -> list[Path]:
    """Write the stack files into ``directory``; refuse to overwrite unless ``force``."""
    files = stack_files()
    if not files:
        raise click.ClickException("this installation has no stack files (virk_exporter/stack is empty): reinstall virk-exporter")
    targets = {name: directory / name for name in files}
    existing = sorted(str(path) for path in targets.values() if path.exists())
    if existing and not force:
        raise click.ClickException(f"{len(existing)} file(s) exist already, e.g. {existing[0]}: pass --force to overwrite")
    for name, source in files.items():
        targets[name].parent.mkdir(parents=True, exist_ok=True)
        targets[name].write_bytes(source.read_bytes())
    return sorted(targets.values())


@click.group()
def stack() -> None:
    """The Prometheus, Alertmanager, Grafana and compose files."""


@stack.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def export(directory: Path, force: bool) -> None:
    """Write the rules, Alertmanager config, dashboards and compose file into DIRECTORY.

    \b
    DIRECTORY/prometheus/   prometheus.yml, virk.rules.yml (+ tests/), alertmanager.yml, templates/
    DIRECTORY/grafana/      provisioning/ and dashboards/ (importable: they ask for a Prometheus)
    DIRECTORY/compose.yaml  the stack around the demo app, with .env.example
    """
    written = export_stack(directory, force)
    for path in written:
        click.echo(path)
    click.echo(
        f"{len(written)} files in {directory}. Check them: promtool check config {directory}/prometheus/prometheus.yml; "
        f"promtool test rules {directory}/prometheus/tests/*.yml; amtool check-config {directory}/prometheus/alertmanager.yml"
    )
