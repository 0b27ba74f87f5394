"""What a pip user gets: the wheel's contents, `stack export` checked with promtool and amtool,
`--version`, a `--help` that imports nothing heavy, and the base install (no MinIO SDK, no
OpenTelemetry SDK/OTLP exporter) still monitoring with the embedded default store."""

from __future__ import annotations

import email
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

import virk_exporter
from servers import binary
from stack_queries import ROOT

CLI = [sys.executable, "-m", "virk_exporter.cli"]
STACK_FILES = {
    ".env.example",
    "compose.yaml",
    "prometheus/prometheus.yml",
    "prometheus/alertmanager.yml",
    "prometheus/virk.rules.yml",
    "prometheus/templates/virk.tmpl",
    "prometheus/tests/virk.rules.test.yml",
    "grafana/dashboards/virk-overview.json",
    "grafana/dashboards/virk-source.json",
    "grafana/provisioning/dashboards/virk.yml",
    "grafana/provisioning/datasources/virk.yml",
    "docs/runbook.md",  # also the exporter's GET /runbook
}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=kwargs.pop("timeout", 120), cwd=kwargs.pop("cwd", ROOT), **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)], timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("virk_exporter-*.whl")
    return path


def test_wheel_ships_the_stack_files_types_and_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    stack = {name.removeprefix("virk_exporter/stack/") for name in names if name.startswith("virk_exporter/stack/")}
    assert stack == {name.replace(".env.example", "env.example") for name in STACK_FILES}
    assert "virk_exporter/py.typed" in names
    assert "virk_exporter/fingerprint/cause_model.json" in names  # the naming model's fitted numbers
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    # The shipped files are the repository's, byte for byte.
    with zipfile.ZipFile(wheel) as archive:
        for name in STACK_FILES:
            assert archive.read(f"virk_exporter/stack/{name.replace('.env.example', 'env.example')}") == (ROOT / name).read_bytes(), name


def test_wheel_metadata_has_one_version_extras_and_classifiers(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(meta))
    assert metadata["Version"] == virk_exporter.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert {"s3", "otlp", "demo", "test"} <= set(metadata.get_all("Provides-Extra"))
    requires = metadata.get_all("Requires-Dist")
    base = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("opentelemetry-api") for r in base)
    assert not any(r.startswith(("minio", "opentelemetry-sdk", "opentelemetry-exporter")) for r in base), base
    assert any(r.startswith("minio") and 'extra == "s3"' in r for r in requires)
    assert any(r.startswith("opentelemetry-sdk") and 'extra == "otlp"' in r for r in requires)
    assert metadata.get_all("Project-URL") is None  # no project home we could vouch for; the exporter serves /runbook
    assert "Typing :: Typed" in metadata.get_all("Classifier")


@pytest.mark.slow
def test_stack_export_passes_promtool_and_amtool(tmp_path):
    out = tmp_path / "stack"
    exported = run([*CLI, "stack", "export", str(out)])
    assert exported.returncode == 0, exported.stdout + exported.stderr
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == STACK_FILES
    checks = [
        [binary("promtool"), "check", "config", str(out / "prometheus" / "prometheus.yml")],
        [binary("promtool"), "test", "rules", str(out / "prometheus" / "tests" / "virk.rules.test.yml")],
        [binary("amtool"), "check-config", str(out / "prometheus" / "alertmanager.yml")],
    ]
    for argv in checks:
        result = run(argv, cwd=out)
        assert result.returncode == 0, " ".join(argv) + "\n" + result.stdout + result.stderr
    assert "1 templates" in result.stdout  # amtool found the page template next to the config
    # A second export does not overwrite silently.
    again = run([*CLI, "stack", "export", str(out)])
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr
    assert run([*CLI, "stack", "export", str(out), "--force"]).returncode == 0


@pytest.mark.slow
def test_stack_export_points_runbook_links_at_runbook_url(tmp_path):
    base = "https://wiki.example.com/ops/virk-runbook"
    out = tmp_path / "stack"
    exported = run([*CLI, "stack", "export", str(out), "--runbook-url", base])
    assert exported.returncode == 0, exported.stdout + exported.stderr
    rules = yaml.safe_load((out / "prometheus" / "virk.rules.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 10
    for alert in alerts:
        assert alert["annotations"]["runbook_url"] == f"{base}#{alert['alert'].lower()}", alert["alert"]
    # The promtool tests expect the same links, so they still pass on the exported rules.
    assert "localhost:10098/runbook" not in (out / "prometheus" / "tests" / "virk.rules.test.yml").read_text()
    checks = [
        [binary("promtool"), "check", "rules", str(out / "prometheus" / "virk.rules.yml")],
        [binary("promtool"), "test", "rules", str(out / "prometheus" / "tests" / "virk.rules.test.yml")],
    ]
    for argv in checks:
        result = run(argv, cwd=out)
        assert result.returncode == 0, " ".join(argv) + "\n" + result.stdout + result.stderr


@pytest.mark.parametrize("base", ["wiki.example.com/runbook", "ftp://wiki.example.com/runbook", "http://wiki.example.com/runbook#top"])
def test_stack_export_refuses_a_runbook_url_that_is_not_a_base_url(tmp_path, base):
    out = tmp_path / "stack"
    result = run([*CLI, "stack", "export", str(out), "--runbook-url", base])
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()  # one line, no usage text, no traceback
    assert line.startswith("Error: --runbook-url must be an http(s) URL") and repr(base) in line, line
    assert not out.exists()  # nothing written


def test_version_and_a_help_that_imports_nothing_heavy():
    version = run([*CLI, "--version"])
    assert version.returncode == 0 and version.stdout.strip() == f"virk-exporter, version {virk_exporter.__version__}"
    code = textwrap.dedent(
        """
        import sys
        from virk_exporter.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        heavy = sorted(m for m in ("torch", "scipy", "cv2", "matplotlib", "numpy", "opentelemetry") if m in sys.modules)
        print("HEAVY", heavy)
        """
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout
    for command in ("bundle", "calibrate", "demo", "reference", "serve", "stack"):
        assert command in result.stdout
    # Each subcommand's own help still loads it.
    assert "replay" in run([*CLI, "bundle", "--help"]).stdout


def test_the_callers_process_imports_neither_torch_nor_scipy():
    """A gunicorn worker that decorates predict pays for monitoring in microseconds, not seconds of imports."""
    code = textwrap.dedent(
        """
        import sys
        from virk_exporter import Exporter
        import virk_exporter.caller.exporter
        print("HEAVY", sorted(m for m in ("torch", "scipy", "cv2", "matplotlib") if m in sys.modules))
        """
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout


# The base install: these distributions are extras, and importing them fails as if absent.
_BLOCK = """
import importlib.abc, sys
BLOCKED = ("minio", "urllib3", "opentelemetry.sdk", "opentelemetry.exporter")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.startswith(tuple(b + "." for b in BLOCKED)):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: base install)", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


@pytest.mark.slow
def test_base_install_monitors_with_the_local_store_and_the_api_only(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK)  # also loaded by the worker process
    code = textwrap.dedent(
        f"""
        import logging, numpy as np
        logging.basicConfig(level=logging.WARNING)
        from virk_exporter import Exporter
        exporter = Exporter(model="base", store={str(tmp_path / 'store')!r}, reference_period_s=0, reference_frames=8, window=8, test_every=4)
        assert exporter.wait_ready(120)
        predict = exporter.monitor(source=lambda frames: "cam")(lambda frames: np.eye(len(frames), 3))
        frame = np.full((32, 32, 3), 128, np.uint8)
        for _ in range(12):
            assert predict(np.stack([frame, frame])).shape == (2, 3)
        exporter.flush()
        text = exporter.exposition()[0].decode()
        assert 'virk_frames_total{{model="base",source="cam"}} 24.0' in text, text
        assert "virk_drift_p_value" in text
        exporter.close()
        from virk_exporter.incidents.store import open_store
        try:
            open_store("s3://bucket/prefix")
        except ValueError as problem:
            print("S3:", problem)
        import sys
        print("SDK", "opentelemetry.sdk" in sys.modules)
        """
    )
    env = {"PYTHONPATH": f"{site}:{ROOT}", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"}
    result = run([sys.executable, "-c", code], env=env, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "S3: an s3:// store needs the MinIO SDK: pip install 'virk-exporter[s3]'" in result.stdout
    assert "SDK False" in result.stdout
    # Tracing asked for by the environment but not installed: said once, not silently off.
    assert result.stderr.count("virk-exporter[otlp]") == 1, result.stderr
