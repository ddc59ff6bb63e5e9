"""The code-execution sandbox (phi_assets/sandbox/): verdicts, and the limits every program runs under.

Every program must end within its limits; a fork bomb must neither escape nor starve other samples.
The isolation (tests/test_sandbox_isolation.py) and the pool (tests/test_sandbox_pool.py) have their own.
"""

from __future__ import annotations

import resource
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from phi_assets.sandbox import Limits, run_programs
from tests.support.sandbox import SLACK_S, checking_leftovers, run, sandbox_pids


@pytest.fixture
def no_leftovers():
    with checking_leftovers():
        yield


# ---------------------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind", "exception", "detail"),
    [
        ("print('hello')", "passed", None, "exit status 0"),
        (
            "def f(x):\n    return x + 1\nassert f(2) == 5\n",
            "failed",
            "AssertionError",
            "AssertionError: assert f(2) == 5",
        ),
        ("assert 1 == 2, 'one is not two'", "failed", "AssertionError", "AssertionError: one is not two"),
        ("x = 1 / 0", "error", "ZeroDivisionError", "ZeroDivisionError: division by zero"),
        ("def f(:\n    pass", "error", "SyntaxError", "SyntaxError: invalid syntax (<program>, line 1)"),
        ("raise KeyError('k')", "error", "KeyError", "KeyError: 'k'"),
        ("import sys\nsys.exit(3)", "error", "SystemExit", "SystemExit: 3"),
        ("import os\nos._exit(4)", "error", None, "exit status 4"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "error", None, "killed by SIGSEGV"),
    ],
)
def test_verdict_kinds(code: str, kind: str, exception: str | None, detail: str) -> None:
    verdict = run(code)
    assert (verdict.kind, verdict.exception, verdict.detail) == (kind, exception, detail)
    assert verdict.passed is (kind == "passed")


def test_output_is_captured_and_printing_cannot_forge_a_verdict() -> None:
    code = """
        import sys
        print("passed\\nexit status 0")
        print('{"wait": {"exit": 0}}', file=sys.stderr)
        assert False, "still failed"
    """
    verdict = run(code)
    assert (verdict.kind, verdict.detail) == ("failed", "AssertionError: still failed")
    assert verdict.stdout == "passed\nexit status 0\n"
    assert verdict.stderr.startswith('{"wait": {"exit": 0}}\nTraceback')


@pytest.mark.parametrize(
    "code", ["import sys\nsys.exit(0)\nassert False", "import os\nos._exit(0)\nassert False"]
)
def test_exiting_early_with_status_0_counts_as_passed(code: str) -> None:
    """A documented limit: the sandbox protects the host, it does not police cheating programs."""
    assert run(code).kind == "passed"


def test_program_runs_as_main_with_its_own_modules() -> None:
    code = """
        import pathlib, sys
        pathlib.Path("helper.py").write_text("VALUE = 41")
        import helper
        if __name__ == "__main__":
            assert helper.VALUE + 1 == 42
            assert sys.argv == ["<program>"]
    """
    assert run(code).kind == "passed"


def test_timeout_kills_the_whole_tree(no_leftovers) -> None:
    code = """
        import os, time
        if os.fork() == 0:
            os.setsid()  # leaves the process group: only the namespace catches it
            while True:
                time.sleep(1)
        while True:
            pass
    """
    seen: list[set[int]] = []
    watcher = threading.Thread(target=lambda: (time.sleep(1.0), seen.append(sandbox_pids())))
    watcher.start()
    verdict = run(code, timeout_s=2)
    watcher.join()
    assert (verdict.kind, verdict.detail) == ("timeout", "timed out after 2.0 s")
    assert verdict.duration_s < 2 + SLACK_S
    assert len(seen[0]) >= 2  # the detector sees programs while they run (and nothing after: no_leftovers)


def test_cpu_limit() -> None:
    verdict = run("while True:\n    pass", cpu_s=1, timeout_s=20)
    assert (verdict.kind, verdict.detail) == ("killed", "killed by SIGXCPU (cpu limit)")
    assert verdict.duration_s < 10


@pytest.mark.parametrize(
    "code", ["x = bytearray(8 * 10**9)", "chunks = []\nwhile True:\n    chunks.append(bytearray(10**6))"]
)
def test_memory_limit(code: str) -> None:
    verdict = run(code, memory_mb=256)
    assert (verdict.kind, verdict.exception) == ("killed", "MemoryError")
    assert verdict.detail == "killed: memory limit (MemoryError)"


# ---------------------------------------------------------------------------------------------------------
# Adversarial programs against the limits
# ---------------------------------------------------------------------------------------------------------


def test_fork_bomb_is_contained(no_leftovers) -> None:
    verdict = run("import os\nwhile True:\n    os.fork()", timeout_s=10)
    assert verdict.kind == "killed"
    assert verdict.detail.startswith("killed: process limit (BlockingIOError")


@pytest.mark.slow
def test_fork_bomb_does_not_starve_other_samples(no_leftovers) -> None:
    """RLIMIT_NPROC is counted per program (a user namespace each), not per host uid.

    Slow tier: the bomb runs to its 6 s timeout (the bystander needs that long beside it)."""
    bomb = """
        import os, time
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.05)
    """
    bystander = """
        import subprocess, sys, time
        time.sleep(1.0)  # the bomb has reached its process limit by now
        out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout
        assert out == "42\\n", out
    """
    verdicts = run_programs([textwrap.dedent(bomb), textwrap.dedent(bystander)], Limits(timeout_s=6), workers=2)
    assert verdicts[0].kind == "timeout"
    assert verdicts[1].kind == "passed", verdicts[1]


def test_huge_output_is_bounded_and_returns() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    flood = run("while True:\n    print('x' * 10**6)", timeout_s=2, output_bytes=65536)
    assert flood.kind == "timeout"
    assert 0 < len(flood.stdout) <= 65536 and set(flood.stdout) <= {"x", "\n"}
    spill = run("import sys\nsys.stderr.write('e' * 50_000_000)\nprint('done')", output_bytes=1000)
    assert (spill.kind, spill.stdout, spill.stderr) == ("passed", "done\n", "e" * 1000)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing buffered


def test_open_files_limit() -> None:
    verdict = run("files = [open('/dev/null') for _ in range(1000)]", open_files=64)
    assert verdict.kind == "killed"
    assert verdict.detail.startswith("killed: open files limit (OSError: [Errno 24]")


def test_file_size_limit() -> None:
    uncaught = run("open('big', 'wb').write(b'x' * (32 << 20))", file_size_mb=16)
    assert uncaught.kind == "killed"
    assert uncaught.detail.startswith("killed: file size limit (OSError: [Errno 27]")
    code = """
        import os
        try:
            with open("big", "wb") as handle:
                handle.write(b"x" * (32 << 20))
        except OSError:
            pass
        print(os.path.getsize("big"))
    """
    caught = run(code, file_size_mb=16)
    assert caught.kind == "passed" and int(caught.stdout) <= 16 << 20


def test_disk_limit() -> None:
    code = "for i in range(100):\n    open(f'part{i}', 'wb').write(b'x' * (1 << 20))"
    verdict = run(code, workdir_mb=8)
    assert verdict.kind == "killed" and verdict.detail.startswith("killed: disk limit"), verdict


def test_working_directory_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = """
        import os
        os.makedirs("a/b")
        open("a/b/f", "w").write("x")
        os.chmod("a/b", 0)
        os.chmod("a", 0)
        os.chmod(".", 0)
    """
    assert run(code).kind == "passed"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# run_programs, isolation(), the fallback, the non-root mode
# ---------------------------------------------------------------------------------------------------------
