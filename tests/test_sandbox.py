"""The code-execution sandbox (phi_assets/evaluation/sandbox.py): verdicts, limits, an adversarial suite.

Every adversarial program must leave the host, the evaluator (this test process) and other samples
unharmed, and end within its limits. The suite runs as root (the program becomes uid 65534) and as any
other user (a user namespace); ``test_non_root_mode`` also covers the non-root path from a root run.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from phi_assets.evaluation import sandbox
from phi_assets.evaluation.sandbox import Limits, Verdict, isolation, run_program, run_programs

SLACK_S = 3.0
SECRET = "phi-test-secret-3f9a1c"
IS_ROOT = os.geteuid() == 0


def run(code: str, **limits: object) -> Verdict:
    """Run a program and check it ended within its wall-clock limit (plus slack)."""
    bounds = Limits(**limits)
    verdict = run_program(textwrap.dedent(code), bounds)
    assert verdict.kind in sandbox.VERDICTS
    assert verdict.duration_s < bounds.timeout_s + SLACK_S, verdict
    return verdict


def sandbox_pids() -> set[int]:
    """Processes (zombies too) of sandboxed programs: a sandbox working directory, or uid 65534 (as root)."""
    found = set()
    for entry in glob.glob("/proc/[0-9]*"):
        try:
            status = Path(f"{entry}/status").read_text()
        except OSError:
            continue
        try:
            cwd = os.readlink(f"{entry}/cwd")
        except OSError:  # a zombie has none
            cwd = ""
        uids = next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])
        if "phi-sandbox-" in cwd or (IS_ROOT and str(sandbox.SANDBOX_UID) in uids):
            found.add(int(entry.removeprefix("/proc/")))
    return found


@pytest.fixture
def no_leftovers():
    before = sandbox_pids()
    yield
    left = sandbox_pids() - before
    assert not left, f"sandboxed processes left behind: {left}"


@pytest.fixture
def exposed_dir(tmp_path: Path, request: pytest.FixtureRequest):
    """A world-writable directory in the repository checkout (pytest's cache, ignored by git): there only the
    sandbox's read-only mount, not file permissions, stops a program from writing."""
    cache = getattr(request.config, "cache", None)
    path = cache.mkdir(f"sandbox-canary-{os.getpid()}") if cache is not None else tmp_path / "exposed"
    path.mkdir(exist_ok=True)
    os.chmod(path, 0o777)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
def canaries(tmp_path: Path, exposed_dir: Path):
    paths = [tmp_path / "canary.txt", exposed_dir / "canary.txt"]
    for path in paths:
        path.write_text("intact")
        os.chmod(path, 0o666)
    yield paths
    for path in paths:
        assert path.read_text() == "intact"
    assert sorted(p.name for p in exposed_dir.iterdir()) == ["canary.txt"]


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
# Adversarial programs
# ---------------------------------------------------------------------------------------------------------


def test_fork_bomb_is_contained(no_leftovers) -> None:
    verdict = run("import os\nwhile True:\n    os.fork()", timeout_s=10)
    assert verdict.kind == "killed"
    assert verdict.detail.startswith("killed: process limit (BlockingIOError")


def test_fork_bomb_does_not_starve_other_samples(no_leftovers) -> None:
    """RLIMIT_NPROC is counted per program (a user namespace each), not per host uid."""
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


def test_writing_and_deleting_outside_its_directory_fails(canaries: list[Path], exposed_dir: Path) -> None:
    targets = [str(path) for path in canaries] + [str(Path(sandbox.__file__).resolve())]
    code = f"""
        import os, shutil
        escaped = []
        for target in {targets!r}:
            attempts = {{
                "remove": lambda: os.remove(target),
                "overwrite": lambda: open(target, "w").write("pwned"),
                "append": lambda: open(target, "a").write("pwned"),
                "rename": lambda: os.rename(target, target + ".moved"),
                "chmod": lambda: os.chmod(target, 0o600),
                "create": lambda: open(os.path.join(os.path.dirname(target), "new.txt"), "w").write("x"),
                "rmtree": lambda: shutil.rmtree(os.path.dirname(target)),
            }}
            for name, attempt in attempts.items():
                try:
                    attempt()
                    escaped.append((name, target))
                except OSError:
                    pass
        for target in ("/etc/passwd", "/usr/bin/newfile", "/var/lib/newfile", "/dev/shm/../newfile"):
            try:
                open(target, "a").write("x")
                escaped.append(("write", target))
            except OSError:
                pass
        open("inside.txt", "w").write("its own directory is writable")
        assert not escaped, escaped
    """
    verdict = run(code)
    assert verdict.kind == "passed", verdict
    assert "pwned" not in Path(sandbox.__file__).read_text()
    assert not Path("/usr/bin/newfile").exists() and not Path("/var/lib/newfile").exists()


def test_home_directories_and_run_are_hidden() -> None:
    code = """
        import os
        for path in ("/home", "/run"):
            assert os.listdir(path) == [], (path, os.listdir(path))
        for path in ("/root/.bash_history", "/root/.ssh", "/root/.cache"):
            assert not os.path.exists(path), path
    """
    verdict = run(code)
    assert verdict.kind == "passed", verdict


def test_tmp_is_private_and_writable(tmp_path: Path) -> None:
    marker = f"phi-sandbox-test-{os.getpid()}"
    code = f"""
        import os
        assert not os.path.exists({str(tmp_path)!r})  # the host's /tmp is not visible
        for directory in ("/tmp", "/var/tmp", "/dev/shm", "."):
            with open(os.path.join(directory, {marker!r}), "w") as handle:
                handle.write("x")
    """
    verdict = run(code)
    assert verdict.kind == "passed", verdict
    assert not any(Path(d, marker).exists() for d in ("/tmp", "/var/tmp", "/dev/shm"))


def test_no_network(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"\0phi-sandbox-test-{os.getpid()}"
    abstract.bind(abstract_name)
    abstract.listen()
    abstract.settimeout(0.5)
    port = listener.getsockname()[1]
    code = f"""
        import socket
        connected = []
        for address in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
            try:
                socket.create_connection(address, timeout=2).close()
                connected.append(address)
            except OSError:
                pass
        try:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect({abstract_name!r})
            connected.append("abstract unix socket")
        except OSError:
            pass
        try:
            socket.getaddrinfo("pypi.org", 443)
            connected.append("dns")
        except OSError:
            pass
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("1.1.1.1", 53))
            connected.append("udp")
        except OSError:
            pass
        assert not connected, connected
        # its own loopback works (and is not the host's)
        server = socket.create_server(("127.0.0.1", {port}))
        socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    """
    try:
        verdict = run(code)
        for server in (listener, abstract):
            with pytest.raises(TimeoutError):
                server.accept()
    finally:
        listener.close()
        abstract.close()
    assert verdict.kind == "passed", verdict


def test_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHI_TEST_SECRET", SECRET)
    code = f"""
        import glob, os
        leaks = [key for key, value in os.environ.items() if {SECRET!r} in value]
        assert sorted(os.environ) == {sorted(sandbox.scrubbed_env("/x"))!r}, sorted(os.environ)
        paths = ["/proc/self/environ", "/proc/1/environ", f"/proc/{{os.getppid()}}/environ",
                 "/proc/{os.getpid()}/environ", *glob.glob("/proc/[0-9]*/environ")]
        for path in paths:
            try:
                if {SECRET!r}.encode() in open(path, "rb").read():
                    leaks.append(path)
            except OSError:
                pass
        assert not leaks, leaks
    """
    verdict = run(code)
    assert verdict.kind == "passed", verdict
    assert SECRET not in verdict.stdout + verdict.stderr


def test_killing_its_parent_and_everyone_harms_nobody() -> None:
    killer = f"""
        import os, signal, time
        time.sleep(0.5)
        for pid in (os.getppid(), 1, {os.getpid()}, -1):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        print("survived", flush=True)
        os.kill(0, signal.SIGKILL)  # its own process group: kills itself
    """
    bystander = "import time\ntime.sleep(1.5)\nprint('done')"
    verdicts = run_programs([textwrap.dedent(killer), bystander], Limits(timeout_s=10), workers=2)
    assert verdicts[0].stdout == "survived\n"
    assert (verdicts[0].kind, verdicts[0].detail) == ("killed", "killed by SIGKILL")
    assert (verdicts[1].kind, verdicts[1].stdout) == ("passed", "done\n")
    assert run("pass").kind == "passed"  # the evaluator is fine


def test_ctypes_tricks_are_contained(canaries: list[Path]) -> None:
    hostname = socket.gethostname()
    code = f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setuid(0)
        libc.setresuid(0, 0, 0)
        escaped = []
        for target in {[str(path) for path in canaries]!r}:
            if libc.open(target.encode(), os.O_WRONLY | os.O_TRUNC) >= 0:
                escaped.append(("open", target))
            if libc.unlink(target.encode()) == 0:
                escaped.append(("unlink", target))
        if libc.kill({os.getpid()}, 9) == 0:
            escaped.append("kill the evaluator")
        if libc.sethostname(b"pwned", 5) == 0:
            escaped.append("sethostname")
        if libc.mount(None, b"/", None, 32 | 4096, None) == 0:  # MS_REMOUNT | MS_BIND: read-write again
            escaped.append("remount")
        if libc.mount(b"tmpfs", b"/usr", b"tmpfs", 0, None) == 0:
            escaped.append("mount")
        if libc.umount2(b"/tmp", 2) == 0:  # MNT_DETACH: uncover what a tmpfs hides
            escaped.append("umount")
        if libc.chroot(b"/") == 0:
            escaped.append("chroot")
        if libc.unshare(0x10000000 | 0x00020000) == 0:  # CLONE_NEWUSER | CLONE_NEWNS: its own mounts
            escaped.append("unshare")
        if libc.shmget(0, 1 << 30, 0o1600) >= 0:  # IPC_PRIVATE, IPC_CREAT: 1 GiB outside RLIMIT_AS
            escaped.append("shmget")
        try:
            open("/proc/sys/kernel/shmmax", "w").write("1")
            escaped.append("sysctl")
        except OSError:
            pass
        status = open("/proc/self/status").read()
        assert "CapEff:\\t0000000000000000" in status, status
        assert not escaped, escaped
    """
    shmmax = Path("/proc/sys/kernel/shmmax").read_text()
    verdict = run(code)
    assert verdict.kind == "passed", verdict
    assert socket.gethostname() == hostname
    assert Path("/proc/sys/kernel/shmmax").read_text() == shmmax  # the IPC limits were set in its namespace


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


def test_run_programs_keeps_order_and_runs_in_parallel() -> None:
    verdicts = run_programs([f"print({i})" for i in range(5)], workers=3, progress=True)
    assert [v.stdout for v in verdicts] == [f"{i}\n" for i in range(5)]
    timed = "import time\nprint(time.time())\ntime.sleep(1.0)\nprint(time.time())"
    (a_start, a_end), (b_start, b_end) = (
        map(float, v.stdout.split()) for v in run_programs([timed] * 2, workers=2)
    )
    assert a_start < b_end and b_start < a_end  # the two ran at the same time
    assert run_programs([]) == []


def test_isolation_reports_what_holds() -> None:
    notes = isolation()
    assert {"mode", "user", "network", "filesystem", "processes", "ipc", "limits", "environment"} <= set(notes)
    assert notes["network"] == "private network namespace (no interfaces but its own loopback)", notes
    assert notes["filesystem"].startswith("private mount namespace: every mount read-only"), notes
    assert notes["processes"].startswith("private PID namespace"), notes
    assert "RLIMIT_NPROC counted per program" in notes["limits"], notes
    assert notes["limits"].endswith("it cannot create user namespaces"), notes
    assert notes["ipc"].endswith("System V shared memory at most 64 MiB"), notes
    expected_user = (
        f"uid {sandbox.SANDBOX_UID} (nobody)" if IS_ROOT else f"uid {os.getuid()} (the evaluator's own)"
    )
    assert notes["user"].startswith(expected_user), notes


def test_without_namespaces_it_says_so_and_still_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_leftovers
) -> None:
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
    monkeypatch.setattr(sandbox, "_warned", False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.warns(UserWarning, match="NOT isolated"):
        verdict, notes = sandbox._execute("import os\nprint(os.getuid())", Limits())
    assert verdict.kind == "passed"
    assert notes["network"].startswith("NOT isolated"), notes
    if IS_ROOT:
        assert verdict.stdout == f"{sandbox.SANDBOX_UID}\n"
    tree = "import os, time\nos.fork()\nos.makedirs('d')\nos.chmod('d', 0)\ntime.sleep(60)"
    assert run(tree, timeout_s=1).kind == "timeout"  # its process group killed (no_leftovers)
    assert run("import os\nwhile True:\n    os.fork()").kind == "killed"
    assert list(tmp_path.iterdir()) == []


def become_nobody() -> None:
    """As root, in a driver process: make Python reachable for uid 65534 (it may live in /root), become it."""
    sandbox._unshare(sandbox.CLONE_NEWNS)
    sandbox._mount(None, "/", None, sandbox.MS_REC | sandbox.MS_PRIVATE)
    sandbox._hide(sandbox._hidden_dirs([]), sandbox._python_dirs())
    os.setgroups([])
    os.setresgid(sandbox.SANDBOX_GID, sandbox.SANDBOX_GID, sandbox.SANDBOX_GID)
    os.setresuid(sandbox.SANDBOX_UID, sandbox.SANDBOX_UID, sandbox.SANDBOX_UID)


def run_driver(name: str, args: dict) -> dict:
    """As root: run the driver function ``name`` of this module in a fresh interpreter (it becomes uid 65534
    there) and return what it printed as JSON."""
    driver = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('sandbox_tests', {__file__!r})\n"
        "tests = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(tests)\n"
        f"print(json.dumps(tests.{name}(json.loads(sys.argv[1]))))"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "PHI_TEST_SECRET": SECRET}
    done = subprocess.run(
        [sys.executable, "-I", "-c", driver, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd="/",
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def non_root_driver(args: dict) -> dict:
    """Runs as a non-root user (see test_non_root_mode): a few cases through the user-namespace path."""
    if os.geteuid() == 0:
        become_nobody()
    notes = isolation()
    if notes["network"].startswith("NOT isolated"):
        return {"isolation": notes}
    environ = "def environ():\n    return open('/proc/self/environ').read()\n"
    attempt = "try:\n    {}\nexcept OSError:\n    pass\nelse:\n    raise SystemExit('escaped')"
    programs = {
        "passed": "print('ok')",
        "network": attempt.format(f"__import__('socket').create_connection(('127.0.0.1', {args['port']}), 2)"),
        "write outside": attempt.format(f"open({args['canary']!r}, 'w').write('pwned')"),
        "environment": environ + f"import os\nassert {SECRET!r} not in str(os.environ) + environ()",
        "kill parent": "\n".join(
            f"try: os.kill({pid}, 9)\nexcept OSError: pass" for pid in ("os.getppid()", 1, os.getpid(), -1)
        ),
        "bystander": "import time\ntime.sleep(1.0)",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "home": "import os\nassert os.listdir('/home') == []",
        "unshare": "import ctypes\nassert ctypes.CDLL(None).unshare(0x10000000 | 0x00020000) == -1",
        "sysctl": attempt.format("open('/proc/sys/kernel/shmmax', 'w').write('1')"),
        "tmp": "open('/tmp/x', 'w').write('its /tmp is writable, even with HOME=/tmp')",
    }
    programs["kill parent"] = "import os\n" + programs["kill parent"]
    verdicts = run_programs(list(programs.values()), Limits(timeout_s=10), workers=2)
    tree = Path(tempfile.mkdtemp())  # what a program may leave where no mount namespace hides it
    (tree / "a" / "b").mkdir(parents=True)
    for path in (tree / "a" / "b", tree / "a"):
        path.chmod(0)
    sandbox._remove_tree(str(tree))
    return {
        "tree removed": not tree.exists(),
        "isolation": notes,
        "uid": os.getuid(),
        **{k: [v.kind, v.detail] for k, v in zip(programs, verdicts, strict=True)},
    }


def test_non_root_mode(canaries: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    args = {"port": listener.getsockname()[1], "canary": str(canaries[1])}
    try:
        if IS_ROOT:  # a driver process that becomes uid 65534 and calls the sandbox from there
            result = run_driver("non_root_driver", args)
            assert result["uid"] == sandbox.SANDBOX_UID
        else:
            monkeypatch.setenv("PHI_TEST_SECRET", SECRET)
            result = non_root_driver(args)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
    notes = result["isolation"]
    if notes["network"].startswith("NOT isolated"):
        pytest.skip(f"unprivileged user namespaces are unavailable here, so is isolation without root: {notes}")
    assert notes["mode"].startswith("not root: a user namespace maps uid"), notes
    assert notes["network"] == "private network namespace (no interfaces but its own loopback)", notes
    assert "RLIMIT_NPROC counted per program" in notes["limits"], notes
    assert notes["limits"].endswith("it cannot create user namespaces"), notes
    assert result.pop("tree removed") is True
    verdicts = {name: verdict for name, verdict in result.items() if name not in ("isolation", "uid")}
    fork_bomb = verdicts.pop("fork bomb")
    assert verdicts == dict.fromkeys(verdicts, ["passed", "exit status 0"]), verdicts
    assert len(verdicts) == 10
    assert fork_bomb[0] == "killed" and "process limit" in fork_bomb[1], fork_bomb


# ---------------------------------------------------------------------------------------------------------
# An interpreter where the programs get a private tmpfs (a checkout and its venv under /tmp)
# ---------------------------------------------------------------------------------------------------------

INTERPRETER_UNDER_TMP = """
    import errno, os, subprocess, sys, sysconfig
    out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout
    assert out == "42\\n", out
    parent = os.path.dirname(sys.prefix)
    assert set(os.listdir(parent)) <= {"real", "venv"}, os.listdir(parent)  # not sibling.txt
    own = {os.environ["HOME"].split("/")[2]} if os.environ["HOME"].startswith("/tmp/") else set()
    assert set(os.listdir("/tmp")) == {parent.split("/")[2], *own}, os.listdir("/tmp")  # no host /tmp
    for directory in (sys.prefix, sysconfig.get_paths()["purelib"], parent + "/real"):
        try:
            open(os.path.join(directory, "pwned"), "w").write("x")
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc  # world-writable: only the read-only mount stops it
        else:
            raise AssertionError(f"wrote into {directory}")
    open("/tmp/{marker}", "w").write("its /tmp is writable")
    print(out, end="")
"""


@pytest.fixture
def tmp_venv():
    """A virtualenv at /tmp/phi-venv-*/real, also reached through the link /tmp/phi-venv-*/venv, as for a
    checkout under /tmp; a file beside it the programs must not see. Its directories are world-writable:
    only the sandbox's read-only bind mount, not file permissions, stops a program from writing there."""
    parent = Path(tempfile.mkdtemp(prefix="phi-venv-", dir="/tmp"))  # /tmp itself, whatever TMPDIR says
    try:
        parent.chmod(0o755)  # uid 65534 (the non-root driver) runs its Python
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(parent / "real")], check=True)
        (parent / "venv").symlink_to("real")
        (parent / "sibling.txt").write_text(SECRET)
        version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        for directory in (parent / "real", parent / "real" / "lib" / version / "site-packages"):
            directory.chmod(0o777)
        yield parent
    finally:
        shutil.rmtree(parent)


def interpreter_under_tmp_driver(args: dict) -> dict:
    """Runs two programs, one after the other in one worker whose Python is ``args["python"]`` (under /tmp):
    the pool starts its workers with ``sys.executable``. As root with ``args["non_root"]``, as uid 65534
    (see test_interpreter_under_tmp)."""
    if os.geteuid() == 0 and args["non_root"]:
        become_nobody()
    marker = f"phi-left-behind-{os.getpid()}"
    programs = [
        textwrap.dedent(INTERPRETER_UNDER_TMP).replace("{marker}", marker),
        f"import os\nassert not os.path.exists('/tmp/{marker}'), 'left by the previous program'",
    ]
    saved, sys.executable = sys.executable, args["python"]
    try:
        with sandbox.SandboxPool(Limits(timeout_s=10), workers=1) as pool:
            first, notes = pool._execute(programs[0])
            second = pool.run_one(programs[1])
    finally:
        sys.executable = saved
    return {
        "isolation": notes,
        "verdicts": [[v.kind, v.detail, v.stdout, v.stderr[-2000:]] for v in (first, second)],
        "on the host": os.path.exists(f"/tmp/{marker}"),
    }


@pytest.mark.parametrize("non_root", [False, True], ids=["as-is", "non-root"])
@pytest.mark.parametrize("name", ["real", "venv"], ids=["venv", "through-a-link"])
def test_interpreter_under_tmp(tmp_venv: Path, name: str, non_root: bool, no_leftovers) -> None:
    """A project (so its venv, sys.executable, sys.prefix) under /tmp, where each program gets a private
    tmpfs: Python is bound back read-only and a program can start it; the rest of /tmp stays private."""
    if non_root and not IS_ROOT:
        pytest.skip("not root: the as-is case already runs the sandbox from a non-root user")
    args = {"python": str(tmp_venv / name / "bin" / "python"), "non_root": non_root}
    driver = "interpreter_under_tmp_driver"
    result = run_driver(driver, args) if non_root else interpreter_under_tmp_driver(args)
    notes = result["isolation"]
    if notes["network"].startswith("NOT isolated"):  # nothing is masked: nothing to bind back
        pytest.skip(f"the sandbox cannot create namespaces here: {notes}")
    assert result["verdicts"][0][:3] == ["passed", "exit status 0", "42\n"], result["verdicts"][0]
    assert result["verdicts"][1][:2] == ["passed", "exit status 0"], result["verdicts"][1]
    assert result["on the host"] is False
    bound = f"/dev/shm (Python's directories in them bound back read-only: {tmp_venv}/real)"
    assert bound in notes["filesystem"], notes
    assert sorted(p.name for p in tmp_venv.iterdir()) == ["real", "sibling.txt", "venv"]
    assert not list(tmp_venv.glob("**/pwned"))


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
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    leave = "import os\nopen('left-behind', 'w').write('x')\nos.mkdir('d')\nos.chmod('d', 0)"
    check = "import os\nassert os.listdir('.') == [], os.listdir('.')"
    with pytest.warns(UserWarning, match="NOT isolated"), sandbox.SandboxPool(Limits(timeout_s=5), 1) as pool:
        monkeypatch.setattr(sandbox, "_warned", False)
        verdicts = pool.run([leave, check, "import time\ntime.sleep(60)", check])
    assert [v.kind for v in verdicts] == ["passed", "passed", "timeout", "passed"], verdicts
    assert list(tmp_path.iterdir()) == []
