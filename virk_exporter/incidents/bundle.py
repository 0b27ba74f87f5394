"""Incident bundles: one zip per alert firing, built with deterministic bytes and read safely.

Layout (docs/design.md)::

    manifest.json        schema, alert, model, sources, frames (trace ids), drift timeline,
                         diagnosis, config, package versions, sha256 of every other file
    manifest.sha256      sha256 of manifest.json, so a corrupted manifest fails verify too
    frames/NNNNN.jpg     the recorder's frames, as recorded (JPEG or PNG)
    reference/NNN.png    reference samples (lossless)
    reference/reference.virkref   the saved reference, when the exporter has one
    embeddings.npz       named embedding arrays ("reference", "window/<source>", ...)
    report.html          self-contained report
    replay.py            `python replay.py --predict module:function`

Determinism: entries sorted, fixed timestamps and permissions, JSON with sorted keys, an
npz written entry by entry (numpy's own savez stamps the current time). Reading never touches
the filesystem and refuses absolute paths, ``..``, links, duplicates and oversized entries.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import re
import stat
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from virk_exporter.frames import evenly_spaced
from virk_exporter.incidents.report import render_report
from virk_exporter.incidents.webhook import Alert
from virk_exporter.worker.recorder import RecordedFrame, decode_image, encode_frame

SCHEMA = "virk-bundle/1"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
MAX_ENTRY_BYTES = 1 << 30  # refuse zip bombs: no single entry over 1 GiB ...
MAX_TOTAL_BYTES = 4 << 30  # ... and no more than 4 GiB in all
MAX_ENTRIES = 200_000
_PACKAGES = ("virk-exporter", "numpy", "torch", "opencv-python-headless", "scipy", "prometheus-client", "minio")
_STORED = (".jpg", ".png", ".npz")  # already compressed: deflating again costs time for nothing

REPLAY_SCRIPT = '''"""Replay this incident: python replay.py --predict module:function [--bundle bundle.zip]

Needs virk-exporter installed (pip install virk-exporter). Same as
`virk-exporter bundle replay bundle.zip --predict module:function`.
"""
import sys
from pathlib import Path

from virk_exporter.commands.bundle import bundle

if __name__ == "__main__":
    args = sys.argv[1:]
    target = str(Path(__file__).with_name("bundle.zip"))
    if "--bundle" in args:
        i = args.index("--bundle")
        target = args[i + 1]
        del args[i : i + 2]
    bundle(["replay", target, *args])
'''


class BundleError(ValueError):
    """A bundle that cannot be read safely or whose hashes do not match."""


@dataclass
class IncidentContext:
    """What the monitoring worker knows when an alert arrives; the bundle freezes it.

    embeddings: named arrays; replay uses ``"reference"`` (reference embeddings) and
    ``"window/<source>"`` (the tested window of each source) when present.
    drift_timeline: dicts with timestamp, source, statistic, p_value, threshold, detected,
    fingerprint. diagnosis: per source, ``Diagnosis.to_dict()`` (JSON-ready).
    """

    frames: list[RecordedFrame]
    reference_frames: list[np.ndarray] = field(default_factory=list)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    drift_timeline: list[dict] = field(default_factory=list)
    diagnosis: dict[str, dict] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    reference_file: bytes | None = None
    predict: str | None = None  # the decorated function as module:qualname, for `bundle replay --predict`


def bundle_key(model: str, alert: Alert) -> str:
    """``<model>/<alert fingerprint>/<startsAt>/bundle.zip``: one key per alert firing."""
    return f"{alert_prefix(model, alert.fingerprint)}/{alert.starts_at.stamp()}/bundle.zip"


@dataclass(frozen=True)
class BundleKey:
    """A bundle's object key read back: ``<model>/<alert fingerprint>/<startsAt stamp>/bundle.zip``."""

    model: str
    fingerprint: str
    stamp: str  # Timestamp.stamp() of the alert's startsAt: sorts in time order

    @classmethod
    def parse(cls, key: str) -> BundleKey | None:
        """The key's parts, or None for an object that is not a bundle (tags, other files)."""
        parts = key.split("/")
        if len(parts) != 4 or parts[-1] != "bundle.zip":
            return None
        return cls(parts[0], parts[1], parts[2])


def bundle_tags(manifest: dict[str, Any]) -> dict[str, str]:
    """Object tags: what people filter bundles by in the MinIO console."""
    return {
        "model": manifest["model"],
        "cause": str(manifest.get("cause", "unknown")),
        "alertname": manifest["alert"]["labels"].get("alertname", ""),
    }


def alert_prefix(model: str, fingerprint: str) -> str:
    # model names are free text (a Prometheus label); keys must stay path-safe
    safe_model = re.sub(r"[^A-Za-z0-9._=+@:-]", "_", model).lstrip(".") or "_"
    return f"{safe_model}/{fingerprint}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n").encode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz that ``np.load`` reads, with fixed timestamps (np.savez's are the current time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            array = io.BytesIO()
            np.lib.format.write_array(array, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", ZIP_EPOCH), array.getvalue())
    return buffer.getvalue()


def write_zip(files: dict[str, bytes]) -> bytes:
    """Zip ``files`` with sorted names, fixed timestamps and mode 0644: same files, same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, ZIP_EPOCH)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_STORED if name.endswith(_STORED) else zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name], compresslevel=6)
    return buffer.getvalue()


def top_cause(alert: Alert, diagnosis: dict[str, dict]) -> str:
    """The cause to tag the bundle with: the alerting source's diagnosis, else the alert's
    ``fingerprint`` label (virk_drift_detected carries it), else any diagnosed cause."""
    source = alert.labels.get("source")
    if source in diagnosis and diagnosis[source].get("top"):
        return str(diagnosis[source]["top"])
    if alert.labels.get("fingerprint"):
        return alert.labels["fingerprint"]
    tops = sorted(str(d.get("top")) for d in diagnosis.values() if d.get("top") not in (None, "none"))
    return tops[0] if tops else "unknown"


def _onset(alert: Alert, timeline: list[dict]) -> float:
    """Where "before" ends: the first detection in the timeline, else the alert's start."""
    detected = [float(p["timestamp"]) for p in timeline if p.get("detected")]
    return min(detected) if detected else alert.starts_at.unix()


_png_cache: dict[bytes, bytes] = {}
_png_cache_lock = threading.Lock()


def _encode_png(rgb: np.ndarray) -> bytes:
    """Lossless reference sample. The reference rarely changes between alerts and PNG costs
    ~30 ms per 640x480 frame, so encodings are cached by content digest (bounded)."""
    digest = hashlib.sha1(np.ascontiguousarray(rgb).data, usedforsecurity=False).digest() + repr(rgb.shape).encode()
    with _png_cache_lock:
        cached = _png_cache.get(digest)
    if cached is not None:
        return cached
    encoded = encode_frame(rgb, "png")
    with _png_cache_lock:
        if len(_png_cache) >= 512:
            _png_cache.clear()
        _png_cache[digest] = encoded
        return _png_cache[digest]


def build_bundle(alert: Alert, model: str, context: IncidentContext) -> tuple[bytes, dict[str, Any]]:
    """The bundle bytes and its manifest. Same alert and context → same bytes."""
    files: dict[str, bytes] = {}
    frame_entries = []
    for index, frame in enumerate(context.frames):
        path = f"frames/{index:05d}.{'jpg' if frame.format == 'jpeg' else 'png'}"
        files[path] = frame.encoded
        frame_entries.append(
            {
                "path": path,
                "frame_id": frame.frame_id,
                "timestamp": frame.timestamp,
                "source": frame.source,
                "shape": list(frame.shape),
                "format": frame.format,
                "trace_id": frame.trace_id,
                "span_id": frame.span_id,
                "output": frame.output,
                "properties": frame.properties,
                "tags": frame.tags,
            }
        )
    reference_paths = []
    for index, rgb in enumerate(context.reference_frames):
        path = f"reference/{index:03d}.png"
        files[path] = _encode_png(rgb)
        reference_paths.append(path)
    if context.reference_file is not None:
        files["reference/reference.virkref"] = context.reference_file
    files["embeddings.npz"] = write_npz(context.embeddings)
    files["replay.py"] = REPLAY_SCRIPT.encode()

    onset = _onset(alert, context.drift_timeline)
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "model": model,
        "alert": alert.to_dict(),
        "resolved": None,
        "cause": top_cause(alert, context.diagnosis),
        "onset": onset,
        "sources": sorted({f.source for f in context.frames}),
        "frames": frame_entries,
        "reference": reference_paths,
        "reference_file": "reference/reference.virkref" if context.reference_file is not None else None,
        "embeddings": {k: list(np.shape(v)) for k, v in sorted(context.embeddings.items())},
        "drift_timeline": context.drift_timeline,
        "diagnosis": context.diagnosis,
        "config": context.config,
        "predict": context.predict,
        "packages": package_versions(),
    }
    before = [f for f in context.frames if f.timestamp < onset]
    after = [f for f in context.frames if f.timestamp >= onset]
    # only the frames the report shows get decoded (decoding all 128 would dominate build time)
    files["report.html"] = render_report(
        manifest, before=evenly_spaced(before, 6), after=evenly_spaced(after, 6), reference=list(context.reference_frames), reference_file=context.reference_file
    )
    return _seal(files, manifest), manifest



def _seal(files: dict[str, bytes], manifest: dict[str, Any]) -> bytes:
    """Hash every file into the manifest, hash the manifest, zip it all."""
    content = {k: v for k, v in files.items() if k not in ("manifest.json", "manifest.sha256")}
    manifest = dict(manifest, files={name: sha256(data) for name, data in sorted(content.items())})
    manifest_bytes = _json(manifest)
    return write_zip({**content, "manifest.json": manifest_bytes, "manifest.sha256": (sha256(manifest_bytes) + "\n").encode()})


# --- reading -----------------------------------------------------------------------------------
# A bundle may come from anywhere (a ticket, a colleague): nothing read from it may cost
# unbounded memory. Hashes stream; an entry is read whole only when it is used, within a limit
# by kind; images are measured from their headers before they are decoded.
MAX_MANIFEST_BYTES = 64 << 20
MAX_READ_BYTES = 128 << 20  # any entry read whole (embeddings.npz, the .virkref, report.html)
MAX_IMAGE_BYTES = 32 << 20  # one encoded frame or reference sample
MAX_IMAGE_PIXELS = 4096 * 4096  # one decoded frame
MAX_DECODED_BYTES = 384 << 20  # all frames decoded together (replay stacks a source's frames)
_CHUNK = 1 << 20


def _check_entry(info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"refusing absolute path {name!r} in the bundle")
    if "\\" in name or any(p in ("..", ".") for p in parts) or "" in parts[:-1]:
        raise BundleError(f"refusing path {name!r} in the bundle (traversal or odd separators)")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise BundleError(f"refusing link {name!r} in the bundle")
    if info.is_dir() or (stat.S_IFMT(mode) and not stat.S_ISREG(mode)):  # no type bits (Python's writestr): a file
        raise BundleError(f"refusing non-file entry {name!r} in the bundle")
    if info.file_size > MAX_ENTRY_BYTES:
        raise BundleError(f"entry {name!r} is {info.file_size} bytes, over the {MAX_ENTRY_BYTES} limit")


class _Entries(Mapping[str, bytes]):
    """The zip's entries by name; an entry is read when asked for, never all at once."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self._archive = archive
        self._infos = {i.filename: i for i in archive.infolist()}

    def __getitem__(self, name: str) -> bytes:
        return self.read(name, MAX_READ_BYTES)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the entry
        return name in self._infos

    def size(self, name: str) -> int:
        return self._infos[name].file_size

    def chunks(self, name: str) -> Iterator[bytes]:
        """The entry in 1 MiB pieces; refuses CRC errors and sizes that differ from the header."""
        info = self._infos[name]
        seen = 0
        try:
            with self._archive.open(info) as handle:
                while chunk := handle.read(min(_CHUNK, info.file_size + 1 - seen)):
                    seen += len(chunk)
                    if seen > info.file_size:  # a lying header cannot inflate unbounded
                        break
                    yield chunk
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as error:
            raise BundleError(f"{name}: unreadable: {error}") from None
        if seen != info.file_size:
            raise BundleError(f"{name}: size does not match its header")

    def read(self, name: str, limit: int) -> bytes:
        if name not in self._infos:
            raise KeyError(name)
        if self._infos[name].file_size > limit:
            raise BundleError(f"{name}: {self._infos[name].file_size} bytes, over the {limit} bytes this reader accepts for it")
        return b"".join(self.chunks(name))

    def digest(self, name: str) -> str:
        hasher = hashlib.sha256()
        for chunk in self.chunks(name):
            hasher.update(chunk)
        return hasher.hexdigest()


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, without decoding; None if neither."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            at += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            return int.from_bytes(data[at + 7 : at + 9], "big"), int.from_bytes(data[at + 5 : at + 7], "big")
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def _check_pixels(path: str, size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_IMAGE_PIXELS or 0 in size:
        raise BundleError(f"{path}: {size[0]}x{size[1]} pixels, over the {MAX_IMAGE_PIXELS} pixel limit for a frame")


def _decode(path: str, data: bytes) -> np.ndarray:
    size = image_size(data)
    if size is None:
        raise BundleError(f"{path}: not a PNG or JPEG image")
    _check_pixels(path, size)
    rgb = decode_image(data)
    if rgb is None:
        raise BundleError(f"{path}: does not decode as an image")
    return rgb


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BundleError(f"manifest: {where} must be {names}, got {type(value).__name__}")
    return value


def check_manifest(manifest: Any) -> dict[str, Any]:
    """The manifest's shape, as the readers (verify, show, replay) rely on it."""
    _expect(manifest, dict, "the manifest")
    if manifest.get("schema") != SCHEMA:
        raise BundleError(f"manifest schema is not {SCHEMA!r}")
    _expect(manifest.get("model"), str, "'model'")
    alert = _expect(manifest.get("alert"), dict, "'alert'")
    for name in ("fingerprint", "startsAt"):
        _expect(alert.get(name), str, f"'alert.{name}'")
    labels = _expect(alert.get("labels", {}), dict, "'alert.labels'")
    for key, value in labels.items():
        _expect(value, str, f"'alert.labels.{key}'")
    files = _expect(manifest.get("files", {}), dict, "'files'")
    for name, digest in files.items():
        _expect(digest, str, f"'files.{name}'")
    for i, entry in enumerate(_expect(manifest.get("frames", []), list, "'frames'")):
        _expect(entry, dict, f"'frames[{i}]'")
        _expect(entry.get("path"), str, f"'frames[{i}].path'")
        _expect(entry.get("source", ""), str, f"'frames[{i}].source'")
        _expect(entry.get("properties") or {}, dict, f"'frames[{i}].properties'")
    for i, path in enumerate(_expect(manifest.get("reference", []), list, "'reference'")):
        _expect(path, str, f"'reference[{i}]'")
    _expect(manifest.get("reference_file") or "", str, "'reference_file'")
    _expect(manifest.get("predict") or "", str, "'predict'")
    _expect(manifest.get("resolved") or {}, dict, "'resolved'")
    for i, point in enumerate(_expect(manifest.get("drift_timeline", []), list, "'drift_timeline'")):
        _expect(point, dict, f"'drift_timeline[{i}]'")
    for source, diagnosis in _expect(manifest.get("diagnosis", {}), dict, "'diagnosis'").items():
        _expect(diagnosis, dict, f"'diagnosis.{source}'")
    _expect(manifest.get("config", {}), dict, "'config'")
    for i, source in enumerate(_expect(manifest.get("sources", []), list, "'sources'")):
        _expect(source, str, f"'sources[{i}]'")
    return manifest


@dataclass
class Bundle:
    """A read (or built) incident bundle: its manifest and its files, checked against their digests."""

    manifest: dict[str, Any]
    files: Mapping[str, bytes]  # entries read on access (an _Entries for a read bundle)

    def _digest(self, name: str) -> str:
        if isinstance(self.files, _Entries):
            return self.files.digest(name)
        return sha256(self.files[name])

    def problems(self) -> list[str]:
        """Every hash mismatch, missing or unlisted file (empty: the bundle verifies). Hashes
        are computed streaming: a huge entry costs time, not memory."""
        found: list[str] = []
        expected = self.files.get("manifest.sha256", b"")[:200].decode(errors="replace").strip()
        if expected != self._digest("manifest.json"):
            found.append("manifest.json: sha256 does not match manifest.sha256")
        listed: dict[str, str] = self.manifest.get("files", {})
        for name, digest in sorted(listed.items()):
            if name not in self.files:
                found.append(f"{name}: listed in the manifest but missing")
                continue
            try:
                if self._digest(name) != digest:
                    found.append(f"{name}: sha256 mismatch")
            except BundleError as error:  # CRC error, truncated entry: one more problem, not a crash
                found.append(str(error))
        for name in sorted(set(self.files) - set(listed) - {"manifest.json", "manifest.sha256"}):
            found.append(f"{name}: not listed in the manifest")
        return found

    def verify(self) -> None:
        found = self.problems()
        if found:
            raise BundleError("bundle does not verify: " + "; ".join(found))

    @property
    def alert(self) -> dict[str, Any]:
        return self.manifest["alert"]

    def _image(self, path: str) -> bytes:
        if isinstance(self.files, _Entries):
            return self.files.read(path, MAX_IMAGE_BYTES)
        return self.files[path]

    def _decode_all(self, paths: list[str]) -> list[np.ndarray]:
        """Decoded images, within MAX_DECODED_BYTES together (sizes come from the headers first)."""
        total = 0
        for path in paths:
            size = image_size(self._image(path)[:65536])
            if size is not None:
                _check_pixels(path, size)
                total += size[0] * size[1] * 3
        if total > MAX_DECODED_BYTES:
            raise BundleError(f"{len(paths)} images decode to {total} bytes, over the {MAX_DECODED_BYTES} byte limit")
        return [_decode(path, self._image(path)) for path in paths]

    def frames(self) -> list[tuple[dict[str, Any], np.ndarray]]:
        """(manifest entry, uint8 RGB frame) per recorded frame, oldest first."""
        entries = self.manifest.get("frames", [])
        return list(zip(entries, self._decode_all([e["path"] for e in entries])))

    def reference_frames(self) -> list[np.ndarray]:
        return self._decode_all(self.manifest.get("reference", []))

    def embeddings(self) -> dict[str, np.ndarray]:
        try:
            blob = io.BytesIO(self.files["embeddings.npz"])
        except KeyError:
            return {}
        try:
            with zipfile.ZipFile(blob) as inner:  # an npz is a zip: its arrays may inflate too
                if sum(i.file_size for i in inner.infolist()) > MAX_READ_BYTES:
                    raise BundleError(f"embeddings.npz expands past {MAX_READ_BYTES} bytes")
            with np.load(blob, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
            raise BundleError(f"embeddings.npz: unreadable: {error}") from None

    def reference_file(self) -> bytes | None:
        path = self.manifest.get("reference_file")
        return self.files.get(path) if path else None


def read_bundle(source: bytes | str | Path, verify: bool = True) -> Bundle:
    """Open a bundle, refusing unsafe entries and malformed manifests; verify hashes unless told not to."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
    except (zipfile.BadZipFile, ValueError) as error:
        raise BundleError(f"not a zip file: {error}") from None
    except OSError as error:
        raise BundleError(f"cannot read {source}: {error}") from None
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise BundleError(f"{len(infos)} entries, over the {MAX_ENTRIES} limit")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise BundleError("duplicate entry names in the bundle")
    for info in infos:
        _check_entry(info)
    if sum(i.file_size for i in infos) > MAX_TOTAL_BYTES:
        raise BundleError(f"bundle expands past {MAX_TOTAL_BYTES} bytes")
    files = _Entries(archive)
    if "manifest.json" not in files:
        raise BundleError("no manifest.json in the bundle")
    try:
        manifest = json.loads(files.read("manifest.json", MAX_MANIFEST_BYTES))
    except RecursionError:
        raise BundleError("manifest.json is nested too deeply to be a manifest") from None
    except ValueError as error:
        raise BundleError(f"manifest.json is not valid JSON: {error}") from None
    bundle = Bundle(check_manifest(manifest), files)
    if verify:
        bundle.verify()
    for entry in manifest.get("frames", []) + [{"path": p} for p in manifest.get("reference", [])]:
        if entry["path"] not in files:
            raise BundleError(f"manifest names {entry['path']!r}, which the bundle lacks")
    return bundle


def with_resolution(data: bytes, resolved: dict[str, Any]) -> bytes:
    """The same bundle with ``manifest.resolved`` set (verified first, resealed after)."""
    bundle = read_bundle(data)
    manifest = {k: v for k, v in bundle.manifest.items() if k != "files"}
    manifest["resolved"] = resolved
    return _seal(bundle.files, manifest)
