"""The code-execution sandbox (phi_assets/sandbox/): what isolates a program, an adversarial suite.

Every adversarial program must leave the host, the evaluator (this test process) and other samples
unharmed. The suite runs as root (the program becomes uid 65534) and as any other user (a user
namespace); ``test_non_root_mode`` also covers the non-root path from a root run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from phi_assets import sandbox
from phi_assets.sandbox import Limits, isolation, pool, run_program, run_programs
from phi_assets.sandbox.worker import serve
from tests.support.sandbox import (
    IS_ROOT,
    SECRET,
    checking_leftovers,
    interpreter_under_tmp_driver,
    non_root_driver,
    run,
    run_driver,
)


@pytest.fixture
def no_leftovers():
    with checking_leftovers():
        yield


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
# Adversarial programs
# ---------------------------------------------------------------------------------------------------------


def test_writing_and_deleting_outside_its_directory_fails(canaries: list[Path], exposed_dir: Path) -> None:
    own_code = [Path(module.__file__).resolve() for module in (sandbox, serve)]  # the package, the worker
    targets = [str(path) for path in canaries] + [str(path) for path in own_code]
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
    assert not any("pwned" in path.read_text() for path in own_code)
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


# ---------------------------------------------------------------------------------------------------------
# isolation(), the fallback, the non-root mode
# ---------------------------------------------------------------------------------------------------------


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
    monkeypatch.setattr("phi_assets.sandbox.handle.USE_NAMESPACES", False)
    monkeypatch.setenv(sandbox.ALLOW_UNISOLATED_ENV, "1")  # else it refuses (the next test)
    monkeypatch.setattr("phi_assets.sandbox.verdicts.warned", False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.warns(UserWarning, match="NOT isolated"):
        verdict, notes = pool.execute("import os\nprint(os.getuid())", Limits())
    assert verdict.kind == "passed"
    assert notes["network"].startswith("NOT isolated"), notes
    if IS_ROOT:
        assert verdict.stdout == f"{sandbox.SANDBOX_UID}\n"
    tree = "import os, time\nos.fork()\nos.makedirs('d', exist_ok=True)\nos.chmod('d', 0)\ntime.sleep(60)"
    assert run(tree, timeout_s=1).kind == "timeout"  # its process group killed (no_leftovers)
    assert run("import os\nwhile True:\n    os.fork()").kind == "killed"
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def witness_dir():
    """A world-writable directory in /tmp: a program run without namespaces, as any uid, can write there."""
    path = Path(tempfile.mkdtemp(prefix="phi-witness-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def test_without_namespaces_it_refuses_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, witness_dir: Path, no_leftovers
) -> None:
    """Where nothing isolates the programs, none runs unless PHI_SANDBOX_ALLOW_UNISOLATED says so: the run
    raises (an error of the run, never a verdict) naming the setting and the reason; isolation() still
    reports what holds. With the setting, the same program runs, reported NOT isolated."""
    monkeypatch.setattr("phi_assets.sandbox.handle.USE_NAMESPACES", False)
    monkeypatch.setattr("phi_assets.sandbox.pool._isolation_cache", None)
    monkeypatch.setattr("phi_assets.sandbox.verdicts.warned", True)  # the warning is the other test's
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    witness = witness_dir / "ran"  # what the program leaves if it runs
    program = f"open({str(witness)!r}, 'w').write('x')\nprint('ran')"
    monkeypatch.setenv(sandbox.ALLOW_UNISOLATED_ENV, "0")
    with pytest.raises(sandbox.SandboxRefused) as refused:
        run_programs([program, "print('also')"], workers=2)
    message = str(refused.value)
    assert "PHI_SANDBOX_ALLOW_UNISOLATED=1" in message, message
    assert "NOT isolated: namespaces switched off" in message, message
    assert isinstance(refused.value, sandbox.SandboxError)  # what callers already treat as a broken sandbox
    assert refused.value.notes["network"].startswith("NOT isolated"), refused.value.notes
    assert not witness.exists()  # the program never ran
    with pytest.raises(sandbox.SandboxRefused, match=sandbox.ALLOW_UNISOLATED_ENV):
        pool.execute("pass", Limits())
    notes = isolation()  # the probe is refused too, yet says what holds and that programs are refused
    assert notes["processes"].startswith("NOT isolated: namespaces switched off"), notes
    assert notes["unisolated"] == "programs are refused: PHI_SANDBOX_ALLOW_UNISOLATED is not set", notes

    monkeypatch.setenv(sandbox.ALLOW_UNISOLATED_ENV, "1")
    verdict, notes = pool.execute(program, Limits())
    assert (verdict.kind, verdict.stdout) == ("passed", "ran\n"), verdict
    assert notes["network"].startswith("NOT isolated"), notes
    assert witness.read_text() == "x"
    assert isolation()["unisolated"] == "programs run anyway: PHI_SANDBOX_ALLOW_UNISOLATED=1"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["maybe", "2", "yes please"])
def test_a_bad_allow_setting_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(sandbox.ALLOW_UNISOLATED_ENV, value)
    with pytest.raises(ValueError, match=f"PHI_SANDBOX_ALLOW_UNISOLATED={value!r}: expected 1"):
        run_program("pass")


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
