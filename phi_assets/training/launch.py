"""Training runs on Kubernetes (``k8s`` profile): a Job that the cluster restarts, followed through Pipes.

On ``local``/``ci`` the training assets launch ``python -m phi_assets.training.entrypoint --config CONFIG``
with ``dagster.PipesSubprocessClient``. On ``k8s`` the same entrypoint runs under ``torchrun`` on the A100
pool, launched by ``K8sTrainingLauncher`` (a resource):

* one node (``nodes == 1``): a ``batch/v1`` Job whose pod runs ``torchrun --standalone
  --nproc_per_node=<gpus_per_node>``. The pod template has ``restartPolicy: Never`` and the Job a
  ``backoffLimit``: when a pod is lost (node failure, OOM, a crash) the Job controller creates a new pod,
  and the entrypoint resumes from the last checkpoint it finds in its output directory. That directory
  must therefore live on the checkpoint volume (a PersistentVolumeClaim mounted at ``checkpoint_mount``),
  not in the pod. With ``ignore_disruptions`` (the default) a pod that the cluster itself took away
  (condition ``DisruptionTarget``: node drain, preemption, taint eviction) is replaced without using up
  the ``backoffLimit``; ``active_deadline_seconds`` bounds the whole run.
* several nodes (``nodes > 1``): a Kubeflow ``kubeflow.org/v1`` PyTorchJob with one ``Master`` and
  ``nodes - 1`` ``Worker`` replicas (``restartPolicy: OnFailure``, ``runPolicy.backoffLimit``). We use
  torchrun's static rendezvous with the variables every v1 training operator sets when a Master replica
  exists: ``MASTER_ADDR`` (the master's headless Service), ``MASTER_PORT`` (the master container's port
  named ``pytorchjob-port``) and ``RANK`` (the node rank: 0 for the master, 1.. for the workers), passed
  as ``--node_rank=$(RANK) --master_addr=$(MASTER_ADDR) --master_port=$(MASTER_PORT)`` (Kubernetes
  expands ``$(VAR)`` from the container's env), with ``--nnodes`` and ``--nproc_per_node`` written out.
  We do not use ``elasticPolicy`` or rely on the ``PET_*`` variables, whose presence differs between
  operator versions; ``spec.nprocPerNode`` is still set so that the operator's own ``WORLD_SIZE`` is
  right. torchrun gives each worker process its global ``RANK``, so global rank 0 is local rank 0 on the
  master pod. The container is named ``pytorch``, as the operator requires. Every node must see the same
  checkpoint directory, so the claim must be ReadWriteMany (NFS, Lustre, Filestore, EFS...).
  Multi-node runs over InfiniBand usually also need the ``IPC_LOCK`` capability and an RDMA device
  resource, which the restricted security context here does not grant.

Every pod gets the same environment, including the Pipes bootstrap variables (``DAGSTER_PIPES_CONTEXT``,
``DAGSTER_PIPES_MESSAGES``: messages on stderr); the entrypoint opens Pipes only on rank 0. The launcher
reads Pipes messages from the logs of the rank-0 pod (the Job's pod; the PyTorchJob's Master pod, found
by ``training.kubeflow.org/job-name=<name>,training.kubeflow.org/replica-type=master``) with dagster-k8s'
``PipesK8sPodLogsMessageReader``. Because the rank-0 process may run several times, the launcher follows
each *attempt* once, in creation order: a new pod, or a new container instance of the same pod (an
in-place ``OnFailure`` restart), keyed by (pod uid, restart count). Only pods owned by the object it
launched count (owner references), so the pods of an older object with the same name are ignored. A
``closed`` message from an earlier attempt is held back (its exception, if any, is logged as a warning)
so that the replacement's messages are not reported as arriving "after closed"; the last one is handed
to Dagster when the run ends. Messages are therefore the concatenation of all attempts': a resumed
attempt reports again the steps after its checkpoint, as the entrypoint's ``metrics.jsonl`` does, so
readers keep the last message per step. If a log stream breaks while its attempt is still running, the
attempt is followed again from its start, which can repeat messages too.

The object's name is derived from the run key only (``job_name``: DNS-1035, at most 52 characters so
that the operator's ``<name>-worker-<index>`` Services stay within 63), so the same asset step run
again after an orchestrator crash finds the object it launched (409 Conflict) and follows it instead of
training twice. An existing object with another command is refused; one that already failed is deleted
and launched again (the checkpoint volume keeps the progress). When the Dagster run is interrupted
(terminated by a user), the launcher deletes the object so that it stops holding GPUs; an orchestrator
that dies leaves it running for the next attempt to re-attach to.

``run`` returns the custom messages (``report_custom_message`` payloads) of all attempts in order, the
same list ``PipesClientCompletedInvocation.get_custom_messages()`` gives on the subprocess path; a run
that fails raises ``dagster.Failure`` naming the object, its namespace, the number of failed pods and how
the last pod ended.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import dagster as dg
from dagster_k8s.pipes import PipesK8sPodLogsMessageReader
from pydantic import Field

from k8s.security import TMP_MOUNT, TMP_VOLUME, WRITABLE_ENV, container_security, pod_security

ENTRYPOINT = "phi_assets.training.entrypoint"
CONTAINER = "pytorch"  # the name the training operator requires; the Job uses it too
PART_OF = "phi-factory"
KUBEFLOW_GROUP, KUBEFLOW_VERSION, PYTORCHJOB_PLURAL = "kubeflow.org", "v1", "pytorchjobs"
MASTER_PORT_NAME = "pytorchjob-port"  # the port name the training operator reads MASTER_PORT from
A100_SELECTOR = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
MAX_NAME_LEN = 52  # "<name>-worker-<index>" must remain a DNS-1035 label (<= 63 characters)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^(\+)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _quantity(name: str, value: str, *, required: bool = True) -> None:
    if not value and not required:
        return
    if not isinstance(value, str) or not _QUANTITY.match(value) or not re.search(r"[1-9]", value.split("e")[0]):
        raise ValueError(
            f"TrainingJobSpec.{name} must be a positive Kubernetes quantity such as '64Gi', got {value!r}"
        )


@dataclass(frozen=True)
class TrainingJobSpec:
    """Where and how a training run runs on the cluster; renders the Job or the PyTorchJob."""

    name_prefix: str = "phi-train"
    namespace: str = "phi"
    image: str = "phi-factory:latest"
    nodes: int = 1  # 1: a batch/v1 Job; more: a kubeflow.org/v1 PyTorchJob (Master + Workers)
    gpus_per_node: int = 8
    cpu: str = "64"  # requests, per node
    memory: str = "512Gi"
    memory_limit: str = ""  # empty: no limit; /dev/shm (a memory emptyDir) counts against it when set
    shm_size: str = "64Gi"
    checkpoint_pvc: str = "phi-checkpoints"  # ReadWriteMany when nodes > 1
    checkpoint_mount: str = "/checkpoints"  # the entrypoint's "out" must lie under it to survive a pod
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = 7 * 24 * 3600
    service_account_name: str = ""
    env_from_secrets: tuple[str, ...] = ()  # Secrets whose keys become env vars (object store credentials)
    node_selector: dict[str, str] = field(default_factory=lambda: dict(A100_SELECTOR))
    tolerations: list[dict[str, Any]] = field(default_factory=lambda: [dict(t) for t in GPU_TOLERATIONS])
    ignore_disruptions: bool = True  # Job only: a pod the cluster took away does not use up backoff_limit
    master_port: int = 23456

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"TrainingJobSpec.{name} {why}, got {getattr(self, name)!r}")

        def count(name: str, minimum: int, *, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                fail(name, f"must be an integer >= {minimum}")

        if (
            not isinstance(self.name_prefix, str)
            or not _DNS_1035.match(self.name_prefix)
            or len(self.name_prefix) > 20
        ):
            fail(
                "name_prefix",
                "must be lowercase letters, digits and '-', start with a letter, <= 20 characters",
            )
        if (
            not isinstance(self.namespace, str)
            or not _DNS_LABEL.match(self.namespace)
            or len(self.namespace) > 63
        ):
            fail("namespace", "must be a DNS-1123 label (lowercase letters, digits, '-', <= 63 characters)")
        if not isinstance(self.image, str) or not self.image or any(c.isspace() for c in self.image):
            fail("image", "must be a non-empty image reference without spaces")
        count("nodes", 1)
        count("gpus_per_node", 1)
        count("backoff_limit", 0)
        count("active_deadline_seconds", 1, optional=True)
        count("ttl_seconds_after_finished", 0, optional=True)
        count("master_port", 1)
        if self.master_port > 65535:
            fail("master_port", "must be a port number (1-65535)")
        _quantity("cpu", self.cpu)
        _quantity("memory", self.memory)
        _quantity("memory_limit", self.memory_limit, required=False)
        _quantity("shm_size", self.shm_size)
        if (
            not self.checkpoint_pvc
            or not _DNS_SUBDOMAIN.match(self.checkpoint_pvc)
            or len(self.checkpoint_pvc) > 253
        ):
            fail("checkpoint_pvc", "must name a PersistentVolumeClaim (a DNS-1123 subdomain): resumes need it")
        mount = self.checkpoint_mount
        if not isinstance(mount, str) or not mount.startswith("/") or mount.rstrip("/") in ("", "/dev/shm"):
            fail("checkpoint_mount", "must be an absolute path other than / and /dev/shm")
        if self.service_account_name and not _DNS_SUBDOMAIN.match(self.service_account_name):
            fail("service_account_name", "must be empty or a DNS-1123 subdomain")
        if isinstance(self.env_from_secrets, str) or any(
            not isinstance(s, str) or not _DNS_SUBDOMAIN.match(s) for s in self.env_from_secrets
        ):
            fail("env_from_secrets", "must be a list of Secret names (DNS-1123 subdomains)")
        if not isinstance(self.node_selector, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in self.node_selector.items()
        ):
            fail("node_selector", "must map label names to string values")
        for t in self.tolerations:
            if not isinstance(t, Mapping) or not set(t) <= _TOLERATION_KEYS:
                fail("tolerations", f"must be a list of mappings with keys among {sorted(_TOLERATION_KEYS)}")
            if t.get("operator", "Equal") not in ("Exists", "Equal"):
                fail("tolerations", "must use operator Exists or Equal")
            if t.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
                fail("tolerations", "must use effect NoSchedule, PreferNoSchedule or NoExecute")

    @property
    def kind(self) -> str:
        return "Job" if self.nodes == 1 else "PyTorchJob"

    def labels(self, run_name: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": self.name_prefix,
            "app.kubernetes.io/instance": run_name,
            "app.kubernetes.io/component": "training",
            "app.kubernetes.io/part-of": PART_OF,
        }


def job_name(run_key: str, prefix: str = "phi-train") -> str:
    """The object's name for a run key: deterministic, a DNS-1035 label, at most ``MAX_NAME_LEN`` characters."""
    if not isinstance(run_key, str) or not run_key.strip():
        raise ValueError("run_key must be a non-empty string")
    if not _DNS_1035.match(prefix) or len(prefix) > 20:
        raise ValueError(f"prefix must be a DNS-1035 label of <= 20 characters, got {prefix!r}")
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:10]
    room = MAX_NAME_LEN - len(prefix) - len(digest) - 2
    slug = re.sub(r"[^a-z0-9]+", "-", run_key.lower()).strip("-")[:room].strip("-")
    return f"{prefix}-{slug}-{digest}" if slug else f"{prefix}-{digest}"


def _check_run_name(run_name: str) -> None:
    if not _DNS_1035.match(run_name) or len(run_name) > MAX_NAME_LEN:
        raise ValueError(f"run_name must be a DNS-1035 label of <= {MAX_NAME_LEN} characters, got {run_name!r}")


def _container(spec: TrainingJobSpec, command: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory, "nvidia.com/gpu": spec.gpus_per_node}
    limits: dict[str, Any] = {"nvidia.com/gpu": spec.gpus_per_node}
    if spec.memory_limit:
        limits["memory"] = spec.memory_limit
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "command": command,
        "env": [
            {"name": k, "value": str(v)} for k, v in {"PYTHONUNBUFFERED": "1", **WRITABLE_ENV, **env}.items()
        ],
        "resources": {"requests": requests, "limits": limits},
        "securityContext": container_security(read_only_root=True),  # writes go to the volumes below
        "volumeMounts": [
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "checkpoints", "mountPath": spec.checkpoint_mount},
            dict(TMP_MOUNT),
        ],
    }
    if spec.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in spec.env_from_secrets]
    if spec.nodes > 1:
        container["ports"] = [{"name": MASTER_PORT_NAME, "containerPort": spec.master_port, "protocol": "TCP"}]
    return container


def _pod_template(
    spec: TrainingJobSpec, run_name: str, command: list[str], env: Mapping[str, str], restart_policy: str | None
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "securityContext": pod_security(),  # fsGroup: the checkpoint volume is writable by the training user
        "automountServiceAccountToken": False,  # training talks to no Kubernetes API
        "nodeSelector": dict(spec.node_selector),
        "tolerations": [dict(t) for t in spec.tolerations],
        "containers": [_container(spec, command, env)],
        "volumes": [
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
            {"name": "checkpoints", "persistentVolumeClaim": {"claimName": spec.checkpoint_pvc}},
            dict(TMP_VOLUME),
        ],
    }
    if restart_policy:  # the training operator sets it from the replica spec and warns if the template does
        pod["restartPolicy"] = restart_policy
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    return {"metadata": {"labels": spec.labels(run_name)}, "spec": pod}


def _metadata(spec: TrainingJobSpec, run_name: str) -> dict[str, Any]:
    return {"name": run_name, "namespace": spec.namespace, "labels": spec.labels(run_name)}


def job_manifest(
    spec: TrainingJobSpec, run_name: str, command_args: Sequence[str], env: Mapping[str, str]
) -> dict[str, Any]:
    """The single-node ``batch/v1`` Job; ``command_args`` are the entrypoint's (``["--config", URI]``)."""
    _check_run_name(run_name)
    command = [
        "torchrun",
        "--standalone",
        "--nnodes=1",
        f"--nproc_per_node={spec.gpus_per_node}",
        "-m",
        ENTRYPOINT,
        *command_args,
    ]
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "template": _pod_template(spec, run_name, command, env, "Never"),
    }
    if spec.ignore_disruptions:
        job_spec["podFailurePolicy"] = {
            "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
        }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(spec, run_name), "spec": job_spec}


def pytorchjob_manifest(
    spec: TrainingJobSpec, run_name: str, command_args: Sequence[str], env: Mapping[str, str]
) -> dict[str, Any]:
    """The multi-node Kubeflow PyTorchJob: one Master and ``nodes - 1`` Workers, static torchrun rendezvous."""
    _check_run_name(run_name)
    if spec.nodes < 2:
        raise ValueError(f"a PyTorchJob needs TrainingJobSpec.nodes >= 2, got {spec.nodes}")
    command = [
        "torchrun",
        f"--nnodes={spec.nodes}",
        f"--nproc_per_node={spec.gpus_per_node}",
        "--node_rank=$(RANK)",
        "--master_addr=$(MASTER_ADDR)",
        "--master_port=$(MASTER_PORT)",
        "-m",
        ENTRYPOINT,
        *command_args,
    ]

    def replica(count: int) -> dict[str, Any]:
        template = _pod_template(spec, run_name, command, env, None)
        return {"replicas": count, "restartPolicy": "OnFailure", "template": template}

    run_policy: dict[str, Any] = {"backoffLimit": spec.backoff_limit, "cleanPodPolicy": "Running"}
    if spec.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": f"{KUBEFLOW_GROUP}/{KUBEFLOW_VERSION}",
        "kind": "PyTorchJob",
        "metadata": _metadata(spec, run_name),
        "spec": {
            "nprocPerNode": str(spec.gpus_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(spec.nodes - 1)},
        },
    }


def manifest_command(manifest: Mapping[str, Any]) -> list[str]:
    """The rank-0 container's command of a Job or PyTorchJob manifest."""
    if manifest["kind"] == "Job":
        template = manifest["spec"]["template"]
    else:
        template = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    return list(template["spec"]["containers"][0]["command"])


# --- Following a run on the cluster -------------------------------------------------------------------------


class KubeApis(NamedTuple):
    """The Kubernetes API objects the launcher uses (``kubernetes.client`` CoreV1Api, BatchV1Api,
    CustomObjectsApi); ``K8sTrainingLauncher._apis`` builds them and tests replace them."""

    core: Any
    batch: Any
    custom: Any


@dataclass(frozen=True)
class _Status:
    phase: str  # "running", "succeeded" or "failed"
    failed_pods: int = 0
    reason: str = ""


def _http_status(exc: Exception) -> int | None:
    """The HTTP status of a ``kubernetes.client.ApiException`` (None for other errors)."""
    return getattr(exc, "status", None)


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def _true_conditions(conditions: Sequence[Any] | None) -> dict[str, str]:
    """Condition type -> "reason: message" of the conditions whose status is True (models or dicts)."""
    out = {}
    for c in conditions or []:
        if _get(c, "status") == "True":
            message = _get(c, "message")
            out[_get(c, "type")] = f"{_get(c, 'reason') or _get(c, 'type')}" + (
                f": {message}" if message else ""
            )
    return out


class _Workload:
    """A launched Job or PyTorchJob: create, read, status, delete, and its rank-0 pods."""

    kind = ""

    def __init__(self, apis: KubeApis, name: str, namespace: str) -> None:
        self.apis, self.name, self.namespace = apis, name, namespace

    def selector(self) -> str:
        raise NotImplementedError

    def create(self, manifest: dict[str, Any]) -> str:
        raise NotImplementedError

    def read(self) -> tuple[str, list[str]] | None:
        """(uid, rank-0 command) of the existing object, or None when there is none."""
        raise NotImplementedError

    def status(self) -> _Status:
        raise NotImplementedError

    def _delete(self) -> None:
        raise NotImplementedError

    def delete(self) -> None:
        try:
            self._delete()
        except Exception as exc:
            if _http_status(exc) != 404:
                raise

    def rank0_pods(self, uid: str) -> list[Any]:
        """The rank-0 pods this object owns, oldest first."""
        pods = self.apis.core.list_namespaced_pod(self.namespace, label_selector=self.selector()).items
        owned = [p for p in pods if any(ref.uid == uid for ref in (p.metadata.owner_references or []))]
        return sorted(owned, key=lambda p: (p.metadata.creation_timestamp or _EPOCH, p.metadata.name))


class _BatchJob(_Workload):
    kind = "Job"

    def selector(self) -> str:
        return f"job-name={self.name}"

    def create(self, manifest: dict[str, Any]) -> str:
        return self.apis.batch.create_namespaced_job(self.namespace, manifest).metadata.uid

    def read(self) -> tuple[str, list[str]] | None:
        try:
            job = self.apis.batch.read_namespaced_job(self.name, self.namespace)
        except Exception as exc:
            if _http_status(exc) == 404:
                return None
            raise
        containers = job.spec.template.spec.containers
        return job.metadata.uid, list(containers[0].command or [])

    def status(self) -> _Status:
        st = self.apis.batch.read_namespaced_job_status(self.name, self.namespace).status
        conditions = _true_conditions(st.conditions)
        failed = st.failed or 0
        if "Failed" in conditions:
            return _Status("failed", failed, conditions["Failed"])
        if "Complete" in conditions or (st.succeeded or 0) >= 1:
            return _Status("succeeded", failed)
        return _Status("running", failed)

    def _delete(self) -> None:
        self.apis.batch.delete_namespaced_job(self.name, self.namespace, propagation_policy="Background")


class _PyTorchJob(_Workload):
    kind = "PyTorchJob"

    def selector(self) -> str:
        return f"training.kubeflow.org/job-name={self.name},training.kubeflow.org/replica-type=master"

    def _args(self) -> tuple[str, str, str, str]:
        return KUBEFLOW_GROUP, KUBEFLOW_VERSION, self.namespace, PYTORCHJOB_PLURAL

    def create(self, manifest: dict[str, Any]) -> str:
        return self.apis.custom.create_namespaced_custom_object(*self._args(), manifest)["metadata"]["uid"]

    def read(self) -> tuple[str, list[str]] | None:
        try:
            obj = self.apis.custom.get_namespaced_custom_object(*self._args(), self.name)
        except Exception as exc:
            if _http_status(exc) == 404:
                return None
            raise
        master = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        return obj["metadata"]["uid"], list(master.get("command") or [])

    def status(self) -> _Status:
        obj = self.apis.custom.get_namespaced_custom_object_status(*self._args(), self.name)
        st = obj.get("status") or {}
        conditions = _true_conditions(st.get("conditions"))
        failed = sum(int((r or {}).get("failed") or 0) for r in (st.get("replicaStatuses") or {}).values())
        if "Failed" in conditions:
            return _Status("failed", failed, conditions["Failed"])
        if "Succeeded" in conditions:
            return _Status("succeeded", failed)
        return _Status("running", failed)

    def _delete(self) -> None:
        self.apis.custom.delete_namespaced_custom_object(
            *self._args(), self.name, propagation_policy="Background"
        )


def _container_status(pod: Any) -> Any:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return next((c for c in statuses if c.name == CONTAINER), statuses[0] if statuses else None)


def _attempt(pod: Any) -> tuple[str, int] | None:
    """(pod uid, restart count) of the container instance whose logs can be read now; None before it starts."""
    cs = _container_status(pod)
    if cs is None or cs.state is None:
        return None
    started = cs.state.running is not None or (
        cs.state.terminated is not None and cs.state.terminated.container_id
    )
    return (pod.metadata.uid, cs.restart_count or 0) if started else None


def _running(pod: Any) -> bool:
    cs = _container_status(pod)
    return cs is not None and cs.state is not None and cs.state.running is not None


def _describe(pod: Any) -> str:
    """How a pod is doing, in a few words (phase, waiting reason, why it is not scheduled)."""
    status = pod.status
    words = [status.phase or "Unknown"] if status else ["Unknown"]
    cs = _container_status(pod)
    if cs is not None and cs.state is not None and cs.state.waiting is not None and cs.state.waiting.reason:
        words.append(cs.state.waiting.reason)
    for c in (status.conditions if status else None) or []:
        if c.type == "PodScheduled" and c.status == "False":
            words.append(f"{c.reason}: {c.message}" if c.message else str(c.reason))
    return ", ".join(words)


def _termination(pod: Any) -> str:
    if pod is None:
        return "no pod is left to inspect"
    parts = []
    cs = _container_status(pod)
    term = cs.state.terminated if cs is not None and cs.state is not None else None
    if term is None and cs is not None and cs.last_state is not None:
        term = cs.last_state.terminated
    if term is not None:
        detail = f": {term.message.strip()}" if term.message else ""
        parts.append(
            f"its container exited with code {term.exit_code} ({term.reason or 'no reason given'}{detail})"
        )
    if pod.status is not None and pod.status.reason:
        parts.append(
            f"pod status {pod.status.reason}" + (f": {pod.status.message}" if pod.status.message else "")
        )
    if not parts:
        parts.append(f"it is {_describe(pod)}")
    return f"last pod {pod.metadata.name}: " + "; ".join(parts)


class _HoldClosed:
    """Passes an attempt's messages on to the session's handler but holds back its ``closed`` message,
    so that a restarted attempt's messages are not reported as arriving after the session closed."""

    def __init__(self, handler: Any, context: Any) -> None:
        self._handler, self._context, self._closed = handler, context, None

    def handle_message(self, message: Mapping[str, Any]) -> None:
        method = message.get("method")
        if method == "closed":
            self._closed = message
            return
        if method == "opened" and self._closed is not None:
            exc = (self._closed.get("params") or {}).get("exception")
            if exc:
                self._context.log.warning(
                    f"[pipes] an earlier attempt of the training process ended with {exc.get('name')}: "
                    f"{str(exc.get('message', '')).strip()}; its replacement has started"
                )
            self._closed = None
        self._handler.handle_message(message)

    def flush(self) -> None:
        if self._closed is not None:
            closed, self._closed = self._closed, None
            self._handler.handle_message(closed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


class _AttemptsLogReader(PipesK8sPodLogsMessageReader):
    """``PipesK8sPodLogsMessageReader`` for a run whose rank-0 process may start several times."""

    def __init__(self, context: Any) -> None:
        super().__init__()
        self._context = context

    @contextmanager
    def read_messages(self, handler: Any) -> Iterator[Any]:
        held = _HoldClosed(handler, self._context)
        with super().read_messages(held) as params:  # type: ignore[arg-type]
            try:
                yield params
            finally:
                held.flush()

    def no_messages_debug_text(self) -> str:
        return "Read the rank-0 pod logs of the training Job (or the PyTorchJob's Master) of every attempt."


def load_kube_config(
    load_incluster_config: bool | None = None,
    kubeconfig_file: str | None = None,
    kube_context: str | None = None,
) -> None:
    """Configure the kubernetes client as ``PipesK8sClient`` does: in-cluster credentials inside a pod
    (``KUBERNETES_SERVICE_HOST`` set) unless a kubeconfig file or context is given, else the kube config."""
    import kubernetes
    from dagster_k8s.utils import apply_no_proxy_env_workaround

    if load_incluster_config and (kubeconfig_file or kube_context):
        raise ValueError("kubeconfig_file and kube_context must be unset when load_incluster_config is True")
    if load_incluster_config is None and kubeconfig_file is None and kube_context is None:
        if os.getenv("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config()
        else:
            kubernetes.config.load_kube_config()
    elif load_incluster_config:
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig_file, context=kube_context)
    apply_no_proxy_env_workaround()


class K8sTrainingLauncher(dg.ConfigurableResource):
    """Launches the training entrypoint on the cluster (``k8s`` profile) and follows it through Pipes.

    ``run(context, config_uri, run_key)`` creates (or re-attaches to) the Job / PyTorchJob named after
    ``run_key``, waits for it, and returns the custom messages its rank-0 process reported;
    ``work_dir(asset, key)`` is the run's directory on the checkpoint volume."""

    name_prefix: str = "phi-train"
    namespace: str = "phi"
    image: str = "phi-factory:latest"
    nodes: int = 1
    gpus_per_node: int = 8
    cpu: str = "64"
    memory: str = "512Gi"
    memory_limit: str = ""
    shm_size: str = "64Gi"
    checkpoint_pvc: str = "phi-checkpoints"
    checkpoint_mount: str = "/checkpoints"
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = 7 * 24 * 3600
    service_account_name: str = ""
    env_from_secrets: list[str] = []
    env: dict[str, str] = {}  # extra environment for every training pod
    node_selector: dict[str, str] = Field(default_factory=lambda: dict(A100_SELECTOR))
    tolerations: list[dict[str, str]] = Field(default_factory=lambda: [dict(t) for t in GPU_TOLERATIONS])
    ignore_disruptions: bool = True
    master_port: int = 23456
    load_incluster_config: bool | None = None  # None: in-cluster when KUBERNETES_SERVICE_HOST is set
    kubeconfig_file: str | None = None
    kube_context: str | None = None
    poll_interval: float = 10.0
    delete_on_success: bool = True

    @classmethod
    def from_spec(cls, spec: TrainingJobSpec, **settings: Any) -> K8sTrainingLauncher:
        """A launcher that renders ``spec`` (plus launcher-only ``settings`` such as ``poll_interval``)."""
        fields = {f: getattr(spec, f) for f in spec.__dataclass_fields__}
        fields["env_from_secrets"] = list(spec.env_from_secrets)
        return cls(**fields, **settings)

    def spec(self) -> TrainingJobSpec:
        """The validated ``TrainingJobSpec`` of this resource's settings."""
        return TrainingJobSpec(
            name_prefix=self.name_prefix,
            namespace=self.namespace,
            image=self.image,
            nodes=self.nodes,
            gpus_per_node=self.gpus_per_node,
            cpu=self.cpu,
            memory=self.memory,
            memory_limit=self.memory_limit,
            shm_size=self.shm_size,
            checkpoint_pvc=self.checkpoint_pvc,
            checkpoint_mount=self.checkpoint_mount,
            backoff_limit=self.backoff_limit,
            active_deadline_seconds=self.active_deadline_seconds,
            ttl_seconds_after_finished=self.ttl_seconds_after_finished,
            service_account_name=self.service_account_name,
            env_from_secrets=tuple(self.env_from_secrets),
            node_selector=dict(self.node_selector),
            tolerations=[dict(t) for t in self.tolerations],
            ignore_disruptions=self.ignore_disruptions,
            master_port=self.master_port,
        )

    def work_dir(self, asset: str, key: str) -> str:
        """Where a run keeps its checkpoints on the training pods: on the checkpoint volume, so that a
        replacement pod (or a relaunch of the same run) resumes from them."""
        return f"{self.checkpoint_mount.rstrip('/')}/{asset}/{key}"

    def name_for(self, run_key: str) -> str:
        """The Job / PyTorchJob name that ``run`` uses for ``run_key``."""
        return job_name(run_key, self.name_prefix)

    def _apis(self) -> KubeApis:
        """Loads the kube config the way ``PipesK8sClient`` does and builds the API objects."""
        import kubernetes

        load_kube_config(self.load_incluster_config, self.kubeconfig_file, self.kube_context)
        client = kubernetes.client
        return KubeApis(core=client.CoreV1Api(), batch=client.BatchV1Api(), custom=client.CustomObjectsApi())

    def _sleep(self) -> None:
        time.sleep(self.poll_interval)

    def run(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, config_uri: str, run_key: str
    ) -> list[Any]:
        """Train with ``--config config_uri`` on the cluster; return the rank-0 process's custom messages
        (every attempt's, in order). Raises ``dagster.Failure`` when the Job / PyTorchJob fails."""
        if not isinstance(config_uri, str) or not config_uri.strip():
            raise ValueError("config_uri must name the run's config file (a path on the pods or an fsspec URI)")
        spec = self.spec()
        name = job_name(run_key, spec.name_prefix)
        apis = self._apis()
        workload = (_BatchJob if spec.nodes == 1 else _PyTorchJob)(apis, name, spec.namespace)
        reader = _AttemptsLogReader(context)
        with dg.open_pipes_session(
            context=context, context_injector=dg.PipesEnvContextInjector(), message_reader=reader
        ) as session:
            env = {**self.env, **session.get_bootstrap_env_vars()}
            render = job_manifest if spec.nodes == 1 else pytorchjob_manifest
            manifest = render(spec, name, ["--config", config_uri], env)
            command = manifest_command(manifest)
            try:
                uid = self._create_or_attach(context, workload, manifest, command)
                status = self._follow(context, workload, uid, reader)
            except dg.DagsterExecutionInterruptedError:  # a user stopped the run: free the GPUs
                context.log.warning(f"Run interrupted: deleting {workload.kind} {spec.namespace}/{name}")
                workload.delete()
                raise
            last_pod = (workload.rank0_pods(uid) or [None])[-1] if status.phase == "failed" else None
        if status.phase == "failed":
            raise dg.Failure(
                description=(
                    f"Training {workload.kind} {name} in namespace {spec.namespace} failed "
                    f"({status.reason or 'no reason given'}) with {status.failed_pods} failed pod(s); "
                    f"{_termination(last_pod)}. The checkpoints on PersistentVolumeClaim {spec.checkpoint_pvc} "
                    "are kept: running the step again resumes from the last one."
                ),
                metadata={
                    "k8s_kind": workload.kind,
                    "k8s_name": name,
                    "namespace": spec.namespace,
                    "failed_pods": status.failed_pods,
                },
            )
        context.log.info(f"Training {workload.kind} {spec.namespace}/{name} succeeded")
        if self.delete_on_success:
            workload.delete()
        return list(session.get_custom_messages())

    def _create_or_attach(
        self, context: Any, workload: _Workload, manifest: dict[str, Any], command: list[str]
    ) -> str:
        """Create the object; when it exists already (409), follow it, or replace it if it has failed."""
        where = f"{workload.kind} {workload.namespace}/{workload.name}"
        replacing = False
        for _ in range(60):
            try:
                uid = workload.create(manifest)
                context.log.info(f"Created {where}")
                return uid
            except Exception as exc:
                if _http_status(exc) != 409:
                    raise
            if replacing:  # the failed one is still being deleted
                self._sleep()
                continue
            existing = workload.read()
            if existing is None:  # deleted in between
                continue
            uid, existing_command = existing
            if existing_command != command:
                raise dg.Failure(
                    description=(
                        f"{where} already exists with another command ({' '.join(existing_command)}); "
                        f"this run wants {' '.join(command)}. Delete it or use another run key."
                    )
                )
            status = workload.status()
            if status.phase != "failed":
                context.log.info(f"{where} already exists ({status.phase}): following it instead of launching")
                return uid
            context.log.warning(f"{where} already exists and has failed ({status.reason}): replacing it")
            workload.delete()
            replacing = True
        raise dg.Failure(description=f"{where} failed earlier and is still being deleted; run the step again")

    def _follow(self, context: Any, workload: _Workload, uid: str, reader: _AttemptsLogReader) -> _Status:
        """Read every rank-0 attempt's messages until the object succeeds or fails."""
        done: set[tuple[str, int]] = set()
        errors: Counter[tuple[str, int]] = Counter()
        described = ""
        while True:
            if self._follow_next(context, workload, uid, reader, done, errors):
                continue
            status = workload.status()
            if status.phase != "running":
                while self._follow_next(context, workload, uid, reader, done, errors):
                    pass  # attempts that started and ended between two polls
                return status
            pods = workload.rank0_pods(uid)
            now = f"pod {pods[-1].metadata.name}: {_describe(pods[-1])}" if pods else "no pod yet"
            if now != described:
                context.log.info(f"{workload.kind} {workload.name}: {now}")
                described = now
            self._sleep()

    def _follow_next(
        self,
        context: Any,
        workload: _Workload,
        uid: str,
        reader: _AttemptsLogReader,
        done: set[tuple[str, int]],
        errors: Counter[tuple[str, int]],
    ) -> bool:
        """Follow the oldest attempt not read yet to its end; False when there is none."""
        for pod in workload.rank0_pods(uid):
            key = _attempt(pod)
            if key is None or key in done:
                continue
            name = pod.metadata.name
            restart = f", container restart {key[1]}" if key[1] else ""
            context.log.info(f"Reading Pipes messages from pod {name} (attempt {len(done) + 1}{restart})")
            try:
                reader.consume_pod_logs(
                    context=context, core_api=workload.apis.core, pod_name=name, namespace=workload.namespace
                )
                done.add(key)
            except Exception:
                errors[key] += 1
                context.log.warning(f"Lost the log stream of pod {name}", exc_info=True)
                still = any(_attempt(p) == key and _running(p) for p in workload.rank0_pods(uid))
                if not still or errors[key] >= 3:
                    done.add(key)
                else:
                    self._sleep()
            return True
        return False


__all__ = [
    "K8sTrainingLauncher",
    "KubeApis",
    "load_kube_config",
    "TrainingJobSpec",
    "job_manifest",
    "job_name",
    "manifest_command",
    "pytorchjob_manifest",
]
