"""`virk-exporter stack export DIR`: the stack files shipped in the wheel, written out to use.

The files are the repository's ``prometheus/``, ``grafana/``, ``compose.yaml``, ``.env.example``
and ``docs/runbook.md`` (package data under ``virk_exporter/stack/``), exactly as the tests check
them; ``--runbook-url`` only rewrites where the alerts' ``runbook_url`` annotations point.
"""

from __future__ import annotations

import re
import urllib.parse
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import click

# Package-data names that are hidden files in a checkout (a wheel cannot hold dot files safely).
_RENAMED = {"env.example": ".env.example"}

# The shipped rules link the runbook the exporter serves at /runbook, on its default port: in the
# compose stack the browser on the host reaches the demo exporter there (docs/stack.md).
SHIPPED_RUNBOOK_URL = "http://localhost:10098/runbook"
# The rules, and the promtool tests that expect their annotations, so the exported tests still pass.
_RUNBOOK_LINKED = ("prometheus/virk.rules.yml", "prometheus/tests/virk.rules.test.yml")
# BASE lands in a double-quoted YAML string that Prometheus expands as a Go template, then gets `#anchor`.
_UNSAFE_IN_BASE = re.compile(r'[\s"\\{}<>#]')


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


def runbook_base(url: str) -> str:
    """``url`` if it can stand before ``#anchor`` in the rules: an http(s) URL, no fragment."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or _UNSAFE_IN_BASE.search(url):
        raise click.ClickException(
            f"--runbook-url must be an http(s) URL without #fragment, spaces, quotes or braces, "
            f"e.g. http://exporter.internal:10098/runbook (got {url!r})"
        )
    return url


def _contents(name: str, source: Traversable, runbook_url: str) -> bytes:
    """The file as shipped, with its alerts' runbook links pointing at ``runbook_url``."""
    if name not in _RUNBOOK_LINKED:
        return source.read_bytes()
    text = source.read_text(encoding="utf-8")
    return text.replace(f'runbook_url: "{SHIPPED_RUNBOOK_URL}#', f'runbook_url: "{runbook_url}#').encode()


def export_stack(directory: Path, force: bool = False, runbook_url: str = SHIPPED_RUNBOOK_URL) -> list[Path]:
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
        targets[name].write_bytes(_contents(name, source, runbook_url))
    return sorted(targets.values())


@click.group()
def stack() -> None:
    """The Prometheus, Alertmanager, Grafana and compose files."""


@stack.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@click.option(
    "--runbook-url",
    metavar="BASE",
    default=SHIPPED_RUNBOOK_URL,
    show_default=True,
    help="Where the alerts' runbook_url annotations point (BASE#<alert name, lower case>): your wiki "
    "holding docs/runbook.md, or an exporter's /runbook, e.g. http://exporter.internal:10098/runbook.",
)
def export(directory: Path, force: bool, runbook_url: str) -> None:
    """Write the rules, Alertmanager config, dashboards, compose file and runbook into DIRECTORY.

    \b
    DIRECTORY/prometheus/   prometheus.yml, virk.rules.yml (+ tests/), alertmanager.yml, templates/
    DIRECTORY/grafana/      provisioning/ and dashboards/ (importable: they ask for a Prometheus)
    DIRECTORY/compose.yaml  the stack around the demo app, with .env.example
    DIRECTORY/docs/         runbook.md, the page each alert's runbook_url links (also GET /runbook)
    """
    written = export_stack(directory, force, runbook_base(runbook_url))
    for path in written:
        click.echo(path)
    click.echo(
        f"{len(written)} files in {directory}. Check them: promtool check config {directory}/prometheus/prometheus.yml; "
        f"promtool test rules {directory}/prometheus/tests/*.yml; amtool check-config {directory}/prometheus/alertmanager.yml"
    )
