"""Reference files (.virkref): round trip, embedder pinning, sources, CLI build and calibrate."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from virk_exporter.demo import photos
from virk_exporter.commands.calibrate import calibrate
from virk_exporter.commands.reference import reference
from virk_exporter.embed.embedders import RandomConvEncoder
from virk_exporter.reference.build import Reference, ReferenceMismatchError, build_reference, read_frames

SIZE = (96, 128)


@pytest.fixture(scope="module")
def encoder() -> RandomConvEncoder:
    return RandomConvEncoder(device="cpu")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return photos.camera_stream("coffee", 24, size=SIZE, seed=1)


def test_round_trip(tmp_path: Path, encoder: RandomConvEncoder, frames: np.ndarray) -> None:
    ref = build_reference(frames, encoder, progress=False, batch_size=10)
    src = ref["default"]
    assert src.n_frames == 24 and src.embeddings.shape == (24, 512) and src.frame_shape == (*SIZE, 3)
    np.testing.assert_allclose(src.embeddings, encoder.embed(frames), rtol=1e-5, atol=1e-6)
    assert len(src.properties["brightness"]) == 24
    assert src.fingerprint_state, "the fingerprinter's state is saved with the reference"
    path = ref.save(tmp_path / "ref.virkref")
    back = Reference.load(path, embedder_id=encoder)
    b = back["default"]
    assert back.embedder_id == encoder.id and back.dim == 512
    np.testing.assert_array_equal(b.embeddings, src.embeddings)
    assert b.properties.keys() == src.properties.keys()
    for k in src.properties:
        np.testing.assert_array_equal(b.properties[k], src.properties[k])
    assert b.fingerprint_state.keys() == src.fingerprint_state.keys()
    for k in src.fingerprint_state:
        np.testing.assert_array_equal(b.fingerprint_state[k], src.fingerprint_state[k])
    assert len(b.thumbnails) == len(src.thumbnails) > 0
    np.testing.assert_array_equal(b.thumbnails[0], src.thumbnails[0])  # PNG: lossless
    assert b.fingerprinter() is not None
    header = json.loads(zipfile.ZipFile(path).read("header.json"))
    assert header["format"] == "virkref" and header["embedder"]["id"] == encoder.id


def test_mismatched_embedder_is_rejected(tmp_path: Path, encoder: RandomConvEncoder, frames: np.ndarray) -> None:
    path = build_reference(frames[:8], encoder, progress=False).save(tmp_path / "r.virkref")
    other = RandomConvEncoder(seed=1)
    with pytest.raises(ReferenceMismatchError, match="cannot be compared") as err:
        Reference.load(path, embedder_id=other)
    assert encoder.id in str(err.value) and other.id in str(err.value) and "reference build" in str(err.value)
    Reference.load(path)  # without an expectation it loads


def test_not_a_reference_and_newer_format(tmp_path: Path, encoder: RandomConvEncoder, frames: np.ndarray) -> None:
    bogus = tmp_path / "bogus.virkref"
    bogus.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a .virkref"):
        Reference.load(bogus)
    path = build_reference(frames[:4], encoder, progress=False).save(tmp_path / "r.virkref")
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    header = json.loads(members["header.json"])
    header["format_version"] = 99
    members["header.json"] = json.dumps(header).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(ValueError, match="upgrade"):
        Reference.load(path)


def test_per_source_references(encoder: RandomConvEncoder, frames: np.ndarray) -> None:
    other = photos.camera_stream("rocket", 6, size=SIZE, seed=2)
    by_map = build_reference({"cam-a": frames[:6], "cam/b?": other}, encoder, progress=False)
    assert set(by_map.sources) == {"cam-a", "cam/b?"}
    labels = ["x", "y"] * 6
    by_label = build_reference(iter(list(np.concatenate([frames[:6], other]))), encoder, sources=labels, progress=False)
    assert by_label["x"].n_frames == 6 and by_label["y"].n_frames == 6


def write_images(directory: Path, frames: np.ndarray) -> None:
    directory.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(directory / f"{i:04d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))


def test_cli_build_from_directory_and_video(tmp_path: Path, frames: np.ndarray) -> None:
    write_images(tmp_path / "imgs", frames[:12])
    runner = CliRunner()
    out = tmp_path / "dir.virkref"
    res = runner.invoke(reference, ["build", "--frames", str(tmp_path / "imgs"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    ref = Reference.load(out, embedder_id=RandomConvEncoder())
    np.testing.assert_allclose(ref["default"].embeddings, RandomConvEncoder().embed(frames[:12]), rtol=1e-5, atol=1e-6)

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (SIZE[1], SIZE[0]))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    assert sum(1 for _ in read_frames(video)) == 24
    res = runner.invoke(reference, ["build", "--frames", str(video), "--out", str(tmp_path / "v.virkref"), "--every", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    built = Reference.load(tmp_path / "v.virkref")["default"]
    assert built.n_frames == 12 and built.span_s == pytest.approx(2.3)  # 24 frames at 10 fps, whatever --every keeps
    assert "spanning 2.3 s of footage" in res.output and "warning" in res.output and "under 60 s" in res.output
    assert Reference.load(out)["default"].span_s is None  # images carry no time

    res = runner.invoke(reference, ["build", "--frames", str(tmp_path / "empty"), "--out", str(out)])
    assert res.exit_code != 0
    res = runner.invoke(reference, ["show", str(out)])
    assert res.exit_code == 0 and "12 frames" in res.output and RandomConvEncoder().id in res.output
    assert "footage span not known" in res.output


@pytest.mark.parametrize("written, read", [(12.5, 12.5), (0, 0.0), ("12", None), (-1.0, None), (float("nan"), None), (True, None), (None, None)])
def test_a_references_footage_span_round_trips_and_a_hostile_one_reads_as_not_known(tmp_path: Path, encoder: RandomConvEncoder, frames: np.ndarray, written, read) -> None:
    path = build_reference(frames[:4], encoder, progress=False, span_s=3.0).save(tmp_path / "r.virkref")
    assert Reference.load(path)["default"].span_s == 3.0
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    header = json.loads(members["header.json"])
    header["sources"][0]["span_s"] = written
    members["header.json"] = json.dumps(header).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    assert Reference.load(path)["default"].span_s == read


def test_cli_calibrate_on_held_out_frames(tmp_path: Path, encoder: RandomConvEncoder) -> None:
    ref_frames = photos.camera_stream("coffee", 64, size=SIZE, seed=10)
    heldout = photos.camera_stream("coffee", 160, size=SIZE, seed=11)  # never in the reference
    write_images(tmp_path / "ref", ref_frames)
    write_images(tmp_path / "heldout", heldout)
    runner = CliRunner()
    assert runner.invoke(reference, ["build", "--frames", str(tmp_path / "ref"), "--out", str(tmp_path / "r.virkref"), "--no-progress"]).exit_code == 0
    res = runner.invoke(calibrate, ["--reference", str(tmp_path / "r.virkref"), "--frames", str(tmp_path / "heldout"),
                                    "--window", "32", "--test-every", "16", "--n-permutations", "50", "--target", "0.05"])
    assert res.exit_code == 0, res.output
    assert "recommended: p_val=" in res.output and "9 tests" in res.output
    assert "capture" in res.output and "only the embedding test" not in res.output  # both tests replayed
    # frames 20 levels brighter than the reference: the capture test flags them, and calibrate counts it
    brighter = np.clip(heldout.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    write_images(tmp_path / "brighter", brighter)
    res = runner.invoke(calibrate, ["--reference", str(tmp_path / "r.virkref"), "--frames", str(tmp_path / "brighter"),
                                    "--window", "32", "--test-every", "8", "--n-permutations", "50", "--target", "0.05"])
    assert res.exit_code == 0, res.output
    assert "capture-fault test flags 100.0% of clean windows" in res.output and "no setting keeps false alarms" in res.output
    # The reference's own frames are not held out: refused with a clear message.
    res = runner.invoke(calibrate, ["--reference", str(tmp_path / "r.virkref"), "--frames", str(tmp_path / "ref"), "--window", "32"])
    assert res.exit_code != 0 and "also in the reference" in res.output


def test_the_fingerprinter_of_a_built_reference_keeps_its_sample_in_stream_order(encoder: RandomConvEncoder) -> None:
    # brightness rises frame by frame, so stream order shows as a rising series
    levels = np.linspace(40, 200, 60)
    texture = photos.camera_stream("coffee", 1, size=SIZE, seed=0)[0].astype(np.float32)
    stream = np.stack([np.clip(texture * (level / texture.mean()), 0, 255) for level in levels]).astype(np.uint8)
    ref = build_reference(stream, encoder, progress=False, batch_size=16, fingerprint_frames=16, seed=3)
    series = ref["default"].fingerprinter().reference_series["brightness"]
    assert len(series) == 16
    assert np.all(np.diff(series) > 0)  # a uniform sample of the 60, in the order they came


def test_a_built_references_fingerprinter_measures_each_sampled_frame_against_its_real_predecessor(encoder: RandomConvEncoder) -> None:
    stream = photos.camera_stream("coffee", 48, size=SIZE, seed=4)
    ref = build_reference(stream, encoder, progress=False, batch_size=16, fingerprint_frames=12, seed=1)
    source = ref["default"]
    series = source.fingerprinter().reference_series
    assert len(series["brightness"]) == 12
    # frame_diff of a sampled frame is the stream's own (against the frame before it), not the
    # difference between two sampled frames far apart
    stream_diffs = source.properties["frame_diff"]
    assert all(np.any(np.isclose(d, stream_diffs)) for d in series["frame_diff"] if np.isfinite(d))
    assert len(source.thumbnails) == 6
