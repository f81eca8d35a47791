"""Where shard bytes come from: local files, ``http(s)://`` and ``s3://`` URLs, ``pipe:`` commands.

Torch-free. Every remote shard is read front to back (no seek): `ShardStream` is the byte stream the
tar reader consumes, and it survives a dropped connection: it reopens the shard at the byte it had
reached (an HTTP/S3 ``Range`` request; where the server ignores ranges, or for a command, the
re-read prefix is discarded) up to ``SE_SHARD_RETRIES`` times (default 5, waits 0.5 s doubling up
to 8 s), then raises `ShardReadError` naming the shard and the byte. A transfer that ends before the
size the server announced (or the manifest's ``bytes``) counts as dropped, never as the end of the
shard: a dropped connection cannot shorten an epoch silently.

- ``http(s)://``: Python's http.client (proxies from the environment).
- ``s3://bucket/key``: boto3 (``pip install boto3``); endpoint and credentials the standard way:
  ``AWS_ENDPOINT_URL`` (e.g. LUMI-O ``https://lumidata.eu``), ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` or ``~/.aws/credentials``, ``AWS_PROFILE``.
- ``pipe:CMD``: a shell command writing the tar to stdout (its exit status checked at the end; cut
  short, its process group is stopped); webdataset's other schemes (``gs://``, ``hf://``, ``ais://``,
  ...) through webdataset's ``gopen``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from sharding.errors import SourceError

log = logging.getLogger(__name__)

OWN_SCHEMES = ("http", "https", "s3")
TIMEOUT_S = 60.0  # a stalled connection counts as dropped after this long
CHUNK = 1 << 20
PERMANENT_S3 = ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")


class ShardReadError(SourceError):
    """A remote shard could not be read (after retries): the run stops with this one line; ``why``: the cause."""

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why or message


class _NotFound(Exception):
    """The object does not exist (HTTP 404/410, S3 NoSuchKey): retrying will not help."""


def scheme(location: str) -> str:
    """``pipe``, ``http``, ``s3``, ... or ``""`` for a local path (``file://`` is local too)."""
    if location.startswith("pipe:"):
        return "pipe"
    head, sep, _ = location.partition("://")
    return head.lower() if sep and head.isalnum() and head.lower() != "file" else ""


def is_remote(location: str) -> bool:
    return scheme(str(location)) != ""


def local_path(location: str) -> str:
    return location[len("file://"):] if location.startswith("file://") else location


def join(base: str, name: str) -> str:
    """``name`` under a folder path or URL."""
    return f"{base.rstrip('/')}/{name}" if is_remote(base) else str(Path(local_path(base)) / name)


def parent(location: str) -> str | None:
    """The folder a path or URL is in (None for a ``pipe:`` command)."""
    if scheme(location) == "pipe":
        return None
    return location.rsplit("/", 1)[0] if is_remote(location) else str(Path(local_path(location)).parent)


def retries() -> int:
    try:
        return max(0, int(os.environ.get("SE_SHARD_RETRIES", "5")))
    except ValueError:
        raise SourceError(f"SE_SHARD_RETRIES: expected a count, got {os.environ['SE_SHARD_RETRIES']!r}") from None


def _backoff(attempt: int) -> float:
    return min(8.0, 0.5 * 2 ** attempt)


# ------------------------------------------------------------------------------------------ openers
def _discard(f: BinaryIO, n: int) -> None:
    while n > 0:
        got = f.read(min(n, CHUNK))
        if not got:
            raise OSError(f"stream ended {n} bytes before the resume offset")
        n -= len(got)


def _open_http(url: str, offset: int) -> tuple[BinaryIO, int | None]:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            raise _NotFound(f"HTTP {e.code} {e.reason}") from None
        if e.code in (401, 403):
            raise SourceError(f"{url}: HTTP {e.code} {e.reason} (credentials?)") from None
        if e.code == 416 and offset:  # the range starts at the end: nothing left
            return io.BytesIO(b""), offset
        raise OSError(f"HTTP {e.code} {e.reason}") from None
    length = resp.headers.get("Content-Length")
    total = None
    if resp.status == 206:
        rng = resp.headers.get("Content-Range", "")
        total = int(rng.rsplit("/", 1)[1]) if rng.rsplit("/", 1)[-1].isdigit() else None
    elif length is not None and length.isdigit():
        total = int(length)
        if offset:
            _discard(resp, offset)  # the server ignores ranges: skip what was read already
    return resp, total


_S3_LOCK = threading.Lock()
_S3: dict[int, object] = {}


def _s3_client():
    with _S3_LOCK:  # one client per process (clients are thread-safe, their creation is not)
        client = _S3.get(os.getpid())
        if client is None:
            try:
                import boto3
            except ImportError:
                raise SourceError("s3:// sources need boto3: pip install boto3 (or `pip install -e '.[s3]'`)") from None
            client = _S3[os.getpid()] = boto3.session.Session().client("s3")
        return client


def split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket or not key:
        raise SourceError(f"{url}: expected s3://BUCKET/KEY")
    return bucket, key


class _S3Body(io.RawIOBase):
    """boto3's streaming body with its errors as OSError (what `ShardStream` retries)."""

    def __init__(self, body):
        self.body = body

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self.body.read(len(b))
        except Exception as e:  # noqa: BLE001 -- botocore/urllib3 streaming errors, all retried
            raise OSError(f"{type(e).__name__}: {e}") from None
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self.body.close()
        finally:
            super().close()


def _open_s3(url: str, offset: int) -> tuple[BinaryIO, int | None]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(url)
    try:
        args = {"Range": f"bytes={offset}-"} if offset else {}
        obj = _s3_client().get_object(Bucket=bucket, Key=key, **args)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404"):
            raise _NotFound(code) from None
        if code in PERMANENT_S3:
            raise SourceError(f"{url}: S3 {code} ({e.response.get('Error', {}).get('Message', '')})") from None
        if code == "InvalidRange" and offset:
            return io.BytesIO(b""), offset
        raise OSError(f"S3 {code}: {e}") from None
    except BotoCoreError as e:
        raise OSError(f"{type(e).__name__}: {e}") from None
    rng = obj.get("ContentRange") or ""
    total = int(rng.rsplit("/", 1)[1]) if rng.rsplit("/", 1)[-1].isdigit() else obj.get("ContentLength")
    return _S3Body(obj["Body"]), total


class _Command(io.RawIOBase):
    """A ``pipe:`` command's stdout; its end raises OSError when the command failed (non-zero exit)."""

    def __init__(self, cmd: str):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, start_new_session=True)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.proc.stdout.readinto(b)
        if not n and len(b) and self.proc.wait() != 0:
            raise OSError(f"command exit status {self.proc.returncode}")
        return n

    def close(self) -> None:
        if not self.closed:
            self.proc.stdout.close()
            if self.proc.poll() is None:  # cut short: stop the command and what it started
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait()
        super().close()


def _open_command(location: str, offset: int) -> tuple[BinaryIO, int | None]:
    f = _Command(location[len("pipe:"):])
    if offset:
        _discard(f, offset)
    return f, None


def _open_gopen(url: str, offset: int) -> tuple[BinaryIO, int | None]:
    from webdataset.gopen import gopen

    f = gopen(url, "rb")
    if offset:
        _discard(f, offset)
    return f, None


def _open_local(path: str, offset: int) -> tuple[BinaryIO, int | None]:
    try:
        f = open(local_path(path), "rb")  # noqa: SIM115 -- the caller closes it
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise _NotFound("no such file") from None
    f.seek(offset)
    return f, os.fstat(f.fileno()).st_size


def open_at(location: str, offset: int = 0) -> tuple[BinaryIO, int | None]:
    """(binary stream positioned at ``offset``, total size or None). Raises _NotFound or OSError."""
    s = scheme(location)
    if s in ("http", "https"):
        return _open_http(location, offset)
    if s == "s3":
        return _open_s3(location, offset)
    if s == "pipe":
        return _open_command(location, offset)
    if s:
        return _open_gopen(location, offset)
    return _open_local(location, offset)


def _close_quietly(f) -> None:
    """Close a stream read only in part (a command cut short may report a non-zero exit on close)."""
    try:
        f.close()
    except Exception as e:  # noqa: BLE001 -- e.g. webdataset's gopen Pipe: "exit 23" of a curl cut short
        log.debug("closing %s: %s", f, e)


class ShardStream(io.RawIOBase):
    """A shard's bytes front to back, reopened where it broke off (see the module doc).

    ``size``: the expected size (the manifest's ``bytes``) when the server does not announce one.
    """

    def __init__(self, location: str, size: int | None = None, *, max_retries: int | None = None):
        self.location, self.pos = location, 0
        self.max_retries = retries() if max_retries is None else max_retries
        self._f, self.size = None, size
        self._connect()

    def readable(self) -> bool:
        return True

    def _fail(self, why: str) -> ShardReadError:
        of = f" of {self.size}" if self.size else ""
        return ShardReadError(f"{self.location}: read failed at byte {self.pos}{of} after {self.max_retries} "
                              f"retries ({why})", why)

    def _connect(self, attempt: int = 0, why: str = "") -> None:
        while True:
            try:
                self._f, size = open_at(self.location, self.pos)
                self.size = size if size is not None else self.size
                return
            except _NotFound as e:
                raise ShardReadError(f"{self.location}: not found ({e})", f"not found ({e})") from None
            except OSError as e:
                why = " ".join(str(e).split()) or type(e).__name__
            attempt = self._wait(attempt, why)

    def _wait(self, attempt: int, why: str) -> int:
        if attempt >= self.max_retries:
            raise self._fail(why)
        log.warning("shard %s: %s at byte %d; retrying (%d/%d)", self.location, why, self.pos, attempt + 1,
                    self.max_retries)
        time.sleep(_backoff(attempt))
        return attempt + 1

    def readinto(self, b) -> int:
        attempt = 0
        while True:
            try:
                n = self._f.readinto(b) if hasattr(self._f, "readinto") else self._read_copy(b)
                if n or not len(b) or self.size is None or self.pos >= self.size:
                    self.pos += n or 0
                    return n or 0
                why = "connection closed early"
            except OSError as e:
                why = " ".join(str(e).split()) or type(e).__name__
            except Exception as e:  # noqa: BLE001 -- http.client.IncompleteRead and kin: a broken transfer
                why = f"{type(e).__name__}: {e}"
            _close_quietly(self._f)
            attempt = self._wait(attempt, why)
            self._connect(attempt, why)

    def _read_copy(self, b) -> int:
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._f is not None:
            _close_quietly(self._f)
            self._f = None
        super().close()


def open_shard(location: str, size: int | None = None) -> io.BufferedReader:
    """A buffered `ShardStream` (ShardReadError when it cannot be opened after retries)."""
    return io.BufferedReader(ShardStream(location, size), CHUNK)


def fetch(location: str) -> bytes | None:
    """A small file's bytes (a manifest), or None when it does not exist; SourceError when unreachable."""
    try:
        f, _ = open_at(location) if is_remote(location) else _open_local(location, 0)
    except _NotFound:
        return None
    except OSError as e:
        raise SourceError(f"{location}: not reachable ({' '.join(str(e).split())})") from None
    try:
        return f.read()
    except OSError as e:
        raise SourceError(f"{location}: read failed ({' '.join(str(e).split())})") from None
    finally:
        _close_quietly(f)


def probe(location: str) -> None:
    """Cheap reachability check of a shard (its first tar header, no retry); SourceError (one line) when it fails."""
    head = b""
    try:
        with ShardStream(location, max_retries=0) as f:
            while len(head) < 512:
                got = f.read(512 - len(head))
                if not got:
                    break
                head += got
    except ShardReadError as e:
        why = e.why if e.why.startswith("not found") else f"not reachable ({e.why})"
        raise SourceError(f"{location}: {why}") from None
    if len(head) < 512:
        raise SourceError(f"{location}: {len(head)} bytes, not a tar shard")
