"""Per program: the supervisor, PID 1 of the program's namespaces, which isolates, forks the program, reaps
it and reports how it ended on the status pipe.

Standard library only: it runs in the worker (see ``phi_assets.sandbox.worker``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from typing import NoReturn

from .kernel import CLONE_NEWPID, PR_SET_PDEATHSIG, prctl, setns, unshare
from .mounts import isolate_program
from .program import program_main


def start_supervisor(sock: socket.socket, context: dict, limits: dict, fds: list[int], pid_ns: int) -> int:
    """Fork the program's supervisor: PID 1 of a fresh PID namespace (where namespaces are in effect)."""
    worker = os.getpid()
    if context["namespaced"]:
        unshare(CLONE_NEWPID)  # for the next child only
    try:
        pid = os.fork()
        if pid == 0:
            try:
                _supervise(sock, context, limits, fds, worker)
            finally:
                os._exit(70)
    finally:
        if context["namespaced"]:
            setns(pid_ns, CLONE_NEWPID)  # the children after it are in the worker's own PID namespace again
    return pid


def _supervise(sock: socket.socket, context: dict, limits: dict, fds: list[int], worker: int) -> NoReturn:
    """PID 1 of the program's namespaces: isolate, fork the program, reap, report, exit (killing the rest)."""
    out_w, err_w, status_fd, code_r = fds
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if not context["namespaced"] and os.getppid() != worker:
        os._exit(1)  # the worker died before the death signal was armed
    os.setsid()  # kill(0, ...) from the program cannot reach the worker; the worker kills this group
    sock.detach()  # closed below with the worker's other descriptors
    null = os.open(os.devnull, os.O_RDWR)
    for fd, target in ((null, 0), (out_w, 1), (err_w, 2)):
        os.dup2(fd, target)
    low = 3
    for keep in sorted((status_fd, code_r)):
        os.closerange(low, keep)
        low = keep + 1
    os.closerange(low, 1 << 16)
    config, root, notes = context["config"], context["root"], dict(context["notes"])
    # Not isolated and not allowed to run anyway (the evaluator's PHI_SANDBOX_ALLOW_UNISOLATED): the program
    # process confines itself and reports what holds, but never runs the code.
    refused = None if context["namespaced"] or config.get("allow_unisolated") else notes["reason"]
    try:
        code = _read_all(code_r).decode("utf-8", "surrogatepass")
        os.close(code_r)
        if context["namespaced"]:
            isolate_program(config, limits, root, context["setup"], notes)
        report_r, report_w = os.pipe()
    except Exception as exc:  # reported to the evaluator, which raises SandboxError
        _fail_setup(status_fd, exc)
    program = {"code": code, "workdir": config["workdir"], "uid": config["uid"], "limits": limits}
    program["refuse"] = refused is not None
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_r)
            program_main(program, root, status_fd, report_w)
        finally:
            os._exit(71)
    os.close(report_w)
    wait, cpu_s = _reap(pid)
    if context["namespaced"]:  # nothing of the program outlives its report
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap_all()
    result: dict = {"wait": wait, "cpu_s": cpu_s}
    for index, line in enumerate(_read_reports(report_r)):
        if index == 0 and "setup_error" in line:
            result = {"setup_error": line["setup_error"]}
            break
        if index == 0 and isinstance(line.get("setup"), dict):
            notes.update(line["setup"])
        elif index > 0 and "exception" in line:
            result["exception"] = line
    if refused is not None and "setup_error" not in result:
        result = {"refused": refused}  # from the supervisor itself: no program can forge or hide it
    result["isolation"] = {key: value for key, value in notes.items() if key != "reason"}
    _write_all(status_fd, json.dumps(result).encode())
    os._exit(0)


def _reap_all() -> None:
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _fail_setup(status_fd: int, exc: BaseException) -> NoReturn:
    _write_all(status_fd, json.dumps({"setup_error": f"{type(exc).__name__}: {exc}"}).encode())
    os._exit(1)


def _reap(pid: int) -> tuple[dict[str, int], float]:
    """Wait for the program, reaping every orphan handed to PID 1 meanwhile."""
    while True:
        child, status, usage = os.wait4(-1, 0)
        if child == pid:
            cpu_s = round(usage.ru_utime + usage.ru_stime, 3)
            if os.WIFSIGNALED(status):
                return {"signal": os.WTERMSIG(status)}, cpu_s
            return {"exit": os.waitstatus_to_exitcode(status)}, cpu_s


def _read_reports(fd: int) -> list[dict]:
    os.set_blocking(fd, False)
    data = bytearray()
    while len(data) < 1 << 20:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    lines = []
    for raw in bytes(data).splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
