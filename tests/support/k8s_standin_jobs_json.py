"""How the stand-in's fake cluster (``tests/support/k8s_standin_cluster.py``) shows its Jobs, PyTorchJobs and
their pods: the JSON the API server answers with, the labels the Job controller or the training operator
puts on pods, and the status they report."""

import copy
from datetime import timedelta
from typing import Any

from tests.support.k8s_standin_api import CONTAINER, JOBS, Resource, ts
from tests.support.k8s_standin_attempts import Attempt, FakePod


def pod_labels(res: Resource, job: str, owner: str, role: str = "master", index: int = 0) -> dict[str, str]:
    """The labels the Job controller or the training operator puts on the pods it creates."""
    if res is JOBS:
        return {
            "batch.kubernetes.io/controller-uid": owner,
            "batch.kubernetes.io/job-name": job,
            "controller-uid": owner,
            "job-name": job,
        }
    labels = {
        "training.kubeflow.org/job-name": job,
        "training.kubeflow.org/operator-name": "pytorchjob-controller",
        "training.kubeflow.org/replica-type": role,
        "training.kubeflow.org/replica-index": str(index),
    }
    return labels | ({"training.kubeflow.org/job-role": "master"} if role == "master" else {})


def job_status_json(res: Resource, name: str, obj: dict[str, Any], pods: list[FakePod]) -> dict[str, Any]:
    """The status the Job controller or the training operator reports for ``obj`` (its pods among ``pods``)."""
    mine = [p for p in pods if p.owner == obj["uid"]]
    active = sum(p.state != "terminated" for p in mine)
    ready = sum(p.state == "running" for p in mine)
    started, finished = ts(obj["created"]), ts(obj["created"] + timedelta(hours=1))

    def condition(kind: str, reason: str = "", message: str = "", status: str = "True") -> dict[str, Any]:
        out = {"type": kind, "status": status, "lastTransitionTime": finished}
        out.update({k: v for k, v in (("reason", reason), ("message", message)) if v})
        return out

    if res is JOBS:
        status: dict[str, Any] = {"startTime": started, "ready": ready, "uncountedTerminatedPods": {}}
        if active:
            status["active"] = active
        if obj["failed"]:
            status["failed"] = obj["failed"]
        if obj["done"] == "succeeded":
            status["succeeded"] = 1
            status["completionTime"] = finished
            status["conditions"] = [
                condition(
                    "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"
                ),
                condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
            ]
        elif obj["done"] == "failed":
            message = "Job has reached the specified backoff limit"
            status["conditions"] = [
                condition("FailureTarget", "BackoffLimitExceeded", message),
                condition("Failed", "BackoffLimitExceeded", message),
            ]
        return status
    ns = obj["namespace"]
    conditions = [condition("Created", "PyTorchJobCreated", f"PyTorchJob {ns}/{name} is created.")]
    if obj["done"] == "succeeded":
        conditions.append(condition("Running", "PyTorchJobRunning", status="False"))
        conditions.append(
            condition("Succeeded", "PyTorchJobSucceeded", f"PyTorchJob {ns}/{name} successfully completed.")
        )
    elif obj["done"] == "failed":
        conditions.append(condition("Running", "PyTorchJobRunning", status="False"))
        conditions.append(
            condition(
                "Failed",
                "PyTorchJobFailed",
                f"PyTorchJob {ns}/{name} has failed because it has reached the specified backoff limit",
            )
        )
    elif ready:
        conditions.append(condition("Running", "PyTorchJobRunning", f"PyTorchJob {ns}/{name} is running."))

    def replicas(role: str) -> dict[str, Any]:
        pods = [p for p in mine if p.role == role]
        out = {"active": sum(p.state != "terminated" for p in pods)}
        out["succeeded"] = sum(p.state == "terminated" and p.attempt.exit_code == 0 for p in pods)
        return out

    master = {**replicas("master"), "failed": obj["failed"]}
    return {
        "startTime": started,
        "conditions": conditions,
        "replicaStatuses": {"Master": master, "Worker": replicas("worker")},
    }


def pod_json(res: Resource, p: FakePod, index: int) -> dict[str, Any]:
    """Pod ``p`` as the API server serves it (``index``: its place among the cluster's pods)."""

    def terminated(attempt: Attempt, restarts: int) -> dict[str, Any]:
        out = {
            "exitCode": attempt.exit_code,
            "reason": attempt.reason,
            "containerID": f"containerd://{p.uid}-{restarts}",
            "startedAt": ts(p.created),
            "finishedAt": ts(p.created + timedelta(seconds=30)),
        }
        return out | ({"message": attempt.message} if attempt.message else {})

    running = p.state == "running"
    back_off = f"back-off 10s restarting failed container={CONTAINER} pod={p.name}"
    state = {
        "pending": {"waiting": {"reason": "ContainerCreating"}},
        "restarting": {"waiting": {"reason": "CrashLoopBackOff", "message": back_off}},
        "running": {"running": {"startedAt": ts(p.created)}},
    }.get(p.state) or {"terminated": terminated(p.attempt, p.restarts)}
    container = {
        "name": CONTAINER,
        "image": p.spec["containers"][0].get("image", ""),
        "imageID": "",
        "ready": running,
        "started": running,
        "restartCount": p.restarts,
        "state": state,
        "lastState": {"terminated": terminated(p.last, p.restarts - 1)} if p.last else {},
    }
    if p.state in ("running", "terminated"):
        container["containerID"] = f"containerd://{p.uid}-{p.restarts}"
    phase = {"pending": "Pending", "restarting": "Running", "running": "Running"}.get(p.state)
    phase = phase or ("Succeeded" if p.attempt.exit_code == 0 else "Failed")
    conditions = [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": str(running)},
        {"type": "Ready", "status": str(running)},
    ]
    owner = {
        "apiVersion": res.api_version,
        "kind": res.kind,
        "name": p.owner_name or "gone",
        "uid": p.owner,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "uid": p.uid,
            "resourceVersion": str(p.rv),
            "creationTimestamp": ts(p.created),
            "labels": dict(p.labels),
            "ownerReferences": [owner],
        },
        "spec": copy.deepcopy(p.spec),
        "status": {
            "phase": phase,
            "conditions": conditions,
            "hostIP": "10.0.0.1",
            "podIP": f"10.1.0.{index + 2}",
            "startTime": ts(p.created),
            "qosClass": "Burstable",
            "containerStatuses": [container],
        },
    }
