"""Helpers of the sandbox tests (tests/test_sandbox_*.py): running a program within its limits, finding
sandboxed processes left behind, and the drivers that call the sandbox from a fresh interpreter as uid
65534 (``run_driver``: this module, loaded by path there, imports only the standard library and
``phi_assets.sandbox``)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from phi_assets import sandbox
from phi_assets.sandbox import Limits, Verdict, isolation, run_program, run_programs
from phi_assets.sandbox.worker import kernel, mounts, protocol

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


def _ancestors(pid: int) -> list[int]:
    """``pid``'s parents up to the first process (empty once it is gone)."""
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return chain
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state; the name may hold ")"
        chain.append(pid)
    return chain


def _may_be_this_tests(pid: int) -> bool:
    """Whether a sandboxed process may be this test's: one of this process's descendants, or an orphan (a
    leak, whoever left it). Under ``pytest -n`` the other workers run sandboxed programs at the same time:
    those descend from a sibling worker, beside this one under the parent that started both."""
    chain = _ancestors(pid)
    return bool(chain) and (os.getpid() in chain or os.getppid() not in chain)


@contextmanager
def checking_leftovers() -> Iterator[None]:
    """Fails if sandboxed processes that were not there before are left at the end (``no_leftovers``); under
    ``pytest -n``, another worker's running programs are not this test's leftovers."""
    before = sandbox_pids()
    yield
    left = {pid for pid in sandbox_pids() - before if _may_be_this_tests(pid)}
    assert not left, f"sandboxed processes left behind: {left}"


def become_nobody() -> None:
    """As root, in a driver process: make Python reachable for uid 65534 (it may live in /root), become it."""
    kernel.unshare(kernel.CLONE_NEWNS)
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    mounts.hide(mounts.hidden_dirs([]), mounts.python_dirs())
    os.setgroups([])
    os.setresgid(sandbox.SANDBOX_GID, sandbox.SANDBOX_GID, sandbox.SANDBOX_GID)
    os.setresuid(sandbox.SANDBOX_UID, sandbox.SANDBOX_UID, sandbox.SANDBOX_UID)


def run_driver(name: str, args: dict) -> dict:
    """As root: run the driver function ``name`` of this module in a fresh interpreter (it becomes uid 65534
    there) and return what it printed as JSON."""
    driver = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('sandbox_support', {__file__!r})\n"
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
    protocol.remove_tree(str(tree))
    return {
        "tree removed": not tree.exists(),
        "isolation": notes,
        "uid": os.getuid(),
        **{k: [v.kind, v.detail] for k, v in zip(programs, verdicts, strict=True)},
    }


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
            first, notes = pool.execute(programs[0])
            second = pool.run_one(programs[1])
    except sandbox.SandboxRefused as refused:  # no namespaces for this user: the caller skips
        return {"isolation": refused.notes}
    finally:
        sys.executable = saved
    return {
        "isolation": notes,
        "verdicts": [[v.kind, v.detail, v.stdout, v.stderr[-2000:]] for v in (first, second)],
        "on the host": os.path.exists(f"/tmp/{marker}"),
    }
