"""Whether programs may run where the sandbox cannot isolate them: ``PHI_SANDBOX_ALLOW_UNISOLATED``.

Where the worker cannot create its namespaces (a container without CAP_SYS_ADMIN, no unprivileged user
namespaces, a restricted Kubernetes pod under runc), a program would run with rlimits only: it could see
the host's files and network and signal every process of its uid, the evaluator or the service included.
The worker then refuses to run it, and the evaluator raises ``SandboxRefused`` naming this setting and the
reason, unless the evaluator's environment sets ``PHI_SANDBOX_ALLOW_UNISOLATED=1``. The worker reads no
environment of its own: the evaluator reads the setting when it starts a worker (``handle``) and hands it
over in the worker's configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Set to 1 to run programs where the sandbox cannot isolate them (unset or 0: refuse them).
ALLOW_UNISOLATED_ENV = "PHI_SANDBOX_ALLOW_UNISOLATED"

#: The key ``isolation()`` adds where something is NOT isolated: whether programs run anyway.
POLICY_KEY = "unisolated"

_YES = ("1", "true", "yes", "on")
_NO = ("", "0", "false", "no", "off")


def unisolated_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``PHI_SANDBOX_ALLOW_UNISOLATED`` allows programs to run without isolation (default: no)."""
    raw = (os.environ if environ is None else environ).get(ALLOW_UNISOLATED_ENV, "")
    value = raw.strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise ValueError(
        f"{ALLOW_UNISOLATED_ENV}={raw!r}: expected 1 (run programs even where the sandbox cannot isolate "
        "them) or 0 / unset (refuse them)"
    )


def refusal(reason: str) -> str:
    """The error of a refused program: what is missing and the setting that would let it run."""
    return (
        f"the sandbox refuses to run programs without isolation (NOT isolated: {reason}); set "
        f"{ALLOW_UNISOLATED_ENV}=1 in the environment of the process that runs them (the evaluator, or the "
        "sandbox service) to run them anyway, with rlimits only: each could then read what its uid can, "
        "reach the network and signal the other processes of its uid"
    )


def with_policy(notes: dict[str, str]) -> dict[str, str]:
    """``notes`` plus, where something is NOT isolated, ``POLICY_KEY``: whether programs run anyway."""
    if not any(value.startswith("NOT isolated") for value in notes.values()):
        return notes
    if unisolated_allowed():
        notes[POLICY_KEY] = f"programs run anyway: {ALLOW_UNISOLATED_ENV}=1"
    else:
        notes[POLICY_KEY] = f"programs are refused: {ALLOW_UNISOLATED_ENV} is not set"
    return notes


def refuses(notes: Mapping[str, str]) -> bool:
    """Whether notes that went through ``with_policy`` say the programs are refused."""
    return notes.get(POLICY_KEY, "").startswith("programs are refused")
