"""Where each source's reference comes from, and where a learned one goes.

In order: reference frames given to the exporter (one baseline shared by every source), a saved
``.virkref`` file (per source), the reference store (``persist_reference``: learned earlier, by
this or another worker), else none — the source learns one (``reference/baseline.py``). The
reference decides the embedder (a saved reference's embedder is rebuilt from its id), so the
embedder is chosen here too.

A saved reference names its sources. One built without source labels (its only source is
``default``) serves every source; otherwise a source it does not name is a mismatch: logged
once per source, counted as ``virk_errors_total{stage="reference"}``, and the source learns its
own reference — never silently compared against another camera's.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from virk_exporter.config import ExporterConfig
from virk_exporter.embed.embedders import OutputsEmbedder, RandomConvEncoder, embedder_from_id
from virk_exporter.fingerprint import Fingerprinter
from virk_exporter.frames import evenly_spaced
from virk_exporter.reference.baseline import N_THUMBNAILS, Baseline, thumbnail
from virk_exporter.reference.build import DEFAULT_SOURCE, Reference
from virk_exporter.reference.store import ReferenceStore
from virk_exporter.worker.stages import Stages

log = logging.getLogger("virk_exporter.worker")


def pick_embedder(config: ExporterConfig, reference: Reference | None) -> Any:
    """The embedder a saved reference was built with, else the one ``config.embedder`` names."""
    if config.embedder not in ("image", "outputs", "features"):
        raise ValueError(f"embedder must be 'image', 'outputs' or 'features', got {config.embedder!r}")
    if reference is not None:
        return embedder_from_id(reference.embedder_id, device=config.device)
    if config.embedder == "features":  # rows from monitor(features=...), compared as given
        from virk_exporter.integrations import FeaturesEmbedder

        return FeaturesEmbedder(device=config.device)
    return RandomConvEncoder(device=config.device) if config.embedder == "image" else OutputsEmbedder(device=config.device)


class Baselines:
    """Per-source reference lifecycle: the given one, the stored one, saving and clearing."""

    def __init__(self, config: ExporterConfig, stages: Stages, reference_frames: np.ndarray | None) -> None:
        self.config = config
        self.stages = stages
        self.reference = Reference.load(config.reference_path) if config.reference_path else None
        self.embedder = pick_embedder(config, self.reference)
        self.shared: Baseline | None = None
        self._store: ReferenceStore | None = None
        self._mismatched: set[str] = set()
        if self.reference is not None:
            log.info("reference %s: embedder %s, sources %s", config.reference_path, self.reference.embedder_id, sorted(self.reference.sources))
        if reference_frames is not None:
            if isinstance(self.embedder, OutputsEmbedder):
                raise ValueError("reference frames cannot define a reference of model outputs: let the exporter learn it")
            shown = [thumbnail(f) for f in evenly_spaced(reference_frames, N_THUMBNAILS)]
            self.shared = Baseline(self.embedder.embed(reference_frames), Fingerprinter(reference_frames), shown, "frames")
        if self.reference is None and self.shared is None:
            log.info(
                "no reference given: each source learns one over %gs (%d samples at most)%s; no drift test until then",
                config.reference_period_s,
                config.reference_frames,
                ", kept in the store" if config.persist_reference else "",
            )

    def initial(self, name: str) -> Baseline | None:
        """The reference a new source starts with (None: it learns one)."""
        return self._given(name) or self._stored(name)

    def _given(self, name: str) -> Baseline | None:
        if self.shared is not None:
            return self.shared
        if self.reference is None:
            return None
        sources = self.reference.sources
        entry = sources.get(name)
        if entry is None and list(sources) == [DEFAULT_SOURCE]:
            entry = sources[DEFAULT_SOURCE]  # built without source labels: it serves every source
        if entry is None:
            self._mismatch(name, sorted(sources))
            return None
        fingerprinter = entry.fingerprinter()
        if fingerprinter is None:
            raise ValueError(f"the reference's source {entry.name!r} has no fingerprinter state; rebuild it")
        return Baseline(entry.embeddings, fingerprinter, list(entry.thumbnails), "file", span_s=entry.span_s)

    def _mismatch(self, name: str, known: list[str]) -> None:
        if name in self._mismatched:
            return
        self._mismatched.add(name)
        # counted as a failure of the reference stage, logged here: once per source, not per stage
        self.stages.metrics.errors.labels(self.config.model, "reference").inc()
        log.warning("source %r is not in the reference file %s (it has %s): learning its own reference", name, self.config.reference_path, known)

    # ------------------------------------------------------------------ the store
    def _reference_store(self) -> ReferenceStore | None:
        if not self.config.persist_reference:
            return None
        if self._store is None:
            from virk_exporter.incidents.store import open_store

            self._store = ReferenceStore(open_store(self.config.store), self.config.model, self.embedder.id)
        return self._store

    def _stored(self, name: str) -> Baseline | None:
        try:
            with self.stages.stage("reference_store"):
                store = self._reference_store()
                baseline = None if store is None else store.load(name)
        except Exception:  # noqa: BLE001 - counted by the stage: learning is the fallback
            log.warning("source %r: could not read its stored reference; learning one", name)
            return None
        if baseline is not None:
            log.info("source %r: reference of %d samples loaded from the store; drift tests start now", name, baseline.samples)
        return baseline

    def save(self, name: str, baseline: Baseline) -> None:
        """Keep a learned reference in the store (when ``persist_reference``)."""
        try:
            with self.stages.stage("reference_store"):
                store = self._reference_store()
                if store is not None:
                    log.info("source %r: reference saved as %s", name, store.save(name, baseline))
        except Exception:  # noqa: BLE001 - counted by the stage; the reference still works in memory
            pass

    def clear(self, name: str) -> None:
        """Forget a source's stored reference (a rebase), so a restart learns anew too."""
        try:
            with self.stages.stage("reference_store"):
                store = self._reference_store()
                if store is not None:
                    store.clear(name)
        except Exception:  # noqa: BLE001 - counted; a restart would then load the old reference
            log.warning("source %r: rebased, but the stored reference could not be cleared", name)
