"""A sandbox for untrusted Python programs: generated exercises, HumanEval/MBPP samples (docs/sandbox.md).

``run_program(code, limits)`` runs ``code`` in a process tree of its own and returns a ``Verdict``:
passed (ran to the end), failed (uncaught AssertionError), error (any other uncaught exception, a
SyntaxError included), timeout (wall clock) or killed (a resource limit ended it). ``run_programs`` runs
many in parallel (threads driving subprocesses); ``isolation()`` says what isolation is in effect.

Each program gets ``python -I -B sandbox.py --sandbox-runner FD`` with a fixed, scrubbed environment and
its own working directory, and runs three processes deep:

- the launcher enters new mount, network, PID, IPC and UTS namespaces: as root directly, otherwise inside a
  new user namespace that maps the caller's uid to 0 (``unshare -rn``, done with ``libc.unshare``);
- the supervisor, PID 1 of the new PID namespace, makes the whole file tree read-only, mounts private
  size-limited tmpfs on /tmp, /var/tmp, /dev/shm and the working directory, hides /root, /home and /run
  (re-exposing Python's own directories read-only), brings up a private loopback, forks the program and
  reports how it ended through a pipe only the supervisor holds; when it exits, the kernel kills every
  process left in the namespace;
- the program process gives up its privileges (as root: uid 65534, no groups; otherwise: every
  capability), enters a user namespace of its own (so RLIMIT_NPROC counts its own processes only), sets
  the resource limits and executes ``exec(compile(code, "<program>", "exec"), {"__name__": "__main__"})``.
  An uncaught exception is reported (type, message, errno, failing assert line) on a pipe to the
  supervisor and the exit status is 1; the verdict comes from the exit status or signal plus that report,
  never from what the program prints.

The evaluator reads stdout and stderr concurrently, keeping only the last ``output_bytes`` of each, and
at the deadline signals the launcher, which SIGKILLs the supervisor's process group (the namespace dies
with its PID 1) and reaps it; the launcher's own group is SIGKILLed too if it lingers. The working
directory is always removed. Where namespaces cannot be created the program still runs, with rlimits, a
scrubbed environment and (as root) uid 65534, and ``isolation()`` reports ``NOT isolated: <reason>``.

The sandbox protects the host from the program, not the verdict from a cheating program: ``sys.exit(0)``
or ``os._exit(0)`` before a failing assert counts as passed.
"""

from __future__ import annotations

import atexit
import builtins
import ctypes
import errno
import json
import linecache
import os
import pwd
import resource
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NoReturn

VERDICTS = ("passed", "failed", "error", "timeout", "killed")

#: The host uid and gid a program runs as when the evaluator is root (nobody, nogroup).
SANDBOX_UID = 65534
SANDBOX_GID = 65534

RUNNER_FLAG = "--sandbox-runner"
PROGRAM_NAME = "<program>"
#: Hidden from the program (an empty read-only tmpfs on top), except the Python directories inside them.
HIDDEN_DIRS = ("/root", "/home", "/run")
_PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
_SCRUBBED_ENV_KEYS = ("PATH", "LANG", "HOME", "TMPDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED")
_GRACE_S = 2.0  # after the kill (or the launcher's exit), how long output may still drain
_SMALL_TMPFS_MB = 16  # /var/tmp and /dev/shm
_USE_NAMESPACES = True  # tests switch it off to exercise the no-namespace fallback


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
    """Run ``code`` as ``__main__`` in the sandbox and return its verdict."""
    return _execute(code, limits)[0]


def run_programs(
    programs: Sequence[str],
    limits: Limits = DEFAULT_LIMITS,
    workers: int | None = None,
    progress: bool = False,
) -> list[Verdict]:
    """Run programs in parallel (one thread drives each subprocess); verdicts come back in input order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    programs = list(programs)
    if not programs:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(programs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        futures = [pool.submit(run_program, code, limits) for code in programs]
        if progress:
            from tqdm.auto import tqdm

            for _ in tqdm(as_completed(futures), total=len(futures), desc="sandbox", unit="program"):
                pass
        return [future.result() for future in futures]


_isolation_lock = threading.Lock()
_isolation_cache: dict[str, str] | None = None


def isolation() -> dict[str, str]:
    """What isolation holds, as reported by a probe run (once per process).

    Keys: mode, user, network, filesystem, processes, ipc, limits, environment. A value starting with
    "NOT isolated" names what is missing and why.
    """
    global _isolation_cache
    with _isolation_lock:
        if _isolation_cache is None:
            _isolation_cache = _execute("pass", Limits(timeout_s=60))[1]
        return dict(_isolation_cache)


# ---------------------------------------------------------------------------------------------------------
# Evaluator side: spawn the runner, pump its pipes, enforce the deadline, build the verdict
# ---------------------------------------------------------------------------------------------------------

_warned_lock = threading.Lock()
_warned = False


def _execute(code: str, limits: Limits) -> tuple[Verdict, dict[str, str]]:
    workdir = _make_workdir()
    try:
        return _execute_in(code, limits, workdir)
    finally:
        _remove_tree(workdir)


def _make_workdir() -> str:
    path = tempfile.mkdtemp(prefix="phi-sandbox-")
    if os.geteuid() == 0:
        os.chown(path, SANDBOX_UID, SANDBOX_GID)  # where no mount namespace replaces it, uid 65534 writes here
    return path


def _remove_tree(path: str) -> None:
    """Remove the working directory, whatever the program did to the permissions inside it."""
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


def _execute_in(code: str, limits: Limits, workdir: str) -> tuple[Verdict, dict[str, str]]:
    config = {
        "code": code,
        "workdir": workdir,
        "uid": os.getuid(),
        "limits": asdict(limits),
        "homes": _homes(),
        "namespaces": _USE_NAMESPACES,
    }
    status_r, status_w = os.pipe()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", os.path.abspath(__file__), RUNNER_FLAG, str(status_w)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=scrubbed_env(workdir),
            start_new_session=True,
            pass_fds=(status_w,),
        )
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    out, err, status = _Tail(limits.output_bytes), _Tail(limits.output_bytes), _Tail(1 << 20)
    try:
        sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_r: status}
        timed_out = _pump(proc, json.dumps(config).encode(), sinks, start + limits.timeout_s)
    finally:
        _kill_group(proc)
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
        os.close(status_r)
    duration = time.monotonic() - start
    report = _parse_status(status.data)
    stdout, stderr = out.text(), err.text()
    if "setup_error" in report:
        raise SandboxError(f"sandbox setup failed: {report['setup_error']}\n{stderr[-2000:]}")
    isolation_notes = dict(report.get("isolation", {}))
    isolation_notes["environment"] = "scrubbed: only " + ", ".join(_SCRUBBED_ENV_KEYS)
    _warn_if_not_isolated(isolation_notes)
    if "wait" in report:
        kind, detail, exception = _outcome(report, limits)
    elif timed_out:
        kind, detail, exception = "timeout", f"timed out after {float(limits.timeout_s)} s", None
    elif proc.returncode < 0:  # the launcher itself was killed (the host's OOM killer, an operator)
        kind, detail, exception = "killed", f"killed by {_signal_name(-proc.returncode)}", None
    else:
        raise SandboxError(f"sandbox runner failed (exit status {proc.returncode}): {stderr[-2000:]}")
    return Verdict(kind, detail, exception, round(duration, 3), stdout, stderr), isolation_notes


def _homes() -> list[str]:
    homes = {os.path.expanduser("~")}
    try:
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:  # a uid without a passwd entry (containers)
        pass
    return sorted(homes)


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


def _pump(proc: subprocess.Popen, payload: bytes, sinks: dict[int, _Tail], deadline: float) -> bool:
    """Feed the config and drain the pipes until they close; stop the program at the deadline (True then)."""
    selector = selectors.DefaultSelector()
    for fd, sink in sinks.items():
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ, sink)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    selector.register(stdin_fd, selectors.EVENT_WRITE, None)
    pending = memoryview(payload)
    timed_out, stop_at = False, None
    try:
        while selector.get_map():
            now = time.monotonic()
            if stop_at is None and (now >= deadline or _has_exited(proc)):
                timed_out = now >= deadline and not _has_exited(proc)
                if timed_out:
                    _signal(proc, signal.SIGTERM)  # the launcher kills the supervisor's tree and reaps it
                stop_at = now + _GRACE_S
            if stop_at is not None and now >= stop_at:
                _kill_group(proc)
                break
            wait = (stop_at if stop_at is not None else deadline) - now
            for key, _ in selector.select(min(max(wait, 0.0), 0.25)):
                if key.fd == stdin_fd:
                    pending = _feed(stdin_fd, pending)
                    if not pending:
                        selector.unregister(stdin_fd)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if chunk:
                    key.data.append(chunk)
                else:
                    selector.unregister(key.fd)
    finally:
        selector.close()
    return timed_out


def _feed(fd: int, pending: memoryview) -> memoryview:
    try:
        return pending[os.write(fd, pending[: 1 << 16]) :]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        return pending[:0]


def _has_exited(proc: subprocess.Popen) -> bool:
    """Whether the launcher has exited, without reaping it (its pid stays ours to signal)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal(proc: subprocess.Popen, signum: int) -> None:
    if proc.returncode is None:  # not reaped yet, so the pid cannot have been reused
        try:
            os.kill(proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.returncode is None:  # not reaped yet, so the group id cannot have been reused
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


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


def _make_tree_read_only() -> str:
    """Every mount read-only and nosuid (mount_setattr, Linux 5.12); else / alone. Says which."""
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
    setattr_fn = getattr(_libc, "mount_setattr", None)
    args = (ctypes.c_int(AT_FDCWD), b"/", ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(32))
    try:
        if setattr_fn is not None:
            _check(setattr_fn(*args), "mount_setattr")
        else:
            _check(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), *args), "mount_setattr")
        return "every mount read-only"
    except OSError as exc:
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | _kept_mount_flags("/")
        _mount(None, "/", None, flags)
        return f"only / itself read-only ({exc.strerror}): other mounts keep their flags"


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


# ---------------------------------------------------------------------------------------------------------
# The runner: launcher -> supervisor (PID 1) -> program
# ---------------------------------------------------------------------------------------------------------


def _runner_main(status_fd: int) -> None:
    """The launcher: read the config, enter the namespaces, fork the supervisor, wait for it."""
    config = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.umask(0o022)
    root = os.geteuid() == 0
    notes: dict[str, str] = {}
    namespaced = config["namespaces"] and _enter_namespaces(root, notes)
    if not namespaced:
        notes.update(_not_isolated(root, notes.get("reason", "switched off")))
    supervisor: list[int] = []

    def stop(_signum: int, _frame: object) -> None:  # the evaluator's deadline: end it all, then reap
        if not supervisor:
            os._exit(1)
        _kill_tree(supervisor[0])

    signal.signal(signal.SIGTERM, stop)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # without a PID namespace, the program's orphans are reaped here
    lifeline_r, lifeline_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.close(lifeline_w)
            _supervise(config, root, namespaced, notes, status_fd, lifeline_r)
        finally:
            os._exit(70)
    supervisor.append(pid)
    os.close(status_fd)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    _kill_tree(pid)  # what is left of its session (without a PID namespace, the program's children)
    os.waitpid(pid, 0)  # reaped here, never orphaned
    _reap_orphans(time.monotonic() + 1.0)
    os._exit(0)


def _reap_orphans(until: float) -> None:
    while time.monotonic() < until:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.01)
        except ChildProcessError:
            return


def _kill_tree(pid: int) -> None:
    """SIGKILL the supervisor (a child of the caller, not yet reaped) and its process group."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


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


def _supervise(config: dict, root: bool, namespaced: bool, notes: dict, status_fd: int, lifeline: int) -> None:
    """PID 1 of the sandbox: isolate, fork the program, reap, report, exit (which kills the rest)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if _readable(lifeline):
        os._exit(1)  # the launcher died before the death signal was armed
    os.setsid()  # kill(0, ...) from the program cannot reach the launcher; the launcher kills this group
    try:
        if namespaced:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores every signal it has no handler for
            _prctl(PR_SET_DUMPABLE, 0)
            _isolate(config, root, notes)
        report_r, report_w = os.pipe()
    except Exception as exc:  # reported to the evaluator, which raises SandboxError
        _fail_setup(status_fd, exc)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_r)
            _program(config, root, status_fd, report_w)
        finally:
            os._exit(71)
    os.close(report_w)
    wait, cpu_s = _reap(pid)
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


def _fail_setup(status_fd: int, exc: BaseException) -> NoReturn:
    _write_all(status_fd, json.dumps({"setup_error": f"{type(exc).__name__}: {exc}"}).encode())
    os._exit(1)


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _isolate(config: dict, root: bool, notes: dict[str, str]) -> None:
    """Mounts, IPC limits, loopback and hostname in the new namespaces; says in ``notes`` what holds."""
    size = config["limits"]["workdir_mb"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        fresh_proc, proc_note = True, "a /proc of its own"
        ipc_note = _limit_ipc(size)  # while /proc is writable
    except OSError as exc:
        _tmpfs("/proc", "size=4k,mode=555", MS_RDONLY | MS_NOEXEC)
        fresh_proc, proc_note = False, f"/proc hidden (a fresh one cannot be mounted: {exc.strerror})"
        ipc_note = "System V IPC limits NOT set (no /proc)"
    read_only = _make_tree_read_only()
    for path in _PRIVATE_TMP:
        if os.path.isdir(path) and not os.path.islink(path):
            mb = size if path == "/tmp" else min(size, _SMALL_TMPFS_MB)
            _tmpfs(path, f"size={mb}m,nr_inodes=16384,mode=1777")
    hidden, shown = _hide(_hidden_dirs(config["homes"]), _python_dirs(), fresh_proc)
    workdir = config["workdir"]
    os.makedirs(workdir, exist_ok=True)
    owner = f",uid={SANDBOX_UID},gid={SANDBOX_GID}" if root else ""
    _tmpfs(workdir, f"size={size}m,nr_inodes=16384,mode=700{owner}")
    for path in hidden:
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    try:
        _loopback_up()
        notes["network"] = "private network namespace (no interfaces but its own loopback)"
    except OSError as exc:
        notes["network"] = f"private network namespace (no interfaces; loopback down: {exc.strerror})"
    _libc.sethostname(b"sandbox", 7)
    hidden_note = f"hidden: {', '.join(hidden)} (Python's directories in them re-exposed read-only)"
    if shown:
        hidden_note += f"; NOT hidden (they hold Python): {', '.join(shown)}"
    notes["filesystem"] = (
        f"private mount namespace: {read_only}; writable: its working directory ({size} MiB tmpfs), "
        f"private tmpfs /tmp, /var/tmp, /dev/shm; {hidden_note}"
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
            with open(f"/proc/sys/kernel/{name}", "w") as handle:
                handle.write(str(value))
    except OSError as exc:
        return f"System V IPC limits NOT set ({exc.strerror})"
    return f"System V shared memory at most {size_mb} MiB"


def _hidden_dirs(homes: Sequence[str]) -> list[str]:
    found: list[str] = []
    for path in (*HIDDEN_DIRS, *homes):
        real = os.path.realpath(path)
        if any(_within(tmp, real) for tmp in _PRIVATE_TMP):  # HOME=/tmp: it is private anyway
            continue
        if real != "/" and os.path.isdir(real) and not any(_within(real, seen) for seen in found):
            found = [seen for seen in found if not _within(seen, real)] + [real]
    return found


def _python_dirs() -> list[str]:
    """The directories the program's Python needs: prefixes, the executable's, sys.path."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    candidates |= {os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}
    candidates |= {entry for entry in sys.path if entry and os.path.isdir(entry)}
    return sorted({os.path.realpath(path) for path in candidates if path})


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _hide(dirs: Sequence[str], keep: Sequence[str], can_rebind: bool = True) -> tuple[list[str], list[str]]:
    """Cover each dir with an empty tmpfs, bind-mounting back the ``keep`` paths inside it.

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
        outermost = [k for k in inside if not any(k != other and _within(k, other) for other in inside)]
        fds = [(k, os.open(k, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)) for k in outermost]
        _tmpfs(path, "size=1m,nr_inodes=4096,mode=755")
        for target, fd in fds:
            os.makedirs(target, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
            os.close(fd)
        hidden.append(path)
    return hidden, shown


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
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(status)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == RUNNER_FLAG:
    _runner_main(int(sys.argv[2]))
