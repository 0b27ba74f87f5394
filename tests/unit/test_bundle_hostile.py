"""Bundles from anywhere: every malformed one gets a one-line `Error:` from the CLI (no
traceback, exit code != 0), and nothing read from a bundle can cost unbounded memory."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from incident_helpers import MODEL, alert, context

from virk_exporter.commands.bundle import bundle as bundle_cli
from virk_exporter.incidents.bundle import (
    SCHEMA,
    BundleError,
    _seal,
    build_bundle,
    image_size,
    read_bundle,
    write_zip,
)
from virk_exporter.incidents.replay import _check_embedder_id, replay


@pytest.fixture(scope="module")
def good() -> bytes:
    return build_bundle(alert(), MODEL, context(n_frames=6))[0]


def _parts(data: bytes) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        files = {n: z.read(n) for n in z.namelist()}
    return json.loads(files["manifest.json"]), files


def resealed(data: bytes, change) -> bytes:
    """The bundle with its manifest (and files) changed, hashes recomputed: it verifies."""
    manifest, files = _parts(data)
    change(manifest, files)
    return _seal(files, {k: v for k, v in manifest.items() if k != "files"})


def raw_manifest(data: bytes, text: bytes) -> bytes:
    _, files = _parts(data)
    files["manifest.json"] = text
    return write_zip(files)


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def cli(tmp_path, command: str, data: bytes):
    path = tmp_path / "crafted.zip"
    path.write_bytes(data)
    return CliRunner().invoke(bundle_cli, [command, str(path)])


def set_frames_to(files_of):
    def change(manifest, files):
        for entry in manifest["frames"]:
            files[entry["path"]] = files_of(entry)
    return change


CRAFTED = {
    "deep-manifest": (lambda g: raw_manifest(g, b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    "files-list": (lambda g: raw_manifest(g, json.dumps({"schema": SCHEMA, "model": "m", "alert": {"fingerprint": "f", "startsAt": "s"}, "files": []}).encode()),
                   "'files' must be dict"),
    "frames-int": (lambda g: resealed(g, lambda m, f: m.update(frames=3)), "'frames' must be list"),
    "frame-string": (lambda g: resealed(g, lambda m, f: m.update(frames=["frames/00000.jpg"])), "'frames[0]' must be dict"),
    "no-alert": (lambda g: resealed(g, lambda m, f: m.pop("alert")), "'alert' must be dict"),
    "alert-fingerprint-int": (lambda g: resealed(g, lambda m, f: m["alert"].update(fingerprint=7)), "'alert.fingerprint' must be str"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
@pytest.mark.parametrize("command", ["verify", "show", "replay"])
def test_malformed_manifest_is_one_error_line(good, tmp_path, name, command):
    craft, message = CRAFTED[name]
    result = cli(tmp_path, command, craft(good))
    assert result.exit_code not in (0, None), result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, KeyError, AttributeError, RecursionError))


def test_a_frame_that_is_not_an_image_is_an_error_on_replay(good, tmp_path):
    result = cli(tmp_path, "replay", resealed(good, set_frames_to(lambda e: b"not an image at all")))
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "not a PNG or JPEG image" in result.output


def test_a_huge_image_is_refused_before_it_is_decoded(good, tmp_path):
    """A 16000x16000 PNG header (the real one is 0.75 MB and decodes to 768 MB), listed for every frame."""
    assert image_size(png_header(16000, 16000)) == (16000, 16000)
    result = cli(tmp_path, "replay", resealed(good, set_frames_to(lambda e: png_header(16000, 16000))))
    assert result.exit_code == 1 and "16000x16000 pixels, over the" in result.output


def test_frames_that_together_decode_too_large_are_refused(good):
    def many(manifest, files):
        entry = manifest["frames"][0]
        files[entry["path"]] = png_header(4000, 4000)  # 48 MB decoded each: within the per-frame limit
        manifest["frames"] = [entry] * 12
    with pytest.raises(BundleError, match="decode to .* over the"):
        read_bundle(resealed(good, many)).frames()


def test_jpeg_size_comes_from_its_header():
    import cv2

    ok, jpeg = cv2.imencode(".jpg", np.zeros((48, 80, 3), np.uint8))
    assert ok and image_size(jpeg.tobytes()) == (80, 48)


def test_entries_are_hashed_streaming_and_a_big_entry_is_not_read_whole(good, tmp_path):
    def add_big(manifest, files):
        files["big.bin"] = b"\0" * (40 << 20)
    data = resealed(good, add_big)
    b = read_bundle(data)  # verifies, streaming
    assert b.files.size("big.bin") == 40 << 20
    tampered = data.replace(b"report.html", b"report.htmX", 1)
    result = cli(tmp_path, "verify", tampered)
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_an_embedder_size_from_the_bundle_is_bounded(good):
    with pytest.raises(ValueError, match="outside 1..256"):
        _check_embedder_id("random-conv/v2/size=3000/seed=0/0123456789ab")
    _check_embedder_id("random-conv/v2/size=64/seed=0/0123456789ab")
    crafted = resealed(good, lambda m, f: m["config"].update(embedder_id="random-conv/v2/size=3000/seed=0/0123456789ab"))
    b = read_bundle(crafted)
    b.manifest["reference_file"] = None  # the bundled .virkref would name the real embedder
    notes = replay(b).notes
    assert any("outside 1..256" in n for n in notes), notes


def test_a_zip_written_by_pythons_writestr_is_a_file_not_a_special_entry(good):
    manifest, files = _parts(good)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:  # names as str: mode 0o600 and no file-type bits
        for name, data in files.items():
            z.writestr(name, data)
    assert read_bundle(buffer.getvalue()).manifest["model"] == MODEL


def test_verify_never_reads_an_entry_whole(good, tmp_path, monkeypatch):
    """Entries over the whole-read limit are still hashed (streaming) by verify."""
    import virk_exporter.incidents.bundle as bundle_module

    monkeypatch.setattr(bundle_module, "MAX_READ_BYTES", 1 << 20)
    monkeypatch.setattr(bundle_module, "MAX_IMAGE_BYTES", 1 << 20)
    data = resealed(good, lambda m, f: f.update({"big.npz": b"\0" * (3 << 20)}))  # .npz: stored, not deflated
    result = cli(tmp_path, "verify", data)
    assert result.exit_code == 0 and result.output.startswith("OK"), result.output
    at = data.index(b"big.npz") + (1 << 20)  # inside the entry's bytes, after its local header
    corrupt = data[:at] + b"\1" * 4096 + data[at + 4096 :]
    result = cli(tmp_path, "verify", corrupt)
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
