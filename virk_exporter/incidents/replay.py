"""Replay an incident bundle: re-run the user's function over the recorded frames and recompute
drift and diagnosis against the bundled reference, to compare with what was recorded.

Everything is computed from the bundle alone (plus the user's code), so a laptop without the
production stack reproduces the incident. Parts that need a component this installation lacks
(an embedder that wraps user code, a missing fingerprinter) are reported as notes, not errors.

Both of the worker's tests are rerun as the worker ran them, on the window it last tested (the
frames of ``diagnosis.<source>.frame_ids``; else the last ``window`` frames), once from the
worker's own inputs (counted in ``reproduced``) and once from the recorded pixels (shown):

* embedding test: ``SourceDriftMonitor.test`` with the recorded ``window``, ``n_permutations``
  and ``p_val`` and the source's seed, against the reference embeddings of the bundled
  ``.virkref`` (``virk_exporter.reference.build.Reference.load``; else ``embeddings.npz``
  ``reference/<source>`` or ``reference``); on ``embeddings.npz["window/<source>"]``, and on
  the frames re-embedded with the recorded embedder (``config["embedder_id"]``) when it can be
  rebuilt;
* capture test: ``CaptureDetector`` over the reference's own fingerprinter (saved state in the
  ``.virkref``), with its calibrated bars; on the per-frame properties in the manifest, and on
  properties measured from the recorded frames.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from virk_exporter.config import default
from virk_exporter.frames import is_torch_tensor
from virk_exporter.incidents.bundle import Bundle
from virk_exporter.worker.results import DriftResult


@dataclass
class Comparison:
    """One recorded value beside its replayed one (drift decision, p-value, cause, predict)."""

    source: str
    what: str  # "drift", "p_value", "drift (pixels)", "capture", "cause", "cause (pixels)", "predict"
    recorded: Any
    replayed: Any

    @property
    def match(self) -> bool | None:
        """Decisions are compared; p-values and outputs are shown side by side only (a
        permutation p-value and a summary string are not expected to be bit-identical)."""
        if self.what not in ("drift", "drift (pixels)", "capture", "cause", "cause (pixels)") or self.recorded is None or self.replayed is None:
            return None
        return self.recorded == self.replayed


@dataclass
class ReplayResult:
    """Everything a replay compared, the notes on what it could not, and predict's outputs."""

    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, list[Any]] = field(default_factory=dict)  # source -> predict results

    @property
    def reproduced(self) -> bool:
        """Every comparison of the worker's own inputs agrees (the embedding test on the recorded
        window embeddings, the capture test and its top cause on the recorded properties)."""
        decided = [c.match for c in self.comparisons if c.what in ("drift", "capture", "cause") and c.match is not None]
        return bool(decided) and all(decided)


def load_function(spec: str) -> Callable[..., Any]:
    """``module:function`` (``module:obj.attr`` too), importable from the current directory."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--predict must look like module:function, got {spec!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{spec} is not callable")
    return target


def summarize(output: Any) -> str:
    """A short, comparable description of one model output."""
    if is_torch_tensor(output):
        output = output.detach().cpu().numpy()
    if isinstance(output, np.ndarray):
        mean = f" mean={float(np.mean(output)):.4g}" if output.size and np.issubdtype(output.dtype, np.number) else ""
        return f"array{tuple(output.shape)}{mean}"
    text = repr(output)
    return text if len(text) <= 80 else text[:77] + "..."


def _by_source(bundle: Bundle) -> dict[str, list[tuple[dict, np.ndarray]]]:
    groups: dict[str, list[tuple[dict, np.ndarray]]] = {}
    for entry, frame in bundle.frames():
        groups.setdefault(entry.get("source", ""), []).append((entry, frame))
    return groups


@dataclass
class _Reference:
    """What replay compares against, per source: embeddings, embedder id and fingerprinter."""

    embeddings: dict[str, np.ndarray]
    embedder_id: str | None
    fingerprinters: dict[str, Any]

    def for_source(self, source: str, table: dict[str, Any]) -> Any:
        if source in table:
            return table[source]
        return next(iter(table.values())) if len(table) == 1 else None


def _reference(bundle: Bundle, notes: list[str]) -> _Reference:
    """From the bundled .virkref (virk_exporter.reference.build) when present, else embeddings.npz."""
    npz = bundle.embeddings()
    embedder_id = bundle.manifest.get("config", {}).get("embedder_id")
    embeddings = {k.split("/", 1)[1]: v for k, v in npz.items() if k.startswith("reference/")}
    if "reference" in npz:
        embeddings.setdefault("", npz["reference"])
    fingerprinters: dict[str, Any] = {}
    blob = bundle.reference_file()
    if blob is not None:
        try:
            from virk_exporter.reference.build import Reference

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "reference.virkref"
                path.write_bytes(blob)
                ref = Reference.load(path)
            embedder_id = ref.embedder_id
            for name, src in ref.sources.items():
                embeddings[name] = np.asarray(src.embeddings, np.float32)
                fingerprinter = src.fingerprinter()
                if fingerprinter is not None:
                    fingerprinters[name] = fingerprinter
        except Exception as error:  # noqa: BLE001 - fall back to the npz, and say why
            notes.append(f"bundled .virkref not usable here ({type(error).__name__}: {error}); using embeddings.npz")
    return _Reference(embeddings, embedder_id, fingerprinters)


def _reembedded(frames: list[np.ndarray], embedder_id: str | None, source: str, notes: list[str]) -> np.ndarray | None:
    """The recorded frames through the recorded embedder, when this installation rebuilds it."""
    if not embedder_id:
        return None
    try:
        from virk_exporter.embed.embedders import embedder_from_id

        _check_embedder_id(embedder_id)
        return embedder_from_id(embedder_id).embed(np.stack(frames))
    except Exception as error:  # noqa: BLE001
        notes.append(f"{source}: frames not re-embedded ({error}); drift only from the recorded window embeddings")
        return None


MAX_EMBED_SIZE = 256  # the image encoder's input side; the default is 64, 3000 would need ~9 GB


def _check_embedder_id(embedder_id: str) -> None:
    """An embedder id comes from the bundle: refuse sizes that would exhaust memory when rebuilt."""
    fields = dict(p.split("=", 1) for p in str(embedder_id).split("/") if "=" in p)
    size = fields.get("size", "64")
    if not size.isdigit() or len(size) > 6 or not 1 <= int(size) <= MAX_EMBED_SIZE:
        raise ValueError(f"embedder size {size[:20]!r} from the bundle is outside 1..{MAX_EMBED_SIZE}")


def _config_int(config: dict, name: str, fallback: int, high: int) -> int:
    """An integer setting read from the bundle, within 1..high (a bundle may come from anywhere)."""
    value = config.get(name, fallback)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        return fallback
    return value


def _recorded_drift(bundle: Bundle, source: str) -> DriftResult | None:
    """The source's last recorded test (timestamps that are not numbers are ignored)."""
    points = [DriftResult.from_dict(p) for p in bundle.manifest.get("drift_timeline", []) if isinstance(p.get("timestamp"), (int, float))]
    points = [p for p in points if p.source == source]
    return max(points, key=lambda p: p.timestamp) if points else None


def replay(bundle: Bundle, predict: Callable[..., Any] | None = None, batch_size: int = 32, seed: int | None = None) -> ReplayResult:
    """``seed``: the embedding test's permutations; None draws the worker's (``source_seed``)."""
    result = ReplayResult()
    config = bundle.manifest.get("config", {})
    groups = _by_source(bundle)
    reference = _reference(bundle, result.notes)

    for source, items in sorted(groups.items()):
        frames = [frame for _, frame in items]
        tested = _tested(bundle, source, items, _config_int(config, "window", default("window"), 4096), result.notes)
        if predict is not None:
            started = time.perf_counter()
            outputs = [predict(np.stack(frames[i : i + batch_size])) for i in range(0, len(frames), batch_size)]
            result.outputs[source] = outputs
            recorded = [e.get("output") for e, _ in items if e.get("output") is not None]
            result.comparisons.append(
                Comparison(source, "predict", f"{len(recorded)} recorded outputs" if recorded else None,
                           f"{len(frames)} frames in {time.perf_counter() - started:.2f}s; first: {summarize(outputs[0])}")
            )
        drift = _replay_drift(bundle, result, source, [frame for _, frame in tested], reference, config, seed)
        _replay_capture(bundle, result, source, tested, reference, config, drift)
    return result


def _tested(bundle: Bundle, source: str, items: list[tuple[dict, np.ndarray]], size: int, notes: list[str]) -> list[tuple[dict, np.ndarray]]:
    """The recorded frames the worker's last test judged (``diagnosis.<source>.frame_ids``), in
    order; the last ``size`` frames for a bundle that does not name them or lacks some of them."""
    wanted = bundle.manifest.get("diagnosis", {}).get(source, {}).get("frame_ids")
    if isinstance(wanted, list) and wanted:
        by_id = {entry.get("frame_id"): (entry, frame) for entry, frame in items}
        if all(isinstance(i, int) and i in by_id for i in wanted):
            return [by_id[i] for i in wanted]
        notes.append(f"{source}: the tested frames are not all in the bundle; replaying its last {size} frames")
    return items[-size:]


def _replay_drift(bundle, result, source, frames, reference: _Reference, config, seed: int | None) -> bool | None:
    """The worker's embedding test (``SourceDriftMonitor.test``: the permutation and time-aware
    p-values, the source's own permutations) on the window it tested, from two inputs:

    * ``drift``: the recorded window embeddings (``embeddings.npz``): the worker's own
      computation, reproducible exactly;
    * ``drift (pixels)``: the recorded frames re-embedded. JPEG-recorded frames embed a little
      differently from the raw ones, and against a small reference that can be enough to
      drift, so this one is shown, not counted in ``reproduced``.

    Returns the decision the diagnosis takes as the embedding test's (the recorded window's
    when the bundle has it)."""
    recorded = _recorded_drift(bundle, source)
    reference_embeddings = reference.for_source(source, reference.embeddings)
    if reference_embeddings is None:
        result.notes.append(f"{source}: no reference embeddings in the bundle; drift not recomputed")
        return None
    windows = {
        "drift": bundle.embeddings().get(f"window/{source}"),
        "drift (pixels)": _reembedded(frames, reference.embedder_id, source, result.notes),
    }
    decided: list[bool] = []
    try:
        from virk_exporter.drift.monitor import SourceDriftMonitor, source_seed

        monitor = SourceDriftMonitor(
            reference_embeddings,
            window=_config_int(config, "window", default("window"), 4096),
            n_permutations=_config_int(config, "n_permutations", default("n_permutations"), 10_000),
            p_val=float(config.get("p_val", default("p_val"))),
            online_ert=None,
            seed=source_seed(source) if seed is None else seed,
        )
        for what, window in windows.items():
            if window is None or len(window) < 2:
                continue
            test = monitor.test(np.asarray(window, np.float32))
            result.comparisons.append(Comparison(source, what, None if recorded is None else recorded.drift, bool(test.drift)))
            if what == "drift":
                recorded_p = None if recorded is None or recorded.p_value is None else round(recorded.p_value, 4)
                result.comparisons.append(Comparison(source, "p_value", recorded_p, round(float(test.p_value), 4)))
            decided.append(bool(test.drift))
    except Exception as error:  # noqa: BLE001
        result.notes.append(f"{source}: drift not recomputed ({type(error).__name__}: {error})")
        return None
    if not decided:
        result.notes.append(f"{source}: no window to test; drift not recomputed")
    return decided[0] if decided else None


def _replay_capture(bundle, result, source, window, reference: _Reference, config, drift: bool | None) -> None:
    """The worker's capture test (``CaptureDetector``: the reference's fingerprinter from the
    .virkref, else one built from the bundled reference samples, and the bars calibrated on it)
    over the tested window of this source:

    * ``capture`` and ``cause``: from the per-frame properties the worker measured on the raw
      frames (in the manifest): the worker's own computation, reproducible exactly;
    * ``cause (pixels)``: from the recorded pixels. JPEG-recorded frames carry compression
      artefacts the raw frames did not have, so this one can differ (record_format="png" for
      pixel-exact replay); it is shown, not counted in ``reproduced``.
    """
    recorded = _recorded_drift(bundle, source)
    recorded_top = bundle.manifest.get("diagnosis", {}).get(source, {}).get("top")
    try:
        from virk_exporter.fingerprint import CaptureDetector

        fingerprinter = reference.for_source(source, reference.fingerprinters)
        if fingerprinter is None:
            samples = bundle.reference_frames()
            if not samples:
                result.notes.append(f"{source}: no reference in the bundle; diagnosis not recomputed")
                return
            from virk_exporter.fingerprint import Fingerprinter

            fingerprinter = Fingerprinter(np.stack(samples), color="rgb")
            result.notes.append(f"{source}: diagnosis against the {len(samples)} bundled reference samples (no .virkref)")
        detector = CaptureDetector(
            fingerprinter,
            _config_int(config, "window", default("window"), 4096),
            float(config.get("p_val", default("p_val"))),
            recent=_config_int(config, "test_every", default("test_every"), 4096),
        )
        measured = [entry.get("properties") or {} for entry, _ in window]
        names = set.intersection(*(set(p) for p in measured)) if measured else set()
        if names:
            properties = {k: np.array([p[k] for p in measured], np.float64) for k in sorted(names)}
            capture = detector.test(properties, embedding_drift=drift)
            result.comparisons.append(Comparison(source, "capture", None if recorded is None else recorded.capture_drift, capture.drift))
            result.comparisons.append(Comparison(source, "cause", recorded_top, capture.diagnosis.top))
        else:
            result.notes.append(f"{source}: no recorded frame properties; cause only recomputed from pixels")
        pixels = detector.test(fingerprinter.properties(np.stack([frame for _, frame in window])), embedding_drift=drift)
        result.comparisons.append(Comparison(source, "cause (pixels)", recorded_top, pixels.diagnosis.top))
    except Exception as error:  # noqa: BLE001
        result.notes.append(f"{source}: diagnosis not recomputed ({type(error).__name__}: {error})")
