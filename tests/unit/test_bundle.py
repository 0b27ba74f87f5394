"""Incident bundles: deterministic bytes, contents, verify, safe reading, the `bundle` CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import stat
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from incident_helpers import MODEL, alert, context

from virk_exporter.commands.bundle import bundle as bundle_cli
from virk_exporter.incidents.bundle import BundleError, build_bundle, bundle_key, read_bundle, with_resolution, write_zip
from virk_exporter.incidents.replay import replay
from virk_exporter.incidents.store import LocalStore


@pytest.fixture(scope="module")
def ctx():
    return context()


@pytest.fixture(scope="module")
def built(ctx) -> tuple[bytes, dict]:
    return build_bundle(alert(), MODEL, ctx)


def test_same_content_same_bytes(built, ctx):
    again, _ = build_bundle(alert(), MODEL, ctx)
    assert again == built[0]
    other, _ = build_bundle(alert(fingerprint="ffff0000ffff0000"), MODEL, ctx)
    assert other != built[0]


def test_contents_round_trip(built, ctx):
    data, manifest = built
    b = read_bundle(data)
    assert b.manifest == json.loads(b.files["manifest.json"])
    assert b.manifest["schema"] == "virk-bundle/1" and b.manifest["model"] == MODEL
    assert b.manifest["alert"]["labels"]["alertname"] == "VisionModelDrift"
    assert b.manifest["cause"] == ctx.diagnosis["cam1"]["top"] and b.manifest["sources"] == ["cam1"]
    assert [f["trace_id"] for f in b.manifest["frames"]] == [f.trace_id for f in ctx.frames]
    assert set(b.manifest["files"]) == set(b.files) - {"manifest.json", "manifest.sha256"}
    assert {"report.html", "replay.py", "embeddings.npz"} <= set(b.files)
    assert "numpy" in b.manifest["packages"] and b.manifest["diagnosis"] == ctx.diagnosis
    # frames are the recorder's bytes, reference samples are lossless
    assert [b.files[f["path"]] for f in b.manifest["frames"]] == [f.encoded for f in ctx.frames]
    assert all(np.array_equal(a, r) for a, r in zip(b.reference_frames(), ctx.reference_frames))
    embeddings = b.embeddings()
    assert np.array_equal(embeddings["reference"], ctx.embeddings["reference"])
    # entries sorted with fixed timestamps
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_key_is_per_firing():
    a = alert()
    assert bundle_key(MODEL, a) == f"{MODEL}/a1b2c3d4e5f60718/20261126T010203.456789000Z/bundle.zip"
    assert bundle_key("my model/../x", a).startswith("my_model_.._x/")  # one path segment, no traversal


def _rezip(data: bytes, change) -> bytes:
    files = {i.filename: zipfile.ZipFile(io.BytesIO(data)).read(i) for i in zipfile.ZipFile(io.BytesIO(data)).infolist()}
    change(files)
    return write_zip(files)


def test_tampered_frame_fails_verify(built, tmp_path):
    def flip(files):
        frame = bytearray(files["frames/00003.jpg"])
        frame[len(frame) // 2] ^= 0xFF
        files["frames/00003.jpg"] = bytes(frame)

    tampered = _rezip(built[0], flip)
    with pytest.raises(BundleError, match="frames/00003.jpg: sha256 mismatch"):
        read_bundle(tampered)
    path = tmp_path / "tampered.zip"
    path.write_bytes(tampered)
    result = CliRunner().invoke(bundle_cli, ["verify", str(path)])
    assert result.exit_code == 1 and "frames/00003.jpg" in result.output
    good = tmp_path / "good.zip"
    good.write_bytes(built[0])
    result = CliRunner().invoke(bundle_cli, ["verify", str(good)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_tampered_manifest_and_extra_file_fail(built):
    def edit_manifest(files):
        manifest = json.loads(files["manifest.json"])
        manifest["cause"] = "none"
        files["manifest.json"] = json.dumps(manifest).encode()

    with pytest.raises(BundleError, match="manifest.json: sha256"):
        read_bundle(_rezip(built[0], edit_manifest))
    with pytest.raises(BundleError, match="extra.bin: not listed"):
        read_bundle(_rezip(built[0], lambda files: files.update({"extra.bin": b"x"})))


def _zip_with(name: str, mode: int = stat.S_IFREG | 0o644, data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        archive.writestr(info, data)
        archive.writestr("manifest.json", b"{}")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name,mode,message",
    [
        ("../evil.txt", stat.S_IFREG | 0o644, "traversal"),
        ("frames/../../evil.txt", stat.S_IFREG | 0o644, "traversal"),
        ("/etc/passwd", stat.S_IFREG | 0o644, "absolute"),
        ("C:/evil.txt", stat.S_IFREG | 0o644, "absolute"),
        ("frames\\..\\evil.txt", stat.S_IFREG | 0o644, "traversal"),
        ("frames/link.jpg", stat.S_IFLNK | 0o777, "link"),
    ],
)
def test_unsafe_entries_refused(name, mode, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.zip"
    path.write_bytes(_zip_with(name, mode, b"/etc/passwd"))
    with pytest.raises(BundleError, match=message):
        read_bundle(path)
    result = CliRunner().invoke(bundle_cli, ["verify", str(path)])
    assert result.exit_code != 0 and message in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip"]  # nothing was extracted


def test_not_a_zip_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="not a zip"):
        read_bundle(b"PK nonsense")


def test_resolution_recorded_and_still_verifies(built):
    resolved = with_resolution(built[0], {"status": "resolved", "endsAt": "2026-11-26T01:09:00.000000000Z"})
    b = read_bundle(resolved)
    assert b.manifest["resolved"]["endsAt"].startswith("2026-11-26T01:09")
    assert b.files["frames/00000.jpg"] == read_bundle(built[0]).files["frames/00000.jpg"]


def test_cli_show_and_replay(built, tmp_path, monkeypatch):
    path = tmp_path / "bundle.zip"
    path.write_bytes(built[0])
    result = CliRunner().invoke(bundle_cli, ["show", str(path)])
    assert result.exit_code == 0, result.output
    top = read_bundle(built[0]).manifest["diagnosis"]["cam1"]["top"]
    assert f"diagnosis[cam1]    {top}" in result.output and "a1b2c3d4e5f60718" in result.output and "16" in result.output

    # the user's predict, importable from the working directory
    (tmp_path / "user_model.py").write_text(
        "import numpy as np\ncalls = []\ndef predict(frames):\n    calls.append(frames.shape)\n    return frames.reshape(len(frames), -1).mean(axis=1)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(bundle_cli, ["replay", str(path), "--predict", "user_model:predict"])
    assert result.exit_code == 0, result.output
    import user_model

    assert user_model.calls == [(16, 480, 640, 3)]  # every recorded frame, decoded, one batch
    rows = {line.split("│")[2].strip(): line for line in result.output.splitlines() if line.count("│") >= 5}
    # the bundle's window embeddings are far from the reference: drift recomputed = recorded
    assert "True" in rows["drift"] and "yes" in rows["drift"], result.output
    assert "predict" in rows
    # the fingerprinter restored from the bundled .virkref, over the recorded window properties,
    # gives the recorded cause again
    assert f"{top} " in rows["cause"] and "yes" in rows["cause"], result.output
    assert "reproduced: yes" in result.output

    result = CliRunner().invoke(bundle_cli, ["replay", str(path), "--predict", "no_such_module:predict"])
    assert result.exit_code != 0 and "cannot load" in result.output


def test_cli_fetch_from_local_store(built, tmp_path):
    store = LocalStore(tmp_path / "store")
    a = alert()
    store.put(bundle_key(MODEL, a), built[0], {"model": MODEL})
    out = tmp_path / "fetched.zip"
    result = CliRunner().invoke(bundle_cli, ["fetch", a.fingerprint, "--store", str(tmp_path / "store"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == built[0]
    result = CliRunner().invoke(bundle_cli, ["fetch", "../../etc", "--store", str(tmp_path / "store")])
    assert result.exit_code != 0 and "invalid alert fingerprint" in result.output
    result = CliRunner().invoke(bundle_cli, ["fetch", "0000000000000000", "--store", str(tmp_path / "store")])
    assert result.exit_code != 0 and "no bundle" in result.output


def test_replay_judges_the_tested_frames_not_the_newest(ctx):
    # the camera recovered after the last test: the newest frames are bright again
    later = [dataclasses.replace(f, frame_id=f.frame_id + 100, timestamp=f.timestamp + 100) for f in ctx.frames[:8]]
    tested = [f.frame_id for f in ctx.frames[8:]]
    diagnosis = {"cam1": {**ctx.diagnosis["cam1"], "frame_ids": tested}}
    recovered = dataclasses.replace(ctx, frames=ctx.frames + later, diagnosis=diagnosis)
    result = replay(read_bundle(build_bundle(alert(), MODEL, recovered)[0]))
    cause = next(c for c in result.comparisons if c.what == "cause")
    assert cause.recorded == cause.replayed == ctx.diagnosis["cam1"]["top"] != "none", result

    # a bundle that does not name them (or lost some): the newest window, and a note when lost
    unnamed = replay(read_bundle(build_bundle(alert(), MODEL, dataclasses.replace(recovered, diagnosis=ctx.diagnosis))[0]))
    assert next(c for c in unnamed.comparisons if c.what == "cause").replayed != cause.recorded, unnamed
    lost = {"cam1": {**ctx.diagnosis["cam1"], "frame_ids": [*tested, 999]}}
    result = replay(read_bundle(build_bundle(alert(), MODEL, dataclasses.replace(recovered, diagnosis=lost))[0]))
    assert any("not all in the bundle" in note for note in result.notes), result.notes
