"""Late labels: ground truth that arrives after the fact, joined to what the model predicted.

Where it lives, and why: in the **caller's process**, on the hand-off thread. Labels arrive in
the caller's process (``exporter.record_label``), and the hand-off thread already sees every
call's result, so it keeps a compact *prediction ledger* of every frame — sampled or not — and
scores labels against it. The worker's flight recorder is the wrong place: it holds only sampled
frames, evicts them by bytes within minutes, and would need a round trip per label. With
several processes sharing a worker, each keeps the ledger of the frames it issued; a label
recorded in another process is forwarded to it through the worker (``owns``/``forward``).

* The ledger is a ring indexed by ``frame_id % capacity``: frame id, source, and the predicted
  value (as a small integer code), ~15 bytes a frame (``label_memory`` frames, default 2**20,
  about 15 MiB, allocated at the first call). Frames stay scorable long after the recorder has
  evicted their pixels.
* ``record_label`` on the caller's thread only appends to a deque (no lock, no system call); the
  hand-off thread scores labels after each call it processes, and when it is idle.
* Outcomes (``virk_labels_total{outcome}``): ``correct`` / ``incorrect`` (scored; these feed
  ``virk_label_accuracy_ratio``), ``no_prediction`` (the frame is known but its call raised or its
  output gave no prediction), ``duplicate`` (the frame was labelled before: the first label
  counts), ``expired`` (the frame is older than the ledger keeps: ``source="unknown"``),
  ``unknown`` (an id this exporter never issued: ``source="unknown"``).
* ``virk_label_accuracy_ratio{model, source}``: the fraction correct among the source's last
  ``label_window`` scored labels (in the order labels arrived). For accuracy over a time range
  use the counters: ``rate(virk_labels_total{outcome="correct"}[1h]) /
  rate(virk_labels_total{outcome=~"correct|incorrect"}[1h])``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

import numpy as np

from virk_exporter.caller.outputs import to_numpy
from virk_exporter.frames import is_torch_tensor

UNKNOWN_SOURCE = "unknown"
RAISED = object()  # the result of a call that raised: its frames have no prediction
PENDING_S = 60.0  # a label whose frame was issued but not yet accounted waits at most this long
MAX_PENDING = 100_000
MAX_CODES = 1 << 20  # distinct predicted values remembered (more: no_prediction)


def _plain(value: Any) -> Any:
    """NumPy / torch scalars as Python values, so ``3 == np.int64(3) == tensor(3)`` compare alike."""
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", 0) == 0:
        return item()
    return value


def predictions_of(result: Any, n: int, predicted: Callable[[Any], Iterable[Any]] | None = None) -> list[Any] | None:
    """One predicted value per frame, or None when the output gives none.

    ``predicted(result)`` when given; otherwise the argmax of ``[N, K]`` class scores (K > 1),
    an ``[N]`` integer array, or a list of N plain values (ints or strings).
    """
    if predicted is not None:
        values = [_plain(v) for v in predicted(result)]
        if len(values) != n:
            raise ValueError(f"predicted() returned {len(values)} values for {n} frames")
        return values
    if is_torch_tensor(result):
        if result.ndim == 2 and result.shape[0] == n and result.shape[1] > 1:
            return result.detach().argmax(1).cpu().tolist()
        if result.ndim == 1 and result.shape[0] == n and not result.is_floating_point():
            return result.detach().cpu().tolist()
        return None
    array = to_numpy(result)
    if array is not None:
        if array.ndim == 2 and array.shape[0] == n and array.shape[1] > 1 and array.dtype.kind in "fiu":
            return array.argmax(1).tolist()
        if array.ndim == 1 and array.shape[0] == n and array.dtype.kind in "iuU":
            return array.tolist()
        return None
    if isinstance(result, (list, tuple)) and len(result) == n and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in result):
        return list(result)
    return None


class LabelBook:
    """The prediction ledger and the label metrics of one Exporter (see the module doc)."""

    def __init__(
        self,
        model: str,
        labels_total: Any,
        accuracy: Any,
        issued: Callable[[], range],
        capacity: int = 1 << 20,
        window: int = 500,
        on_error: Callable[[str, BaseException], None] | None = None,
        owns: Callable[[int], bool] | None = None,
        forward: Callable[[list[int], list[Any]], None] | None = None,
    ) -> None:
        if capacity <= 0 or window <= 0:
            raise ValueError("label_memory and label_window must be positive")
        self.model = model
        self._labels_total = labels_total
        self._accuracy = accuracy
        self._issued = issued  # the frame ids this process has issued so far
        self.capacity = int(capacity)
        self.window = int(window)
        self._on_error = on_error
        # Several processes share frame ids (exporter.py): a label for a frame another process
        # issued is forwarded to it (through the shared worker) and scored there.
        self._owns = owns
        self._forward = forward
        self._incoming: deque = deque()  # (frame_ids, labels, submitted_at) from any thread
        self._records: deque = deque()  # (first_id, sources, result, predicted) of accounted calls
        self._pending: list[tuple[int, Any, float]] = []
        self._lock = threading.Lock()  # hand-off thread vs flush()
        self._ids: np.ndarray | None = None
        self._source: np.ndarray | None = None
        self._code: np.ndarray | None = None
        self._labelled: np.ndarray | None = None
        self._codes: dict[Any, int] = {}
        self._values: list[Any] = []
        self._sources: dict[str, int] = {}
        self._source_names: list[str] = []
        self._recent: dict[str, deque] = {}
        self._correct_in_window: dict[str, int] = {}
        self._counters: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------ caller's thread
    def submit(self, frame_ids: Any, labels: Any) -> None:
        """Queue labels (any thread; never blocks, never raises for unknown ids)."""
        self._incoming.append((frame_ids, labels, time.monotonic()))

    # ------------------------------------------------------------ hand-off thread
    def _allocate(self) -> None:
        self._ids = np.full(self.capacity, -1, np.int64)
        self._source = np.zeros(self.capacity, np.int16)
        self._code = np.full(self.capacity, -1, np.int32)
        self._labelled = np.zeros(self.capacity, np.bool_)

    def record(self, first_id: int, sources: list[str], result: Any, predicted: Callable[[Any], Iterable[Any]] | None = None) -> None:
        """Note one call (frame ids ``first_id ..``, its result). Only a deque append: a shed call
        is accounted on the caller's thread, so the ledger work waits for :meth:`drain`."""
        self._records.append((first_id, sources, result, predicted))

    def _apply(self, first_id: int, sources: list[str], result: Any, predicted: Callable[[Any], Iterable[Any]] | None) -> None:
        n = len(sources)
        if n == 0:
            return
        try:
            predictions = predictions_of(result, n, predicted) if result is not RAISED else None
        except Exception as problem:  # noqa: BLE001 - a bad predicted() costs the labels only
            if self._on_error is not None:
                self._on_error("labels", problem)
            predictions = None
        if self._ids is None:
            self._allocate()
        if n > self.capacity:  # only the newest frames of a giant batch fit
            first_id, sources = first_id + n - self.capacity, sources[-self.capacity :]
            predictions = predictions[-self.capacity :] if predictions is not None else None
            n = self.capacity
        ids = first_id + np.arange(n)
        pos = ids % self.capacity
        # Calls can be accounted out of order (a shed call is accounted on the caller's
        # thread, ahead of queued ones): a slot never goes back to an older frame.
        newer = self._ids[pos] < ids
        pos = pos[newer]
        self._ids[pos] = ids[newer]
        self._source[pos] = np.array([self._source_index(s) for s in sources], np.int16)[newer]
        codes = [self._code_of(v) for v in predictions] if predictions is not None else [-1] * n
        self._code[pos] = np.array(codes, np.int32)[newer]
        self._labelled[pos] = False

    def _source_index(self, name: str) -> int:
        index = self._sources.get(name)
        if index is None:
            index = self._sources[name] = len(self._source_names)
            self._source_names.append(name)
        return index

    def _code_of(self, value: Any) -> int:
        try:
            code = self._codes.get(value)
        except TypeError:  # unhashable prediction
            return -1
        if code is None:
            if len(self._values) >= MAX_CODES:
                return -1
            code = self._codes[value] = len(self._values)
            self._values.append(value)
        return code

    def drain(self, final: Callable[[], bool] | bool = False) -> None:
        """Score queued labels. ``final`` (or a callable checked after taking the queue): every
        call issued before these labels has been accounted, so a frame still missing is unknown."""
        with self._lock:
            while self._records:
                self._apply(*self._records.popleft())
            if not self._incoming and not self._pending:
                return
            items = []
            while self._incoming:
                items.append(self._incoming.popleft())
            settled = final() if callable(final) else bool(final)
            now = time.monotonic()
            work, self._pending = self._pending, []
            for frame_ids, labels, submitted in items:
                work.extend((frame_id, label, submitted) for frame_id, label in zip(frame_ids, labels))
            touched: set[str] = set()
            foreign: tuple[list[int], list[Any]] = ([], [])
            for frame_id, label, submitted in work:
                if self._forward is not None and self._foreign(frame_id):
                    foreign[0].append(int(frame_id))
                    foreign[1].append(label)
                    continue
                outcome, source = self._score(frame_id, label, settled or now - submitted > PENDING_S)
                if outcome is None:
                    if len(self._pending) < MAX_PENDING:
                        self._pending.append((frame_id, label, submitted))
                        continue
                    outcome, source = "unknown", UNKNOWN_SOURCE
                self._count(source, outcome)
                if outcome in ("correct", "incorrect"):
                    self._roll(source, outcome == "correct")
                    touched.add(source)
            for source in touched:
                recent = self._recent[source]
                self._accuracy.labels(self.model, source).set(self._correct_in_window[source] / len(recent))
        if foreign[0]:
            self._forward(*foreign)

    def _foreign(self, frame_id: Any) -> bool:
        try:
            frame_id = int(frame_id)
        except (TypeError, ValueError):
            return False  # not an id at all: scored (as unknown) here
        return frame_id >= 0 and not self._owns(frame_id)

    def count_unscorable(self, n: int, outcome: str) -> None:
        """Labels another process could not route to a ledger (``expired`` or ``unknown``)."""
        for _ in range(n):
            self._count(UNKNOWN_SOURCE, outcome)

    def _score(self, frame_id: Any, label: Any, settled: bool) -> tuple[str | None, str]:
        try:
            frame_id = int(frame_id)
        except (TypeError, ValueError):
            return "unknown", UNKNOWN_SOURCE
        if frame_id not in self._issued():
            return "unknown", UNKNOWN_SOURCE
        if self._ids is None:
            return (None, "") if not settled else ("unknown", UNKNOWN_SOURCE)
        pos = frame_id % self.capacity
        stored = int(self._ids[pos])
        if stored > frame_id:
            return "expired", UNKNOWN_SOURCE
        if stored < frame_id:  # issued, not accounted yet (or its call was lost)
            return (None, "") if not settled else ("unknown", UNKNOWN_SOURCE)
        source = self._source_names[int(self._source[pos])]
        if self._labelled[pos]:
            return "duplicate", source
        self._labelled[pos] = True
        code = int(self._code[pos])
        if code < 0:
            return "no_prediction", source
        return ("correct" if self._values[code] == _plain(label) else "incorrect"), source

    def _count(self, source: str, outcome: str) -> None:
        counter = self._counters.get((source, outcome))
        if counter is None:
            counter = self._counters[(source, outcome)] = self._labels_total.labels(self.model, source, outcome)
        counter.inc()

    def _roll(self, source: str, correct: bool) -> None:
        recent = self._recent.get(source)
        if recent is None:
            recent = self._recent[source] = deque(maxlen=self.window)
            self._correct_in_window[source] = 0
        if len(recent) == recent.maxlen:
            self._correct_in_window[source] -= recent[0]
        recent.append(int(correct))
        self._correct_in_window[source] += int(correct)
