"""`virk-exporter demo`: the scripted incidents are detected, diagnosed and bundled, with no servers."""

import zipfile

import pytest
from click.testing import CliRunner
from rich.console import Console

from virk_exporter.cli import main
from virk_exporter.commands.bundle import bundle
from virk_exporter.demo.app import run


@pytest.mark.slow
def test_demo_detects_diagnoses_and_bundles_both_incidents(tmp_path):
    console = Console(file=(tmp_path / "demo.log").open("w"), width=200)
    # 48 s, not the default 36: the demo is paced by the wall clock, and on 2 cores shared with
    # the rest of the suite it renders fewer frames a second, so cam-2's incident (from 65 % of
    # the run) once ended before its second test (flagged at 33.0 s of 36, under load only)
    summary = run(duration=48, port=0, store=str(tmp_path / "bundles"), console=console)
    log = (tmp_path / "demo.log").read_text()
    assert set(summary["detections"]) == {"cam-1", "cam-2"}, log
    assert summary["detections"]["cam-1"]["cause"] == "blur", log
    assert summary["detections"]["cam-2"]["cause"] == "camera_shift", log
    assert len(summary["bundles"]) == 2, log
    for path in summary["bundles"]:
        with zipfile.ZipFile(path) as archive:
            assert "manifest.json" in archive.namelist()
        result = CliRunner().invoke(bundle, ["verify", path])
        assert result.exit_code == 0, result.output
    assert "replay" in log and "virk_exporter.demo:predict" in log


@pytest.mark.slow
def test_demo_command_reports_a_port_in_use(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = CliRunner().invoke(main, ["demo", "--duration", "1", "--port", str(taken.getsockname()[1]), "--store", str(tmp_path)])
    assert result.exit_code != 0
    assert "already in use" in result.output
