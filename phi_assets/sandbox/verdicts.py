"""From what a worker reported to a ``Verdict``: the exit status or signal, the uncaught exception, the limits.

``Run`` is the evaluator's state of one program's run (``handle.WorkerHandle`` fills it in); ``verdict``
turns it, with the supervisor's status report and the output, into the verdict and the isolation notes, or
raises ``SandboxError`` (``SandboxRefused`` where the worker refused to run the program: ``policy``).
"""

from __future__ import annotations

import _thread
import errno
import json
import signal

from phi_assets.sandbox.policy import refusal
from phi_assets.sandbox.types import Limits, SandboxError, SandboxRefused, Verdict
from phi_assets.sandbox.worker.protocol import SCRUBBED_ENV_KEYS

_warned_lock = _thread.allocate_lock()
warned = False  # whether "NOT isolated" was warned about in this process (tests reset it)


class Run:
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


def verdict(
    run: Run, status: bytes, stdout: str, stderr: str, limits: Limits, duration: float
) -> tuple[Verdict, dict[str, str]]:
    if run.error is not None:
        raise SandboxError(f"sandbox worker failed: {run.error}")
    report = _parse_status(status)
    if "setup_error" in report:
        raise SandboxError(f"sandbox setup failed: {report['setup_error']}\n{stderr[-2000:]}")
    notes = dict(report.get("isolation", {}))
    notes["environment"] = "scrubbed: only " + ", ".join(SCRUBBED_ENV_KEYS)
    if "refused" in report:  # an error of the run, never a verdict: the program did not run
        raise SandboxRefused(refusal(str(report["refused"])), notes)
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


def _parse_status(data: bytes) -> dict:
    if not data:
        return {}
    try:
        report = json.loads(data)
    except ValueError as exc:
        raise SandboxError(f"unreadable status from the sandbox runner: {data[:200]!r}") from exc
    return report if isinstance(report, dict) else {}


def _warn_if_not_isolated(notes: dict[str, str]) -> None:
    global warned
    missing = sorted(key for key, value in notes.items() if value.startswith("NOT isolated"))
    with _warned_lock:
        if missing and not warned:
            warned = True
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
