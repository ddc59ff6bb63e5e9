"""The code sandbox: runs untrusted Python programs (generated exercises, HumanEval/MBPP samples, preference
pairs' answers) and says how each ended (docs/sandbox.md).

``run_program(code, limits)`` runs ``code`` in a process tree of its own and returns a ``Verdict``:
passed (ran to the end), failed (uncaught AssertionError), error (any other uncaught exception, a
SyntaxError included), timeout (wall clock) or killed (a resource limit ended it). ``run_programs`` runs
many in parallel through a ``SandboxPool``, or on the sandbox service when ``PHI_SANDBOX_URL`` is set;
``isolation()`` says what isolation is in effect. Where the sandbox cannot isolate programs (no namespaces)
it refuses to run them (``SandboxRefused``, an error of the run, never a verdict) unless
``PHI_SANDBOX_ALLOW_UNISOLATED=1`` (``ALLOW_UNISOLATED_ENV``) is set.

The sandbox protects the host from the program, not the verdict from a cheating program: ``sys.exit(0)``
or ``os._exit(0)`` before a failing assert counts as passed.

Modules, each importing only those below it:

- ``service``: the HTTP service, ``python -m phi_assets.sandbox.service``;
- ``api``: ``run_program``, ``run_programs``, ``isolation``: here, or on the service;
- ``client``: the service's client (``run_remote``, ``remote_isolation``, ``service_url``);
- ``pool``: ``SandboxPool``, pre-forked workers on this machine, and ``local_isolation``;
- ``handle``: the evaluator's end of one worker: start it, hand it a program, pump the pipes, the deadline;
- ``verdicts``: from what a worker reported to a ``Verdict``;
- ``policy``: ``PHI_SANDBOX_ALLOW_UNISOLATED``, whether programs run where nothing isolates them;
- ``progress``: the progress bar;
- ``types``: ``Limits``, ``Verdict``, ``VERDICTS``, ``SandboxError``, ``SandboxRefused``;
- ``worker``: the code that runs in the child processes (namespaces, mounts, the program): standard
  library only, it imports nothing of the project.
"""

from phi_assets.sandbox.api import isolation, run_program, run_programs
from phi_assets.sandbox.client import SERVICE_URL_ENV, service_url
from phi_assets.sandbox.policy import ALLOW_UNISOLATED_ENV
from phi_assets.sandbox.pool import SandboxPool, default_workers
from phi_assets.sandbox.progress import PROGRESS_DELAY_S, Progress
from phi_assets.sandbox.types import DEFAULT_LIMITS, VERDICTS, Limits, SandboxError, SandboxRefused, Verdict
from phi_assets.sandbox.worker.protocol import SANDBOX_GID, SANDBOX_UID, scrubbed_env

__all__ = [
    "ALLOW_UNISOLATED_ENV",
    "DEFAULT_LIMITS",
    "PROGRESS_DELAY_S",
    "SANDBOX_GID",
    "SANDBOX_UID",
    "SERVICE_URL_ENV",
    "VERDICTS",
    "Limits",
    "Progress",
    "SandboxError",
    "SandboxPool",
    "SandboxRefused",
    "Verdict",
    "default_workers",
    "isolation",
    "run_program",
    "run_programs",
    "scrubbed_env",
    "service_url",
]
