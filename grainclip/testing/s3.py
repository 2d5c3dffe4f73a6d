"""A real S3-compatible server on loopback for tests and benchmarks: `moto_server` in a child process.

moto serves the S3 HTTP API (any key pair is accepted), so the code under test talks to it exactly as to AWS,
through pyarrow's S3 filesystem and the standard AWS variables -- nothing is mocked in-process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

#: Dummy credentials: moto accepts any, and a real secret must never be needed by a test.
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "grainclip-test",
    "AWS_SECRET_ACCESS_KEY": "grainclip-test-secret",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_server(timeout: float = 60.0) -> Iterator[str]:
    """Start moto_server on a free loopback port, yield its endpoint URL, stop it on exit."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {process.returncode} (is moto[server] installed?)")
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {endpoint} within {timeout:.0f} s") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def create_bucket(endpoint: str, bucket: str) -> None:
    """Create `bucket` on the server (the code under test never creates buckets: a missing one is an error)."""
    import pyarrow.fs as pafs

    filesystem = pafs.S3FileSystem(
        endpoint_override=endpoint.split("://", 1)[1],
        scheme="http",
        region=TEST_ENV["AWS_REGION"],
        access_key=TEST_ENV["AWS_ACCESS_KEY_ID"],
        secret_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        allow_bucket_creation=True,
    )
    filesystem.create_dir(bucket)


def upload(local: str | os.PathLike, uri: str) -> None:
    """Copy a local folder to `s3://bucket/prefix` (through grainclip's own S3 filesystem and variables)."""
    import pyarrow.fs as pafs

    from grainclip import storage

    filesystem, inner = storage.resolve(uri)
    pafs.copy_files(os.fspath(local), inner, pafs.LocalFileSystem(), filesystem)
