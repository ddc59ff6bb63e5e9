"""The sandbox service's client (docs/sandbox.md, "As a service (Kubernetes)").

``run_remote`` is what ``sandbox.run_programs`` calls when ``PHI_SANDBOX_URL`` is set (``service_url()``).
It posts the programs in chunks of ``CHUNK_SIZE``, ``CONCURRENCY`` requests at a time, keeps input order,
retries connection errors and 5xx answers with backoff and raises ``SandboxError`` naming the URL and the
reason when the service cannot give the verdicts. ``remote_isolation`` reads the service's ``/healthz``.
Only the standard library is used (``http.client``); the service is ``phi_assets.sandbox.service``.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, fields
from urllib.parse import urlsplit

from phi_assets.sandbox.progress import Progress
from phi_assets.sandbox.types import DEFAULT_LIMITS, VERDICTS, Limits, SandboxError, Verdict

#: When set (http://host:port), run_programs and isolation() use the sandbox service there.
SERVICE_URL_ENV = "PHI_SANDBOX_URL"

RUN_PATH = "/v1/run"
HEALTH_PATH = "/healthz"

CHUNK_SIZE = 128  # programs per request
CONCURRENCY = 4  # requests in flight per run_remote call
RETRIES = 3  # after the first attempt, on connection errors and 5xx answers
BACKOFF_S = 0.5  # doubled after each retry: 0.5, 1, 2 s
CONNECT_TIMEOUT_S = 10.0

_VERDICT_FIELDS = tuple(f.name for f in fields(Verdict))


def service_url() -> str:
    """The sandbox service programs go to (``PHI_SANDBOX_URL``), or "" where they run locally."""
    return os.environ.get(SERVICE_URL_ENV, "").strip()


def run_remote(
    url: str,
    programs: Sequence[str],
    limits: Limits = DEFAULT_LIMITS,
    progress: bool = False,
    chunk_size: int = CHUNK_SIZE,
    concurrency: int = CONCURRENCY,
) -> list[Verdict]:
    """Run programs on the sandbox service at ``url``; verdicts come back in input order."""
    programs = list(programs)
    if not programs:
        return []
    service = _Service(url)
    chunks = [programs[i : i + chunk_size] for i in range(0, len(programs), chunk_size)]
    results: list[list[Verdict]] = [[] for _ in chunks]
    bar = Progress(len(programs)) if progress else None
    threads = min(concurrency, len(chunks))
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sandbox-client")
    try:
        futures = {executor.submit(service.run, chunk, limits): i for i, chunk in enumerate(chunks)}
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if bar is not None:
                bar.update(len(chunks[index]))
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        if bar is not None:
            bar.close()
    return [verdict for chunk in results for verdict in chunk]


def remote_isolation(url: str) -> dict[str, str]:
    """What isolation holds where the service at ``url`` runs the programs (its /healthz)."""
    service = _Service(url)
    answer = service.request("GET", HEALTH_PATH, None, CONNECT_TIMEOUT_S * 3)
    notes = answer.get("isolation")
    if not isinstance(notes, dict) or not all(isinstance(v, str) for v in notes.values()):
        raise SandboxError(f"sandbox service {service.url}: no isolation notes in its {HEALTH_PATH} answer")
    return notes


class _NoAnswer(Exception):
    """Connected and sent, but no answer within the timeout (not retried: the programs may be running)."""


class _Service:
    """The client's view of one service URL (``http://host:port[/prefix]``)."""

    def __init__(self, url: str) -> None:
        self.url = url.strip()
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SandboxError(f"sandbox service URL {url!r}: expected http://host:port")
        self.scheme = parts.scheme
        self.host = parts.hostname
        try:
            self.port = parts.port
        except ValueError as exc:
            raise SandboxError(f"sandbox service URL {url!r}: {exc}") from exc
        self.prefix = parts.path.rstrip("/")

    def run(self, programs: list[str], limits: Limits) -> list[Verdict]:
        body = json.dumps({"programs": programs, "limits": asdict(limits)}).encode()
        # Serial worst case (one worker, every program timing out and draining) plus slack.
        timeout = len(programs) * (limits.timeout_s + 5.0) + 60.0
        answer = self.request("POST", RUN_PATH, body, timeout)
        verdicts = answer.get("verdicts")
        if not isinstance(verdicts, list) or len(verdicts) != len(programs):
            got = len(verdicts) if isinstance(verdicts, list) else type(verdicts).__name__
            raise SandboxError(f"sandbox service {self.url}: expected {len(programs)} verdicts, got {got}")
        return [self._verdict(item) for item in verdicts]

    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> dict:
        """One JSON exchange, retried on connection errors and 5xx answers."""
        reason = ""
        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                status, data = self._exchange(method, self.prefix + path, body, timeout)
            except _NoAnswer as exc:
                raise SandboxError(f"sandbox service {self.url}: no answer within {timeout:.0f} s") from exc
            except (OSError, http.client.HTTPException) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                continue
            if status >= 500:
                reason = f"HTTP {status}: {_error_text(data)}"
                continue
            if status != 200:
                raise SandboxError(
                    f"sandbox service {self.url} rejected the request: HTTP {status}: {_error_text(data)}"
                )
            try:
                answer = json.loads(data)
            except ValueError as exc:
                raise SandboxError(
                    f"sandbox service {self.url}: an answer not in JSON: {data[:200]!r}"
                ) from exc
            if not isinstance(answer, dict):
                raise SandboxError(f"sandbox service {self.url}: an answer that is not a JSON object")
            return answer
        raise SandboxError(f"sandbox service {self.url} failed {RETRIES + 1} times; last: {reason}")

    def _exchange(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
        if self.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=CONNECT_TIMEOUT_S
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT_S)
        try:
            conn.connect()  # errors here are retried, a timeout included
            conn.sock.settimeout(timeout)
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except TimeoutError as exc:
                raise _NoAnswer from exc
        finally:
            conn.close()

    def _verdict(self, item: object) -> Verdict:
        if not isinstance(item, dict) or sorted(item) != sorted(_VERDICT_FIELDS):
            raise SandboxError(f"sandbox service {self.url}: a malformed verdict: {str(item)[:200]}")
        kind, duration = item["kind"], item["duration_s"]
        texts_ok = all(isinstance(item[key], str) for key in ("detail", "stdout", "stderr"))
        exception_ok = item["exception"] is None or isinstance(item["exception"], str)
        duration_ok = isinstance(duration, int | float) and not isinstance(duration, bool)
        if kind not in VERDICTS or not (texts_ok and exception_ok and duration_ok):
            raise SandboxError(f"sandbox service {self.url}: a malformed verdict: {str(item)[:200]}")
        return Verdict(**{**item, "duration_s": float(duration)})


def _error_text(data: bytes) -> str:
    try:
        answer = json.loads(data)
    except ValueError:
        return data[:300].decode("utf-8", "replace") or "(no body)"
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return answer["error"]
    return str(answer)[:300]
