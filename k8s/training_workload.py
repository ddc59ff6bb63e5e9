"""Following a launched training Job or PyTorchJob through the Kubernetes API (``kubernetes.client``).

``resources.launcher.K8sTrainingLauncher`` creates the object ``k8s.training_job`` renders and follows it
with these: ``BatchJob`` / ``PyTorchJob`` create, read, poll and delete it and list the rank-0 pods it owns
(owner references, so the pods of an older object with the same name are ignored), oldest first;
``attempt_of`` keys each run of the rank-0 container (pod uid, restart count), and ``describe_pod`` /
``termination`` say in a few words how a pod is doing or how it ended. Nothing here talks to Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from k8s.training_job import CONTAINER, KUBEFLOW_GROUP, KUBEFLOW_VERSION, PYTORCHJOB_PLURAL

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class KubeApis(NamedTuple):
    """The Kubernetes API objects the launcher uses (``kubernetes.client`` CoreV1Api, BatchV1Api,
    CustomObjectsApi); ``K8sTrainingLauncher._apis`` builds them and tests replace them."""

    core: Any
    batch: Any
    custom: Any


@dataclass(frozen=True)
class Status:
    """Where a launched object stands, as ``Workload.status`` reads it."""

    phase: str  # "running", "succeeded" or "failed"
    failed_pods: int = 0
    reason: str = ""


def http_status(exc: Exception) -> int | None:
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


class Workload:
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

    def status(self) -> Status:
        raise NotImplementedError

    def _delete(self) -> None:
        raise NotImplementedError

    def delete(self) -> None:
        try:
            self._delete()
        except Exception as exc:
            if http_status(exc) != 404:
                raise

    def rank0_pods(self, uid: str) -> list[Any]:
        """The rank-0 pods this object owns, oldest first."""
        pods = self.apis.core.list_namespaced_pod(self.namespace, label_selector=self.selector()).items
        owned = [p for p in pods if any(ref.uid == uid for ref in (p.metadata.owner_references or []))]
        return sorted(owned, key=lambda p: (p.metadata.creation_timestamp or _EPOCH, p.metadata.name))


class BatchJob(Workload):
    kind = "Job"

    def selector(self) -> str:
        return f"job-name={self.name}"

    def create(self, manifest: dict[str, Any]) -> str:
        return self.apis.batch.create_namespaced_job(self.namespace, manifest).metadata.uid

    def read(self) -> tuple[str, list[str]] | None:
        try:
            job = self.apis.batch.read_namespaced_job(self.name, self.namespace)
        except Exception as exc:
            if http_status(exc) == 404:
                return None
            raise
        containers = job.spec.template.spec.containers
        return job.metadata.uid, list(containers[0].command or [])

    def status(self) -> Status:
        st = self.apis.batch.read_namespaced_job_status(self.name, self.namespace).status
        conditions = _true_conditions(st.conditions)
        failed = st.failed or 0
        if "Failed" in conditions:
            return Status("failed", failed, conditions["Failed"])
        if "Complete" in conditions or (st.succeeded or 0) >= 1:
            return Status("succeeded", failed)
        return Status("running", failed)

    def _delete(self) -> None:
        self.apis.batch.delete_namespaced_job(self.name, self.namespace, propagation_policy="Background")


class PyTorchJob(Workload):
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
            if http_status(exc) == 404:
                return None
            raise
        master = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        return obj["metadata"]["uid"], list(master.get("command") or [])

    def status(self) -> Status:
        obj = self.apis.custom.get_namespaced_custom_object_status(*self._args(), self.name)
        st = obj.get("status") or {}
        conditions = _true_conditions(st.get("conditions"))
        failed = sum(int((r or {}).get("failed") or 0) for r in (st.get("replicaStatuses") or {}).values())
        if "Failed" in conditions:
            return Status("failed", failed, conditions["Failed"])
        if "Succeeded" in conditions:
            return Status("succeeded", failed)
        return Status("running", failed)

    def _delete(self) -> None:
        self.apis.custom.delete_namespaced_custom_object(
            *self._args(), self.name, propagation_policy="Background"
        )


def _container_status(pod: Any) -> Any:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return next((c for c in statuses if c.name == CONTAINER), statuses[0] if statuses else None)


def attempt_of(pod: Any) -> tuple[str, int] | None:
    """(pod uid, restart count) of the container instance whose logs can be read now; None before it starts."""
    cs = _container_status(pod)
    if cs is None or cs.state is None:
        return None
    started = cs.state.running is not None or (
        cs.state.terminated is not None and cs.state.terminated.container_id
    )
    return (pod.metadata.uid, cs.restart_count or 0) if started else None


def is_running(pod: Any) -> bool:
    cs = _container_status(pod)
    return cs is not None and cs.state is not None and cs.state.running is not None


def describe_pod(pod: Any) -> str:
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


def termination(pod: Any) -> str:
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
        parts.append(f"it is {describe_pod(pod)}")
    return f"last pod {pod.metadata.name}: " + "; ".join(parts)
