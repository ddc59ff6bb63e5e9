"""The program process: confine it (user, capabilities, rlimits), run the code as ``__main__``, report, exit.

Standard library only: it runs in the worker (see ``phi_assets.sandbox.worker``). Everything the program
process uses is imported here, before the privileges are dropped.
"""

from __future__ import annotations

import atexit
import builtins
import json
import linecache
import os
import resource
import sys
import traceback
import types

from .kernel import (
    CLONE_NEWUSER,
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    capabilities_left,
    drop_capabilities,
    prctl,
    unshare,
)
from .protocol import SANDBOX_GID, SANDBOX_UID

PROGRAM_NAME = "<program>"


def _send(fd: int, message: dict) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def program_main(config: dict, root: bool, status_fd: int, report_fd: int) -> None:
    """The program process: confine, report the setup, run the code, exit."""
    try:
        os.close(status_fd)
        os.closerange(3, report_fd)
        os.closerange(report_fd + 1, 1 << 16)
        setup = _confine(config, root)
    except Exception as exc:  # reported to the evaluator, which raises SandboxError
        _send(report_fd, {"setup_error": f"{type(exc).__name__}: {exc}"})
        os._exit(1)
    _send(report_fd, {"setup": setup})
    if config["refuse"]:  # not isolated, and not allowed to run anyway: the code is never compiled
        os._exit(0)
    _run(config["code"], report_fd)


def _confine(config: dict, root: bool) -> dict[str, str]:
    """Working directory, privileges, own user namespace, resource limits; returns what holds."""
    os.chdir(config["workdir"])
    if root:
        os.setgroups([])
        os.setresgid(SANDBOX_GID, SANDBOX_GID, SANDBOX_GID)
        os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
        user = f"uid {SANDBOX_UID} (nobody) on the host, no supplementary groups, no capabilities"
    else:
        user = f"uid {config['uid']} (the evaluator's own) on the host, no capabilities"
    try:
        # Its own process count for RLIMIT_NPROC. Its uid has no mapping in this namespace (it shows as
        # 65534), and the kernel lets no one without a mapping create a user namespace: it never gets a
        # capability back, anywhere.
        unshare(CLONE_NEWUSER)
        nproc = "RLIMIT_NPROC counted per program (own user namespace); it cannot create user namespaces"
    except OSError as exc:
        nproc = f"RLIMIT_NPROC counted per host uid ({exc.strerror} for a user namespace of its own)"
    drop_capabilities()
    prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries and file capabilities grant nothing
    if capabilities_left():
        raise RuntimeError("capabilities left after dropping them")
    _apply_limits(config["limits"])
    prctl(PR_SET_DUMPABLE, 1)  # its own /proc/self is readable again (credential changes cleared it)
    return {
        "user": user,
        "limits": f"kernel rlimits: cpu, address space, processes, file size, open files; {nproc}",
    }


def _apply_limits(limits: dict) -> None:
    mb = 1 << 20
    for res, value, hard in (
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1),
        (resource.RLIMIT_AS, limits["memory_mb"] * mb, None),
        (resource.RLIMIT_NPROC, limits["processes"], None),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb, None),
        (resource.RLIMIT_NOFILE, limits["open_files"], None),
    ):
        current_hard = resource.getrlimit(res)[1]
        hard = value if hard is None else hard
        if current_hard != resource.RLIM_INFINITY:
            value, hard = min(value, current_hard), min(hard, current_hard)
        resource.setrlimit(res, (value, hard))


def _run(code: str, report_fd: int) -> None:
    """Execute the code as ``__main__``; report an uncaught exception on ``report_fd``; exit.

    Everything it uses is imported before the privileges are dropped (Python's directories may not be
    readable by uid 65534 where no mount namespace re-exposes them).
    """
    linecache.cache[PROGRAM_NAME] = (len(code), None, code.splitlines(True), PROGRAM_NAME)
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    sys.argv = [PROGRAM_NAME]
    sys.path.insert(0, os.getcwd())
    status = 0
    try:
        exec(compile(code, PROGRAM_NAME, "exec"), module.__dict__)
    except SystemExit as exc:
        status = _system_exit(exc, report_fd)
    except MemoryError as exc:
        module.__dict__.clear()  # free what the program holds before reporting
        os.write(report_fd, b'{"exception": "MemoryError", "message": ""}\n')
        _print_exception(exc)
        status = 1
    except BaseException as exc:  # every uncaught exception is the program's verdict
        _send(report_fd, _describe(exc))
        _print_exception(exc)
        status = 1
    _finish(status)


def _system_exit(exc: SystemExit, report_fd: int) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        status = code & 0xFF
        if status:
            _send(report_fd, {"exception": "SystemExit", "message": str(code)})
        return status
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    _send(report_fd, {"exception": "SystemExit", "message": str(code)[:400]})
    return 1


def _describe(exc: BaseException) -> dict:
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not hide the verdict
        message = ""
    report = {"exception": type(exc).__name__, "message": message[:400]}
    if isinstance(exc, OSError) and isinstance(exc.errno, int):
        report["errno"] = exc.errno
    if isinstance(exc, AssertionError) and not message:
        report["line"] = _failing_line(exc)[:200]
    return report


def _failing_line(exc: BaseException) -> str:
    line, tb = "", exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == PROGRAM_NAME:
            line = linecache.getline(PROGRAM_NAME, tb.tb_lineno).strip()
        tb = tb.tb_next
    return line


def _print_exception(exc: BaseException) -> None:
    """Print the traceback as Python would, without the runner's own frame."""
    try:
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        traceback.print_exception(type(exc), exc, tb)
    except BaseException:  # e.g. no memory left to format it
        pass


def _finish(status: int) -> None:
    """Exit like the interpreter would: join threads, run atexit handlers, flush, exit with ``status``."""
    try:
        if "threading" in sys.modules:  # as the interpreter does at exit
            sys.modules["threading"]._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(status)
