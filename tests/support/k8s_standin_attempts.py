"""What the rank-0 training container of the stand-in's fake cluster does (``k8s_standin.py``): each
``Attempt`` logs what ``STANDIN``, a stand-in for the training entrypoint, really writes through
``dagster_pipes`` with the container's environment, and exits as told. ``FakePod`` is a pod of the model."""

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dagster_pipes import encode_env_var

from tests.support.k8s_standin_api import T0

# --- The training process -----------------------------------------------------------------------------------

# Stands in for the training entrypoint: reports steps first..last through Pipes the way the entrypoint
# does on rank 0, then ends as told: "ok" (a summary, clean close), "lost" (the process vanishes, as on a
# lost node: no closing message) or "crash" (an exception: Pipes closes with it).
STANDIN = textwrap.dedent(
    """
    import os, sys
    from dagster_pipes import open_dagster_pipes
    ending, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print("[torchrun] launching 8 local workers", flush=True)
    with open_dagster_pipes() as pipes:
        for step in range(first, last + 1):
            pipes.report_custom_message({"kind": "step", "step": step, "loss": round(4.0 / step, 3)})
        if ending == "lost":
            sys.stderr.flush()
            os._exit(137)
        if ending == "crash":
            raise RuntimeError("NCCL watchdog timeout on rank 3")
        pipes.report_custom_message({"kind": "summary", "steps": last})
    """
)


def kube_log(lines: list[str]) -> list[bytes]:
    """Lines as the pod-log endpoint returns them with ``timestamps=true`` (RFC 3339, nanoseconds)."""
    stamp = [
        (T0 + timedelta(microseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z" for i in range(len(lines))
    ]
    return [f"{ts} {line}\n".encode() for ts, line in zip(stamp, lines, strict=True)]


def entrypoint_logs(ending: str, first: int, last: int) -> Callable[[dict[str, str]], list[bytes]]:
    """An attempt's log: ``STANDIN`` run with the container's environment (stdout and stderr, as kubelet
    keeps them)."""

    def run(container_env: dict[str, str]) -> list[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
        done = subprocess.run(
            [sys.executable, "-c", STANDIN, ending, str(first), str(last)],
            env={**env, **container_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
        )
        assert done.returncode == {"ok": 0, "lost": 137, "crash": 1}[ending], done.stdout
        return kube_log(done.stdout.splitlines())

    return run


def plain_logs(*lines: str) -> Callable[[dict[str, str]], list[bytes]]:
    return lambda _env: kube_log(list(lines))


def rank0_env(body: dict) -> dict[str, str]:
    """The rank-0 container's environment in a Job or PyTorchJob manifest."""
    if body["kind"] == "Job":
        container = body["spec"]["template"]["spec"]["containers"][0]
    else:
        container = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def crashed_session_env() -> dict[str, str]:
    """The Pipes bootstrap env of a session that launched a Job and then died with its orchestrator."""
    context = {
        "asset_keys": ["trained"], "code_version_by_asset_key": None, "provenance_by_asset_key": None,
        "partition_key": None, "partition_key_range": None, "partition_time_window": None,
        "run_id": "a-run-whose-orchestrator-crashed", "job_name": "__ephemeral_asset_job__", "retry_number": 0,
        "extras": {},
    }  # fmt: skip
    return {
        "DAGSTER_PIPES_CONTEXT": encode_env_var({"data": context}),
        "DAGSTER_PIPES_MESSAGES": encode_env_var({"stdio": "stderr"}),
    }


@dataclass
class Attempt:
    """One run of the rank-0 container: what it logs (given its env) and how it exits."""

    logs: Callable[[dict[str, str]], list[bytes]]
    exit_code: int = 0
    reason: str = "Completed"
    message: str = ""
    between_polls: bool = False  # starts and ends between two status polls
    stream_breaks: int = 0  # how many log requests fail while it runs
    stream_cuts: int = 0  # how many followed log streams lose their connection halfway (HTTP stand-in only)


@dataclass
class FakePod:
    name: str
    uid: str
    owner: str
    labels: dict[str, str]
    created: datetime
    attempt: Attempt
    state: str = "pending"  # pending -> running -> terminated; "restarting" for an in-place restart
    restarts: int = 0
    log: list[bytes] = field(default_factory=list)
    last: Attempt | None = None
    owner_name: str = ""
    namespace: str = "phi"
    spec: dict[str, Any] = field(default_factory=dict)
    role: str = "master"  # "worker": a PyTorchJob's other nodes, whose logs the launcher has no reason to read
    rv: int = 0
