"""The sandbox as an HTTP service (docs/sandbox.md, "As a service (Kubernetes)"); its client is ``client``.

``python -m phi_assets.sandbox.service --host 0.0.0.0 --port 8080 [--workers N]`` serves:

- ``POST /v1/run`` with ``{"programs": [str, ...], "limits": {<Limits fields>}}``: runs every program in
  the sandbox and answers ``{"verdicts": [<Verdict as a dict>, ...], "isolation": {...}}`` in input
  order. A malformed request gets 400 (413 when over the size caps) and ``{"error", "field", "reason"}``;
  a sandbox that cannot isolate the programs and is not allowed to run them anyway 403 (field
  ``isolation``, the error naming ``PHI_SANDBOX_ALLOW_UNISOLATED``); a sandbox failure 500; a busy or
  stopping service 503.
- ``GET /healthz``: 200 and ``{"status": "ok", "workers": N, "isolation": isolation()}`` (a readiness
  probe; the isolation probe has run before the service listens).

The service keeps one long-lived ``SandboxPool`` per distinct ``Limits`` (made on first use, the least
recently used idle one closed beyond ``--max-pools``) and runs at most ``--workers`` programs at once over
all of them. SIGTERM or SIGINT stops it gracefully: it stops accepting, lets the requests in progress
finish, then closes the pools. Only the standard library is used (``http.server``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from phi_assets.sandbox.client import HEALTH_PATH, RUN_PATH, SERVICE_URL_ENV
from phi_assets.sandbox.policy import ALLOW_UNISOLATED_ENV, refuses, unisolated_allowed
from phi_assets.sandbox.pool import SandboxPool, local_isolation
from phi_assets.sandbox.pool import default_workers as affinity_cores
from phi_assets.sandbox.types import DEFAULT_LIMITS, VERDICTS, Limits, SandboxError, SandboxRefused, Verdict

DEFAULT_MAX_PROGRAMS = 1024  # per request
DEFAULT_MAX_REQUEST_BYTES = 32 << 20
DEFAULT_MAX_POOLS = 8  # distinct Limits kept alive at once
DEFAULT_MAX_REQUESTS = 64  # requests in progress at once; more get 503
_DRAIN_FACTOR = 16  # an oversized body up to this many times the cap is read and discarded before the 413

log = logging.getLogger("phi.sandbox_service")

_LIMIT_FIELDS = {f.name: type(getattr(DEFAULT_LIMITS, f.name)) for f in fields(Limits)}
_MAX_LIMIT = 1 << 31


def default_workers() -> int:
    """One worker per core this process may use: its CPU affinity, capped by a cgroup CPU quota (a pod's
    CPU limit, which affinity does not show). Wall-clock timeouts are unfair on oversubscribed cores."""
    cores = affinity_cores()
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None when unlimited or unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:
            v1 = "/sys/fs/cgroup/cpu/cpu.cfs_"
            with open(f"{v1}quota_us") as f, open(f"{v1}period_us") as g:
                quota, period = f.read().strip(), g.read().strip()
        except OSError:
            return None
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):  # "max": no quota
        return None
    return value if value > 0 else None  # v1 says -1 for none


class RequestError(Exception):
    """A request the service refuses: HTTP ``status``, the offending ``field`` and the ``reason``."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.status, self.field, self.reason = status, field, reason


def parse_run_request(payload: object, max_programs: int = DEFAULT_MAX_PROGRAMS) -> tuple[list[str], Limits]:
    """Check a decoded ``POST /v1/run`` body; the programs and limits, or ``RequestError``."""
    if not isinstance(payload, dict):
        raise RequestError(400, "body", f"must be a JSON object, got {_json_type(payload)}")
    unknown = sorted(set(payload) - {"programs", "limits"})
    if unknown:
        raise RequestError(400, unknown[0], "unknown field (known: programs, limits)")
    if "programs" not in payload:
        raise RequestError(400, "programs", "missing")
    programs = payload["programs"]
    if not isinstance(programs, list):
        raise RequestError(400, "programs", f"must be a list of strings, got {_json_type(programs)}")
    if len(programs) > max_programs:
        raise RequestError(413, "programs", f"{len(programs)} programs, at most {max_programs} per request")
    for index, program in enumerate(programs):
        if not isinstance(program, str):
            raise RequestError(400, f"programs[{index}]", f"must be a string, got {_json_type(program)}")
    raw = payload.get("limits", {})
    if not isinstance(raw, dict):
        raise RequestError(400, "limits", f"must be a JSON object, got {_json_type(raw)}")
    for key, value in raw.items():
        field = f"limits.{key}"
        if key not in _LIMIT_FIELDS:
            raise RequestError(400, field, f"unknown field (known: {', '.join(_LIMIT_FIELDS)})")
        wanted = _LIMIT_FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, int if wanted is int else int | float):
            what = "an integer" if wanted is int else "a number"
            raise RequestError(400, field, f"must be {what}, got {_json_type(value)}")
        if not 0 < value < _MAX_LIMIT:
            raise RequestError(400, field, f"must be positive and below {_MAX_LIMIT}, got {value!r}")
    return programs, Limits(**raw)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "an integer" if isinstance(value, int) else "a number")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class SandboxService:
    """Long-lived pools, one per distinct ``Limits``; at most ``workers`` programs run at once over all."""

    def __init__(
        self,
        workers: int | None = None,
        max_programs: int = DEFAULT_MAX_PROGRAMS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_pools: int = DEFAULT_MAX_POOLS,
        max_requests: int = DEFAULT_MAX_REQUESTS,
    ) -> None:
        self.workers = max(1, workers or default_workers())
        self.max_programs = max_programs
        self.max_request_bytes = max_request_bytes
        self.max_pools = max(1, max_pools)
        self.requests = threading.BoundedSemaphore(max(1, max_requests))
        self.closing = False
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox-run")
        self._lock = threading.Lock()
        self._pools: OrderedDict[Limits, list] = OrderedDict()  # limits -> [pool, requests using it]

    def run(self, programs: Sequence[str], limits: Limits) -> list[Verdict]:
        pool = self._acquire(limits)
        futures: list[Future[Verdict]] = []
        try:
            futures = [self._executor.submit(pool.run_one, code) for code in programs]
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()
            self._release(limits)

    def close(self) -> None:
        """Wait for the programs in progress, then stop every pool's workers."""
        with self._lock:
            self.closing = True
        self._executor.shutdown(wait=True)
        with self._lock:
            pools, self._pools = [entry[0] for entry in self._pools.values()], OrderedDict()
        for pool in pools:
            pool.close()

    def _acquire(self, limits: Limits) -> SandboxPool:
        with self._lock:
            if self.closing:
                raise SandboxError("the sandbox service is shutting down")
            entry = self._pools.get(limits)
            if entry is None:
                entry = self._pools[limits] = [SandboxPool(limits, self.workers), 0]
                log.info("pool for %s (%d pools)", limits, len(self._pools))
            self._pools.move_to_end(limits)
            entry[1] += 1
            return entry[0]

    def _release(self, limits: Limits) -> None:
        evicted = []
        with self._lock:
            self._pools[limits][1] -= 1
            for key in list(self._pools):
                if len(self._pools) <= self.max_pools:
                    break
                if self._pools[key][1] == 0:  # least recently used first, only when no request uses it
                    evicted.append(self._pools.pop(key)[0])
        for pool in evicted:
            log.info("closing the pool for %s", pool.limits)
            pool.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in progress
    block_on_close = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], service: SandboxService) -> None:
        self.service = service
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "phi-sandbox/1"
    timeout = 30.0  # for reading a request and writing the answer; HTTP/1.0: one request per connection

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != HEALTH_PATH:
            return self._error(RequestError(404, "path", f"no such endpoint: GET {self.path}"))
        service = self.server.service
        if service.closing:
            return self._error(RequestError(503, "service", "shutting down"))
        self._reply(200, {"status": "ok", "workers": service.workers, "isolation": local_isolation()})

    def do_POST(self) -> None:  # noqa: N802
        service = self.server.service
        try:
            body = self._read_body(service.max_request_bytes)
            if self.path != RUN_PATH:
                raise RequestError(404, "path", f"no such endpoint: POST {self.path}")
            try:
                payload = json.loads(body, parse_constant=_reject_constant)
            except (ValueError, RecursionError) as exc:
                raise RequestError(400, "body", f"not JSON ({exc})") from exc
            programs, limits = parse_run_request(payload, service.max_programs)
        except RequestError as exc:
            return self._error(exc)
        if not service.requests.acquire(blocking=False):
            return self._error(RequestError(503, "service", "busy: too many requests in progress"))
        try:
            started = time.monotonic()
            verdicts = service.run(programs, limits)
        except SandboxRefused as exc:  # not isolated, not allowed: no program ran; retrying cannot help
            log.error("%d programs refused: %s", len(programs), exc)
            return self._error(RequestError(403, "isolation", str(exc)))
        except SandboxError as exc:
            status = 503 if service.closing else 500
            log.error("%d programs: %s", len(programs), exc)
            return self._error(RequestError(status, "sandbox", str(exc)))
        finally:
            service.requests.release()
        kinds = {kind: sum(v.kind == kind for v in verdicts) for kind in VERDICTS}
        log.info("%d programs in %.1f s: %s", len(programs), time.monotonic() - started, kinds)
        self._reply(200, {"verdicts": [asdict(v) for v in verdicts], "isolation": local_isolation()})

    def _read_body(self, cap: int) -> bytes:
        header = self.headers.get("Content-Length")
        if header is None:
            raise RequestError(400, "Content-Length", "missing (a body of known length is required)")
        try:
            length = int(header)
        except ValueError:
            length = -1
        if length < 0:
            raise RequestError(400, "Content-Length", f"not a byte count: {header!r}")
        if length > cap:
            if length <= _DRAIN_FACTOR * cap:  # read it, so the client reads the answer, not a reset
                while length > 0:
                    chunk = self.rfile.read(min(length, 1 << 16))
                    if not chunk:
                        break
                    length -= len(chunk)
            raise RequestError(413, "Content-Length", f"{header} bytes, at most {cap} per request")
        body = self.rfile.read(length)
        if len(body) != length:
            raise RequestError(400, "body", f"{len(body)} bytes received, Content-Length says {length}")
        return body

    def _error(self, exc: RequestError) -> None:
        if exc.status < 500:
            log.warning("%s %s: %d %s", self.command, self.path, exc.status, exc)
        self._reply(exc.status, {"error": str(exc), "field": exc.field, "reason": exc.reason})

    def _reply(self, status: int, answer: dict) -> None:
        data = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError as exc:  # the client went away
            log.warning("%s %s: the answer was not delivered (%s)", self.command, self.path, exc)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s " + format, self.client_address[0], *args)


def serve(host: str, port: int, service: SandboxService) -> None:
    """Serve until SIGTERM or SIGINT (from the main thread), then shut down gracefully."""
    server = _Server((host, port), service)

    def stop(signum: int, frame: object) -> None:
        log.info("%s: stopping (requests in progress finish first)", signal.Signals(signum).name)
        service.closing = True
        threading.Thread(target=server.shutdown, name="sandbox-shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    bound_host, bound_port = server.server_address[:2]
    log.info("listening on http://%s:%d (%d workers)", bound_host, bound_port, service.workers)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()  # joins the request threads still running
        service.close()
        log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    ap.add_argument("--port", type=int, default=8080, help="0: any free port (logged)")
    ap.add_argument("--workers", type=int, default=None, help="programs at once (default: cores, cgroup quota)")
    ap.add_argument("--max-programs", type=int, default=DEFAULT_MAX_PROGRAMS, help="per request")
    ap.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, help="per request")
    ap.add_argument("--max-pools", type=int, default=DEFAULT_MAX_POOLS, help="distinct Limits kept alive")
    ap.add_argument("--max-requests", type=int, default=DEFAULT_MAX_REQUESTS, help="in progress; more: 503")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.pop(SERVICE_URL_ENV, None):  # this process is the service: run locally
        log.info("ignoring %s: the service runs programs itself", SERVICE_URL_ENV)
    try:
        unisolated_allowed()  # a bad value stops it here, naming the setting
        notes = local_isolation()  # before listening: a sandbox that cannot run never becomes ready
    except (SandboxError, ValueError) as exc:
        log.error("the sandbox does not work here: %s", exc)
        return 1
    for key, value in notes.items():
        log.info("isolation %s: %s", key, value)
    if refuses(notes):  # it still serves: every caller gets the refusal (403), naming the setting
        log.error(
            "refusing every program: the sandbox cannot isolate them here; set %s=1 to run them anyway",
            ALLOW_UNISOLATED_ENV,
        )
    service = SandboxService(
        args.workers, args.max_programs, args.max_request_bytes, args.max_pools, args.max_requests
    )
    serve(args.host, args.port, service)
    return 0


if __name__ == "__main__":
    sys.exit(main())
