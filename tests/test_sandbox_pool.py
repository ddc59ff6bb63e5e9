"""The code-execution sandbox (phi_assets/sandbox/): run_programs, and the pool, whose workers run program
after program: nothing of one program may reach the next in the same worker.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from phi_assets import sandbox
from phi_assets.sandbox import Limits, run_programs
from tests.support.sandbox import checking_leftovers


@pytest.fixture
def no_leftovers():
    with checking_leftovers():
        yield


# ---------------------------------------------------------------------------------------------------------
# run_programs
# ---------------------------------------------------------------------------------------------------------


def test_run_programs_keeps_order_and_runs_in_parallel() -> None:
    verdicts = run_programs([f"print({i})" for i in range(5)], workers=3, progress=True)
    assert [v.stdout for v in verdicts] == [f"{i}\n" for i in range(5)]
    timed = "import time\nprint(time.time())\ntime.sleep(1.0)\nprint(time.time())"
    (a_start, a_end), (b_start, b_end) = (
        map(float, v.stdout.split()) for v in run_programs([timed] * 2, workers=2)
    )
    assert a_start < b_end and b_start < a_end  # the two ran at the same time
    assert run_programs([]) == []


# ---------------------------------------------------------------------------------------------------------
# The pool: programs after one another in the same worker
# ---------------------------------------------------------------------------------------------------------


def worker_pids(pool: sandbox.SandboxPool) -> list[int]:
    return sorted(worker.proc.pid for worker in pool._idle)


LEAVE_TRACES = """
    import ctypes, os, socket, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    for directory in ("/tmp", "/var/tmp", "/dev/shm", "."):
        with open(os.path.join(directory, "left-behind"), "w") as handle:
            handle.write("x")
    assert libc.shmget(0x5A5A, 4096, 0o1666) >= 0  # IPC_CREAT: a System V segment with a known key
    os.environ["PHI_LEFT_BEHIND"] = "1"
    os.mkdir("sub")
    os.chdir("sub")
    server = socket.create_server(("127.0.0.1", 4242))
    if os.fork() == 0:  # a daemon: its own session, no stdout or stderr, keeps the port open
        os.setsid()
        for fd in (0, 1, 2):
            os.close(fd)
        while True:
            time.sleep(1)
    print("left traces", flush=True)
"""

FIND_TRACES = """
    import ctypes, os, socket
    libc = ctypes.CDLL(None, use_errno=True)
    found = []
    for directory in ("/tmp", "/var/tmp", "/dev/shm", "."):
        if os.path.exists(os.path.join(directory, "left-behind")):
            found.append(directory)
    if os.listdir("."):
        found.append(("its directory", os.listdir(".")))
    if libc.shmget(0x5A5A, 0, 0) >= 0:
        found.append("shm")
    others = [pid for pid in os.listdir("/proc") if pid.isdigit() and int(pid) not in (1, os.getpid())]
    if others:
        found.append(("processes", others))
    try:
        socket.create_connection(("127.0.0.1", 4242), timeout=1).close()
        found.append("listener")
    except OSError:
        pass
    if "PHI_LEFT_BEHIND" in os.environ or os.getcwd() != os.environ["HOME"]:
        found.append(("environment or cwd", os.getcwd()))
    assert not found, found
    print("clean")
"""


def test_pool_reuses_its_workers_across_runs() -> None:
    with sandbox.SandboxPool(Limits(timeout_s=10), workers=2) as pool:
        first = pool.run([f"print({i})" for i in range(6)])
        pids = worker_pids(pool)
        second = pool.run(["import os\nprint(os.getpid(), os.getppid())"] * 4)
        assert worker_pids(pool) == pids and len(pids) == 2
    assert [v.stdout for v in first] == [f"{i}\n" for i in range(6)]
    assert {v.stdout for v in second} <= {f"{pid} 1\n" for pid in range(2, 100)}  # PID 1 is its supervisor


def test_pool_start_sets_up_every_worker_before_the_first_program(no_leftovers) -> None:
    with sandbox.SandboxPool(Limits(timeout_s=10), workers=2) as pool:
        started = worker_pids(pool.start())
        assert len(started) == 2 and all(os.path.exists(f"/proc/{pid}") for pid in started)
        verdicts = pool.run(["print(1)", "print(2)", "print(3)"])
        assert worker_pids(pool) == started  # the programs ran on the workers started ahead
        pool.start()  # a started pool starts nothing more
        assert worker_pids(pool) == started
    assert [v.stdout for v in verdicts] == ["1\n", "2\n", "3\n"]
    assert worker_pids(pool.start()) == []  # nor does a closed one


def test_progress_bar_appears_only_once_the_run_has_lasted_its_delay(capsys: pytest.CaptureFixture) -> None:
    with sandbox.Progress(3, delay_s=3600) as quiet:
        for _ in range(3):
            quiet.update()
    assert quiet.bar is None and quiet.done == 3
    with sandbox.Progress(4, delay_s=0.2) as late:
        late.update(2)
        assert late.bar is None
        time.sleep(0.25)
        late.update()  # the bar appears here, counting the programs already done
        late.update()
        assert (late.bar.n, late.bar.total) == (4, 4)
        assert late.bar.format_dict["elapsed"] >= 0.25  # counted from the run's start, not the bar's
    assert "4/4" in capsys.readouterr().err


def test_pool_nothing_of_a_program_reaches_the_next_in_the_same_worker(no_leftovers) -> None:
    programs = [textwrap.dedent(LEAVE_TRACES), textwrap.dedent(FIND_TRACES)] * 2
    with sandbox.SandboxPool(Limits(timeout_s=10), workers=1) as pool:
        verdicts = pool.run(programs)
        assert len(worker_pids(pool)) == 1
    expected = [("passed", "left traces\n"), ("passed", "clean\n")] * 2
    assert [(v.kind, v.stdout) for v in verdicts] == expected, verdicts


KILL_ALL = """
import os
for pid in (os.getppid(), 1, -1):
    try:
        os.kill(pid, 9)
    except OSError:
        pass
os.kill(0, 9)
"""


@pytest.mark.parametrize(
    "adversary",
    [
        "import os\nwhile True:\n    os.fork()",  # fork bomb
        "x = bytearray(8 * 10**9)",  # memory bomb
        "while True:\n    pass",  # infinite loop: timeout
        "import sys\nwhile True:\n    sys.stdout.write('x' * 10**6)",  # output flood
        KILL_ALL,  # the supervisor, PID 1, everyone, itself
    ],
    ids=["fork-bomb", "memory-bomb", "loop", "flood", "kill-all"],
)
def test_pool_adversary_then_bystander_in_the_same_worker(adversary: str, no_leftovers) -> None:
    with sandbox.SandboxPool(Limits(timeout_s=2, memory_mb=256, output_bytes=1000), workers=1) as pool:
        before = None
        verdicts = []
        for code in ("print('warm')", adversary, textwrap.dedent(FIND_TRACES)):
            verdicts.append(pool.run_one(code))
            before = before or worker_pids(pool)
        assert worker_pids(pool) == before  # the same worker served all three
    assert verdicts[0].kind == "passed"
    assert verdicts[1].kind in ("killed", "timeout"), verdicts[1]
    assert (verdicts[2].kind, verdicts[2].stdout) == ("passed", "clean\n"), verdicts[2]


def test_pool_a_killed_worker_is_replaced(no_leftovers) -> None:
    """The worker dies (the host's OOM killer, an operator) during a program: that program is reported
    killed, the others pass on a fresh worker."""
    victim = "import time\nprint('started', flush=True)\ntime.sleep(5)"
    with sandbox.SandboxPool(Limits(timeout_s=10), workers=1) as pool:
        assert pool.run_one("pass").kind == "passed"
        (launcher,) = worker_pids(pool)
        killer = threading.Timer(1.0, lambda: os.killpg(launcher, 9))
        killer.start()
        verdicts = pool.run([victim, "print('after')", "print('again')"])
        killer.join()
        assert worker_pids(pool) != [launcher]
    assert (verdicts[0].kind, verdicts[0].stdout) == ("killed", "started\n"), verdicts[0]
    assert verdicts[0].duration_s < 4
    assert [(v.kind, v.stdout) for v in verdicts[1:]] == [("passed", "after\n"), ("passed", "again\n")]


def test_pool_without_namespaces(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_leftovers) -> None:
    monkeypatch.setattr("phi_assets.sandbox.handle.USE_NAMESPACES", False)
    monkeypatch.setenv(sandbox.ALLOW_UNISOLATED_ENV, "1")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    leave = "import os\nopen('left-behind', 'w').write('x')\nos.mkdir('d')\nos.chmod('d', 0)"
    check = "import os\nassert os.listdir('.') == [], os.listdir('.')"
    with pytest.warns(UserWarning, match="NOT isolated"), sandbox.SandboxPool(Limits(timeout_s=2), 1) as pool:
        monkeypatch.setattr("phi_assets.sandbox.verdicts.warned", False)
        verdicts = pool.run([leave, check, "import time\ntime.sleep(60)", check])
    assert [v.kind for v in verdicts] == ["passed", "passed", "timeout", "passed"], verdicts
    assert list(tmp_path.iterdir()) == []
