"""Learned references kept in the bundle store, so a restart does not relearn from a broken camera.

Key: ``references/<model>/<source>.virkref`` (names made key-safe, with a hash so two names
never collide), one single-source ``.virkref`` each (``reference.py``'s format). Rebasing
overwrites the object with an empty one — a marker read as "learn anew" — so a restart during
the new learning period does not bring the old reference back.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from virk_exporter.reference.baseline import Baseline
from virk_exporter.reference.build import Reference, ReferenceMismatchError, SourceReference

log = logging.getLogger("virk_exporter.worker")

PREFIX = "references"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def key_part(name: str) -> str:
    """A store-safe, collision-free rendering of a model or source name."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{_UNSAFE.sub('_', name)[:64].strip('.') or 'x'}-{digest}"


def reference_key(model: str, source: str) -> str:
    return f"{PREFIX}/{key_part(model)}/{key_part(source)}.virkref"


def to_bytes(baselines: dict[str, Baseline], embedder_id: str) -> bytes:
    """Sources' baselines as one ``.virkref`` file (the store's and the bundles' copy)."""
    sources = {
        name: SourceReference(
            name=name,
            embeddings=b.embeddings,
            properties=b.properties,
            fingerprint_state=b.fingerprinter.state(),
            thumbnails=b.thumbnails,
            span_s=b.span_s,
        )
        for name, b in baselines.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Reference(embedder_id=embedder_id, sources=sources).save(Path(tmp) / "reference.virkref")
        return path.read_bytes()


def from_bytes(data: bytes, source: str, embedder_id: str) -> Baseline | None:
    """The stored baseline, or None for a rebase marker. Raises on a foreign embedder."""
    if not data:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reference.virkref"
        path.write_bytes(data)
        reference = Reference.load(path, embedder_id=embedder_id)
    entry = reference.sources.get(source) or next(iter(reference.sources.values()))
    fingerprinter = entry.fingerprinter()
    if fingerprinter is None:
        raise ValueError("stored reference has no fingerprinter state")
    return Baseline(entry.embeddings, fingerprinter, list(entry.thumbnails), "stored", span_s=entry.span_s)


class ReferenceStore:
    """Load, save and clear one model's learned references in a bundle store."""

    def __init__(self, store: Any, model: str, embedder_id: str) -> None:
        self.store = store
        self.model = model
        self.embedder_id = embedder_id

    def load(self, source: str) -> Baseline | None:
        key = reference_key(self.model, source)
        if not self.store.exists(key):
            return None
        try:
            return from_bytes(self.store.get(key), source, self.embedder_id)
        except ReferenceMismatchError as problem:
            log.warning("stored reference %s was built with another embedder; learning anew: %s", key, problem)
            return None

    def save(self, source: str, baseline: Baseline) -> str:
        key = reference_key(self.model, source)
        self.store.put(key, to_bytes({source: baseline}, self.embedder_id), {"virk-model": self.model, "virk-kind": "reference"})
        return key

    def clear(self, source: str) -> None:
        self.store.put(reference_key(self.model, source), b"", {"virk-model": self.model, "virk-kind": "rebase"})
