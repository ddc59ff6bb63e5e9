"""Where programs run: ``run_programs`` and ``isolation`` on this machine's workers, or on the sandbox
service when ``PHI_SANDBOX_URL`` is set; ``run_program`` always here."""

from __future__ import annotations

from collections.abc import Sequence

from phi_assets.sandbox.client import remote_isolation, run_remote, service_url
from phi_assets.sandbox.pool import SandboxPool, default_workers, execute, local_isolation
from phi_assets.sandbox.types import DEFAULT_LIMITS, Limits, Verdict


def run_program(code: str, limits: Limits = DEFAULT_LIMITS) -> Verdict:
    """Run ``code`` as ``__main__`` in the sandbox and return its verdict (a one-worker pool)."""
    return execute(code, limits)[0]


def run_programs(
    programs: Sequence[str],
    limits: Limits = DEFAULT_LIMITS,
    workers: int | None = None,
    progress: bool = False,
) -> list[Verdict]:
    """Run programs in parallel on ``workers`` pre-forked workers; verdicts come back in input order.

    With ``PHI_SANDBOX_URL`` set, the sandbox service there runs them (its own workers; ``workers`` unused).
    Where the sandbox cannot isolate them and ``PHI_SANDBOX_ALLOW_UNISOLATED`` is not set, none runs: it
    raises ``SandboxRefused`` (locally) or ``SandboxError`` (from the service), naming the setting.
    """
    programs = list(programs)
    if not programs:
        return []
    if url := service_url():
        return run_remote(url, programs, limits, progress=progress)
    with SandboxPool(limits, min(workers or default_workers(), len(programs))) as pool:
        return pool.run(programs, progress=progress)


def isolation() -> dict[str, str]:
    """What isolation holds, as reported by a probe run (once per process).

    Keys: mode, user, network, filesystem, processes, ipc, limits, environment. A value starting with
    "NOT isolated" names what is missing and why; then ``unisolated`` says whether programs run anyway
    (``PHI_SANDBOX_ALLOW_UNISOLATED=1``) or are refused (``SandboxRefused``). With ``PHI_SANDBOX_URL`` set:
    the service's, where ``run_programs`` runs the programs.
    """
    if url := service_url():
        return remote_isolation(url)
    return local_isolation()
