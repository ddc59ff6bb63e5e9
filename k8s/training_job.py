"""The training run's Kubernetes objects: a ``batch/v1`` Job on one node, a Kubeflow PyTorchJob across nodes.

``resources.launcher.K8sTrainingLauncher`` (the ``k8s`` profile's ``training_launcher``) creates them per
run from a ``TrainingJobSpec``, which ``k8s.deploy.DeploymentProfile.training()`` fills in from the cluster's
profile; the entrypoint (``python -m phi_assets.training.entrypoint``) runs under ``torchrun`` on the A100
pool:

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

Every pod gets the same environment, including the Pipes bootstrap variables the launcher passes in
``env``; the entrypoint opens Pipes only on rank 0.

The object's name is derived from the run key only (``job_name``: DNS-1035, at most 52 characters so
that the operator's ``<name>-worker-<index>`` Services stay within 63), so the same asset step run
again after an orchestrator crash finds the object it launched (409 Conflict) and follows it instead of
training twice (``resources/launcher.py``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
