"""``SandboxPool``: pre-forked sandbox workers on this machine, reused across runs; ``local_isolation()``.

A ``SandboxPool(limits, workers)`` keeps one pre-forked worker (``handle.WorkerHandle``) per parallel slot.
Where namespaces cannot be created the programs are refused (``SandboxRefused``, naming
``PHI_SANDBOX_ALLOW_UNISOLATED`` and the reason); with that setting they still run, with rlimits, a scrubbed
environment and (as root) uid 65534. Either way ``local_isolation()`` reports ``NOT isolated: <reason>``.
"""

from __future__ import annotations

import _thread
import os
from collections.abc import Sequence

from phi_assets.sandbox.handle import WorkerGone, WorkerHandle, close_workers
from phi_assets.sandbox.policy import with_policy
from phi_assets.sandbox.progress import Progress
from phi_assets.sandbox.types import DEFAULT_LIMITS, Limits, SandboxError, SandboxRefused, Verdict

_isolation_lock = _thread.allocate_lock()
_isolation_cache: dict[str, str] | None = None


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class SandboxPool:
    """Pre-forked sandbox workers, reused across ``run`` calls; close it (or use ``with``) when done.

    Each worker is set up once (namespaces, read-only tree, hidden directories, loopback) and runs one
    program at a time, each in fresh PID, mount and IPC namespaces of its own (see
    ``phi_assets.sandbox.worker``). At most ``workers`` run at once; they start on first use. Thread-safe.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, workers: int | None = None) -> None:
        self.limits = limits
        self.workers = max(1, workers or default_workers())
        import threading

        self._slots = threading.BoundedSemaphore(self.workers)
        self._lock = threading.Lock()
        self._idle: list[WorkerHandle] = []
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
            self._release(WorkerHandle())

    def run_one(self, code: str) -> Verdict:
        return self.execute(code)[0]

    def close(self) -> None:
        """Stop the idle workers (busy ones stop when their program is done)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        close_workers(idle)

    def execute(self, code: str) -> tuple[Verdict, dict[str, str]]:
        """Run ``code`` as ``__main__``: its verdict and the isolation notes."""
        if self._closed:
            raise SandboxError("the sandbox pool is closed")
        with self._slots:
            worker = self._acquire()
            try:
                try:
                    return worker.execute(code, self.limits)
                except WorkerGone:  # it died between two programs: this one never started
                    worker.close()
                    worker = WorkerHandle()
                    return worker.execute(code, self.limits)
            except WorkerGone as exc:
                raise SandboxError("the sandbox worker died before running the program") from exc
            finally:
                self._release(worker)

    def _acquire(self) -> WorkerHandle:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return WorkerHandle()

    def _release(self, worker: WorkerHandle) -> None:
        with self._lock:
            if worker.healthy and not self._closed:
                self._idle.append(worker)
                return
        worker.close()


def execute(code: str, limits: Limits) -> tuple[Verdict, dict[str, str]]:
    """Run ``code`` on a pool of one: its verdict and the isolation notes."""
    with SandboxPool(limits, 1) as pool:
        return pool.execute(code)


def local_isolation() -> dict[str, str]:
    """What isolation holds on this machine, as reported by a probe run (once per process).

    Keys: mode, user, network, filesystem, processes, ipc, limits, environment. A value starting with
    "NOT isolated" names what is missing and why; then ``unisolated`` says whether programs run anyway
    (``PHI_SANDBOX_ALLOW_UNISOLATED``, read at each call) or are refused.
    """
    global _isolation_cache
    with _isolation_lock:
        if _isolation_cache is None:
            try:
                _isolation_cache = execute("pass", Limits(timeout_s=60))[1]
            except SandboxRefused as exc:  # the probe is refused like any program; its notes say what holds
                _isolation_cache = dict(exc.notes)
        notes = dict(_isolation_cache)
    return with_policy(notes)
