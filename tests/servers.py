"""Real servers for integration tests: Prometheus, Alertmanager, SeaweedFS (S3) and an OTLP/HTTP
trace receiver. Every one listens on 127.0.0.1 only and is stopped by PID.

A missing binary is a test failure, never a skip: `make test` installs them all.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml


def free_port(grpc_offset: int | None = None) -> int:
    """A free TCP port on 127.0.0.1 (and port + grpc_offset free too, for SeaweedFS)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if grpc_offset is None:
            return port
        if port + grpc_offset < 65535 and _port_free(port + grpc_offset) and port < 40000:
            return port
    raise RuntimeError("no free port found")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def binary(name: str) -> str:
    """Path of a server binary; the test fails (not skips) when it is missing."""
    venv_bin = Path(sys.executable).parent / name
    path = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run the README's test command (make test), which installs it")
    return path


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - servers refuse connections while starting
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    url: str
    log: Path
    extra: dict = field(default_factory=dict)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def log_tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


def _start(name: str, argv: list[str], workdir: Path, ready_url: str, timeout: float = 30.0) -> subprocess.Popen:
    log = workdir / f"{name}.log"
    process = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        return http_get(ready_url, timeout=1.0)[0] == 200

    try:
        wait_until(ready, timeout, what=f"{name} to be ready")
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    return process


def start_prometheus(
    workdir: Path,
    scrape_targets: list[str],
    rule_files: list[str] | None = None,
    alertmanager: str | None = None,
    interval: str = "1s",
    job: str = "virk",
) -> Server:
    """Prometheus scraping ``scrape_targets`` (host:port) every ``interval``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": scrape_targets}]}],
    }
    if rule_files:
        config["rule_files"] = rule_files
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start(
        "prometheus",
        [
            binary("prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        workdir,
        f"{url}/-/ready",
    )
    return Server("prometheus", process, url, workdir / "prometheus.log")


def prometheus_query(server: Server, promql: str) -> list[dict]:
    """Run an instant query through Prometheus' HTTP API; return the result vector."""
    status, body = http_get(f"{server.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    payload = json.loads(body)
    if status != 200 or payload.get("status") != "success":
        raise AssertionError(f"query {promql!r} failed: {status} {body[:500]!r}")
    return payload["data"]["result"]


def start_alertmanager(workdir: Path, config_text: str) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "alertmanager.yml").write_text(config_text)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start(
        "alertmanager",
        [
            binary("prometheus-alertmanager"),
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        workdir,
        f"{url}/-/ready",
    )
    return Server("alertmanager", process, url, workdir / "alertmanager.log")


def start_seaweedfs(workdir: Path, access_key: str = "virk-test", secret_key: str = "virk-test-secret") -> Server:
    """SeaweedFS `weed mini`: an S3 API on loopback with signature checks (MinIO SDK compatible)."""
    workdir.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {"name": "ci", "credentials": [{"accessKey": access_key, "secretKey": secret_key}], "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
        ]
    }
    (workdir / "s3.json").write_text(json.dumps(identities))
    (workdir / "data").mkdir(exist_ok=True)
    ports = [free_port(grpc_offset=10000) for _ in range(5)]
    while len(set(ports)) < 5 or any(abs(a - b) == 10000 for a in ports for b in ports):
        ports = [free_port(grpc_offset=10000) for _ in range(5)]
    master, volume, filer, s3, admin = ports
    url = f"http://127.0.0.1:{s3}"
    process = _start(
        "seaweedfs",
        [
            binary("weed"),
            "mini",
            f"-dir={workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-s3.port={s3}",
            f"-s3.config={workdir / 's3.json'}",
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.port={admin}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ],
        workdir,
        # Any HTTP answer from the S3 port means it listens; unauthenticated requests get 403.
        f"{url}/healthz",
        timeout=60.0,
    )
    return Server("seaweedfs", process, url, workdir / "seaweedfs.log", {"access_key": access_key, "secret_key": secret_key, "endpoint": f"127.0.0.1:{s3}"})


class RecordingReceiver:
    """An HTTP server on 127.0.0.1 that records every POST: path, headers, arrival time, and the
    body as ``decode`` reads it (JSON by default; gzip is undone first)."""

    def __init__(self, decode=json.loads, status: int = 202, reply: bytes = b"", content_type: str = "application/json") -> None:
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": decode(body), "time": time.time()})
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class OTLPReceiver(RecordingReceiver):
    """An OTLP/HTTP protobuf trace receiver (POST /v1/traces) that decodes what it gets."""

    def __init__(self) -> None:
        super().__init__(decode=_decode_traces, status=200, content_type="application/x-protobuf")
        self.endpoint = f"{self.url}/v1/traces"

    def spans(self) -> list:
        return [span for r in self.requests for rs in r["body"].resource_spans for ss in rs.scope_spans for span in ss.spans]


def _decode_traces(body: bytes):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    return message
