"""The sandbox service (phi_assets/sandbox/service.py) as a real subprocess, and its client (client.py).

``sandbox.run_programs`` with ``PHI_SANDBOX_URL`` set must give the very verdicts the local sandbox gives,
in input order across chunks; the service must refuse malformed requests naming the field, survive
adversarial programs and stop gracefully; the client must retry 5xx answers and raise ``SandboxError``
naming the URL when the service is down.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from phi_assets import sandbox
from phi_assets.sandbox import Limits, SandboxError, Verdict, run_programs
from phi_assets.sandbox import client as sandbox_client
from phi_assets.sandbox import progress as sandbox_progress
from phi_assets.sandbox import service as sandbox_service

ROOT = Path(__file__).resolve().parents[1]
MAX_PROGRAMS = 200
MAX_BYTES = 256 << 10


@dataclass
class Service:
    url: str
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def served(self, since: int) -> list[int]:
        """The sizes of the batches it ran after the log was ``since`` characters long."""
        return [int(n) for n in re.findall(r"(\d+) programs in ", self.log_text()[since:])]


# The service with its namespaces switched off, as where it cannot create them (a restricted pod under runc).
WITHOUT_NAMESPACES = (
    "import sys\nfrom phi_assets.sandbox import handle, service\n"
    "handle.USE_NAMESPACES = False\nsys.exit(service.main(sys.argv[1:]))"
)


def start_service(log: Path, *args: str, namespaces: bool = True) -> Service:
    skip = (sandbox.SERVICE_URL_ENV, sandbox.ALLOW_UNISOLATED_ENV)
    env = {k: v for k, v in os.environ.items() if k not in skip}
    main = ["-m", "phi_assets.sandbox.service"] if namespaces else ["-c", WITHOUT_NAMESPACES]
    command = [sys.executable, *main, "--host", "127.0.0.1"]
    with log.open("wb") as out:  # a file, not a pipe: nobody has to drain it
        proc = subprocess.Popen(
            [*command, "--port", "0", *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )
    deadline = time.monotonic() + 60
    url = None
    while url is None:
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if match:
            url = match.group(1)
        elif proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the sandbox service did not start:\n{log.read_text(errors='replace')}")
        else:
            time.sleep(0.1)
    service = Service(url, proc, log)
    status, answer = request(service.url, "GET", sandbox_client.HEALTH_PATH)
    assert status == 200, answer
    return service


def stop_service(service: Service) -> int:
    service.proc.send_signal(signal.SIGTERM)
    try:
        return service.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()
        pytest.fail(f"the sandbox service ignored SIGTERM:\n{service.log_text()}")


def request(
    url: str, method: str, path: str, body: bytes | None = None, timeout: float = 60
) -> tuple[int, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post(url: str, payload: object) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(url, "POST", sandbox_client.RUN_PATH, body)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("sandbox-service") / "service.log"
    running = start_service(log, "--workers", "3", "--max-programs", str(MAX_PROGRAMS))
    yield running
    assert stop_service(running) == 0, running.log_text()
    text = running.log_text()
    assert "Traceback" not in text, text
    assert "stopped" in text


@pytest.fixture(scope="module")
def small_service(tmp_path_factory: pytest.TempPathFactory):
    """A service with a small byte cap (the 413 tests) and one worker."""
    log = tmp_path_factory.mktemp("sandbox-service-small") / "service.log"
    running = start_service(log, "--workers", "1", "--max-request-bytes", str(MAX_BYTES))
    yield running
    assert stop_service(running) == 0, running.log_text()


@pytest.fixture
def remote(service: Service, monkeypatch: pytest.MonkeyPatch) -> Service:
    monkeypatch.setenv(sandbox.SERVICE_URL_ENV, service.url)
    return service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------
# The client gives the local verdicts
# ---------------------------------------------------------------------------------------------------------

PROGRAMS = {
    "print('héllo ✓')": "passed",
    "def f(x):\n    return x + 1\nassert f(2) == 5\n": "failed",
    "x = 1 / 0": "error",
    "raise ValueError('odd \\ud800 text')": "error",
    "import sys\nsys.exit(3)": "error",
    "while True:\n    pass": "timeout",
    "x = bytearray(512 << 20)": "killed",
    "open('big', 'wb').write(b'x' * (2 << 20))": "killed",
}
LIMITS = Limits(timeout_s=1.5, memory_mb=256, file_size_mb=1)


def test_verdicts_equal_the_local_ones(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    programs = list(PROGRAMS)
    monkeypatch.delenv(sandbox.SERVICE_URL_ENV, raising=False)
    local = run_programs(programs, LIMITS)
    monkeypatch.setenv(sandbox.SERVICE_URL_ENV, service.url)
    mark = len(service.log_text())
    remote = run_programs(programs, LIMITS)
    assert service.served(mark) == [len(programs)]  # the service ran them, in one request
    assert [v.kind for v in local] == list(PROGRAMS.values())
    assert all(type(v) is Verdict for v in remote)
    for here, there in zip(local, remote, strict=True):
        assert there.passed == here.passed
        assert dataclasses.replace(there, duration_s=here.duration_s) == here  # every other field exactly
    assert remote[6].detail == "killed: memory limit (MemoryError)"
    assert remote[7].detail.startswith("killed: file size limit")
    assert remote[5].duration_s >= LIMITS.timeout_s


def test_healthz_and_isolation_come_from_the_service(remote: Service) -> None:
    status, answer = request(remote.url, "GET", sandbox_client.HEALTH_PATH)
    assert (status, answer["status"], answer["workers"]) == (200, "ok", 3)
    assert set(answer["isolation"]) >= {"mode", "network", "filesystem", "processes", "user", "limits"}
    assert sandbox.isolation() == answer["isolation"]
    status, answer = post(remote.url, {"programs": ["print(2)"]})
    assert status == 200 and answer["isolation"] == sandbox.isolation()
    assert answer["verdicts"][0]["stdout"] == "2\n" and answer["verdicts"][0]["kind"] == "passed"


def test_order_is_kept_across_chunks(
    remote: Service, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_progress, "PROGRESS_DELAY_S", 0.0)  # the bar from the first chunk on
    n = 2 * sandbox_client.CHUNK_SIZE + 7  # three requests, in flight together
    programs = [f"print({i})\nassert {i} % 5, 'a multiple of five'" for i in range(n)]
    mark = len(remote.log_text())
    verdicts = run_programs(programs, Limits(timeout_s=10), progress=True)
    assert sorted(remote.served(mark)) == [7, sandbox_client.CHUNK_SIZE, sandbox_client.CHUNK_SIZE]
    assert [v.stdout for v in verdicts] == [f"{i}\n" for i in range(n)]
    assert [v.kind for v in verdicts] == ["failed" if i % 5 == 0 else "passed" for i in range(n)]
    assert f"{n}/{n}" in capsys.readouterr().err  # the progress bar counted every program


def test_the_execute_command_sends_its_programs_to_the_service(
    remote: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phi_assets.evaluation import execute

    started = []
    monkeypatch.setattr(sandbox.SandboxPool, "start", lambda pool: started.append(pool))
    problems = execute.harness.load_humaneval()[:3]
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": p.task_id, "completion": p.reference} for p in problems]
    samples.write_text("".join(json.dumps(row) + "\n" for row in rows))
    mark = len(remote.log_text())
    out = tmp_path / "results.jsonl"
    argv = ["--benchmark", "humaneval", "--samples", str(samples), "--out", str(out), "--k", "1"]
    assert execute.main(argv) == 0
    assert remote.served(mark) == [3] and started == []  # no local workers were started
    assert [json.loads(line)["verdict"] for line in out.read_text().splitlines()] == ["passed"] * 3


# ---------------------------------------------------------------------------------------------------------
# Bad requests
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field", "reason"),
    [
        (b"print(1)", 400, "body", "not JSON"),
        (b'{"programs": ["pass"], "limits": {"timeout_s": NaN}}', 400, "body", "not JSON"),
        ([1, 2], 400, "body", "must be a JSON object"),
        ({"limits": {}}, 400, "programs", "missing"),
        ({"programs": "print(1)"}, 400, "programs", "must be a list of strings"),
        ({"programs": ["pass", 3]}, 400, "programs[1]", "must be a string"),
        ({"programs": ["pass"], "extra": 1}, 400, "extra", "unknown field"),
        ({"programs": ["pass"], "limits": []}, 400, "limits", "must be a JSON object"),
        ({"programs": ["pass"], "limits": {"timeout": 3}}, 400, "limits.timeout", "unknown field"),
        ({"programs": ["pass"], "limits": {"timeout_s": "3"}}, 400, "limits.timeout_s", "must be a number"),
        ({"programs": ["pass"], "limits": {"cpu_s": 1.5}}, 400, "limits.cpu_s", "must be an integer"),
        ({"programs": ["pass"], "limits": {"cpu_s": True}}, 400, "limits.cpu_s", "must be an integer"),
        ({"programs": ["pass"], "limits": {"memory_mb": 0}}, 400, "limits.memory_mb", "positive"),
        ({"programs": ["pass"] * (MAX_PROGRAMS + 1)}, 413, "programs", f"at most {MAX_PROGRAMS}"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(
    service: Service, body: object, status: int, field: str, reason: str
) -> None:
    got, answer = post(service.url, body)
    assert (got, answer["field"]) == (status, field), answer
    assert reason in answer["reason"] and answer["error"].startswith(f"{field}: ")


def test_unknown_paths_and_missing_length_are_refused(service: Service) -> None:
    assert request(service.url, "GET", "/v1/run")[0] == 404
    assert request(service.url, "POST", "/v2/run", b"{}")[0] == 404
    parts = urlsplit(service.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/run HTTP/1.0\r\nContent-Type: application/json\r\n\r\n")
        head = sock.recv(4096).decode()
    assert head.startswith("HTTP/1.0 400") and "Content-Length" in head


def test_too_many_bytes_get_413_and_the_client_says_so(
    small_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = "x = '" + "a" * MAX_BYTES + "'"
    status, answer = post(small_service.url, {"programs": [big]})
    assert (status, answer["field"]) == (413, "Content-Length") and f"at most {MAX_BYTES}" in answer["reason"]
    monkeypatch.setenv(sandbox.SERVICE_URL_ENV, small_service.url)
    started = time.monotonic()
    with pytest.raises(SandboxError, match="rejected the request: HTTP 413") as info:
        run_programs(["pass", big], Limits())
    assert small_service.url in str(info.value) and f"at most {MAX_BYTES}" in str(info.value)
    assert time.monotonic() - started < sandbox_client.BACKOFF_S  # a 4xx is not retried
    assert run_programs(["assert 1 + 1 == 2"], Limits())[0].passed


# ---------------------------------------------------------------------------------------------------------
# Adversarial programs, a service that fails or is down, shutting down
# ---------------------------------------------------------------------------------------------------------


def test_adversarial_programs_do_not_take_the_service_down(remote: Service) -> None:
    port = urlsplit(remote.url).port
    adversaries = [
        "import os\nwhile True:\n    os.fork()",
        "x = [bytearray(1 << 20) for _ in range(100000)]",
        "import os, signal\nos.kill(-1, signal.SIGKILL)",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)",
        "while True:\n    pass",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
        "import ctypes\nctypes.string_at(0)",
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
    ]
    mark = len(remote.log_text())
    verdicts = run_programs(adversaries, Limits(timeout_s=2, memory_mb=256))
    assert remote.served(mark) == [len(adversaries)]
    assert [v.kind for v in verdicts][4:7] == ["timeout", "timeout", "error"]
    assert verdicts[1].detail == "killed: memory limit (MemoryError)"
    assert len(verdicts[5].stdout) <= Limits().output_bytes
    if not sandbox.isolation()["network"].startswith("NOT"):
        assert verdicts[7].exception == "ConnectionRefusedError", verdicts[7]  # it cannot reach the service
    assert remote.proc.poll() is None, remote.log_text()
    assert request(remote.url, "GET", sandbox_client.HEALTH_PATH)[0] == 200
    assert all(v.passed for v in run_programs(["assert sum(range(4)) == 6"] * 6, Limits()))


class _Flaky(BaseHTTPRequestHandler):
    """In front of the real service: answers 503 to the first ``failures`` POSTs, then passes them on."""

    target = ""
    failures = 0
    posts = 0

    def do_POST(self) -> None:  # noqa: N802
        cls = type(self)
        cls.posts += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if cls.posts <= cls.failures:
            status, data = 503, json.dumps({"error": "service: warming up"}).encode()
        else:
            status, answer = request(cls.target, "POST", self.path, body)
            data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_5xx_answers_are_retried_then_reported(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    front = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{front.server_address[1]}"
        monkeypatch.setenv(sandbox.SERVICE_URL_ENV, url)
        monkeypatch.setattr(sandbox_client, "BACKOFF_S", 0.01)  # the count of tries is the point, not the wait
        _Flaky.target, _Flaky.failures, _Flaky.posts = service.url, 2, 0
        assert run_programs(["print(7)"])[0].stdout == "7\n"
        assert _Flaky.posts == 3
        _Flaky.failures, _Flaky.posts = 1000, 0
        with pytest.raises(SandboxError, match=r"HTTP 503: service: warming up") as info:
            run_programs(["print(7)"])
        assert url in str(info.value)
        assert _Flaky.posts == sandbox_client.RETRIES + 1
    finally:
        front.shutdown()
        front.server_close()


def test_a_service_that_is_down_gives_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(sandbox.SERVICE_URL_ENV, url)
    monkeypatch.setattr(sandbox_client, "BACKOFF_S", 0.1)  # 0.1 + 0.2 + 0.4 s: the waits double
    started = time.monotonic()
    with pytest.raises(SandboxError, match="ConnectionRefusedError") as info:
        run_programs(["assert True"])
    assert url in str(info.value)
    backoff = sum(sandbox_client.BACKOFF_S * 2**i for i in range(sandbox_client.RETRIES))
    assert time.monotonic() - started >= backoff  # it retried before giving up
    with pytest.raises(SandboxError, match=re.escape(url)):
        sandbox.isolation()  # the service's isolation, not this process's


def test_sigterm_lets_the_request_in_progress_finish(tmp_path: Path) -> None:
    running = start_service(tmp_path / "service.log")  # --workers: one per core, within the CPU quota
    health = request(running.url, "GET", sandbox_client.HEALTH_PATH)[1]
    assert health["workers"] == sandbox_service.default_workers() >= 1
    answers: list[tuple[int, dict]] = []
    program = "import time\ntime.sleep(1.5)\nprint('done')"
    client = threading.Thread(target=lambda: answers.append(post(running.url, {"programs": [program]})))
    client.start()
    time.sleep(0.7)
    assert stop_service(running) == 0, running.log_text()
    client.join(timeout=10)
    assert answers, running.log_text()
    status, answer = answers[0]
    assert status == 200 and answer["verdicts"][0]["stdout"] == "done\n", answer
    assert "stopped" in running.log_text()
    with pytest.raises(ConnectionRefusedError):
        request(running.url, "GET", sandbox_client.HEALTH_PATH)


def test_a_service_that_cannot_isolate_refuses_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No namespaces and no PHI_SANDBOX_ALLOW_UNISOLATED: the service comes up and says so (its log, its
    /healthz), and answers every run with 403 naming the setting; the client raises at once (no retries),
    so the programs are never scored."""
    running = start_service(tmp_path / "service.log", "--workers", "1", namespaces=False)
    try:
        status, health = request(running.url, "GET", sandbox_client.HEALTH_PATH)
        assert status == 200 and health["isolation"]["network"].startswith("NOT isolated"), health
        refused = "programs are refused: PHI_SANDBOX_ALLOW_UNISOLATED is not set"
        assert health["isolation"]["unisolated"] == refused, health
        status, answer = post(running.url, {"programs": ["print(1)"]})
        assert (status, answer["field"]) == (403, "isolation"), answer
        assert "set PHI_SANDBOX_ALLOW_UNISOLATED=1" in answer["error"], answer
        assert "NOT isolated: namespaces switched off" in answer["error"], answer
        monkeypatch.setenv(sandbox.SERVICE_URL_ENV, running.url)
        started = time.monotonic()
        with pytest.raises(SandboxError, match=r"HTTP 403: isolation: .*PHI_SANDBOX_ALLOW_UNISOLATED=1"):
            run_programs(["print(2)", "print(3)"])
        assert time.monotonic() - started < sandbox_client.BACKOFF_S  # refused, not retried
        assert "refusing every program" in running.log_text()
    finally:
        assert stop_service(running) == 0, running.log_text()
