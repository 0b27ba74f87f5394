"""The Exporter: the public face of monitoring in the caller's process.

A façade: the decorator (:meth:`Exporter.monitor`) times each call and gives it to the intake
(``intake.py``: frame ids, sampling, sources, tags, features, counting, the hand-off to the
worker); the worker handle (``worker_handle.py``) reaches the shared monitoring worker process,
where all analysis happens (``worker/``), so its Python code never competes with the caller's
threads for this process's GIL. Here: lifecycle, fork safety, late labels, /metrics, serving.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import functools
import inspect
import logging
import multiprocessing.util
import os
import time
import weakref
from typing import Any, AsyncIterator, Callable, Iterable, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from virk_exporter import frames as frame_io
from virk_exporter.caller.intake import Intake, SourceFn, Target
from virk_exporter.caller.labels import LabelBook
from virk_exporter.caller.worker_handle import WorkerHandle
from virk_exporter.config import ExporterConfig, check_sample
from virk_exporter.incidents.store import LazyStore
from virk_exporter.telemetry.metrics import CallerMetrics, merge_families
from virk_exporter.telemetry.totals import combine
from virk_exporter.telemetry.tracing import current_recording_span, emit, force_flush, own_span, resolve_tracer
from virk_exporter.wire.transport import ForwardedLabels

log = logging.getLogger("virk_exporter")

PUSH_COUNTS_S = 1.0
SIBLINGS_TIMEOUT_S = 10.0
COLLECT_TIMEOUT_S = 0.8  # a scrape answers within a second (the shipped scrape_timeout is 4 s)

F = TypeVar("F", bound=Callable[..., Any])
_OWN_SPAN = object()  # the call gets a span of its own


class Exporter:
    """Watches a vision model's frames. See the README for the full set of options.

    One per model in a process; the processes of a server share one monitoring worker.

    >>> exporter = Exporter(model="detector-v3", reference="reference.virkref")
    >>> @exporter.monitor
    ... def predict(frames): ...
    """

    def __init__(
        self,
        model: str,
        reference: Any = None,
        store: str | None = None,
        *,
        start: bool = True,
        copy_on_call: bool = False,
        label_memory: int = 1 << 20,
        label_window: int = 500,
        tracer_provider: Any = None,
        span_per_call: bool = False,
        **options: Any,
    ) -> None:
        if store is not None:
            options["store"] = store
        reference_frames = None
        if isinstance(reference, (str, bytes)) or hasattr(reference, "__fspath__"):
            options["reference_path"] = _checked_reference(reference)
        elif reference is not None:
            reference_frames = frame_io.normalize_any(reference, options.get("color", "rgb"))
        options.setdefault("log_level", log.getEffectiveLevel())
        self.config = ExporterConfig(model=model, **options)
        self.model = self.config.model
        self._worker = WorkerHandle(self.config, reference_frames, on_restart=lambda why: self._count_error("worker", RuntimeError(why)))
        self._worker.on_attached = self._on_attached
        self._copy_on_call = copy_on_call
        self._label_settings = (label_memory, label_window)
        self._tracer: Any = None
        self._tracing_off = False  # until the first call resolves the tracer (then one check per call)
        self._tracer_provider, self._span_per_call = tracer_provider, span_per_call  # see Exporter._request_span
        self._frame_ids: contextvars.ContextVar[range] = contextvars.ContextVar(f"virk_frame_ids_{id(self)}", default=range(0))
        self._servers: list[Any] = []
        self.store = LazyStore(self.config.store)  # opened by the incident routes when first asked (caller's process)
        self._closed = False
        self._fresh_state()
        _LIVE.add(self)
        multiprocessing.util.register_after_fork(self, _drain_at_multiprocessing_exit)
        if start:
            self._worker.start()
            # Drain and leave the worker at interpreter exit if the application never called close().
            atexit.register(_close_if_alive, weakref.ref(self))

    def _fresh_state(self) -> None:
        """This process's own counters, ledger, intake and hand-off thread (again after a fork)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = CallerMetrics(self.registry)
        self.metrics.start_at_zero(self.model)
        self._logged: set[str] = set()
        # Late labels (labels.py): the prediction ledger, kept on the hand-off thread.
        memory, window = self._label_settings
        self._label_book = LabelBook(
            self.model, self.metrics.labels_total, self.metrics.label_accuracy, lambda: self._intake.issued_ids(), memory, window, self._count_error,
            owns=lambda frame_id: self._intake.owns(frame_id), forward=lambda ids, labels: self._worker.post("labels", ids, labels),
        )
        self._intake = Intake(
            self.metrics, self._worker, self._label_book, self._count_error,
            model=self.model, max_sources=self.config.max_sources, queue_batches=self.config.queue_batches,
            copy_on_call=self._copy_on_call, frame_ids=self._frame_ids, idle=self._idle,
        )
        self._intake.closed = self._closed
        self._handoff = self._intake.handoff
        self._others: list[Metric] = []  # the other processes' caller-side families, as last seen
        self._worker_families: list[Metric] = []
        self._pushed_at = 0.0
        self.metrics.queue_depth.labels(self.model).set_function(lambda: self._handoff.pending + self._worker.depth())
        self._handoff.start()

    def _on_attached(self, attached: Any) -> None:
        self._intake.attach_session(attached.session)

    def _after_fork_in_child(self) -> None:
        """A forked child (gunicorn --preload, os.fork, a fork-start pool): the parent's threads
        are gone and its connections are the parent's. Start over as a process of our own:
        own counters and hand-off thread, attached to the shared worker as a new session."""
        attached = self._worker.attached is not None or self._worker.wanted
        self._worker.forget_after_fork()
        for server in self._servers:  # the parent serves; its thread is not here to shut down
            server.close_inherited()
        self._servers = []
        self._fresh_state()
        if self._closed or not attached:
            return
        self._worker.start()

    # ----------------------------------------------------------------- decorator
    def monitor(
        self,
        fn: F | None = None,
        *,
        source: SourceFn | None = None,
        sample: float | int | None = None,
        color: str | None = None,
        frames_arg: str | int | None = None,
        tags: Callable[..., Any] | None = None,
        predicted: Callable[[Any], Iterable[Any]] | None = None,
        features: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Decorate ``predict``. Bare (``@exporter.monitor``) or with options.

        ``source(frames, **call_arguments)`` names the camera of a batch (a string) or of each
        frame (a list). ``sample`` is a rate in (0, 1] or an integer N (every N-th frame).
        ``frames_arg`` names (or indexes) the parameter holding the frames; by default the
        first parameter that is not ``self``/``cls``.

        ``tags(frames, **call_arguments)`` returns a small dict (or one per frame) of slice
        metadata (site, weather, firmware), evaluated off the caller's thread for sampled frames.
        ``predicted(result)`` returns one predicted value per frame for late labels (default:
        the argmax of ``[N, K]`` scores). ``features(result)`` returns ``[N, d]`` features
        (arrays/tensors, or a list of them to concatenate) for ``embedder="features"``; it runs
        on the caller's thread right after the call, so return references, not host copies.
        """
        if sample is not None:
            check_sample(sample)

        def decorate(function: F) -> F:
            target = Target(
                _frames_locator(function, frames_arg),
                inspect.signature(function) if source is not None or tags is not None else None,
                source, self.config.sample if sample is None else sample, color or self.config.color, tags, predicted, features,
                function.__qualname__,
                f"{function.__module__}:{function.__qualname__}",
                {"code.function.name": f"{function.__module__}.{function.__qualname__}", "virk.model": self.model},
                self.model,
            )
            if inspect.iscoroutinefunction(function):

                @functools.wraps(function)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    span = None if self._tracing_off else self._request_span()
                    if span is _OWN_SPAN:
                        with self._own_span(target) as span:
                            return await _timed_async(self, target, span, function, args, kwargs)
                    return await _timed_async(self, target, span, function, args, kwargs)

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                span = None if self._tracing_off else self._request_span()
                if span is _OWN_SPAN:
                    with self._own_span(target) as span:
                        return _timed(self, target, span, function, args, kwargs)
                return _timed(self, target, span, function, args, kwargs)

            return wrapper  # type: ignore[return-value]

        return decorate(fn) if fn is not None else decorate

    def _request_span(self) -> Any:
        """Where a call's attributes go: None (tracing off), the caller's recording span (the
        default), or _OWN_SPAN (a span of our own per call: span_per_call, or no request span)."""
        if self._tracer is None and self._resolve_tracing() is None:
            return None
        return _OWN_SPAN if self._span_per_call else current_recording_span() or _OWN_SPAN

    def _own_span(self, target: Target) -> Any:
        return own_span(self._tracer, target.name, target.attributes)

    def _resolve_tracing(self) -> Any:
        """Pick the tracer at the first monitored call (so an app may set its provider after creating us)."""
        self._tracer = resolve_tracer(self._tracer_provider)
        self._tracing_off = self._tracer is None
        if self._tracer is not None:
            self._worker.post("tracing", True, sticky=True)
        return self._tracer

    def _idle(self) -> None:
        """The hand-off thread has nothing queued: score waiting labels, emit the worker's spans,
        and (about once a second) tell the shared worker this process's counts (totals.py)."""
        self._label_book.drain(final=lambda: self._handoff.pending == 0)
        self._emit_worker_spans()
        now = time.monotonic()
        if now - self._pushed_at >= PUSH_COUNTS_S and self._worker.ready:
            self._pushed_at = now
            self._worker.try_post("counters", list(self.registry.collect()))

    def _emit_worker_spans(self) -> None:
        """Turn the worker's span records into spans, and score labels other processes
        forwarded to us (hand-off thread, between calls)."""
        for record in self._worker.span_records():
            if isinstance(record, ForwardedLabels):
                if record.outcome is not None:
                    self._label_book.count_unscorable(len(record.frame_ids), record.outcome)
                else:
                    self._label_book.submit(record.frame_ids, record.labels)
            elif self._tracer is not None:
                emit(self._tracer, record)

    def source_label(self, name: str) -> str:
        """The `source` label a source name is exported under (at most max_sources, then "other")."""
        return self._intake.source_label(name)

    def _count_error(self, stage: str, problem: BaseException) -> None:
        self.metrics.errors.labels(self.model, stage).inc()
        if stage not in self._logged:
            self._logged.add(stage)
            log.warning("virk-exporter: monitoring error at stage %r (logged once per stage): %s", stage, problem)

    # ----------------------------------------------------------------- frame ids, late labels
    def last_frame_ids(self) -> range:
        """The frame ids of the latest monitored call in this thread (or asyncio task): one per
        frame of the batch, in order; empty when its frames could not be read. The same ids are
        on the call's span (``virk.frame_id.first``), in the recorder and in bundles."""
        return self._frame_ids.get()

    def record_label(self, frame_id: int, label: Any) -> None:
        """Ground truth for one frame, whenever it arrives. Never blocks, never raises: the
        label is scored on the hand-off thread (``virk_labels_total``, ``virk_label_accuracy_ratio``)."""
        self._label_book.submit((frame_id,), (label,))

    def record_labels(self, frame_ids: Any, labels: Any = None) -> None:
        """Many labels at once: ``record_labels(ids, labels)`` or ``record_labels({id: label})``."""
        try:
            if labels is None:
                items = dict(frame_ids)
                frame_ids, labels = list(items), list(items.values())
            else:  # copies: the caller may reuse its buffers once we return
                frame_ids, labels = list(frame_ids), list(labels)
                if len(frame_ids) != len(labels):
                    raise ValueError(f"record_labels: {len(frame_ids)} frame ids but {len(labels)} labels")
            self._label_book.submit(frame_ids, labels)
        except Exception as problem:  # noqa: BLE001 - monitoring never reaches the caller
            self._count_error("labels", problem)

    # ----------------------------------------------------------------- worker access
    @property
    def ready(self) -> bool:
        return self._worker.ready

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._worker.wait_ready(self.config.worker_start_timeout_s if timeout is None else timeout)

    def request(self, command: str, *args: Any, timeout: float = 30.0) -> Any:
        """Ask the worker process (see worker.py for the commands)."""
        return self._worker.request(command, *args, timeout=timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until the worker has processed everything sent so far (and export its spans);
        this process's counts are then part of every process's /metrics."""
        self._handoff.drain(timeout)
        # Labels queued so far are scored now (their calls were accounted before the marker);
        # only the idle hand-off thread may declare a still-missing frame unknown.
        self._label_book.drain()
        self._worker.flush(timeout)
        self._worker.request("counters", list(self.registry.collect()), timeout=timeout)  # answered: every process sees our counts now
        if self._tracer is not None:
            self._emit_worker_spans()
            force_flush(self._tracer_provider)

    def rebase(self, source: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Learn a new reference for ``source`` (every source with None), e.g. after a camera
        was re-aimed on purpose. Frames already queued are analysed against the old one first;
        the stored reference is cleared so a restart does not bring it back."""
        self.flush(timeout)
        label = None if source is None else self.source_label(source)
        log.warning("rebase: %s learns a new reference", "every source" if label is None else f"source {label!r}")
        return self.request("rebase", label, timeout=timeout)

    def submit_alert(self, notification: Any) -> None:
        self._worker.post("alert", notification)

    def collect(self) -> list[Metric]:
        """All metric families: this process's, the other processes' caller-side counts and the
        shared worker's. Answers within about a second even while the worker starts or stalls
        (then with the other processes' counts as last seen, so no counter goes backwards)."""
        local = list(self.registry.collect())
        if self._worker.ready:
            try:
                self._worker_families, self._others = self._worker.request("collect", local, timeout=COLLECT_TIMEOUT_S)
            except Exception as problem:  # noqa: BLE001 - a scrape must still answer
                self._count_error("worker", problem)
                local = list(self.registry.collect())  # with the error counted
        return merge_families(combine([local, self._others]), self._worker_families)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """What /metrics serves for this Accept header: (body, content type). OpenMetrics
        (with exemplars) when asked for, else the Prometheus text format."""
        encoder, content_type = choose_encoder(accept)

        class Families:  # the encoders take anything with collect()
            collect = staticmethod(self.collect)

        return encoder(Families()), content_type

    # ----------------------------------------------------------------- HTTP
    def serve(self, host: str = "127.0.0.1", port: int = 10098) -> Any:
        """Serve /metrics, /-/healthy, /-/ready, /api/v1/alerts and /incidents/ in a thread.

        In a server with several processes sharing one worker, the first to call this binds
        the port; the others log that and return None (any process's /metrics shows them all).
        """
        from virk_exporter.http.server import PortInUseError, serve

        try:
            server = serve(self, host, port)
        except PortInUseError:
            siblings = self._sibling_processes()
            if not siblings:
                raise
            log.info("virk-exporter: %s:%d is served by another process of this server (pids %s); not serving from %d", host, port, siblings, os.getpid())
            return None
        self._servers.append(server)
        return server

    def _sibling_processes(self) -> list[int]:
        """Other processes attached to our worker (none when it cannot tell)."""
        try:
            # At start-up, when the worker may be busy importing its analysis: allow it time.
            return [pid for pid in self._worker.request("sessions", timeout=SIBLINGS_TIMEOUT_S) if pid != os.getpid()]
        except Exception:  # noqa: BLE001 - then the port error is the user's to see
            return []

    @property
    def wsgi_app(self) -> Callable:
        from virk_exporter.http.server import make_wsgi_app

        return make_wsgi_app(self)

    @property
    def asgi_app(self) -> Callable:
        from virk_exporter.http.server import make_asgi_app

        return make_asgi_app(self)

    # ----------------------------------------------------------------- lifecycle
    def close(self, timeout: float | None = None) -> None:
        """Drain the pipeline (up to ``timeout`` seconds, default ``close_timeout_s``), stop the
        server and leave the shared worker (which exits when its last process has left)."""
        if self._closed:
            return
        self._closed = self._intake.closed = True
        for server in self._servers:
            server.shutdown()
        deadline = time.monotonic() + (self.config.close_timeout_s if timeout is None else timeout)
        self._handoff.close(max(0.0, deadline - time.monotonic()))
        self._worker.close(max(0.0, deadline - time.monotonic()), last_words=lambda: list(self.registry.collect()))
        if self._tracer is not None:
            self._emit_worker_spans()
            force_flush(self._tracer_provider)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """An ASGI lifespan (``Starlette(lifespan=exporter.lifespan)``, ``FastAPI(lifespan=...)``):
        uvicorn runs its end on SIGTERM before it exits, where atexit handlers do not run."""
        yield
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def __enter__(self) -> "Exporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _timed(exporter: Exporter, target: Target, span: Any, function: Callable, args: tuple, kwargs: dict) -> Any:
    """Run the decorated function; its result or exception goes back to the caller untouched."""
    started = time.perf_counter()
    try:
        result = function(*args, **kwargs)
    except BaseException as error:
        exporter._intake.observe(target, span, args, kwargs, None, error, time.perf_counter() - started)
        raise
    exporter._intake.observe(target, span, args, kwargs, result, None, time.perf_counter() - started)
    return result


async def _timed_async(exporter: Exporter, target: Target, span: Any, function: Callable, args: tuple, kwargs: dict) -> Any:
    started = time.perf_counter()
    try:
        result = await function(*args, **kwargs)
    except BaseException as error:
        exporter._intake.observe(target, span, args, kwargs, None, error, time.perf_counter() - started)
        raise
    exporter._intake.observe(target, span, args, kwargs, result, None, time.perf_counter() - started)
    return result


def _close_if_alive(ref: "weakref.ref[Exporter]") -> None:
    exporter = ref()
    if exporter is not None:
        exporter.close()


def _drain_at_multiprocessing_exit(exporter: Exporter) -> None:
    """In a multiprocessing child (e.g. a fork-start Pool's worker): it ends with os._exit
    after running multiprocessing's finalizers, not atexit handlers; drain there."""
    multiprocessing.util.Finalize(exporter, _close_if_alive, args=(weakref.ref(exporter),), exitpriority=10)


_LIVE: "weakref.WeakSet[Exporter]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for exporter in list(_LIVE):
        try:
            exporter._after_fork_in_child()
        except Exception as problem:  # noqa: BLE001 - a fork must never fail because of monitoring
            exporter._count_error("worker", problem)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _checked_reference(path: Any) -> str:
    """Fail at construction, with a clear message, on a reference the worker could not use."""
    from pathlib import Path

    from virk_exporter.embed.embedders import embedder_from_id
    from virk_exporter.reference.build import Reference

    path = Path(path.decode() if isinstance(path, bytes) else path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file {path} does not exist (build one with: virk-exporter reference build)")
    reference = Reference.load(path)
    embedder_from_id(reference.embedder_id, device="cpu")  # raises when this version cannot rebuild it
    missing = [name for name, source in reference.sources.items() if source.fingerprint_state is None]
    if missing:
        raise ValueError(f"reference {path}: sources {missing} have no fingerprinter state (fewer than 8 frames?); rebuild it")
    return str(path)


def _frames_locator(function: Callable, frames_arg: str | int | None) -> Callable[[tuple, dict], Any]:
    """Where the frames are in a call's arguments."""
    params = [p for p in inspect.signature(function).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if isinstance(frames_arg, int):
        index, name = frames_arg, params[frames_arg].name if frames_arg < len(params) else None
    else:
        candidates = [p for p in params if p.name not in ("self", "cls")] if frames_arg is None else [p for p in params if p.name == frames_arg]
        if not candidates:
            raise TypeError(f"{function.__qualname__} has no parameter for the frames (frames_arg={frames_arg!r})")
        index, name = params.index(candidates[0]), candidates[0].name

    def locate(args: tuple, kwargs: dict) -> Any:
        if index < len(args):
            return args[index]
        if name in kwargs:
            return kwargs[name]
        raise frame_io.FrameError(f"no frames argument {name!r} in the call")

    return locate
