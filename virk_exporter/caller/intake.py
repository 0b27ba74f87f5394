"""Call intake: what happens to one decorated call between predict's return and the worker.

The caller's thread (:meth:`Intake.observe`) does only what must happen there: find the frames,
count them, reserve their frame ids (``last_frame_ids()`` answers right after the call), run the
user's ``features()`` on references, and put the call's attributes on its span. Everything else
— sources, sampling, the source cap, tags, counting, copying pixels and handing the batch to the
worker — happens on the hand-off thread (:meth:`Intake.account`, see ``handoff.py``).

After a 5 ms predict the caller's thread runs on cold caches, so every line here costs several
times what a micro-benchmark shows: keep this path short (benchmarks/overhead.py measures it).
"""

from __future__ import annotations

import contextvars
import inspect
import itertools
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
from opentelemetry.trace import INVALID_SPAN_CONTEXT

from virk_exporter import frames as frame_io
from virk_exporter.caller.handoff import Handoff
from virk_exporter.caller.labels import RAISED, LabelBook
from virk_exporter.caller.outputs import output_rows, output_summary, to_numpy
from virk_exporter.caller.worker_handle import WorkerHandle
from virk_exporter.caller.tags import tags_per_frame
from virk_exporter.telemetry.metrics import CallerMetrics
from virk_exporter.telemetry.tracing import hex_ids
from virk_exporter.wire.transport import SESSION_BITS, Arrays, BatchInfo

SourceFn = Callable[..., "str | Iterable[str] | None"]
_NO_IDS = range(0)


@dataclass(frozen=True)
class Target:
    """One decorated function: where its frames are, its monitoring options, its span's name and attributes."""

    locate: Callable[[tuple, dict], Any]
    signature: inspect.Signature | None  # only when source() or tags() need the call's other arguments
    source: SourceFn | None
    sample: float | int
    color: str
    tags: Callable[..., Any] | None
    predicted: Callable[[Any], Iterable[Any]] | None
    features: Callable[[Any], Any] | None
    name: str
    function: str  # module:qualname, what `bundle replay --predict` takes
    attributes: dict[str, Any]  # a span of our own starts with these
    model: str


@dataclass(slots=True)
class Call:
    """One decorated call, as queued for the hand-off thread (``sources``/``chosen`` None: decided there)."""

    target: Target
    frames: Any
    args: tuple
    kwargs: dict
    result: Any
    error: BaseException | None
    duration: float
    span: Any  # the OpenTelemetry span the call's attributes went on (None when tracing is off)
    timestamp: float
    n: int = 0
    first_id: int = 0
    sources: list[str] | None = None
    chosen: list[int] | range | None = None
    features: Any = None  # what the target's features() returned (converted on the hand-off thread)


class Intake:
    """Takes decorated calls in and hands their sampled frames to the worker.

    One per process (a forked child builds its own): it holds the frame-id range of this
    process's session, the source cap, the sampling counter, the per-source counters and the
    hand-off thread.
    """

    def __init__(
        self,
        metrics: CallerMetrics,
        worker: WorkerHandle,
        label_book: LabelBook,
        count_error: Callable[[str, BaseException], None],
        *,
        model: str,
        max_sources: int,
        queue_batches: int,
        copy_on_call: bool,
        frame_ids: contextvars.ContextVar[range],
        idle: Callable[[], None],
    ) -> None:
        self.metrics = metrics
        self._worker = worker
        self._label_book = label_book
        self._count_error = count_error
        self._model = model
        self._max_sources = max_sources
        self._copy_on_call = copy_on_call
        self._frame_ids = frame_ids
        self.closed = False
        self._duration = metrics.predict_duration.labels(model)
        self._id_lock = threading.Lock()
        self._id_base = self._next_id = 0
        self._every_n = itertools.count()
        self._labels: set[str] = set()
        self._counters: dict[str, tuple[Any, Any]] = {}
        self._drops: dict[str, Any] = {}
        self.handoff = Handoff(self.account, count_error, queue_batches, idle=idle)

    # ----------------------------------------------------------------- frame ids
    def attach_session(self, session: int) -> None:
        """Frame ids are unique across the processes sharing a worker: the session number is their high bits."""
        with self._id_lock:
            base = session << SESSION_BITS
            if base != self._id_base:
                self._id_base = self._next_id = base

    def issued_ids(self) -> range:
        return range(self._id_base, self._next_id)

    def owns(self, frame_id: int) -> bool:
        return frame_id >> SESSION_BITS == self._id_base >> SESSION_BITS

    # ----------------------------------------------------------------- caller's thread
    def observe(self, target: Target, span: Any, args: tuple, kwargs: dict, result: Any, error: BaseException | None, duration: float) -> None:
        """What the caller's thread does per call (``span``: where the call's attributes go, or None). Never raises."""
        try:
            call = Call(target, None, args, kwargs, result, error, duration, span, time.time())
            if self.closed:
                self._frame_ids.set(_NO_IDS)
                self.account(call, shed=None)
                return
            try:
                frames = call.frames = target.locate(args, kwargs)
                n = call.n = _frame_count(frames)
                if self._copy_on_call:
                    captured = frame_io.capture(frames)
                    call.frames = frame_io.Captured(captured.array.copy(), captured.channels_first)
            except frame_io.FrameError as problem:
                self._count_error("input", problem)
                self._frame_ids.set(_NO_IDS)
                self.account(call, shed=None)
                return
            with self._id_lock:
                first = call.first_id = self._next_id
                self._next_id = first + n
            self._frame_ids.set(range(first, first + n))
            if target.source is not None:  # user code: it gets the frames as the caller passed them
                call.sources = self._sources_of(target, frames, args, kwargs, n)
            if span is not None or target.features is not None:
                chosen = call.chosen = self._sample(target.sample, n)
                if target.features is not None and error is None and chosen:
                    try:  # user code on the caller's thread: it returns references (see Exporter.monitor)
                        call.features = target.features(result)
                    except Exception as problem:  # noqa: BLE001
                        self._count_error("features", problem)
                if span is not None:
                    # One call into the SDK; the frames carry ids first .. first + n - 1 (cheaper than a list).
                    span.set_attributes(
                        {
                            "virk.model": target.model,
                            "virk.batch_size": n,
                            "virk.frame_id.first": first,
                            "virk.source": _one_source(call.sources) if call.sources is not None else self.source_label("default"),
                            "virk.sampled": bool(chosen),
                        }
                    )
            if not self.handoff.submit(call):
                self.account(call, shed="queue_full")
        except Exception as problem:  # noqa: BLE001 - monitoring must never reach the caller
            self._count_error("caller", problem)

    def _sources_of(self, target: Target, frames: Any, args: tuple, kwargs: dict, n: int) -> list[str]:
        named = target.source(frames, **other_arguments(target.signature, frames, args, kwargs))  # type: ignore[misc]
        if named is None or isinstance(named, str):
            return [self.source_label(str(named or "default"))] * n
        names = [self.source_label(str(s)) for s in named]
        if len(names) != n:
            raise ValueError(f"source() returned {len(names)} names for {n} frames")
        return names

    def source_label(self, name: str) -> str:
        """The `source` label a source name is exported under (at most max_sources, then "other")."""
        if name in self._labels:
            return name
        if len(self._labels) < self._max_sources:
            self._labels.add(name)
            return name
        return "other"

    def _sample(self, sample: float | int, n: int) -> list[int] | range:
        if isinstance(sample, int):
            return [i for i in range(n) if next(self._every_n) % sample == 0]
        if sample >= 1.0:
            return range(n)
        return [i for i in range(n) if random.random() < sample]

    # ----------------------------------------------------------------- hand-off thread
    def account(self, call: Call, shed: str | None = "") -> None:
        """Count a call's frames and hand the sampled ones to the worker (hand-off thread).

        ``shed`` is a drop reason (frames counted, sampled ones dropped), None (only the
        duration is counted: unreadable input, or the intake is closed) or "" (normal).
        """
        # A span's context is immutable: read here, off the caller's thread (the span may have ended).
        trace_id, span_id = hex_ids(INVALID_SPAN_CONTEXT if call.span is None else call.span.get_span_context())
        exemplar = {"trace_id": trace_id, "span_id": span_id} if trace_id else None
        self._duration.observe(call.duration, exemplar)
        if shed is None:
            return
        target = call.target
        sources = call.sources
        if sources is None:
            sources = call.sources = [self.source_label("default")] * call.n
        chosen = call.chosen
        if chosen is None:
            chosen = call.chosen = self._sample(target.sample, call.n)
        # Late labels: note the call for the prediction ledger; score waiting labels (not on the
        # caller's thread, where a shed call is accounted).
        book = self._label_book
        book.record(call.first_id, sources, call.result if call.error is None else RAISED, target.predicted)
        if not shed:
            book.drain()
        for name in dict.fromkeys(sources):
            self._source_counters(name)[0].inc(sources.count(name), exemplar)
        if not chosen:
            return
        for index in chosen:
            self._source_counters(sources[index])[1].inc()
        if shed:
            self.count_drop(shed, len(chosen))
            return
        captured = frame_io.capture(call.frames)
        batch = frame_io.to_nhwc(captured.array, captured.channels_first)
        if batch.shape[0] != call.n:
            raise frame_io.FrameError(f"a list of frames of different shapes: expected {call.n} frames")
        outputs = output_rows(call.result, call.n)
        features = self._feature_rows(call.features, call.n) if call.features is not None else None
        if len(chosen) != call.n:
            picks = list(chosen)
            batch = batch[picks]
            outputs = outputs[picks] if outputs is not None else None
            features = features[picks] if features is not None else None
        info = BatchInfo(
            frame_ids=[call.first_id + i for i in chosen],
            sources=[sources[i] for i in chosen],
            timestamp=call.timestamp,
            color=target.color,
            channels_first=captured.channels_first,
            trace_id=trace_id,
            span_id=span_id,
            output=output_summary(call.result, call.error),
            tags=self._tags_of(call, chosen) if target.tags is not None else None,
            function=target.function,
        )
        for reason, frames in self._worker.put(Arrays(batch, outputs, features), info):
            self.count_drop(reason, frames)

    def _source_counters(self, label: str) -> tuple[Any, Any]:
        counters = self._counters.get(label)
        if counters is None:
            counters = (self.metrics.frames.labels(self._model, label), self.metrics.sampled.labels(self._model, label))
            self._counters[label] = counters
            for outcome in ("correct", "incorrect"):  # at zero, so accuracy ratios start cleanly
                self.metrics.labels_total.labels(self._model, label, outcome)
        return counters

    def count_drop(self, reason: str, frames: int) -> None:
        counter = self._drops.get(reason)
        if counter is None:
            counter = self._drops[reason] = self.metrics.dropped.labels(self._model, reason)
        counter.inc(frames)

    def _tags_of(self, call: Call, chosen: list[int] | range) -> list[dict[str, str]]:
        """The sampled frames' tags; a failing tags() is counted, frames go on untagged."""
        try:
            others = other_arguments(call.target.signature, call.frames, call.args, call.kwargs)
            tags = tags_per_frame(call.target.tags(call.frames, **others), call.n)  # type: ignore[misc]
            return [tags[i] for i in chosen]
        except Exception as problem:  # noqa: BLE001
            self._count_error("tags", problem)
            return [{} for _ in chosen]

    def _feature_rows(self, value: Any, n: int) -> np.ndarray | None:
        """What features() returned as float32 [n, d], or None (counted)."""
        try:
            parts = value if isinstance(value, (list, tuple)) else [value]
            arrays = [np.asarray(_first_not_none(to_numpy(p), p), np.float32).reshape(n, -1) for p in parts]
            rows = np.ascontiguousarray(np.concatenate(arrays, axis=1))
            if not np.isfinite(rows).all():
                raise ValueError("features() returned NaN or infinite values")
            return rows
        except Exception as problem:  # noqa: BLE001
            self._count_error("features", problem)
            return None


def _frame_count(frames: Any) -> int:
    """How many frames a call passed (raises FrameError for what is not frames)."""
    if type(frames) is np.ndarray and frames.size:  # the common case, without peek's generality
        return frame_io.frame_count(frames.shape)
    shape, channels_first = frame_io.peek(frames)
    return frame_io.frame_count(shape, channels_first)


def _one_source(sources: list[str]) -> str:
    """A span's ``virk.source``: the batch's source, or its sources joined."""
    distinct = set(sources)
    return distinct.pop() if len(distinct) == 1 else ",".join(sorted(distinct))


def other_arguments(signature: inspect.Signature | None, frames: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A call's arguments by name, without the frames and ``self``: what source() and tags() get."""
    bound = signature.bind_partial(*args, **kwargs).arguments  # type: ignore[union-attr]
    return {k: v for k, v in bound.items() if v is not frames and k not in ("self", "cls")}


def _first_not_none(*values: Any) -> Any:
    return next(v for v in values if v is not None)
