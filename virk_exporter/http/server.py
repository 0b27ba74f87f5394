"""HTTP routes of an Exporter, served standalone or mounted into a WSGI/ASGI application.

Routes are plain functions ``handler(exporter, request) -> Response``; the WSGI and ASGI
adapters and the standalone server are thin shells around :func:`dispatch`.
"""

from __future__ import annotations

import asyncio
import errno
import threading
import urllib.parse
from http import HTTPStatus
from typing import Any, Callable

from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from virk_exporter.http.landing import landing_page
from virk_exporter.http.messages import Request, Response
from virk_exporter.http.runbook import runbook_page


MAX_BODY = 8 * 2**20  # hard cap on any request body; the webhook applies its own, smaller limit


class PortInUseError(OSError):
    """The address the exporter was asked to serve on is taken."""


def metrics(exporter: Any, request: Request) -> Response:
    body, content_type = exporter.exposition(request.headers.get("accept", ""))
    return Response(200, body, content_type)


def healthy(exporter: Any, request: Request) -> Response:
    return Response(200, b"OK\n")


def ready(exporter: Any, request: Request) -> Response:
    """200 "ready", or 503 with one line per thing that is not ready, so a probe's log says why."""
    from virk_exporter.incidents.http import intake_journal

    problems = []
    if not exporter.ready:
        problems.append("monitoring worker not running yet (starting, or restarting after it exited): "
                        "frames are dropped and counted, accepted alerts wait in the intake journal")
    waiting, cap = len(intake_journal(exporter)), exporter.config.incident_queue
    if waiting >= cap:
        problems.append(f"incident intake queue full ({waiting} of {cap} alerts waiting to be built): "
                        "new alerts are answered 503 until bundles are built")
    if problems:
        return Response(503, "".join(f"not ready: {p}\n" for p in problems).encode())
    return Response(200, b"ready\n")


def alerts(exporter: Any, request: Request) -> Response:
    from virk_exporter.incidents.http import handle_alerts

    return handle_alerts(exporter, request)


def incidents(exporter: Any, request: Request) -> Response:
    from virk_exporter.incidents.http import handle_incident

    return handle_incident(exporter, request)


def rebase(exporter: Any, request: Request) -> Response:
    from virk_exporter.http.reference_routes import handle_rebase

    return handle_rebase(exporter, request)


ROUTES: list[tuple[str, str, bool, Callable[[Any, Request], Response]]] = [
    # (method, path, is prefix, handler)
    ("GET", "/", False, landing_page),
    ("GET", "/runbook", False, runbook_page),
    ("GET", "/metrics", False, metrics),
    ("GET", "/-/healthy", False, healthy),
    ("GET", "/-/ready", False, ready),
    ("POST", "/api/v1/alerts", False, alerts),
    ("POST", "/api/v1/rebase", False, rebase),
    ("GET", "/incidents/", True, incidents),
]


def dispatch(exporter: Any, request: Request) -> Response:
    allowed = []
    for method, path, prefix, handler in ROUTES:
        if request.path == path or (prefix and request.path.startswith(path)):
            if request.method == method or (method == "GET" and request.method == "HEAD"):
                try:
                    return handler(exporter, request)
                except Exception as problem:  # noqa: BLE001 - a route failure is a 500, counted
                    exporter.metrics.errors.labels(exporter.model, "http").inc()
                    return Response(500, f"internal error: {type(problem).__name__}\n".encode())
            allowed.append(method)
    if allowed:
        return Response(405, b"method not allowed\n", headers={"Allow": ", ".join(allowed)})
    return Response(404, b"not found\n")


# ---------------------------------------------------------------------- WSGI
def make_wsgi_app(exporter: Any) -> Callable:
    def app(environ: dict, start_response: Callable) -> list[bytes]:
        try:
            body = _wsgi_body(environ)
        except _BodyError as error:
            return _wsgi_reply(start_response, error.response)
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        headers["content-length"] = str(len(body))
        request = Request(
            method=environ["REQUEST_METHOD"],
            path=environ.get("PATH_INFO", "/") or "/",
            query=urllib.parse.parse_qs(environ.get("QUERY_STRING", "")),
            headers=headers,
            body=body,
            remote=environ.get("REMOTE_ADDR", ""),
        )
        response = dispatch(exporter, request)
        if request.method == "HEAD":
            response.body = b""
        return _wsgi_reply(start_response, response)

    return app


class _BodyError(Exception):
    """A request body that cannot be read; carries the response to send instead."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _wsgi_body(environ: dict) -> bytes:
    """The request body, at most MAX_BODY bytes. A chunked body (no Content-Length; gunicorn
    and uvicorn's WSGI shims pass it through as a stream) is read up to the limit."""
    declared = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if not declared:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() or environ.get("wsgi.input_terminated")
        if not chunked:
            return b""
        body = stream.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise _BodyError(Response(413, b"request body too large\n"))
        return body
    if not declared.isdigit():
        raise _BodyError(Response(400, b"bad Content-Length\n"))
    length = int(declared)
    if length > MAX_BODY:
        raise _BodyError(Response(413, b"request body too large\n"))
    return stream.read(length) if length else b""


def _wsgi_reply(start_response: Callable, response: Response) -> list[bytes]:
    reason = HTTPStatus(response.status).phrase
    headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))), *response.headers.items()]
    start_response(f"{response.status} {reason}", headers)
    return [response.body]


# ---------------------------------------------------------------------- ASGI
def make_asgi_app(exporter: Any) -> Callable:
    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        chunks, size = [], 0
        while True:
            event = await receive()
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                return await _asgi_reply(send, Response(413, b"request body too large\n"))
            chunks.append(chunk)
            if not event.get("more_body"):
                break
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted (Starlette >= 0.33 keeps the full path in scope["path"])
            path = path[len(root) :] or "/"
        request = Request(
            method=scope["method"],
            path=path,
            query=urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1")),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])},
            body=b"".join(chunks),
            remote=(scope.get("client") or ("", 0))[0],
        )
        # Routes may ask the worker process and wait: keep the event loop free.
        response = await asyncio.get_running_loop().run_in_executor(None, dispatch, exporter, request)
        await _asgi_reply(send, response)

    return app


async def _asgi_reply(send: Callable, response: Response) -> None:
    headers = [(b"content-type", response.content_type.encode()), (b"content-length", str(len(response.body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in response.headers.items()]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


# ---------------------------------------------------------------------- standalone
class _GuardedServer(TcpWSGIServer):
    """waitress, plus two defences it lacks: a deadline for a whole request to arrive (a slow
    sender trickling a byte now and then is never "idle"), and room for a scrape when the
    connection cap is reached (the longest-open connections without a request running are
    closed instead of refusing everyone new)."""

    def __init__(self, *args: Any, request_timeout: float, **kwargs: Any) -> None:
        self.request_timeout = request_timeout
        self._partial: dict[Any, tuple[Any, float]] = {}  # channel -> (its partial request, first seen)
        super().__init__(*args, **kwargs)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        partial: dict[Any, tuple[Any, float]] = {}
        for channel in list(self.active_channels.values()):
            request = channel.request  # the request still being received, None between requests
            if request is None or channel.requests:
                continue
            seen_request, since = self._partial.get(channel, (None, now))
            since = since if seen_request is request else now
            if now - since > self.request_timeout:
                channel.will_close = True
            else:
                partial[channel] = (request, since)
        self._partial = partial

    def readable(self) -> bool:
        if self.accepting and len(self._map) >= self.adj.connection_limit:
            self._evict(max(1, self.adj.connection_limit // 10))
        return super().readable()

    def _evict(self, count: int) -> None:
        waiting = [c for c in self.active_channels.values() if not c.requests and not c.will_close]
        for channel in sorted(waiting, key=lambda c: c.creation_time)[:count]:
            channel.will_close = True


class ExporterServer:
    """A running standalone server; ``shutdown()`` stops it."""

    def __init__(self, server: _GuardedServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host, self.port = server.effective_host, int(server.effective_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close_inherited(self) -> None:
        """In a forked child: close our copy of the listening socket; the parent goes on serving."""
        self._server.socket.close()

    def shutdown(self) -> None:
        def close_all() -> None:  # on the server's own thread: its loop ends once the map is empty
            for dispatcher in list(self._server._map.values()):
                dispatcher.close()

        self._server.trigger.pull_trigger(close_all)
        self._thread.join(timeout=5)
        self._server.task_dispatcher.shutdown(timeout=5)


def serve(exporter: Any, host: str = "127.0.0.1", port: int = 10098) -> ExporterServer:
    """Serve the routes with waitress on a thread; limits come from ``exporter.config``."""
    config = exporter.config
    adjustments = Adjustments(
        host=host,
        port=port,
        backlog=config.http_backlog,
        threads=config.http_threads,
        connection_limit=config.http_connection_limit,
        channel_timeout=config.http_idle_timeout_s,
        cleanup_interval=1,  # how often idle and too-slow connections are looked at
        asyncore_use_poll=True,  # select() fails outright once any descriptor number passes 1023
        max_request_body_size=MAX_BODY,
        ident="virk-exporter",
        expose_tracebacks=False,
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adjustments.threads)
    try:
        server = _GuardedServer(
            make_wsgi_app(exporter),
            {},
            dispatcher=dispatcher,
            adj=adjustments,
            sockinfo=adjustments.listen[0],
            request_timeout=config.http_request_timeout_s,
        )
    except OSError as problem:
        dispatcher.shutdown(timeout=1)
        if problem.errno == errno.EADDRINUSE:
            raise PortInUseError(problem.errno, f"cannot serve on {host}:{port}: the port is already in use "
                                 "(pick another with serve(port=...) or --port)") from problem
        raise
    thread = threading.Thread(target=server.run, name="virk-http", daemon=True)
    thread.start()
    return ExporterServer(server, thread)
