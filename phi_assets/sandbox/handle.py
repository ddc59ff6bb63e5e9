"""The evaluator's end of one worker: start it, hand it a program, pump the pipes, enforce the deadline.

A ``WorkerHandle`` starts ``python -I -B worker/__main__.py --sandbox-worker FD`` (see
``phi_assets.sandbox.worker``) with a fixed, scrubbed environment and a working directory of its own. Per
program it makes the program's pipes (code, stdout, stderr, status) and hands their worker ends to the
worker with the request; it feeds the code, reads stdout and stderr concurrently, keeping only the last
``output_bytes`` of each, and at the deadline SIGKILLs the supervisor through a pidfd the worker sent back
(the PID namespace dies with its PID 1). A worker that does not answer is killed (its whole PID namespace
with it) and replaced by the pool. A worker that cannot create its namespaces refuses every program unless
``PHI_SANDBOX_ALLOW_UNISOLATED`` was set when it started (``policy``).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

from phi_assets.sandbox.policy import unisolated_allowed
from phi_assets.sandbox.types import Limits, Verdict
from phi_assets.sandbox.verdicts import Run, verdict
from phi_assets.sandbox.worker.protocol import (
    GRACE_S,
    SANDBOX_GID,
    SANDBOX_UID,
    WORKER_FLAG,
    WORKER_MAIN,
    receive_message,
    remove_tree,
    scrubbed_env,
    send_message,
)

VERSIONED_FILES = ("worker/*.py", "worker/**/*.py")  # started by path, never imported: versioned as files

USE_NAMESPACES = True  # tests switch it off to exercise the no-namespace fallback


class WorkerGone(Exception):
    """The worker was gone before it took the program."""


def close_workers(workers: Sequence[WorkerHandle]) -> None:
    for worker in workers:  # every socket first: they all exit at once
        worker.sock.close()
    for worker in workers:
        worker.close()


class WorkerHandle:
    """The evaluator's end of one worker: its launcher process, control socket and working directory."""

    def __init__(self) -> None:
        import subprocess

        allow_unisolated = unisolated_allowed()  # a bad value fails here, before anything starts
        self.workdir = _make_workdir()
        self.healthy = True
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-B", WORKER_MAIN, WORKER_FLAG, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                env=scrubbed_env(self.workdir),
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            remove_tree(self.workdir)
            raise
        finally:
            theirs.close()
        self.sock = ours
        config = {
            "workdir": self.workdir,
            "uid": os.getuid(),
            "homes": _homes(),
            "namespaces": USE_NAMESPACES,
            "allow_unisolated": allow_unisolated,  # else, without namespaces, it refuses every program
        }
        send_message(self.sock, config)  # it reads it first; programs can be queued behind it at once
        self.sock.setblocking(False)

    def close(self) -> None:
        """Stop it (end of file on its socket), kill what is left, remove the working directory."""
        import subprocess

        self.healthy = False
        self.sock.close()
        try:
            self.proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()
        remove_tree(self.workdir)

    def kill(self) -> None:
        """SIGKILL the launcher and the worker (its PID namespace, every program in it, dies too)."""
        self.healthy = False
        if self.proc.returncode is None:  # not reaped yet, so the group id cannot have been reused
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()

    def execute(self, code: str, limits: Limits) -> tuple[Verdict, dict[str, str]]:
        pipes = [os.pipe() for _ in range(4)]  # stdout, stderr, status (to the evaluator), code (from it)
        (out_r, out_w), (err_r, err_w), (status_r, status_w), (code_r, code_w) = pipes
        ours = [out_r, err_r, status_r, code_w]
        start = time.monotonic()
        try:
            send_message(self.sock, {"run": asdict(limits)}, [out_w, err_w, status_w, code_r])
        except OSError as exc:
            for fd in ours:
                os.close(fd)
            self.healthy = False
            raise WorkerGone from exc
        finally:
            for fd in (out_w, err_w, status_w, code_r):
                os.close(fd)
        out, err, status = _Tail(limits.output_bytes), _Tail(limits.output_bytes), _Tail(1 << 20)
        run = Run(code.encode("utf-8", "surrogatepass"))
        try:
            sinks = {out_r: out, err_r: err, status_r: status}
            finished = self._pump(run, sinks, code_w, start + limits.timeout_s)
        finally:
            for fd in ours:
                if fd != code_w or not run.code_closed:
                    os.close(fd)
            if run.pidfd is not None:
                os.close(run.pidfd)
        if not finished:  # its pipes are still open after the grace period: replace the worker
            self.kill()
        duration = time.monotonic() - start
        return verdict(run, status.data, out.text(), err.text(), limits, duration)

    def _pump(self, run: Run, sinks: dict[int, _Tail], code_w: int, deadline: float) -> bool:
        """Feed the code and drain the pipes until the program has ended; kill it at the deadline
        (``run.timed_out`` then). False if the pipes were still open after the grace period.

        The program has ended when stdout, stderr and status are closed and the supervisor wrote its
        report (it does so after every process of the program is dead, then exits), or the worker says
        the supervisor died, or the program was killed at the deadline.
        """
        selector = selectors.DefaultSelector()
        for fd, sink in sinks.items():
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ, sink)
        os.set_blocking(code_w, False)
        selector.register(code_w, selectors.EVENT_WRITE, None)
        selector.register(self.sock, selectors.EVENT_READ, None)
        status = sinks[next(reversed(sinks))]
        open_sinks = len(sinks)
        stop_at = None
        try:
            while True:
                now = time.monotonic()
                if stop_at is None and (now >= deadline or run.done is not None or run.worker_gone):
                    if now >= deadline and run.done is None and not run.worker_gone:
                        run.timed_out = True
                        self._kill_program(run)
                    stop_at = now + GRACE_S
                if not open_sinks and (status.data or stop_at is not None):
                    return True
                if stop_at is not None and now >= stop_at:
                    return False
                wait = (stop_at if stop_at is not None else deadline) - now
                for key, _ in selector.select(min(max(wait, 0.0), 1.0)):
                    if key.fd == code_w:
                        run.pending = _feed(code_w, run.pending)
                        if not run.pending:
                            selector.unregister(code_w)
                            os.close(code_w)
                            run.code_closed = True
                    elif key.data is None:
                        self._receive(run, selector)
                    else:
                        try:
                            chunk = os.read(key.fd, 1 << 16)
                        except BlockingIOError:
                            continue
                        if chunk:
                            key.data.append(chunk)
                        else:
                            selector.unregister(key.fd)
                            open_sinks -= 1
        finally:
            selector.close()

    def _receive(self, run: Run, selector: selectors.BaseSelector) -> None:
        try:
            message, fds = receive_message(self.sock)
        except BlockingIOError:
            return
        except (OSError, ValueError):
            message, fds = None, []
        if message is None:  # the worker is gone
            selector.unregister(self.sock)
            run.worker_gone = True
            self.healthy = False
            return
        if "started" in message:
            run.pid = message["started"]
            if fds:
                run.pidfd = fds.pop(0)
            if run.timed_out:
                self._kill_program(run)
        for fd in fds:
            os.close(fd)
        if "done" in message and message.get("pid") == run.pid:  # (earlier programs' come late)
            run.done = message["done"]
        elif "setup_error" in message or "failed" in message:
            run.error = str(message.get("setup_error") or message.get("failed"))
            run.done = {}
            self.healthy = "failed" in message

    def _kill_program(self, run: Run) -> None:
        """SIGKILL the supervisor (PID 1 of the program's namespace: all of it dies); if it has not started
        yet, ask the worker to."""
        if run.pidfd is not None:
            try:
                signal.pidfd_send_signal(run.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        try:
            send_message(self.sock, {"kill": True})
        except OSError:
            pass


class _Tail:
    """A bounded buffer: keeps the last ``limit`` bytes written to it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def append(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]
            self.truncated = True

    def text(self) -> str:
        data = bytes(self.data)
        if self.truncated:  # do not start in the middle of a UTF-8 sequence
            data = data.lstrip(bytes(range(0x80, 0xC0)))
        return data.decode("utf-8", errors="replace")


def _feed(fd: int, pending: memoryview) -> memoryview:
    try:
        return pending[os.write(fd, pending[: 1 << 16]) :]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        return pending[:0]


def _make_workdir() -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix="phi-sandbox-")
    if os.geteuid() == 0:
        os.chown(path, SANDBOX_UID, SANDBOX_GID)  # where no mount namespace replaces it, uid 65534 writes here
    return path


def _homes() -> list[str]:
    import pwd

    homes = {os.path.expanduser("~")}
    try:
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:  # a uid without a passwd entry (containers)
        pass
    return sorted(homes)
