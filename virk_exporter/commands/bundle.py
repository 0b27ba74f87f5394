"""`virk-exporter bundle ...`: verify, show, replay and fetch incident bundles."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from virk_exporter.incidents.bundle import BundleError, BundleKey, alert_prefix, read_bundle
from virk_exporter.incidents.store import StoreError, open_store
from virk_exporter.incidents.webhook import FINGERPRINT_RE

console = Console(highlight=False)


def _read(file: str, verify: bool = True):
    try:
        return read_bundle(Path(file), verify=verify)
    except BundleError as error:
        raise click.ClickException(str(error)) from None


@click.group("bundle")
def bundle() -> None:
    """Incident bundles: verify, show, replay, fetch."""


@bundle.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def verify(file: str) -> None:
    """Check the sha256 of every file in the bundle; exit 1 on any mismatch."""
    b = _read(file, verify=False)
    problems = b.problems()
    for problem in problems:
        console.print(f"[red]MISMATCH[/red] {escape(problem)}")
    if problems:
        raise click.exceptions.Exit(1)
    console.print(f"OK: {len(b.files)} files verified ({b.manifest['model']}, alert {b.alert['fingerprint']})")


@bundle.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def show(file: str) -> None:
    """Summarize a bundle: alert, cause, sources, frames, diagnosis."""
    b = _read(file)
    m = b.manifest
    table = Table(show_header=False, box=None)
    alert = m["alert"]
    rows = [
        ("model", m["model"]),
        ("alert", f"{alert['labels'].get('alertname', '?')} ({alert['fingerprint']})"),
        ("started", alert["startsAt"]),
        ("resolved", (m.get("resolved") or {}).get("endsAt", "no")),
        ("cause", str(m.get("cause"))),
        ("predict", m.get("predict") or "not recorded (pass --predict module:function to replay)"),
        ("sources", ", ".join(m.get("sources", []))),
        ("frames", str(len(m.get("frames", [])))),
        ("reference samples", str(len(m.get("reference", [])))),
        ("drift tests", str(len(m.get("drift_timeline", [])))),
        ("traces", str(len({f["trace_id"] for f in m.get("frames", []) if f.get("trace_id")}))),
        ("files", str(len(b.files))),
        ("report", f"report.html (open it: unzip -p {file} report.html > report.html)" if "report.html" in b.files else "none"),
    ]
    for source, diagnosis in sorted(m.get("diagnosis", {}).items()):
        rows.append((f"diagnosis[{source}]", str(diagnosis.get("top"))))
    for name, value in rows:
        table.add_row(escape(name), escape(value))
    console.print(table)


@bundle.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--predict", "predict_spec", help="module:function to re-run over the recorded frames.")
@click.option("--strict", is_flag=True, help="Exit 1 unless the worker's drift, capture and cause decisions are reproduced.")
def replay(file: str, predict_spec: str | None, strict: bool) -> None:
    """Re-run predict over the frames; recompute drift and diagnosis; compare with the recording."""
    from virk_exporter.incidents.replay import load_function, replay as run_replay

    b = _read(file)
    try:
        predict = load_function(predict_spec) if predict_spec else None
    except (ImportError, AttributeError, ValueError) as error:
        raise click.ClickException(f"cannot load --predict {predict_spec}: {error}") from None
    try:
        result = run_replay(b, predict)
    except BundleError as error:
        raise click.ClickException(str(error)) from None
    table = Table(title=f"replay of {b.alert['fingerprint']} ({b.manifest['model']})")
    for column in ("source", "what", "recorded", "replayed", "match"):
        table.add_column(column)
    for c in result.comparisons:
        mark = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[c.match]
        table.add_row(escape(c.source), c.what, escape(str(c.recorded)), escape(str(c.replayed)), mark)
    console.print(table)
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    console.print(f"reproduced: {'yes' if result.reproduced else 'no'}")
    if strict and not result.reproduced:
        raise click.exceptions.Exit(1)


@bundle.command()
@click.argument("fingerprint")
@click.option("--store", "store_url", required=True, envvar="VIRK_STORE", help="s3://bucket/prefix or a directory.")
@click.option("--model", help="Model name (default: any model with this alert).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Where to write the zip.")
def fetch(fingerprint: str, store_url: str, model: str | None, output: str | None) -> None:
    """Download the latest bundle of an alert from the store and verify it."""
    if not FINGERPRINT_RE.fullmatch(fingerprint):
        raise click.ClickException(f"invalid alert fingerprint {fingerprint!r} ([A-Za-z0-9_-] only)")
    try:
        store = open_store(store_url)
        objects = store.list(alert_prefix(model, fingerprint) if model else "")
        found = [(k.stamp, o.key) for o in objects if (k := BundleKey.parse(o.key)) and k.fingerprint == fingerprint]
        if not found:
            raise click.ClickException(f"no bundle for alert {fingerprint} in {store.url}")
        stamp, key = max(found)  # the latest firing
        data = store.get(key)
    except (StoreError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    try:
        fetched = read_bundle(data)
    except BundleError as error:
        raise click.ClickException(f"{key}: {error}") from None
    target = Path(output or f"virk-{fingerprint}-{stamp}.zip")
    target.write_bytes(data)
    console.print(f"{target} ({len(data)} bytes, verified) from {store.url}/{key}")
    console.print(f"replay: virk-exporter bundle replay {target} --predict {fetched.manifest.get('predict') or 'module:function'}")


if __name__ == "__main__":  # pragma: no cover
    bundle(sys.argv[1:])
