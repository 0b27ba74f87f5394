"""Saved references (``.virkref``): what "normal" looks like, per source.

File format, version 1 — a zip archive (readable with any zip tool and numpy):

``header.json``
    ``{"format": "virkref", "format_version": 1, "embedder": {"id": str, "dim": int},
    "created": ISO-8601 UTC, "virk_exporter": version,
    "sources": [{"name": str, "dir": "sources/<i>", "n_frames": int, "frame_shape": [H, W, 3],
    "properties": [names], "fingerprint_state": [keys], "thumbnails": int,
    "span_s": seconds of footage from the first sample to the last, or null (not known)}]}``
``sources/<i>/embeddings.npy``
    float32 [n_frames, dim], in frame order.
``sources/<i>/properties.npz``
    one float64 array per image property (``virk_exporter.fingerprint.properties``).
``sources/<i>/fingerprint.npz``
    the fingerprinter's state (``Fingerprinter.state()``), when the fingerprinter is installed.
``sources/<i>/thumbnails/<k>.png``
    a few downscaled frames, for humans and incident reports.

Sources are stored by index so any source name (a camera URL, say) is a safe path. The
embedder id pins the exact features: :meth:`Reference.load` refuses a reference built with a
different embedder or encoder version, because MMD between two feature spaces is meaningless.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from virk_exporter.config import default
from virk_exporter.frames import evenly_spaced
from virk_exporter.worker.recorder import decode_image

FORMAT = "virkref"
FORMAT_VERSION = 1
DEFAULT_SOURCE = "default"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
THUMBNAIL_SIDE = 160


class ReferenceMismatchError(ValueError):
    """The reference was built with another embedder (or encoder version) than the one in use."""


@dataclass
class SourceReference:
    """One source's saved reference: embeddings, property series, fingerprinter state, thumbnails."""

    name: str
    embeddings: np.ndarray  # float32 [n, d]
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    fingerprint_state: dict[str, np.ndarray] | None = None
    thumbnails: list[np.ndarray] = field(default_factory=list)  # uint8 RGB, small
    frame_shape: tuple[int, ...] = ()
    span_s: float | None = None  # seconds of footage the samples span (None: not known, e.g. images)

    @property
    def n_frames(self) -> int:
        return int(self.embeddings.shape[0])

    def fingerprinter(self) -> Any:
        """The fingerprinter restored from its saved state (None when none was saved)."""
        if self.fingerprint_state is None:
            return None
        from virk_exporter.fingerprint import Fingerprinter

        return Fingerprinter.from_state(self.fingerprint_state)


@dataclass
class Reference:
    """A ``.virkref``: the embedder's id and a reference per source (``save``/``load``)."""

    embedder_id: str
    sources: dict[str, SourceReference]
    created: str = ""

    @property
    def dim(self) -> int:
        return int(next(iter(self.sources.values())).embeddings.shape[1])

    def __getitem__(self, source: str) -> SourceReference:
        return self.sources[source]

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        entries = []
        tmp = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, src in enumerate(self.sources.values()):
                d = f"sources/{i}"
                zf.writestr(f"{d}/embeddings.npy", _npy(src.embeddings.astype(np.float32)))
                zf.writestr(f"{d}/properties.npz", _npz(src.properties))
                if src.fingerprint_state is not None:
                    zf.writestr(f"{d}/fingerprint.npz", _npz(src.fingerprint_state))
                for k, thumb in enumerate(src.thumbnails):
                    ok, png = cv2.imencode(".png", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR))
                    if ok:
                        zf.writestr(f"{d}/thumbnails/{k}.png", png.tobytes())
                entries.append(
                    {
                        "name": src.name,
                        "dir": d,
                        "n_frames": src.n_frames,
                        "frame_shape": list(src.frame_shape),
                        "properties": sorted(src.properties),
                        "fingerprint_state": None if src.fingerprint_state is None else sorted(src.fingerprint_state),
                        "thumbnails": len(src.thumbnails),
                        "span_s": src.span_s,
                    }
                )
            header = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "embedder": {"id": self.embedder_id, "dim": self.dim},
                "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "virk_exporter": _package_version(),
                "sources": entries,
            }
            zf.writestr("header.json", json.dumps(header, indent=2), compress_type=zipfile.ZIP_DEFLATED)
        os.replace(tmp, path)  # never leave a half-written reference under the real name
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], embedder_id: str | Any | None = None) -> Reference:
        """Read a ``.virkref``. With ``embedder_id`` (an id string or an embedder), refuse a
        reference built with different features."""
        expected = getattr(embedder_id, "id", embedder_id)
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{path} is not a .virkref reference (not a zip archive)") from exc
        with zf:
            try:
                header = json.loads(zf.read("header.json"))
            except KeyError as exc:
                raise ValueError(f"{path} is not a .virkref reference (no header.json)") from exc
            if header.get("format") != FORMAT:
                raise ValueError(f"{path} is not a .virkref reference (format {header.get('format')!r})")
            if int(header.get("format_version", -1)) > FORMAT_VERSION:
                raise ValueError(
                    f"{path} uses reference format version {header['format_version']}; this virk-exporter "
                    f"reads up to {FORMAT_VERSION}: upgrade virk-exporter"
                )
            found = header["embedder"]["id"]
            if expected is not None and found != expected:
                raise ReferenceMismatchError(
                    f"{path} was built with embedder {found!r}, but this exporter embeds frames with "
                    f"{expected!r}; features from different embedders cannot be compared. Rebuild it: "
                    f"virk-exporter reference build --frames DIR_OR_VIDEO --out {Path(path).name}"
                )
            sources = {}
            for entry in header["sources"]:
                d = entry["dir"]
                names = zf.namelist()
                fp = _read_npz(zf.read(f"{d}/fingerprint.npz")) if f"{d}/fingerprint.npz" in names else None
                thumbs = []
                for k in range(int(entry.get("thumbnails", 0))):
                    thumbs.append(decode_image(zf.read(f"{d}/thumbnails/{k}.png")))
                sources[entry["name"]] = SourceReference(
                    name=entry["name"],
                    embeddings=np.load(io.BytesIO(zf.read(f"{d}/embeddings.npy"))),
                    properties=_read_npz(zf.read(f"{d}/properties.npz")),
                    fingerprint_state=fp,
                    thumbnails=thumbs,
                    frame_shape=tuple(entry.get("frame_shape", ())),
                    span_s=_span(entry.get("span_s")),
                )
        return cls(embedder_id=found, sources=sources, created=header.get("created", ""))


def _span(value: Any) -> float | None:
    """A header's span: a finite number of seconds >= 0, else not known (older files have none)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        return None
    return float(value)


# -- building --------------------------------------------------------------------------------


def build_reference(
    frames_or_iterable: Any,
    embedder: Any,
    sources: Sequence[str] | None = None,
    progress: bool = True,
    batch_size: int = 64,
    fingerprint_frames: int = default("reference_frames"),
    n_thumbnails: int = 6,
    total: int | None = None,
    seed: int = 0,
    span_s: float | None = None,
) -> Reference:
    """Embed and summarise reference frames.

    ``frames_or_iterable``: an (N, H, W, 3) uint8 RGB array, an iterable of frames or of
    batches, or a mapping ``{source: frames}``. ``sources``: one source label per frame (for
    the array/iterable forms); default: everything is source ``"default"``. Frames are
    processed in batches, so an iterable (a video) is never held in memory; the fingerprinter
    is fitted on a uniform random sample of at most ``fingerprint_frames`` frames per source (as
    many as a learned reference holds), kept in stream order (the capture test replays it block
    by block, as time passed) and of each frame only what the fingerprinter needs.
    ``span_s``: the seconds of footage the frames span, recorded for every source (None: not
    known); the worker warns when it is short (``baseline.SHORT_SPAN_S``).
    """
    if isinstance(frames_or_iterable, Mapping):
        if sources is not None:
            raise ValueError("pass sources= or a {source: frames} mapping, not both")
        pairs: Iterable[tuple[str, np.ndarray]] = (
            (name, f) for name, frames in frames_or_iterable.items() for f in _iter_single(frames)
        )
        total = total or _total(frames_or_iterable.values())
    else:
        labels = iter(sources) if sources is not None else None
        pairs = ((next(labels) if labels else DEFAULT_SOURCE, f) for f in _iter_single(frames_or_iterable))
        total = total or _total([frames_or_iterable])
    return build_reference_pairs(pairs, embedder, progress, batch_size, fingerprint_frames, n_thumbnails, total, seed, span_s)


def source_batches(pairs: Iterable[tuple[str, np.ndarray]], batch_size: int = 64) -> Iterator[tuple[str, np.ndarray]]:
    """``(source, frame)`` pairs as ``(source, stacked frames)`` batches of at most
    ``batch_size`` frames of one source and one shape (a shape change closes the batch)."""
    pending: dict[str, list[np.ndarray]] = {}
    for name, frame in pairs:
        batch = pending.setdefault(name, [])
        if batch and batch[0].shape != frame.shape:
            yield name, np.stack(batch)
            batch.clear()
        batch.append(frame)
        if len(batch) >= batch_size:
            yield name, np.stack(batch)
            batch.clear()
    for name, batch in pending.items():
        if batch:
            yield name, np.stack(batch)


def build_reference_pairs(
    pairs: Iterable[tuple[str, np.ndarray]],
    embedder: Any,
    progress: bool = True,
    batch_size: int = 64,
    fingerprint_frames: int = default("reference_frames"),
    n_thumbnails: int = 6,
    total: int | None = None,
    seed: int = 0,
    span_s: float | None = None,
) -> Reference:
    """:func:`build_reference` for a stream of ``(source, frame)`` pairs (what
    :func:`read_frames` yields)."""
    builders: dict[str, _SourceBuilder] = {}
    rng = np.random.default_rng(seed)
    with _progress(progress, total) as advance:
        for name, batch in source_batches(pairs, batch_size):
            builders.setdefault(name, _SourceBuilder(name, fingerprint_frames, rng)).add(batch, embedder)
            advance(len(batch))
    if not builders:
        raise ValueError("no reference frames")
    return Reference(
        embedder_id=embedder.id,
        sources={name: b.finish(n_thumbnails, span_s) for name, b in builders.items()},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


@dataclass(frozen=True)
class _Sampled:
    """What the fingerprinter keeps of one reservoir frame, never the frame itself (a 1280x720
    frame is 2.7 MB; this is about 80 KB)."""

    arrival: int  # the frame's position in the source's stream, from 0
    shape: tuple[int, ...]
    small: np.ndarray  # uint8 (120, 160) gray view
    cells: np.ndarray  # float32 (N_CAST_CELLS, 3) colour-cast cell strengths
    thumbnail: np.ndarray


class _SourceBuilder:
    """Accumulates one source's reference while frames stream through ``build_reference``."""

    def __init__(self, name: str, fingerprint_frames: int, rng: np.random.Generator) -> None:
        self.name = name
        self.embeddings: list[np.ndarray] = []
        self.properties: dict[str, list[np.ndarray]] = {}
        self.sample: list[_Sampled] = []  # reservoir for the fingerprinter and the thumbnails
        self.seen = 0
        self.capacity = fingerprint_frames
        self.rng = rng
        self.previous: np.ndarray | None = None
        self.frame_shape: tuple[int, ...] = ()

    def add(self, frames: np.ndarray, embedder: Any) -> None:
        self.frame_shape = self.frame_shape or tuple(frames.shape[1:])
        self.embeddings.append(np.asarray(embedder.embed(frames), dtype=np.float32))
        samples = _compute_samples(frames, self.previous)
        self.previous = frames[-1]
        if samples is None:  # no fingerprinter: embeddings only
            return
        props, smalls, cells = samples
        for k, v in props.items():
            self.properties.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
        for i, f in enumerate(frames):  # reservoir sampling (Algorithm R): a uniform sample of a stream
            slot = len(self.sample) if len(self.sample) < self.capacity else int(self.rng.integers(self.seen + 1))
            if slot < self.capacity:
                kept = _Sampled(self.seen, f.shape, np.clip(smalls[i], 0, 255).astype(np.uint8), cells[i], thumbnail(f))
                self.sample[slot : slot + 1] = [kept]
            self.seen += 1

    def finish(self, n_thumbnails: int, span_s: float | None) -> SourceReference:
        # In stream order: a replaced slot holds a later frame, and blocks of slots in slot order
        # mix moments of the stream, which makes the capture test's null too light (vtest: 22 of
        # 90 clean tests flagged after such references, 8 in stream order; BENCHMARKS.md).
        sample = sorted((s for s in self.sample if s.shape == tuple(self.frame_shape)), key=lambda s: s.arrival)
        properties = {k: np.concatenate(v) for k, v in self.properties.items()}
        return SourceReference(
            name=self.name,
            embeddings=np.concatenate(self.embeddings),
            properties=properties,
            fingerprint_state=_fingerprint_state(sample, properties, self.frame_shape),
            thumbnails=[s.thumbnail for s in evenly_spaced(sample, n_thumbnails)],
            frame_shape=self.frame_shape,
            span_s=span_s,
        )


def thumbnail(frame: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = side / max(h, w)
    if scale >= 1.0:
        return frame.copy()
    return cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _compute_samples(frames: np.ndarray, previous: np.ndarray | None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray] | None:
    """The frames' image properties (against the stream's own previous frame), gray views and
    colour cells; None without the fingerprinter."""
    try:
        from virk_exporter.fingerprint.properties import compute_samples
    except ImportError:  # the fingerprinter is optional for a reference
        return None
    return compute_samples(frames, previous=previous)


def _fingerprint_state(sample: list[_Sampled], properties: dict[str, np.ndarray], frame_shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
    """The fingerprinter fitted as the worker's learner fits it: the sampled frames' properties
    taken from the stream (``frame_diff`` against each one's real predecessor), their views and cells."""
    if not sample:
        return None
    from virk_exporter.fingerprint import Fingerprinter

    at = np.array([s.arrival for s in sample])
    try:
        fingerprinter = Fingerprinter.from_samples(
            {k: v[at] for k, v in properties.items()},
            np.stack([s.small for s in sample]).astype(np.float32),
            tuple(frame_shape[:2]),
            cast_cells=np.stack([s.cells for s in sample]),
        )
    except ValueError:  # too few frames for the fingerprinter's statistics: drift only
        return None
    return {k: np.asarray(v) for k, v in fingerprinter.state().items()}


# -- reading frames for the CLI ----------------------------------------------------------------


def _iter_single(frames: Any) -> Iterator[np.ndarray]:
    """Yield single HxWx3 uint8 frames from an array, an iterable of frames, or of batches."""
    if isinstance(frames, np.ndarray):
        frames = frames[None] if frames.ndim == 3 else frames
        yield from frames
        return
    for item in frames:
        a = np.asarray(item)
        if a.ndim == 4:
            yield from a
        else:
            yield a


def _total(collections: Iterable[Any]) -> int | None:
    try:
        return sum(len(c) for c in collections)
    except TypeError:
        return None


def footage_span_s(path: str | os.PathLike[str]) -> float | None:
    """Seconds from a video's first frame to its last, by its frame count and rate (None for a
    directory of images, which carry no time, or a video that does not say)."""
    p = Path(path)
    if p.is_dir():
        return None
    cap = cv2.VideoCapture(str(p))
    try:
        n, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    return (n - 1) / fps if n >= 1 and fps > 0 else None


def count_frames(path: str | os.PathLike[str]) -> int | None:
    p = Path(path)
    if p.is_dir():
        return sum(len(files) for _, files in _image_files_by_source(p))
    cap = cv2.VideoCapture(str(p))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    return n if n > 0 else None


def _image_files_by_source(root: Path) -> list[tuple[str, list[Path]]]:
    """Images directly in ``root`` form one source; without any, each sub-directory is a source."""
    def images(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    top = images(root)
    if top:
        return [(DEFAULT_SOURCE, top)]
    return [(d.name, images(d)) for d in sorted(root.iterdir()) if d.is_dir() and images(d)]


def read_frames(path: str | os.PathLike[str], every: int = 1) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(source, frame)`` from a directory of images or a video file, as uint8 RGB.

    Every frame of a source is resized to the source's first frame size so frames batch.
    ``every`` keeps one frame in ``every`` (consecutive video frames are nearly duplicates).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        groups = _image_files_by_source(p)
        if not groups:
            raise ValueError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)})")
        for source, files in groups:
            first: tuple[int, int] | None = None
            for f in files[::every]:
                img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if img is None:
                    raise ValueError(f"{f}: not a readable image")
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
                first = first or img.shape[:2]
                yield source, _fit(img, first)
        return
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise ValueError(f"{p}: OpenCV cannot open this video")
    try:
        i, first = 0, None
        while True:
            ok, img = cap.read()
            if not ok:
                break
            if i % every == 0:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
                first = first or img.shape[:2]
                yield DEFAULT_SOURCE, _fit(img, first)
            i += 1
    finally:
        cap.release()


def _fit(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == hw:
        return img
    return cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


# -- small helpers -------------------------------------------------------------------------------


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _npz(d: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in d.items()})
    return buf.getvalue()


def _read_npz(raw: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("virk-exporter")
    except Exception:  # running from a source tree
        return "unknown"


class _progress:
    """A rich progress bar when asked for (a no-op otherwise); yields ``advance(n)``."""

    def __init__(self, enabled: bool, total: int | None, description: str = "embedding reference frames") -> None:
        self.enabled, self.total, self.description = enabled, total, description
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
