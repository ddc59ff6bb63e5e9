"""An S3-compatible server on loopback for the tests: moto in server mode, in a process of its own,
reached through s3fs exactly as a cluster reaches its bucket (``s3://`` URIs, the endpoint from
``AWS_ENDPOINT_URL``, which botocore reads in this process and in every child it starts)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from tests.support.processes import free_port


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    env: dict[str, str]  # what a process needs to reach it (credentials, region, endpoint)

    def filesystem(self):
        """A fresh s3fs filesystem on the server (no cached instance from another server)."""
        import s3fs

        return s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.endpoint}, skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        self.filesystem().mkdir(name)
        return f"s3://{name}"


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port; ``os.environ`` points boto at it while it runs."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    # moto logs every request to stderr: to a file, never a pipe nobody drains (the server would block on a
    # full pipe after about a thousand requests)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    saved = {k: os.environ.get(k) for k in env}
    try:
        _wait_ready(proc, endpoint, log)
        os.environ.update(env)
        yield S3Server(endpoint, env)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # instances bound to this server's endpoint


def _wait_ready(proc: subprocess.Popen, endpoint: str, log: IO[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            stderr = log.read().decode(errors="replace")
            raise RuntimeError(f"moto's S3 server exited with {proc.returncode}: {stderr[-2000:]}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto's S3 server did not answer at {endpoint} within {timeout_s:.0f} s")
