"""The HTTP request and response the exporter's routes take and return, whatever serves them
(the standalone waitress server, or a WSGI/ASGI app mounted in the user's server)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Request:
    """An HTTP request as a route sees it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    remote: str = ""


@dataclass
class Response:
    """What a route answers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
