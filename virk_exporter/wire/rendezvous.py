"""Where the one monitoring worker of a model on this host is found, and how a process attaches.

Every process of a server (gunicorn or uvicorn workers, forked children, a pool) that
creates an Exporter with the same settings shares one worker process. It listens on a Unix
socket named after the model and a hash of the settings, in a private runtime directory
(``$VIRK_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/virk``, else ``/tmp/virk-<uid>``). A process
attaches by connecting and passing, over that socket, the file descriptors of its own arena
and connections (``SCM_RIGHTS``); from then on it talks to the worker exactly as a child
would. An advisory lock file orders the races: attach-or-start in a client, and
check-then-exit in the worker when its last client has gone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_HELLO = b"virk-attach-1"
_FDS = 4  # frames, control, events, arena


def runtime_dir() -> Path:
    """The private directory holding the sockets (created with mode 0700)."""
    explicit = os.environ.get("VIRK_RUNTIME_DIR")
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "virk"
    else:
        path = Path("/tmp") / f"virk-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def worker_key(config: Any, reference_frames: np.ndarray | None) -> str:
    """One key per model, settings and installation: processes with different settings, or
    running another interpreter or copy of this package, get different workers (a worker runs
    the code of the process that started it)."""
    settings = {k: v for k, v in asdict(config).items() if k != "log_level"}
    digest = hashlib.sha256(repr((sorted(settings.items()), sys.executable, str(Path(__file__).parent))).encode())
    if reference_frames is not None:
        digest.update(np.ascontiguousarray(reference_frames).tobytes())
    model = re.sub(r"[^A-Za-z0-9_.-]", "_", config.model)[:40]  # a socket path has at most 107 bytes
    return f"{model}-{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class Rendezvous:
    """The socket and lock file of one worker key."""

    socket_path: Path
    lock_path: Path

    @classmethod
    def for_key(cls, key: str, directory: Path | None = None) -> "Rendezvous":
        base = directory or runtime_dir()
        return cls(base / f"{key}.sock", base / f"{key}.lock")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the key's lock: attaching clients and an exiting worker never interleave."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def listen(self) -> socket.socket:
        """The worker's listening socket (a stale file of a dead worker is replaced)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket_path.unlink(missing_ok=True)
        listener.bind(str(self.socket_path))
        listener.listen(64)
        return listener

    def connect(self) -> socket.socket | None:
        """A connection to the running worker, or None when none listens."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            return None
        return conn


@dataclass(frozen=True)
class Attached:
    """The worker's answer to an attaching process."""

    session: int  # unique per worker: the high bits of this process's frame ids
    worker_pid: int


def send_attach(conn: socket.socket, fds: tuple[int, int, int, int], arena_size: int, timeout: float) -> Attached:
    """Client: hand our ends to the worker; wait (briefly) for our session number."""
    conn.settimeout(timeout)
    socket.send_fds(conn, [_HELLO + f" {os.getpid()} {arena_size}".encode()], list(fds))
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = conn.recv(256)
        if not chunk:
            raise ConnectionError("the monitoring worker closed the connection while attaching")
        reply += chunk
    session, worker_pid = (int(x) for x in reply.split())
    return Attached(session, worker_pid)


def receive_attach(conn: socket.socket) -> tuple[int, int, list[int]]:
    """Worker: (client pid, arena size, [frames, control, events, arena] fds) of an attaching process."""
    message, fds, _, _ = socket.recv_fds(conn, 4096, _FDS)
    if not message.startswith(_HELLO + b" ") or len(fds) != _FDS:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("not a virk-exporter client")
    pid, arena_size = message[len(_HELLO) :].split()
    return int(pid), int(arena_size), fds


def reply_attached(conn: socket.socket, attached: Attached) -> None:
    conn.sendall(f"{attached.session} {attached.worker_pid}\n".encode())
