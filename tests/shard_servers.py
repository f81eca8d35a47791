"""Real servers on 127.0.0.1 for the remote-source tests and benchmarks/bench_stream.py.

- `http_server(root, ...)`: a threaded HTTP file server in a child process (this file run as a script):
  Python's ``http.server`` handler, plus byte ranges (``Range: bytes=N-``, unless ``ranges=False``:
  then it is the stdlib handler, which ignores them) and, for tests, a connection drop: the first
  ``drop_times`` responses of every ``.tar`` end after ``drop_after`` bytes (``drop_times=-1``: all of
  them) at byte ``drop_after`` of the file, with the full Content-Length announced, as a broken
  connection looks to a client.
- `s3_server()`: moto's S3 server (``python -m moto.server``, the ``moto[server]`` dev dependency) in a
  child process; `upload(endpoint, folder, bucket, prefix)` puts a folder into it with boto3.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    ranges = True
    drop_after = -1
    drop_times = 0
    served: dict[str, int] = {}

    def log_message(self, *args) -> None:  # quiet
        pass

    def send_head(self):
        self._range = None
        header = self.headers.get("Range", "")
        if self.ranges and header.startswith("bytes=") and header.endswith("-"):
            self._range = int(header[6:-1])
        if self._range is None:
            return super().send_head()
        path = self.translate_path(self.path)
        try:
            f = open(path, "rb")  # noqa: SIM115 -- closed by the base class
        except OSError:
            self.send_error(404, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        if self._range >= size:
            f.close()
            self.send_error(416, "Requested Range Not Satisfiable")
            return None
        f.seek(self._range)
        self.send_response(206)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Range", f"bytes {self._range}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - self._range))
        self.end_headers()
        return f

    def copyfile(self, source, outputfile) -> None:
        n = self.served.get(self.path, 0)
        self.served[self.path] = n + 1
        if self.path.endswith(".tar") and self.drop_after >= 0 and (self.drop_times < 0 or n < self.drop_times):
            outputfile.write(source.read(max(0, self.drop_after - (self._range or 0))))
            outputfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body end early
            return
        super().copyfile(source, outputfile)


def _serve_http(root: str, ranges: bool, drop_after: int, drop_times: int) -> None:
    handler = type("Handler", (_Handler,), {"ranges": ranges, "drop_after": drop_after,
                                            "drop_times": drop_times, "served": {}})
    os.chdir(root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _child(cmd: list[str], port: int | None = None):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if port is None:
            port = int(proc.stdout.readline())
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def http_server(root: str | Path, *, ranges: bool = True, drop_after: int = -1, drop_times: int = 0):
    """Serve ``root``; yields the base URL (``http://127.0.0.1:PORT``)."""
    cmd = [sys.executable, __file__, "http", str(root), "--drop-after", str(drop_after),
           "--drop-times", str(drop_times)] + ([] if ranges else ["--no-range"])
    with _child(cmd) as (_, port):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def s3_server():
    """moto's S3 server; yields its endpoint URL. The caller sets AWS_ENDPOINT_URL and `S3_ENV`."""
    port = _free_port()
    with _child([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port) as (proc, _):
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto S3 server did not start") from None
                time.sleep(0.1)
        yield url


def upload(endpoint: str, folder: str | Path, bucket: str, prefix: str) -> None:
    """Put every file under ``folder`` to ``s3://bucket/prefix/<relative path>`` (bucket created)."""
    import boto3

    s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                        aws_access_key_id="testing", aws_secret_access_key="testing")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(folder)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["http"])
    ap.add_argument("root")
    ap.add_argument("--drop-after", type=int, default=-1)
    ap.add_argument("--drop-times", type=int, default=0)
    ap.add_argument("--no-range", action="store_true")
    a = ap.parse_args()
    _serve_http(a.root, not a.no_range, a.drop_after, a.drop_times)
