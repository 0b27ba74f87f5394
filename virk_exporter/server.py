"""HTTP routes of an Exporter, served standalone or mounted into a WSGI/ASGI application.

Routes are plain functions ``handler(exporter, request) -> Response``; the WSGI and ASGI
adapters and the standalone server are thin shells around :func:`dispatch`.
"""

from __future__ import annotations

import asyncio
import errno
import threading
import urllib.parse
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


MAX_BODY = 8 * 2**20  # hard cap on any request body; the webhook applies its own, smaller limit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    remote: str = ""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class PortInUseError(OSError):
    """The address the exporter was asked to serve on is taken."""


def metrics(exporter: Any, request: Request) -> Response:
    body, content_type = exporter.exposition(request.headers.get("accept", ""))
    return Response(200, body, content_type)


def healthy(exporter: Any, request: Request) -> Response:
    return Response(200, b"OK\n")


def ready(exporter: Any, request: Request) -> Response:
    if exporter.ready:
        return Response(200, b"ready\n")
    return Response(503, b"monitoring worker starting\n")


def alerts(exporter: Any, request: Request) -> Response:
    from virk_exporter.incidents.http import handle_alerts

    return handle_alerts(exporter, request)


def incidents(exporter: Any, request: Request) -> Response:
    from virk_exporter.incidents.http import handle_incident

    return handle_incident(exporter, request)


ROUTES: list[tuple[str, str, bool, Callable[[Any, Request], Response]]] = [
    # (method, path, is prefix, handler)
    ("GET", "/metrics", False, metrics),
    ("GET", "/-/healthy", False, healthy),
    ("GET", "/-/ready", False, ready),
    ("POST", "/api/v1/alerts", False, alerts),
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
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            return _wsgi_reply(start_response, Response(400, b"bad Content-Length\n"))
        if length > MAX_BODY:
            return _wsgi_reply(start_response, Response(413, b"request body too large\n"))
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        headers["content-length"] = str(length)
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


def _wsgi_reply(start_response: Callable, response: Response) -> list[bytes]:
    reason = _REASONS.get(response.status, "")
    headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))), *response.headers.items()]
    start_response(f"{response.status} {reason}", headers)
    return [response.body]


_REASONS = {200: "OK", 202: "Accepted", 302: "Found", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 422: "Unprocessable Entity", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}


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
class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # scrapes every few seconds would flood the log
        pass


class ExporterServer:
    """A running standalone server; ``shutdown()`` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host, self.port = httpd.server_address[:2]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close_inherited(self) -> None:
        """In a forked child: close our copy of the listening socket; the parent goes on serving."""
        self._httpd.socket.close()

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve(exporter: Any, host: str = "127.0.0.1", port: int = 9400) -> ExporterServer:
    try:
        httpd = make_server(host, port, make_wsgi_app(exporter), _ThreadingWSGIServer, handler_class=_QuietHandler)
    except OSError as problem:
        if problem.errno == errno.EADDRINUSE:
            raise PortInUseError(problem.errno, f"cannot serve on {host}:{port}: the port is already in use "
                                 "(pick another with serve(port=...) or --port)") from problem
        raise
    thread = threading.Thread(target=httpd.serve_forever, name="virk-http", daemon=True)
    thread.start()
    return ExporterServer(httpd, thread)
