"""The standalone HTTP server under load and abuse (real sockets against waitress on 127.0.0.1):
many simultaneous clients, slow senders, idle connection floods, chunked bodies."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from servers import http_get
from test_webhook import REAL_PAYLOAD, FakeExporter

from virk_exporter.incidents.webhook import make_alert_payload
from virk_exporter.http.server import serve


class ServedFake(FakeExporter):
    """The routes' view of an Exporter, with /metrics and /-/ready answers of its own."""

    ready = True
    readiness_problems: list[str] = []

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        return b"# TYPE virk_up gauge\nvirk_up 1\n", "text/plain; version=0.0.4"


@pytest.fixture
def server_for(tmp_path):
    started = []

    def start(**config):
        exporter = ServedFake(tmp_path, **config)
        server = serve(exporter, "127.0.0.1", 0)
        started.append(server)
        return exporter, server

    yield start
    for server in started:
        server.shutdown()


def _raw(port: int, request: bytes, timeout: float = 30.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _post(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


def test_200_simultaneous_requests_are_all_answered(server_for):
    exporter, server = server_for(incident_queue=200)  # nothing builds here: room for all 100 alerts
    barrier = threading.Barrier(200)
    answers: dict[int, bytes | BaseException] = {}

    def client(i: int) -> None:
        if i % 2:
            request = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        else:
            request = _post("/api/v1/alerts", make_alert_payload(exporter.model, fingerprint=f"f{i:04d}"))
        barrier.wait()
        try:
            answers[i] = _raw(server.port, request)
        except OSError as error:  # a reset or refused connection
            answers[i] = error

    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    failures = {i: a for i, a in answers.items() if not isinstance(a, bytes) or a.split(b" ")[1:2] not in ([b"200"], [b"202"])}
    assert len(answers) == 200 and not failures, failures
    accepted = {a.fingerprint for n in exporter.submitted for a in n.alerts}
    assert accepted == {f"f{i:04d}" for i in range(0, 200, 2)}


def test_a_slow_sender_holds_no_thread_and_is_cut_off(server_for):
    _, server = server_for(http_threads=1, http_request_timeout_s=1.0)
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    slow.sendall(b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"{" * 100)
    # The only request thread is free meanwhile: the partial request is buffered, not dispatched.
    assert http_get(f"{server.url}/-/healthy", timeout=5)[0] == 200
    started = time.monotonic()
    slow.settimeout(15)
    try:
        while slow.recv(4096):  # trickling would not help either: the deadline is per request
            pass
    except ConnectionResetError:
        pass
    assert time.monotonic() - started < 10  # closed after ~1 s (checked once a second), not never
    slow.close()


def test_metrics_answer_while_many_idle_connections_are_open(server_for):
    _, server = server_for()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(500)]
    try:
        for sock in idle[::2]:
            sock.sendall(b"GET /met")  # half of them start a request and stall
        for _ in range(20):
            status, body = http_get(f"{server.url}/metrics", timeout=5)
            assert status == 200 and b"virk_up 1" in body
    finally:
        for sock in idle:
            sock.close()


def test_at_the_connection_cap_the_oldest_waiting_connections_make_room(server_for):
    _, server = server_for(http_connection_limit=20)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(40)]
    try:
        assert http_get(f"{server.url}/metrics", timeout=10)[0] == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_chunked_webhook_body_is_read(server_for):
    exporter, server = server_for()
    body = json.dumps(REAL_PAYLOAD).encode()
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:100], body[100:]))
    head = b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    answer = _raw(server.port, head + chunks + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
    assert [a.fingerprint for n in exporter.submitted for a in n.alerts] == ["5e1ee2a5b0c9d1f2"]


def test_a_chunked_body_reaches_a_mounted_wsgi_app_without_content_length(tmp_path):
    """Under gunicorn a chunked body arrives as a stream with no CONTENT_LENGTH."""
    import io

    from virk_exporter.http.server import make_wsgi_app

    exporter = ServedFake(tmp_path)
    body = json.dumps(REAL_PAYLOAD).encode()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/v1/alerts", "HTTP_TRANSFER_ENCODING": "chunked",
               "CONTENT_TYPE": "application/json", "wsgi.input": io.BytesIO(body)}
    statuses = []
    make_wsgi_app(exporter)(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["202 Accepted"]


def test_ready_says_what_is_not_ready(server_for):
    exporter, server = server_for(incident_queue=1)
    assert http_get(f"{server.url}/-/ready") == (200, b"ready\n")
    exporter.ready = False
    status, body = http_get(f"{server.url}/-/ready")
    assert status == 503 and b"monitoring worker not running" in body
    exporter.ready = True
    assert http_get(f"{server.url}/api/v1/alerts")[0] == 405
    _raw(server.port, _post("/api/v1/alerts", make_alert_payload(exporter.model)))
    status, body = http_get(f"{server.url}/-/ready")
    assert status == 503 and b"incident intake queue full (1 of 1" in body


def test_connections_with_descriptor_numbers_past_1023_are_served(server_for):
    """A busy process has many files open: select() would refuse descriptors >= 1024."""
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1400:
        pytest.skip("needs a descriptor limit above 1400")
    filler = [socket.socket() for _ in range(1100)]
    try:
        _, server = server_for()
        for _ in range(3):
            assert http_get(f"{server.url}/metrics", timeout=5)[0] == 200
    finally:
        for sock in filler:
            sock.close()
