"""Caller-side counters of every process of a server, summed in the shared worker.

Each process counts its own calls in its own registry (cheap, on its own threads) and sends
the worker a snapshot of those families about once a second and with every scrape it
answers. The worker keeps each attached session's latest snapshot and, when a session ends,
folds its last one into the totals of ended sessions. A scrape answered by any process is
its own fresh families plus everyone else's (:meth:`CallerTotals.others`), so
``virk_frames_total`` counts the frames of all processes and never goes backwards when a
server worker exits or is recycled (a worker process restart does reset them).
"""

from __future__ import annotations

import threading
from typing import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

# Gauges that add up across processes; any other gauge is taken from one process (the first given).
SUMMED_GAUGES = frozenset({"virk_queue_depth"})
_MONOTONE = frozenset({"counter", "histogram", "summary"})

_Key = tuple[str, tuple[tuple[str, str], ...]]


def combine(snapshots: Iterable[Iterable[Metric]]) -> list[Metric]:
    """Sum counters and histograms sample by sample; gauges by the rule above.

    ``_created`` samples take the earliest time; an exemplar is kept from the first snapshot
    that has one.
    """
    families: dict[str, Metric] = {}
    samples: dict[str, dict[_Key, Sample]] = {}
    for snapshot in snapshots:
        for family in snapshot:
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                samples[family.name] = {}
            have = samples[family.name]
            summed = family.type in _MONOTONE or family.name in SUMMED_GAUGES
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = have.get(key)
                if old is None:
                    have[key] = sample
                elif sample.name.endswith("_created"):
                    have[key] = old._replace(value=min(old.value, sample.value))
                elif summed:
                    have[key] = old._replace(value=old.value + sample.value, exemplar=old.exemplar or sample.exemplar)
    for name, family in families.items():
        family.samples = list(samples[name].values())
    return list(families.values())


def monotone_only(families: Iterable[Metric]) -> list[Metric]:
    """The families that keep counting after their process has gone (not its gauges)."""
    return [family for family in families if family.type in _MONOTONE]


class CallerTotals:
    """The caller-side families of every session of one worker (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, list[Metric]] = {}
        self._ended: list[Metric] = []
        self._gone: set[int] = set()  # a late snapshot of an ended session is ignored

    def update(self, session: int, families: list[Metric]) -> None:
        with self._lock:
            if session not in self._gone:
                self._live[session] = families

    def end(self, session: int) -> None:
        """A session has gone: its counts stay in the totals, its gauges leave."""
        with self._lock:
            self._gone.add(session)
            last = self._live.pop(session, None)
            if last is not None:
                self._ended = combine([self._ended, monotone_only(last)])

    def others(self, session: int) -> list[Metric]:
        """Everyone's families but ``session``'s: ended sessions' counts and other live sessions'."""
        with self._lock:
            return combine([*(f for s, f in self._live.items() if s != session), self._ended])
