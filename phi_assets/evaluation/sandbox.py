"""A sandbox for untrusted Python programs: generated exercises, HumanEval/MBPP samples (docs/sandbox.md).

``run_program(code, limits)`` runs ``code`` in a process tree of its own and returns a ``Verdict``:
passed (ran to the end), failed (uncaught AssertionError), error (any other uncaught exception, a
SyntaxError included), timeout (wall clock) or killed (a resource limit ended it). ``run_programs`` runs
many in parallel through a ``SandboxPool``; ``isolation()`` says what isolation is in effect.

A ``SandboxPool(limits, workers)`` keeps one pre-forked worker per parallel slot, each started as
``python -I -B sandbox.py --sandbox-worker FD`` with a fixed, scrubbed environment. What is expensive is
done once per worker, what must not outlive a program is done again for each program:

- the launcher (the worker's first process) enters new mount, network, PID, IPC and UTS namespaces: as
  root directly, otherwise inside a new user namespace that maps the caller's uid to 0 (``unshare -rn``,
  done with ``libc.unshare``), and forks the worker, PID 1 of the new PID namespace;
- the worker makes the whole file tree read-only, hides /root, /home and /run (re-exposing Python's own
  directories read-only), brings up a private loopback and waits for programs on a socket;
- per program, the worker forks a supervisor into a fresh PID namespace; the supervisor, PID 1 there,
  enters fresh mount and IPC namespaces, mounts private size-limited tmpfs on /tmp, /var/tmp, /dev/shm
  (binding back, read-only, Python's directories in them: a project or venv under /tmp keeps working),
  a /proc of its own and a tmpfs on the working directory, forks the program and reports how it ended
  through a pipe only the supervisor holds; when it exits, the kernel kills every process left in its
  PID namespace, and its mounts, files and System V objects go with their namespaces;
- the program process gives up its privileges (as root: uid 65534, no groups; otherwise: every
  capability), enters a user namespace of its own (so RLIMIT_NPROC counts its own processes only), sets
  the resource limits and executes ``exec(compile(code, "<program>", "exec"), {"__name__": "__main__"})``.
  An uncaught exception is reported (type, message, errno, failing assert line) on a pipe to the
  supervisor and the exit status is 1; the verdict comes from the exit status or signal plus that report,
  never from what the program prints.

The evaluator makes the program's pipes (code, stdout, stderr, status) and hands their worker ends to
the worker with the request; it feeds the code, reads stdout and stderr concurrently, keeping only the
last ``output_bytes`` of each, and at the deadline SIGKILLs the supervisor through a pidfd the worker
sent back (the PID namespace dies with its PID 1). A worker that does not answer is killed (its whole PID
namespace with it) and replaced. Where namespaces cannot be created the program still runs, with rlimits,
a scrubbed environment and (as root) uid 65534, and ``isolation()`` reports ``NOT isolated: <reason>``.

The sandbox protects the host from the program, not the verdict from a cheating program: ``sys.exit(0)``
or ``os._exit(0)`` before a failing assert counts as passed.
"""

from __future__ import annotations

import _thread
import atexit
import builtins
import ctypes
import errno
import gc
import json
import linecache
import os
import resource
import selectors
import signal
import socket
import sys
import time
import traceback
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NoReturn

VERDICTS = ("passed", "failed", "error", "timeout", "killed")

#: The host uid and gid a program runs as when the evaluator is root (nobody, nogroup).
SANDBOX_UID = 65534
SANDBOX_GID = 65534

WORKER_FLAG = "--sandbox-worker"
PROGRAM_NAME = "<program>"
#: Hidden from the program (an empty read-only tmpfs on top), except the Python directories inside them.
HIDDEN_DIRS = ("/root", "/home", "/run")
_PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
_SCRUBBED_ENV_KEYS = ("PATH", "LANG", "HOME", "TMPDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED")
_GRACE_S = 2.0  # after the kill (or the supervisor's exit), how long output may still drain
_SMALL_TMPFS_MB = 16  # /var/tmp and /dev/shm
_USE_NAMESPACES = True  # tests switch it off to exercise the no-namespace fallback
_PRELOADED = ("typing",)  # imported by the worker, so programs importing them find them loaded
PROGRESS_DELAY_S = 1.0  # a run's progress bar shows once it has lasted this long
#: When set (http://host:port), run_programs and isolation() use the sandbox service there (sandbox_service.py).
SERVICE_URL_ENV = "PHI_SANDBOX_URL"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one program, all enforced by the kernel (see docs/sandbox.md)."""

    timeout_s: float = 10.0  # wall clock; the whole process tree is killed after it
    cpu_s: int = 10  # RLIMIT_CPU: SIGXCPU at cpu_s, SIGKILL a second later
    memory_mb: int = 1024  # RLIMIT_AS, per process
    processes: int = 32  # RLIMIT_NPROC: the program's processes and threads
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 65536  # of stdout and of stderr, the last output_bytes are kept, the rest discarded
    workdir_mb: int = 64  # size of the private tmpfs holding the working directory, and of /tmp

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"Limits.{name} must be positive, got {value!r}")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Verdict:
    """How one program ended; ``kind`` is one of ``VERDICTS``."""

    kind: str
    detail: str  # "AssertionError: assert f(2) == 5", "timed out after 10.0 s", "killed by SIGXCPU (cpu limit)"
    exception: str | None  # the uncaught exception's type name (AssertionError for failed); None for a signal
    duration_s: float
    stdout: str  # the tail: at most Limits.output_bytes
    stderr: str

    @property
    def passed(self) -> bool:
        return self.kind == "passed"


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): no verdict can be given."""


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


def run_program(code: str, limits: Limits = DEFAULT_LIMITS) -> Verdict:
    """Run ``code`` as ``__main__`` in the sandbox and return its verdict (a one-worker pool)."""
    return _execute(code, limits)[0]


def run_programs(
    programs: Sequence[str],
    limits: Limits = DEFAULT_LIMITS,
    workers: int | None = None,
    progress: bool = False,
) -> list[Verdict]:
    """Run programs in parallel on ``workers`` pre-forked workers; verdicts come back in input order.

    With ``PHI_SANDBOX_URL`` set, the sandbox service there runs them (its own workers; ``workers`` unused).
    """
    programs = list(programs)
    if not programs:
        return []
    if url := service_url():
        from phi_assets.evaluation.sandbox_service import run_remote

        return run_remote(url, programs, limits, progress=progress)
    with SandboxPool(limits, min(workers or default_workers(), len(programs))) as pool:
        return pool.run(programs, progress=progress)


def service_url() -> str:
    """The sandbox service programs go to (``PHI_SANDBOX_URL``), or "" where they run locally."""
    return os.environ.get(SERVICE_URL_ENV, "").strip()


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class SandboxPool:
    """Pre-forked sandbox workers, reused across ``run`` calls; close it (or use ``with``) when done.

    Each worker is set up once (namespaces, read-only tree, hidden directories, loopback) and runs one
    program at a time, each in fresh PID, mount and IPC namespaces of its own (see the module docstring).
    At most ``workers`` run at once; they start on first use. Thread-safe.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, workers: int | None = None) -> None:
        self.limits = limits
        self.workers = max(1, workers or default_workers())
        import threading

        self._slots = threading.BoundedSemaphore(self.workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._closed = False

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, programs: Sequence[str], progress: bool = False) -> list[Verdict]:
        """Run each program as ``__main__``; verdicts come back in input order."""
        programs = list(programs)
        if not programs:
            return []
        from concurrent.futures import ThreadPoolExecutor, as_completed

        threads = min(self.workers, len(programs))
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sandbox") as executor:
            futures = [executor.submit(self.run_one, code) for code in programs]
            if progress:
                with Progress(len(futures)) as bar:
                    for _ in as_completed(futures):
                        bar.update()
            return [future.result() for future in futures]

    def start(self) -> SandboxPool:
        """Start the workers now, before the first program, rather than on first use (they set up in the
        background)."""
        while True:
            with self._lock:
                if self._closed or len(self._idle) >= self.workers:
                    return self
            self._release(_Worker())

    def run_one(self, code: str) -> Verdict:
        return self._execute(code)[0]

    def close(self) -> None:
        """Stop the idle workers (busy ones stop when their program is done)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        _close_workers(idle)

    def _execute(self, code: str) -> tuple[Verdict, dict[str, str]]:
        if self._closed:
            raise SandboxError("the sandbox pool is closed")
        with self._slots:
            worker = self._acquire()
            try:
                try:
                    return worker.execute(code, self.limits)
                except _WorkerGone:  # it died between two programs: this one never started
                    worker.close()
                    worker = _Worker()
                    return worker.execute(code, self.limits)
            except _WorkerGone as exc:
                raise SandboxError("the sandbox worker died before running the program") from exc
            finally:
                self._release(worker)

    def _acquire(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Worker()

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            if worker.healthy and not self._closed:
                self._idle.append(worker)
                return
        worker.close()


class Progress:
    """A tqdm bar over ``total`` programs that shows only once the run has lasted ``delay_s`` (tqdm's own
    ``delay``). tqdm is imported only then: its import takes about 50 ms, a good part of a short run."""

    def __init__(self, total: int, delay_s: float | None = None, desc: str = "sandbox") -> None:
        self.total, self.desc = total, desc
        self.delay_s = PROGRESS_DELAY_S if delay_s is None else delay_s
        self.done = 0
        self.bar = None
        self.started = time.monotonic()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif (elapsed := time.monotonic() - self.started) >= self.delay_s:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, unit="program")
            self.bar.start_t = self.bar.last_print_t = time.time() - elapsed  # rate: from the start
            self.bar.update(self.done)


_isolation_lock = _thread.allocate_lock()
_isolation_cache: dict[str, str] | None = None


def isolation() -> dict[str, str]:
    """What isolation holds, as reported by a probe run (once per process).

    Keys: mode, user, network, filesystem, processes, ipc, limits, environment. A value starting with
    "NOT isolated" names what is missing and why. With ``PHI_SANDBOX_URL`` set: the service's, where
    ``run_programs`` runs the programs.
    """
    global _isolation_cache
    if url := service_url():
        from phi_assets.evaluation.sandbox_service import remote_isolation

        return remote_isolation(url)
    with _isolation_lock:
        if _isolation_cache is None:
            _isolation_cache = _execute("pass", Limits(timeout_s=60))[1]
        return dict(_isolation_cache)


# ---------------------------------------------------------------------------------------------------------
# Evaluator side: start workers, hand them programs, pump the pipes, enforce the deadline, build verdicts
# ---------------------------------------------------------------------------------------------------------

_warned_lock = _thread.allocate_lock()
_warned = False


def _execute(code: str, limits: Limits) -> tuple[Verdict, dict[str, str]]:
    with SandboxPool(limits, 1) as pool:
        return pool._execute(code)


def _make_workdir() -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix="phi-sandbox-")
    if os.geteuid() == 0:
        os.chown(path, SANDBOX_UID, SANDBOX_GID)  # where no mount namespace replaces it, uid 65534 writes here
    return path


def _remove_tree(path: str) -> None:
    """Remove the working directory, whatever the program did to the permissions inside it."""
    import shutil

    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError:
        _make_dirs_accessible(path)
        shutil.rmtree(path, ignore_errors=True)


def _make_dirs_accessible(path: str) -> None:
    try:
        os.chmod(path, 0o700)
        with os.scandir(path) as entries:
            subdirs = [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for subdir in subdirs:
        _make_dirs_accessible(subdir)


def scrubbed_env(workdir: str) -> dict[str, str]:
    """The program's whole environment: nothing is inherited from the evaluator's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }


def _homes() -> list[str]:
    import pwd

    homes = {os.path.expanduser("~")}
    try:
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:  # a uid without a passwd entry (containers)
        pass
    return sorted(homes)


class _WorkerGone(Exception):
    """The worker was gone before it took the program."""


def _send_message(sock: socket.socket, message: dict, fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    for _ in range(2):
        try:
            socket.send_fds(sock, [data], list(fds))
            return
        except BlockingIOError:  # the evaluator's end is non-blocking; the worker reads it at once
            _wait_writable(sock, _GRACE_S)
    raise BrokenPipeError("the sandbox worker does not read its socket")


def _wait_writable(sock: socket.socket, timeout: float) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        selector.select(timeout)


def _receive_message(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message (SOCK_SEQPACKET keeps them apart) and the fds sent with it; None at end of file."""
    data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 8, socket.MSG_CMSG_CLOEXEC)
    if not data:
        return None, fds
    message = json.loads(data)
    return (message if isinstance(message, dict) else {}), fds


def _close_workers(workers: Sequence[_Worker]) -> None:
    for worker in workers:  # every socket first: they all exit at once
        worker.sock.close()
    for worker in workers:
        worker.close()


class _Worker:
    """The evaluator's end of one worker: its launcher process, control socket and working directory."""

    def __init__(self) -> None:
        import subprocess

        self.workdir = _make_workdir()
        self.healthy = True
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-B", os.path.abspath(__file__), WORKER_FLAG, str(theirs.fileno())],
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
            _remove_tree(self.workdir)
            raise
        finally:
            theirs.close()
        self.sock = ours
        config = {"workdir": self.workdir, "uid": os.getuid(), "homes": _homes(), "namespaces": _USE_NAMESPACES}
        _send_message(self.sock, config)  # it reads it first; programs can be queued behind it at once
        self.sock.setblocking(False)

    def close(self) -> None:
        """Stop it (end of file on its socket), kill what is left, remove the working directory."""
        import subprocess

        self.healthy = False
        self.sock.close()
        try:
            self.proc.wait(timeout=_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()
        _remove_tree(self.workdir)

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
            _send_message(self.sock, {"run": asdict(limits)}, [out_w, err_w, status_w, code_r])
        except OSError as exc:
            for fd in ours:
                os.close(fd)
            self.healthy = False
            raise _WorkerGone from exc
        finally:
            for fd in (out_w, err_w, status_w, code_r):
                os.close(fd)
        out, err, status = _Tail(limits.output_bytes), _Tail(limits.output_bytes), _Tail(1 << 20)
        run = _Run(code.encode("utf-8", "surrogatepass"))
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
        return _verdict(run, status.data, out.text(), err.text(), limits, duration)

    def _pump(self, run: _Run, sinks: dict[int, _Tail], code_w: int, deadline: float) -> bool:
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
                    stop_at = now + _GRACE_S
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

    def _receive(self, run: _Run, selector: selectors.BaseSelector) -> None:
        try:
            message, fds = _receive_message(self.sock)
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

    def _kill_program(self, run: _Run) -> None:
        """SIGKILL the supervisor (PID 1 of the program's namespace: all of it dies); if it has not started
        yet, ask the worker to."""
        if run.pidfd is not None:
            try:
                signal.pidfd_send_signal(run.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        try:
            _send_message(self.sock, {"kill": True})
        except OSError:
            pass


class _Run:
    """The state of one program's run, on the evaluator's side."""

    def __init__(self, code: bytes) -> None:
        self.pending = memoryview(code)
        self.code_closed = False
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.done: dict | None = None  # the supervisor's wait status, once the worker has reaped it
        self.worker_gone = False
        self.timed_out = False
        self.error: str | None = None


def _verdict(
    run: _Run, status: bytes, stdout: str, stderr: str, limits: Limits, duration: float
) -> tuple[Verdict, dict[str, str]]:
    if run.error is not None:
        raise SandboxError(f"sandbox worker failed: {run.error}")
    report = _parse_status(status)
    if "setup_error" in report:
        raise SandboxError(f"sandbox setup failed: {report['setup_error']}\n{stderr[-2000:]}")
    notes = dict(report.get("isolation", {}))
    notes["environment"] = "scrubbed: only " + ", ".join(_SCRUBBED_ENV_KEYS)
    _warn_if_not_isolated(notes)
    done = run.done or {}
    if "wait" in report:
        kind, detail, exception = _outcome(report, limits)
    elif run.timed_out:
        kind, detail, exception = "timeout", f"timed out after {float(limits.timeout_s)} s", None
    elif "signal" in done:  # the supervisor itself was killed (the host's OOM killer, an operator)
        kind, detail, exception = "killed", f"killed by {_signal_name(done['signal'])}", None
    elif run.done is None:
        kind, detail, exception = "killed", "killed: its sandbox worker died", None
    else:
        raise SandboxError(f"sandbox supervisor failed (exit status {done.get('exit')}): {stderr[-2000:]}")
    return Verdict(kind, detail, exception, round(duration, 3), stdout, stderr), notes


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


def _parse_status(data: bytes) -> dict:
    if not data:
        return {}
    try:
        report = json.loads(data)
    except ValueError as exc:
        raise SandboxError(f"unreadable status from the sandbox runner: {data[:200]!r}") from exc
    return report if isinstance(report, dict) else {}


def _warn_if_not_isolated(notes: dict[str, str]) -> None:
    global _warned
    missing = sorted(key for key, value in notes.items() if value.startswith("NOT isolated"))
    with _warned_lock:
        if missing and not _warned:
            _warned = True
            import warnings

            warnings.warn(f"sandbox: {', '.join(missing)} NOT isolated ({notes[missing[0]]})", stacklevel=5)


def _outcome(report: dict, limits: Limits) -> tuple[str, str, str | None]:
    wait = report["wait"]
    if "signal" in wait:
        return _signal_outcome(wait["signal"], float(report.get("cpu_s", 0.0)), limits)
    code = wait.get("exit", -1)
    if code == 0:
        return "passed", "exit status 0", None
    exception = report.get("exception")
    if not exception:
        return "error", f"exit status {code}", None
    name = str(exception.get("exception", "Exception"))
    message = str(exception.get("message") or "")
    line = str(exception.get("line") or "")
    text = f"{name}: {message or line}" if message or line else name
    limit = _resource_limit(name, exception.get("errno"), message)
    if limit:
        return "killed", f"killed: {limit} limit ({text})", name
    return ("failed" if name == "AssertionError" else "error"), text, name


def _resource_limit(name: str, errno_: object, message: str) -> str | None:
    """Which resource limit an uncaught exception comes from, if any."""
    if name == "MemoryError":
        return "memory"
    if name == "RuntimeError" and "can't start new thread" in message:
        return "process"
    by_errno = {
        errno.EFBIG: "file size",
        errno.EMFILE: "open files",
        errno.ENFILE: "open files",
        errno.EAGAIN: "process",  # fork() or clone() over RLIMIT_NPROC
        errno.ENOSPC: "disk",  # the working directory's tmpfs is full
        errno.EDQUOT: "disk",
    }
    return by_errno.get(errno_) if isinstance(errno_, int) else None


def _signal_outcome(signum: int, cpu_s: float, limits: Limits) -> tuple[str, str, str | None]:
    name = _signal_name(signum)
    if signum == signal.SIGXCPU:
        return "killed", f"killed by {name} (cpu limit)", None
    if signum == signal.SIGXFSZ:
        return "killed", f"killed by {name} (file size limit)", None
    if signum == signal.SIGKILL:
        return "killed", f"killed by {name}" + (" (cpu limit)" if cpu_s >= limits.cpu_s else ""), None
    return "error", f"killed by {name}", None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ---------------------------------------------------------------------------------------------------------
# Kernel interfaces Python 3.11 lacks (ctypes on libc)
# ---------------------------------------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 1, 2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_READ, PR_CAPBSET_DROP = 1, 4, 23, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 36, 38, 47, 4
_CAP_VERSION_3 = 0x20080522
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def raw(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    _check(_libc.mount(raw(source), raw(target), raw(fstype), flags, raw(data)), f"mount {target}")


def _tmpfs(target: str, options: str, flags: int = 0) -> None:
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | flags, options)


def _prctl(option: int, arg: int = 0) -> int:
    return _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def _mount_setattr(path: str, attrs: int) -> None:
    """Set ``attrs`` (MOUNT_ATTR_*) on the mount at ``path`` and every mount under it (Linux 5.12)."""
    attr = _MountAttr(attr_set=attrs)
    setattr_fn = getattr(_libc, "mount_setattr", None)
    target, flags = os.fsencode(path), ctypes.c_uint(AT_RECURSIVE)
    args = (ctypes.c_int(AT_FDCWD), target, flags, ctypes.byref(attr), ctypes.c_size_t(32))
    if setattr_fn is not None:
        _check(setattr_fn(*args), "mount_setattr")
    else:
        _check(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), *args), "mount_setattr")


def _make_tree_read_only() -> str:
    """Every mount read-only and nosuid (mount_setattr, Linux 5.12); else / alone. Says which."""
    try:
        _mount_setattr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
        return "every mount read-only"
    except OSError as exc:
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | _kept_mount_flags("/")
        _mount(None, "/", None, flags)
        return f"only / itself read-only ({exc.strerror}): other mounts keep their flags"


def _make_read_only(path: str) -> None:
    """The bind mount at ``path`` and the mounts under it read-only and nosuid, whatever flags their source
    had: without mount_setattr, the bind mount itself (its source may be a mount the worker could not make
    read-only, or a writable tmpfs)."""
    try:
        _mount_setattr(path, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
    except OSError:
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | _kept_mount_flags(path))


def _kept_mount_flags(path: str) -> int:
    """The flags a bind remount must repeat (a user namespace may not clear locked ones)."""
    flag = os.statvfs(path).f_flag
    pairs = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))
    pairs += ((os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
    return sum(ms for st, ms in pairs if flag & st)


def _drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets of this process."""
    cap = 0
    while _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0:
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EPERM:
            raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {cap}")
        cap += 1
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _capabilities_left() -> int:
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return sum(d.effective | d.permitted | d.inheritable for d in data)


def _loopback_up() -> None:
    import fcntl
    import socket
    import struct

    siocsifflags, iff_up_loopback_running = 0x8914, 0x1 | 0x8 | 0x40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), siocsifflags, struct.pack("16sH22x", b"lo", iff_up_loopback_running))


def _setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


# ---------------------------------------------------------------------------------------------------------
# The worker: launcher -> worker (PID 1, set up once) -> per program: supervisor (PID 1) -> program
# ---------------------------------------------------------------------------------------------------------


def _worker_main(sock_fd: int) -> None:
    """The launcher: read the config, enter the namespaces, fork the worker, wait for it."""
    sock = socket.socket(fileno=sock_fd)
    config, _ = _receive_message(sock)
    if config is None:
        os._exit(0)
    os.umask(0o022)
    root = os.geteuid() == 0
    notes: dict[str, str] = {}
    namespaced = config["namespaces"] and _enter_namespaces(root, notes)
    if not namespaced:
        notes.update(_not_isolated(root, notes.get("reason", "switched off")))
        _serve(sock, config, root, False, notes)
    pid = os.fork()
    if pid == 0:
        try:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the launcher dies only with its whole process group
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
        _unshare(flags if root else flags | CLONE_NEWUSER)
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
            _prctl(PR_SET_DUMPABLE, 0)
            setup = _isolate_worker(config, notes)
            pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        else:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)  # the program's orphans are reaped here
            setup, pid_ns = {}, -1
    except Exception as exc:  # reported to the evaluator, which raises SandboxError
        _send_message(sock, {"setup_error": f"{type(exc).__name__}: {exc}"})
        os._exit(1)
    for name in _PRELOADED:  # imported once here rather than by every program
        __import__(name)
    gc.freeze()  # the collector of a program does not touch (and copy) the worker's objects
    _send_message(sock, {"ready": notes})
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
        message, fds = _receive_message(sock)
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
        pid = _start_supervisor(sock, context, message["run"], fds, pid_ns)
    except Exception as exc:
        _send_message(sock, {"failed": f"{type(exc).__name__}: {exc}"})
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
    _send_message(sock, {"started": pid}, [pidfd] if pidfd is not None else [])
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
        _remove_tree(workdir)
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
        _send_message(sock, {"done": wait, "pid": pid})
    except OSError:
        pass


def _isolate_worker(config: dict, notes: dict[str, str]) -> dict:
    """Once per worker: the read-only tree, hidden directories, loopback and hostname; what each program's
    supervisor is to bind back into its private tmpfs (Python's directories there)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    read_only = _make_tree_read_only()
    dirs, links = _python_dirs(), _python_links()
    hidden, shown = _hide(_hidden_dirs(config["homes"]), dirs, links=links)
    workdir = config["workdir"]
    if not any(_within(workdir, tmp) for tmp in _PRIVATE_TMP):
        os.makedirs(workdir, exist_ok=True)  # a mount point for its tmpfs, even in a hidden directory
    for path in hidden:
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    try:
        _loopback_up()
        notes["network"] = "private network namespace (no interfaces but its own loopback)"
    except OSError as exc:
        notes["network"] = f"private network namespace (no interfaces; loopback down: {exc.strerror})"
    _libc.sethostname(b"sandbox", 7)
    exposed = _outermost([d for d in dirs if any(d != h and _within(d, h) for h in hidden)])
    hidden_note = f"hidden: {', '.join(hidden)}"
    if exposed:
        hidden_note += f" (Python's directories in them re-exposed read-only: {', '.join(exposed)})"
    if shown:
        hidden_note += f"; NOT hidden (they hold Python): {', '.join(shown)}"
    # A private tmp directory itself in sys.path is not bound back: the program's would be the host's.
    in_tmp = _outermost([d for d in dirs if any(d != tmp and _within(d, tmp) for tmp in _PRIVATE_TMP)])
    tmp_note = f"private tmpfs {', '.join(_PRIVATE_TMP)}"
    if in_tmp:
        tmp_note += f" (Python's directories in them bound back read-only: {', '.join(in_tmp)})"
    if unshared := [d for d in dirs if d in _PRIVATE_TMP]:
        tmp_note += f" ({', '.join(unshared)} in Python's sys.path NOT bound back: it is private)"
    tmp_links = {link: target for link, target in links.items() if any(_within(link, t) for t in _PRIVATE_TMP)}
    return {
        "read_only": read_only,
        "hidden": hidden_note,
        "tmp": tmp_note,
        "tmp_python": in_tmp,
        "tmp_links": tmp_links,
    }


def _start_supervisor(sock: socket.socket, context: dict, limits: dict, fds: list[int], pid_ns: int) -> int:
    """Fork the program's supervisor: PID 1 of a fresh PID namespace (where namespaces are in effect)."""
    worker = os.getpid()
    if context["namespaced"]:
        _unshare(CLONE_NEWPID)  # for the next child only
    try:
        pid = os.fork()
        if pid == 0:
            try:
                _supervise(sock, context, limits, fds, worker)
            finally:
                os._exit(70)
    finally:
        if context["namespaced"]:
            _setns(pid_ns, CLONE_NEWPID)  # the children after it are in the worker's own PID namespace again
    return pid


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


def _supervise(sock: socket.socket, context: dict, limits: dict, fds: list[int], worker: int) -> NoReturn:
    """PID 1 of the program's namespaces: isolate, fork the program, reap, report, exit (killing the rest)."""
    out_w, err_w, status_fd, code_r = fds
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
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
    try:
        code = _read_all(code_r).decode("utf-8", "surrogatepass")
        os.close(code_r)
        if context["namespaced"]:
            _isolate_program(config, limits, root, context["setup"], notes)
        report_r, report_w = os.pipe()
    except Exception as exc:  # reported to the evaluator, which raises SandboxError
        _fail_setup(status_fd, exc)
    program = {"code": code, "workdir": config["workdir"], "uid": config["uid"], "limits": limits}
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_r)
            _program(program, root, status_fd, report_w)
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


def _isolate_program(config: dict, limits: dict, root: bool, setup: dict, notes: dict[str, str]) -> None:
    """Per program, in the supervisor: fresh mount and IPC namespaces, /proc, private tmpfs; says what holds."""
    size = limits["workdir_mb"]
    _unshare(CLONE_NEWNS | CLONE_NEWIPC)
    # The private tmpfs first: Python's directories in them are bound back through /proc/self/fd, which
    # the fallback below (no fresh /proc) would cover.
    for path in _PRIVATE_TMP:
        if os.path.isdir(path) and not os.path.islink(path):
            mb = size if path == "/tmp" else min(size, _SMALL_TMPFS_MB)
            _cover(path, f"size={mb}m,nr_inodes=16384,mode=1777", setup["tmp_python"], setup["tmp_links"])
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        proc_note = "a /proc of its own"
        ipc_note = _limit_ipc(size)  # while /proc is writable
        _mount(None, "/proc", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as exc:
        _tmpfs("/proc", "size=4k,mode=555", MS_RDONLY | MS_NOEXEC)
        proc_note = f"/proc hidden (a fresh one cannot be mounted: {exc.strerror})"
        ipc_note = "System V IPC limits NOT set (no /proc)"
    workdir = config["workdir"]
    os.makedirs(workdir, exist_ok=True)
    owner = f",uid={SANDBOX_UID},gid={SANDBOX_GID}" if root else ""
    _tmpfs(workdir, f"size={size}m,nr_inodes=16384,mode=700{owner}")
    notes["filesystem"] = (
        f"private mount namespace: {setup['read_only']}; writable: its working directory ({size} MiB tmpfs), "
        f"{setup['tmp']}; {setup['hidden']}"
    )
    notes["processes"] = (
        f"private PID namespace: it sees and can signal only its own processes, all killed when it ends; "
        f"{proc_note}"
    )
    notes["ipc"] = f"private IPC and UTS namespaces; {ipc_note}"


def _limit_ipc(size_mb: int) -> str:
    """Cap System V shared memory and message queues in the new IPC namespace (not counted by RLIMIT_AS)."""
    page = os.sysconf("SC_PAGE_SIZE")
    values = {"shmmax": size_mb << 20, "shmall": (size_mb << 20) // page, "shmmni": 64, "msgmni": 16}
    try:
        for name, value in values.items():
            fd = os.open(f"/proc/sys/kernel/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(value).encode())
            finally:
                os.close(fd)
    except OSError as exc:
        return f"System V IPC limits NOT set ({exc.strerror})"
    return f"System V shared memory at most {size_mb} MiB"


def _hidden_dirs(homes: Sequence[str]) -> list[str]:
    found: list[str] = []
    for path in (*HIDDEN_DIRS, *homes):
        real = os.path.realpath(path)
        # HOME=/tmp or inside it: private anyway (each program gets an empty /tmp)
        if any(_within(tmp, real) or _within(real, tmp) for tmp in _PRIVATE_TMP):
            continue
        if real != "/" and os.path.isdir(real) and not any(_within(real, seen) for seen in found):
            found = [seen for seen in found if not _within(seen, real)] + [real]
    return found


def _python_paths() -> set[str]:
    """Where the program's Python is, as Python names it (symbolic links not resolved): its prefixes, the
    executable's directory and that of the file it links to (a venv's bin/python points to its base
    interpreter, e.g. /usr/local/bin/python3.11), the sys.path directories."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    if sys.executable:
        candidates |= {os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}
    candidates |= {entry for entry in sys.path if entry and os.path.isdir(entry)}
    return {os.path.abspath(path) for path in candidates if path}


def _python_dirs() -> list[str]:
    """The directories the program's Python needs (``_python_paths``), symbolic links resolved."""
    return sorted({os.path.realpath(path) for path in _python_paths()})


def _python_links() -> dict[str, str]:
    """The symbolic links on the way to the program's Python (``_python_paths`` and sys.executable), each
    with its target. Where one lies in a directory the program gets an empty tmpfs on, it is made again
    there: the paths Python reports (sys.executable, sys.prefix) then resolve for the program too, as for
    a checkout reached through a link (/home/ci/repo -> /data/repo, /tmp/current -> /tmp/release-3)."""
    links: dict[str, str] = {}
    for path in _python_paths() | ({os.path.abspath(sys.executable)} if sys.executable else set()):
        _resolve(path, links)
    return links


def _resolve(path: str, links: dict[str, str], depth: int = 0) -> str:
    """``os.path.realpath(path)``, adding every symbolic link met to ``links`` (link -> target, the link's
    directory already resolved, so that no recorded link lies behind another)."""
    real = "/"
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            real = os.path.dirname(real)
            continue
        step = os.path.join(real, part)
        if depth < 40 and os.path.islink(step):  # 40: the kernel's own limit on links in one lookup
            target = os.readlink(step)
            links[step] = target
            real = _resolve(os.path.join(real, target), links, depth + 1)  # an absolute target restarts at /
        else:
            real = step
    return real


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _outermost(paths: Sequence[str]) -> list[str]:
    return sorted(p for p in set(paths) if not any(p != other and _within(p, other) for other in paths))


def _hide(
    dirs: Sequence[str], keep: Sequence[str], can_rebind: bool = True, links: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """Cover each dir with an empty tmpfs, bind-mounting back, read-only, the ``keep`` paths inside it and
    making the ``links`` inside it again (see ``_cover``).

    Returns (hidden, not hidden): a dir that is, or is inside, a kept path stays visible, and so does one
    holding kept paths when they cannot be bound back (no /proc/self/fd). Call ``_mount(..., MS_REMOUNT |
    MS_BIND | MS_RDONLY)`` on the hidden ones once nothing more is to be created in them.
    """
    hidden, shown = [], []
    for path in dirs:
        inside = [k for k in keep if _within(k, path)]
        if any(_within(path, k) for k in keep) or (inside and not can_rebind):
            shown.append(path)
            continue
        _cover(path, "size=1m,nr_inodes=4096,mode=755", inside, links or {})
        hidden.append(path)
    return hidden, shown


def _cover(path: str, options: str, keep: Sequence[str], links: dict[str, str]) -> None:
    """Mount an empty tmpfs (``options``) on ``path``, then bind-mount back, read-only, the ``keep``
    directories strictly inside it (the outermost ones) and make the ``links`` inside it again; the rest
    of what ``path`` held stays invisible.

    Each kept directory is opened (O_PATH) before the tmpfs covers it and bound from /proc/self/fd. One
    that is gone is skipped: it is gone for the program's Python too. The directories leading to a kept
    one are made in the tmpfs (mode 755, owned by root where the evaluator is root).
    """
    kept = _outermost([k for k in keep if k != path and _within(k, path)])
    fds: list[tuple[str, int]] = []
    try:
        for target in kept:
            try:
                fds.append((target, os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)))
            except FileNotFoundError:
                continue
        _tmpfs(path, options)
        for target, fd in fds:
            os.makedirs(target, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
            _make_read_only(target)  # as a bind it would keep its source's flags: the program must not write
    finally:
        for _, fd in fds:
            os.close(fd)
    for link, target in sorted(links.items()):
        if link != path and _within(link, path) and not any(_within(link, k) for k in kept):
            os.makedirs(os.path.dirname(link), mode=0o755, exist_ok=True)
            try:
                os.symlink(target, link)
            except FileExistsError:  # something was made there already, for another path: leave it
                pass


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


def _send(fd: int, message: dict) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def _program(config: dict, root: bool, status_fd: int, report_fd: int) -> None:
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
        _unshare(CLONE_NEWUSER)
        nproc = "RLIMIT_NPROC counted per program (own user namespace); it cannot create user namespaces"
    except OSError as exc:
        nproc = f"RLIMIT_NPROC counted per host uid ({exc.strerror} for a user namespace of its own)"
    _drop_capabilities()
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries and file capabilities grant nothing
    if _capabilities_left():
        raise RuntimeError("capabilities left after dropping them")
    _apply_limits(config["limits"])
    _prctl(PR_SET_DUMPABLE, 1)  # its own /proc/self is readable again (credential changes cleared it)
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


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == WORKER_FLAG:
    _worker_main(int(sys.argv[2]))
