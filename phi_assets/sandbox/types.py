"""The sandbox's values: ``Limits`` of a program, its ``Verdict`` (one of ``VERDICTS``), ``SandboxError`` and
``SandboxRefused``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

VERDICTS = ("passed", "failed", "error", "timeout", "killed")


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


class SandboxRefused(SandboxError):
    """The sandbox cannot isolate programs here and ``PHI_SANDBOX_ALLOW_UNISOLATED`` does not allow running
    them anyway (``policy``): no program ran. ``notes`` is what the isolation probe found (``isolation()``)."""

    def __init__(self, message: str, notes: dict[str, str]) -> None:
        super().__init__(message)
        self.notes = notes
