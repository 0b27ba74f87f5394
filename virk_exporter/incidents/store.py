"""Where bundles go: a local directory (the embedded default) or MinIO/S3 via the ``minio`` SDK.

``open_store(url)``:

* ``s3://bucket/prefix`` → :class:`S3Store`, configured from the environment:

  ======================  ==========================================================
  ``VIRK_S3_ENDPOINT``    ``host:port`` or ``http(s)://host:port`` (default ``s3.amazonaws.com``)
  ``VIRK_S3_ACCESS_KEY``  access key (falls back to ``AWS_ACCESS_KEY_ID``)
  ``VIRK_S3_SECRET_KEY``  secret key (falls back to ``AWS_SECRET_ACCESS_KEY``)
  ``VIRK_S3_SECURE``      ``1``/``0``: HTTPS or not (default: from the endpoint's scheme, else ``1``)
  ``VIRK_S3_REGION``      region (default ``us-east-1``; fixed so presigning needs no request)
  ``VIRK_S3_PUBLIC_ENDPOINT``  endpoint put into presigned links when browsers reach S3 by
                          another name than the exporter does (e.g. ``https://minio.example.com``)
  ======================  ==========================================================

  The bucket is created on first upload when missing. Objects carry tags model, cause and
  alertname; links are presigned GETs with a configurable expiry.
* ``file:///path`` or a plain path → :class:`LocalStore`.

:class:`SpoolingStore` wraps a remote store: when S3 is unreachable a bundle is written to a
local spool directory and uploaded with exponential backoff when S3 returns, surviving a
restart of the process (leftovers are picked up at start).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Callable, Literal, Protocol

log = logging.getLogger("virk_exporter.incidents")

_KEY_PART = re.compile(r"[A-Za-z0-9._=+@:-]+")  # fullmatch only: "$" accepts a final newline
_TAG_VALUE_BAD = re.compile(r"[^A-Za-z0-9 +\-=._:/@]")


def default_spool_dir() -> Path:
    """Where bundles wait for S3 and accepted alerts for their build (``$VIRK_SPOOL_DIR`` overrides)."""
    return Path(os.environ.get("VIRK_SPOOL_DIR", Path.home() / ".cache" / "virk-exporter" / "spool"))


class StoreError(RuntimeError):
    """A store operation that failed for good (missing object, refused credentials, bad key)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now (network, 5xx): worth spooling and retrying."""


class StoreRefused(StoreError):
    """The store answers but refuses the upload (credentials, permissions, bucket): a
    configuration problem someone must fix. Uploads spool and retry meanwhile; ``fix`` says what to change."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(f"{message}: {fix}")
        self.fix = fix


# S3 error codes that mean "fix the configuration", and what to fix.
_CREDENTIALS_FIX = ("check VIRK_S3_ACCESS_KEY and VIRK_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) "
                    "of the exporter's environment against the S3 server's users")
_REFUSALS = {
    "InvalidAccessKeyId": _CREDENTIALS_FIX,
    "SignatureDoesNotMatch": _CREDENTIALS_FIX,
    # A HEAD request (bucket_exists) carries no error body: a wrong secret shows up as AccessDenied too.
    "AccessDenied": _CREDENTIALS_FIX + ", and grant that user s3:PutObject, s3:PutObjectTagging, s3:GetObject and "
                    "s3:ListBucket on bucket {bucket} (and s3:CreateBucket, or create the bucket yourself)",
    "NoSuchBucket": "create bucket {bucket}, or let the exporter's S3 user create it (s3:CreateBucket)",
    "AllAccessDisabled": "the account of bucket {bucket} is disabled: see its owner",
    "InvalidBucketName": "bucket {bucket} is not a valid S3 bucket name: fix the store URL",
}


@dataclass(frozen=True)
class StoredObject:
    """One object in a store, as listed."""

    key: str  # relative to the store's prefix
    size: int
    modified: float  # unix seconds


def check_key(key: str) -> str:
    """Keys are built from model names, alert fingerprints and timestamps; refuse anything that
    could escape the store's root or prefix (``..``, absolute paths, empty parts)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or not _KEY_PART.fullmatch(p) for p in parts):
        raise StoreError(f"invalid object key {key!r}")
    return key


def tag_value(value: str) -> str:
    """S3 tag values allow only letters, digits, spaces and + - = . _ : / @ (256 at most)."""
    return _TAG_VALUE_BAD.sub("_", value)[:256]


class Store(Protocol):
    """Where bundles and references go: a local directory or S3 (``open_store``)."""

    url: str

    def put(self, key: str, data: bytes, tags: dict[str, str]) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[StoredObject]: ...
    def tags(self, key: str) -> dict[str, str]: ...
    def link(self, key: str, expiry_s: int) -> str: ...


class LocalStore:
    """Bundles as files under ``root``; tags beside them in ``<name>.tags.json``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, tags: dict[str, str]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path.with_name(path.name + ".tags.json"), json.dumps(tags, sort_keys=True).encode())
        atomic_write(path, data)  # last: the object appears complete or not at all

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"no object {key!r} in {self.url}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def tags(self, key: str) -> dict[str, str]:
        path = self._path(key)
        try:
            return json.loads(path.with_name(path.name + ".tags.json").read_text())
        except FileNotFoundError:
            raise StoreError(f"no object {key!r} in {self.url}") from None

    def list(self, prefix: str) -> list[StoredObject]:
        base = self.root / check_key(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        objects = []
        for path in base.rglob("*"):
            if path.is_file() and not path.is_symlink() and not path.name.endswith((".tags.json", ".tmp")):
                info = path.stat()
                objects.append(StoredObject(path.relative_to(self.root).as_posix(), info.st_size, info.st_mtime))
        return sorted(objects, key=lambda o: o.key)

    def link(self, key: str, expiry_s: int) -> str:
        return self._path(key).as_uri()  # a local file needs no signature; expiry does not apply


def atomic_write(path: Path, data: bytes, fsync: bool = False) -> None:
    """Write ``path`` whole or not at all; ``fsync`` for what must survive a power cut too."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class S3Store:
    """MinIO/S3 through the ``minio`` SDK. ``prefix`` is prepended to every key."""

    def __init__(self, bucket: str, prefix: str = "", client=None, endpoint_url: str = "", presign_client=None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.presign_client = presign_client or client  # signing is local: no request is made
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        self._bucket_ready = False
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, bucket: str, prefix: str = "", env: dict[str, str] | None = None) -> "S3Store":
        try:
            import urllib3  # minio's own dependency
            from minio import Minio
        except ModuleNotFoundError as problem:  # an optional extra: the base install stores locally
            raise ValueError("an s3:// store needs the MinIO SDK: pip install 'virk-exporter[s3]'") from problem
        from minio.helpers import check_bucket_name

        check_bucket_name(bucket)  # a clear ValueError at start, not at the first incident
        env = dict(os.environ if env is None else env)
        netloc, secure = _endpoint(env.get("VIRK_S3_ENDPOINT", "s3.amazonaws.com"), env.get("VIRK_S3_SECURE"))
        # Short connect timeout and few retries: when S3 is down we spool instead of blocking.
        http = urllib3.PoolManager(
            maxsize=8,  # bundle workers and link requests share it
            timeout=urllib3.Timeout(connect=3.0, read=60.0),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        credentials = {
            "access_key": env.get("VIRK_S3_ACCESS_KEY") or env.get("AWS_ACCESS_KEY_ID"),
            "secret_key": env.get("VIRK_S3_SECRET_KEY") or env.get("AWS_SECRET_ACCESS_KEY"),
            "region": env.get("VIRK_S3_REGION", "us-east-1"),
        }
        client = Minio(netloc, secure=secure, http_client=http, **credentials)
        presign_client = None
        if env.get("VIRK_S3_PUBLIC_ENDPOINT"):
            public, public_secure = _endpoint(env["VIRK_S3_PUBLIC_ENDPOINT"], None)
            presign_client = Minio(public, secure=public_secure, **credentials)
        return cls(bucket, prefix, client, f"{'https' if secure else 'http'}://{netloc}", presign_client)

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        """Run one SDK call, sorting failures into unavailable (retry later) and final."""
        from minio.error import S3Error, ServerError
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            return fn(*args, **kwargs)
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchTagSet") or (error.code == "NoSuchBucket" and what != "put_object"):
                raise StoreError(f"{what}: {error.code} ({self.url})") from None
            if error.code in _REFUSALS:
                raise StoreRefused(f"{what} on {self.endpoint_url}: {error.code}", _REFUSALS[error.code].format(bucket=self.bucket)) from None
            raise StoreError(f"{what}: {error.code}: {error.message}") from None
        except ServerError as error:
            raise StoreUnavailable(f"{what}: server error {error.status_code}") from None
        except (Urllib3Error, OSError) as error:
            raise StoreUnavailable(f"{what}: {self.endpoint_url} unreachable: {error}") from None

    def ensure_bucket(self) -> None:
        with self._lock:
            if self._bucket_ready:
                return
            if not self._call("bucket_exists", self.client.bucket_exists, self.bucket):
                try:
                    self._call("make_bucket", self.client.make_bucket, self.bucket)
                except StoreError as error:  # another replica made it first
                    if "BucketAlready" not in str(error):
                        raise
                log.info("created bucket %s", self.bucket)
            self._bucket_ready = True

    def put(self, key: str, data: bytes, tags: dict[str, str]) -> None:
        from minio.commonconfig import Tags

        self.ensure_bucket()
        object_tags = Tags(for_object=True)
        for name, value in sorted(tags.items())[:10]:  # S3 allows 10 tags per object
            object_tags[name] = tag_value(value)
        try:
            self._put(key, data, object_tags)
        except StoreRefused:
            self._bucket_ready = False  # deleted meanwhile, or a fixed permission: look again next time
            raise

    def _put(self, key: str, data: bytes, object_tags) -> None:
        self._call(
            "put_object",
            self.client.put_object,
            self.bucket,
            self._full(key),
            BytesIO(data),
            len(data),
            content_type="application/zip",
            tags=object_tags,
        )

    def get(self, key: str) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(self.bucket, self._full(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("get_object", read)

    def exists(self, key: str) -> bool:
        try:
            self._call("stat_object", self.client.stat_object, self.bucket, self._full(key))
            return True
        except StoreUnavailable:
            raise
        except StoreError:
            return False

    def tags(self, key: str) -> dict[str, str]:
        tags = self._call("get_object_tags", self.client.get_object_tags, self.bucket, self._full(key))
        return dict(tags or {})

    def list(self, prefix: str) -> list[StoredObject]:
        full = self._full(prefix.rstrip("/")) + "/" if prefix.strip("/") else (f"{self.prefix}/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0

        def collect() -> list[StoredObject]:
            try:
                items = list(self.client.list_objects(self.bucket, prefix=full, recursive=True))
            except Exception as error:  # noqa: BLE001 - sorted by _call below
                if getattr(error, "code", "") == "NoSuchBucket":
                    return []
                raise
            return [
                StoredObject(o.object_name[cut:], int(o.size or 0), o.last_modified.timestamp() if o.last_modified else 0.0)
                for o in items
                if not o.is_dir
            ]

        return sorted(self._call("list_objects", collect), key=lambda o: o.key)

    def link(self, key: str, expiry_s: int) -> str:
        return self._call(
            "presign", self.presign_client.presigned_get_object, self.bucket, self._full(key), expires=timedelta(seconds=int(expiry_s))
        )


def _endpoint(endpoint: str, secure: str | None) -> tuple[str, bool]:
    """``host:port`` and HTTPS or not, from ``host:port`` or ``http(s)://host:port``."""
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if secure is None:
        return parsed.netloc, parsed.scheme != "http"
    return parsed.netloc, secure.strip().lower() in ("1", "true", "yes")


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
PRESIGN_MAX_S = 7 * 24 * 3600  # S3 (SigV4) presigned links live at most 7 days


def check_store_url(url: str | Path) -> None:
    """Refuse a store URL that could only fail later, at the first incident (ValueError)."""
    text = str(url)
    if not text.strip():
        raise ValueError("store must be s3://bucket/prefix, file:///dir or a directory path, got an empty string")
    if text.startswith("s3://"):
        parsed = urllib.parse.urlsplit(text)
        bucket, prefix = parsed.netloc, parsed.path.strip("/")
        if not bucket:
            raise ValueError(f"store URL {text!r} names no bucket (s3://bucket/prefix)")
        if (not _BUCKET_RE.fullmatch(bucket) or ".." in bucket or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", bucket)
                or bucket.startswith("xn--") or bucket.endswith("-s3alias")):
            raise ValueError(f"store URL {text!r}: {bucket!r} is not a valid S3 bucket name (3-63 characters: "
                             "lowercase letters, digits, '.' and '-', starting and ending with a letter or digit)")
        if prefix and any(not _KEY_PART.fullmatch(part) or part in (".", "..") for part in prefix.split("/")):
            raise ValueError(f"store URL {text!r}: the prefix may use only letters, digits and ._=+@:- between slashes")
        if parsed.query or parsed.fragment:
            raise ValueError(f"store URL {text!r}: no query or fragment (s3://bucket/prefix)")
    elif "://" in text and not text.startswith("file://"):
        raise ValueError(f"unsupported store URL {text!r} (use s3://bucket/prefix, file:///dir or a directory)")


def open_store(url: str | Path | Store) -> Store:
    """A store from its URL: ``s3://bucket/prefix``, ``file:///dir`` or a plain directory path."""
    if not isinstance(url, (str, Path)):
        return url  # already a store
    text = str(url)
    check_store_url(text)
    if text.startswith("s3://"):
        parsed = urllib.parse.urlsplit(text)
        return S3Store.from_env(parsed.netloc, parsed.path.strip("/"))
    if text.startswith("file://"):
        return LocalStore(urllib.parse.unquote(urllib.parse.urlsplit(text).path))
    return LocalStore(text)


Outcome = Literal["uploaded", "spooled"]


class SpoolingStore:
    """A remote store that never loses a bundle: unreachable → spool on disk, upload later.

    Spool files: ``<sha256(key)>.zip`` then ``<sha256(key)>.json`` (key, tags); the .json is
    written last and is the commit marker, so a crash mid-write leaves no half entry behind.
    One lock covers the spool and each upload from it, so a newer put of the same key (the
    resolved manifest) can never be overwritten by an older spooled copy.
    """

    def __init__(
        self,
        inner: Store,
        spool_dir: str | Path,
        on_uploaded: Callable[[str], None] | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
        on_failed: Callable[[str, StoreError], None] | None = None,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.on_uploaded = on_uploaded
        self.on_failed = on_failed  # each refused or unreachable upload attempt (a counter)
        self.backoff = backoff
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain_loop, name="virk-spool", daemon=True)
        self._thread.start()
        if self.pending():
            self._wake.set()  # leftovers from an earlier run

    def _paths(self, key: str) -> tuple[Path, Path]:
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.spool_dir / f"{name}.zip", self.spool_dir / f"{name}.json"

    def pending(self) -> list[str]:
        """Keys waiting in the spool."""
        keys = []
        for meta in sorted(self.spool_dir.glob("*.json")):
            try:
                keys.append(json.loads(meta.read_text())["key"])
            except (OSError, ValueError, KeyError):
                continue
        return keys

    def put(self, key: str, data: bytes, tags: dict[str, str]) -> Outcome:
        with self._lock:
            data_path, meta_path = self._paths(key)
            if not meta_path.exists():
                try:
                    self.inner.put(key, data, tags)
                    return "uploaded"
                except StoreUnavailable as error:
                    log.warning("store unavailable, spooling %s: %s", key, error)
                    self._failed(key, error)
                except StoreRefused as error:
                    log.error("store refused %s, spooled and retried until fixed: %s", key, error)
                    self._failed(key, error)
            atomic_write(data_path, data)
            atomic_write(meta_path, json.dumps({"key": key, "tags": tags, "spooled_at": time.time()}).encode())
        self._wake.set()
        return "spooled"

    def get(self, key: str) -> bytes:
        with self._lock:
            data_path, meta_path = self._paths(key)
            if meta_path.exists():
                return data_path.read_bytes()
        return self.inner.get(key)

    def exists(self, key: str) -> bool:
        return self._paths(key)[1].exists() or self.inner.exists(key)

    def list(self, prefix: str) -> list[StoredObject]:
        return self.inner.list(prefix)

    def tags(self, key: str) -> dict[str, str]:
        return self.inner.tags(key)

    def link(self, key: str, expiry_s: int) -> str:
        return self.inner.link(key, expiry_s)

    def _upload_one(self, meta_path: Path) -> None:
        with self._lock:
            if not meta_path.exists():
                return
            meta = json.loads(meta_path.read_text())
            data_path = meta_path.with_suffix(".zip")
            self.inner.put(meta["key"], data_path.read_bytes(), meta["tags"])
            meta_path.unlink()
            data_path.unlink(missing_ok=True)
        log.info("uploaded spooled bundle %s", meta["key"])
        if self.on_uploaded is not None:
            self.on_uploaded(meta["key"])

    def _failed(self, key: str, error: StoreError) -> None:
        if self.on_failed is not None:
            self.on_failed(key, error)

    def _drain_loop(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                for meta_path in sorted(self.spool_dir.glob("*.json")):
                    self._upload_one(meta_path)
                delay = self.backoff[0]
            except (StoreUnavailable, StoreRefused) as error:
                if isinstance(error, StoreRefused):
                    log.error("spooled bundles cannot be uploaded (retrying in %.1fs): %s", delay, error)
                else:
                    log.info("store still unavailable (retrying in %.1fs): %s", delay, error)
                self._failed("", error)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                self._wake.set()
            except Exception:  # noqa: BLE001 - a broken spool entry must not kill the uploader
                log.exception("spooled upload failed; retrying later")
                self._stop.wait(self.backoff[1])
                self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)


class LazyStore:
    """The incident store a URL names, opened on first use: the HTTP routes ask it for the store
    instead of opening one and writing it onto the exporter (one store per exporter, thread-safe)."""

    def __init__(self, url: str | Path | Store) -> None:
        self.url = url
        self._store: Store | None = None
        self._lock = threading.Lock()

    def open(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.url)
            return self._store
