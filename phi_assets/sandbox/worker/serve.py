"""The launcher (the worker's first process) and the worker: launcher -> worker (PID 1, set up once) -> per
program: supervisor (PID 1) -> program.

``main`` is what ``python -I -B worker/__main__.py --sandbox-worker FD`` runs. Standard library only: it
runs in the worker (see ``phi_assets.sandbox.worker``).
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import time
from collections.abc import Sequence
from typing import NoReturn

from .kernel import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_DUMPABLE,
    PR_SET_PDEATHSIG,
    prctl,
    unshare,
)
from .mounts import isolate_worker
from .protocol import SANDBOX_GID, SANDBOX_UID, WORKER_FLAG, receive_message, remove_tree, send_message
from .supervisor import start_supervisor

#: Imported by the worker, so programs importing them find them loaded (dataclasses brings inspect, ast,
#: dis, copy and weakref: the modules the worker had loaded when it was one file with the evaluator's side).
PRELOADED = ("typing", "dataclasses")


def main(argv: Sequence[str]) -> None:
    """``WORKER_FLAG FD``: be a worker on the control socket FD (the evaluator's other end)."""
    if len(argv) == 2 and argv[0] == WORKER_FLAG:
        launch(int(argv[1]))


def launch(sock_fd: int) -> None:
    """The launcher: read the config, enter the namespaces, fork the worker, wait for it."""
    sock = socket.socket(fileno=sock_fd)
    config, _ = receive_message(sock)
    if config is None:
        os._exit(0)
    os.umask(0o022)
    root = os.geteuid() == 0
    notes: dict[str, str] = {}
    namespaced = config["namespaces"] and _enter_namespaces(root, notes)
    if not namespaced:
        notes.update(_not_isolated(root, notes.setdefault("reason", "namespaces switched off")))
        _serve(sock, config, root, False, notes)
    pid = os.fork()
    if pid == 0:
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the launcher dies only with its whole process group
            _serve(sock, config, root, True, notes)
        finally:
            os._exit(70)
    sock.close()
    os.waitpid(pid, 0)
    os._exit(0)


def _enter_namespaces(root: bool, notes: dict[str, str]) -> bool:
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.geteuid(), os.getegid()
    try:
        unshare(flags if root else flags | CLONE_NEWUSER)
    except OSError as exc:
        notes["reason"] = f"cannot create namespaces ({exc.strerror})"
        return False
    if root:
        notes["mode"] = f"root: namespaces created by root, the program runs as uid {SANDBOX_UID}"
    else:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
        notes["mode"] = f"not root: a user namespace maps uid {uid} to 0 (the program drops every capability)"
    return True


def _not_isolated(root: bool, reason: str) -> dict[str, str]:
    who = f"the program runs as uid {SANDBOX_UID}" if root else "the program runs as the evaluator's uid"
    return {
        "mode": f"NOT isolated: {reason}; {who}",
        "network": f"NOT isolated: {reason}",
        "filesystem": f"NOT isolated: {reason}; only file permissions protect the host ({who})",
        "processes": f"NOT isolated: {reason}; on timeout its process group is killed, escapees survive",
        "ipc": f"NOT isolated: {reason}",
    }


def _serve(sock: socket.socket, config: dict, root: bool, namespaced: bool, notes: dict) -> NoReturn:
    """The worker: set up once, then run the programs it is sent, one at a time, until end of file."""
    try:
        if namespaced:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores every signal it has no handler for
            prctl(PR_SET_DUMPABLE, 0)
            setup = isolate_worker(config, notes)
            pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        else:
            prctl(PR_SET_CHILD_SUBREAPER, 1)  # the program's orphans are reaped here
            setup, pid_ns = {}, -1
    except Exception as exc:  # reported to the evaluator, which raises SandboxError
        send_message(sock, {"setup_error": f"{type(exc).__name__}: {exc}"})
        os._exit(1)
    for name in PRELOADED:  # imported once here rather than by every program
        __import__(name)
    gc.freeze()  # the collector of a program does not touch (and copy) the worker's objects
    send_message(sock, {"ready": notes})
    context = {"config": config, "root": root, "namespaced": namespaced, "notes": notes, "setup": setup}
    live: dict[int, int | None] = {}  # supervisor pid -> its pidfd (None where pidfds are missing)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    while True:
        polling = any(pidfd is None for pidfd in live.values())
        for key, _ in selector.select(0.01 if polling else None):
            if key.fileobj is not sock:
                # Without namespaces, _handle (the request in the same batch of events) may have finished
                # this supervisor already, before starting the next one.
                if key.data in live:
                    _finish_supervisor(sock, selector, live, key.data, context)
            elif not _handle(sock, selector, live, context, pid_ns):
                for pid in list(live):  # the evaluator has gone: end it all
                    _kill_tree(pid)
                    _finish_supervisor(sock, selector, live, pid, context)
                os._exit(0)
        for pid in [pid for pid, pidfd in live.items() if pidfd is None]:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                _finish_supervisor(sock, selector, live, pid, context)


def _handle(
    sock: socket.socket, selector: selectors.BaseSelector, live: dict, context: dict, pid_ns: int
) -> bool:
    """One message from the evaluator: run a program, or kill the newest one. False at end of file."""
    try:
        message, fds = receive_message(sock)
    except (OSError, ValueError):
        return False
    if message is None:
        return False
    if message.get("kill") and live:
        _kill_tree(next(reversed(live)))
    if "run" not in message or len(fds) != 4:
        for fd in fds:
            os.close(fd)
        return True
    if not context["namespaced"]:  # one program at a time, each with a fresh working directory
        for pid in list(live):
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            _finish_supervisor(sock, selector, live, pid, context)
    try:
        pid = start_supervisor(sock, context, message["run"], fds, pid_ns)
    except Exception as exc:
        send_message(sock, {"failed": f"{type(exc).__name__}: {exc}"})
        return True
    finally:
        for fd in fds:
            os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    live[pid] = pidfd
    if pidfd is not None:
        selector.register(pidfd, selectors.EVENT_READ, pid)
    send_message(sock, {"started": pid}, [pidfd] if pidfd is not None else [])
    return True


def _finish_supervisor(
    sock: socket.socket, selector: selectors.BaseSelector, live: dict, pid: int, context: dict
) -> None:
    """Once the supervisor has exited: kill what is left of its process group (without a PID namespace,
    the program's tree), reap it, and say so to the evaluator."""
    pidfd = live.pop(pid)
    if pidfd is not None:
        selector.unregister(pidfd)
        os.close(pidfd)
    _kill_tree(pid)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        status = -1
    if not context["namespaced"]:  # the orphans handed to this subreaper; a fresh working directory
        _reap_group(pid, time.monotonic() + 1.0)
        workdir = context["config"]["workdir"]
        remove_tree(workdir)
        os.mkdir(workdir, 0o700)
        if context["root"]:
            os.chown(workdir, SANDBOX_UID, SANDBOX_GID)
    if status < 0:
        wait = {"exit": -1}
    elif os.WIFSIGNALED(status):
        wait = {"signal": os.WTERMSIG(status)}
    else:
        wait = {"exit": os.waitstatus_to_exitcode(status)}
    try:
        send_message(sock, {"done": wait, "pid": pid})
    except OSError:
        pass


def _reap_group(pgid: int, until: float) -> None:
    """Reap the orphans handed to this subreaper until the killed process group is gone."""
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        try:
            os.killpg(pgid, 0)
        except OSError:
            return
        if time.monotonic() >= until:
            return
        time.sleep(0.005)


def _kill_tree(pid: int) -> None:
    """SIGKILL the supervisor (a child of the caller, not yet reaped) and its process group."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass
