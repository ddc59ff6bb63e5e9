"""A stand-in for the Kubernetes API for the ``k8s`` training launcher's and model servers' tests; no cluster
runs here.

``FakeCluster`` is the model: the Jobs or PyTorchJobs created in it, their pods, and how each attempt of
the rank-0 container ends (it plays the API server, the Job controller or the training operator, and the
kubelet). It answers in the Kubernetes API's JSON, and two ways lead to it:

* its methods named after the ``kubernetes.client`` API objects' (``create_namespaced_job``, ...), which a
  test hands to the launcher in place of ``CoreV1Api``, ``BatchV1Api`` and ``CustomObjectsApi``; they turn
  the JSON into the client's models with the client's own deserializer, and errors into ``ApiException``;
* ``KubeApiStandin``: an HTTP server on 127.0.0.1 that speaks the part of the Kubernetes REST API that the
  launcher and dagster-k8s' pod-log reader use, so that the real client runs against the same model:
  kubeconfig loading, bearer token, JSON (de)serialization, ``Status`` error bodies, and pod logs followed
  as a chunked stream.

Creating a Job or PyTorchJob starts its first attempt as a Pending pod; each status poll starts the pending
pods; following a running pod's log runs its attempt to the end (as following a log does), after which the
object succeeds, starts its next attempt (a new pod, or the same pod's container again when ``in_place``,
as the training operator's ``OnFailure`` restart does), or fails once more than ``backoff_limit`` pods have
failed. The logs are what ``STANDIN``, a stand-in for the training entrypoint, really wrote through
``dagster_pipes`` when started with the environment of the pod's container, taken from the manifest the
launcher created.

``FakeServers`` is the model of the vLLM servers that ``k8s/model_server.py`` starts for a trained
checkpoint: apps/v1 Deployments, core/v1 Services and the pods of each Deployment, which become ready after
a number of the Deployment's status polls or stay stuck waiting (``ImagePullBackOff``, ...) as
``ServerPods`` says. ``KubeApiStandin`` serves it on its own or beside a ``FakeCluster``.

Created objects are validated offline against the Kubernetes schemas (``kubernetes-validate``, strict) and
refused with 422 when invalid. That is stricter than a real API server, which by default only warns about
unknown fields and drops them, so a misspelt field fails here instead of being silently ignored.
"""

import contextlib
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import dagster as dg
import kubernetes.client as k8s
import kubernetes_validate
import yaml
from dagster_pipes import encode_env_var

from phi_assets.training.launch import K8sTrainingLauncher, KubeApis

CONFIG_URI = "s3://bucket/phi/runs/pretrained_checkpoint-0f3a/config.json"
RUN_KEY = "pretrained_checkpoint-0f3a9c"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCHEMA_VERSION = "1.30"  # the Kubernetes version whose schemas created objects are checked against
CONTAINER = "pytorch"

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


# --- The model ----------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Resource:
    """A kind of object the model runs, with its REST names."""

    kind: str
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name the API server's messages use (``jobs.batch``; a core kind's is its plural)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def details(self, name: str) -> dict[str, Any]:
        return {"name": name, **({"group": self.group} if self.group else {}), "kind": self.plural}

    def not_found(self, name: str) -> "ApiError":
        return ApiError(404, "NotFound", f'{self.qualified} "{name}" not found', self.details(name))

    def already_exists(self, name: str, prefix: str = "") -> "ApiError":
        message = f'{prefix}{self.qualified} "{name}" already exists'
        return ApiError(409, "AlreadyExists", message, self.details(name))

    def invalid(self, name: str, where: str, message: str) -> "ApiError":
        """422: the object failed validation (``where``: the field's path)."""
        cause = {"reason": "FieldValueInvalid", "message": f"Invalid value: {message}", "field": where}
        return ApiError(
            422,
            "Invalid",
            f'{self.kind}{"." + self.group if self.group else ""} "{name}" is invalid: {where}: {message}',
            {
                "name": name,
                **({"group": self.group} if self.group else {}),
                "kind": self.kind,
                "causes": [cause],
            },
        )


JOBS = Resource("Job", "batch", "v1", "jobs")
PYTORCHJOBS = Resource("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs")
RESOURCES = {r.kind: r for r in (JOBS, PYTORCHJOBS)}
DEPLOYMENTS = Resource("Deployment", "apps", "v1", "deployments")
SERVICES = Resource("Service", "", "v1", "services")


class ApiError(Exception):
    """An error answer of the API server; ``status()`` is the ``Status`` object it sends with it."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out

    def exception(self) -> k8s.ApiException:
        """The ``ApiException`` the client raises for this answer."""
        exc = k8s.ApiException(status=self.code, reason=HTTPStatus(self.code).phrase)
        exc.body = json.dumps(self.status())
        return exc


def _ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _interrupt_here() -> None:
    raise dg.DagsterExecutionInterruptedError()


_DESERIALIZER = k8s.ApiClient()


def to_model(data: Any, klass: str) -> Any:
    """API JSON as the ``kubernetes.client`` model ``klass`` (``"V1Job"``), as the client builds it."""
    return _DESERIALIZER.deserialize(SimpleNamespace(data=json.dumps(data)), klass)


def _path(error: kubernetes_validate.ValidationError, prefix: str = "") -> str:
    out = prefix
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors (``a=b,c==d,e!=f``) and existence (``g``, ``!h``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = re.split(r"==?", term, maxsplit=1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _pod_fields(field_selector: str | None) -> dict[str, str]:
    """The field selector of a pod list: the fields the stand-in supports, with their values."""
    fields: dict[str, str] = {}
    for term in filter(None, (field_selector or "").split(",")):
        key, _, value = term.partition("=")
        if key not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')
        fields[key] = value.lstrip("=")
    return fields


def _pod_list(pods: list[dict[str, Any]], revision: int) -> dict[str, Any]:
    items = [{k: v for k, v in pod.items() if k not in ("apiVersion", "kind")} for pod in pods]
    return {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": str(revision)},
        "items": items,
    }


def _check_body(res: Resource, namespace: str, body: dict[str, Any]) -> None:
    """What the API server checks before the schema: the kind and the namespace of the object sent."""
    meta = body.get("metadata") or {}
    if (body.get("apiVersion"), body.get("kind")) != (res.api_version, res.kind):
        raise ApiError(
            400,
            "BadRequest",
            f"the API version in the data ({body.get('apiVersion')}) does not match the expected API "
            f"version ({res.api_version}) or kind ({body.get('kind')} is not {res.kind})",
        )
    if meta.get("namespace", namespace) != namespace:
        raise ApiError(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        )


class FakeCluster:
    """A fake Kubernetes cluster (no cluster runs here) running one kind of object, ``Job`` or
    ``PyTorchJob``, whose rank-0 attempts are ``attempts`` in order; see the module's docstring."""

    def __init__(self, kind: str, attempts: list[Attempt], backoff_limit: int = 3, in_place: bool = False):
        self.kind, self.resource = kind, RESOURCES[kind]
        self.attempts, self.backoff_limit, self.in_place = list(attempts), backoff_limit, in_place
        self.objects: dict[str, dict[str, Any]] = {}
        self.pods: list[FakePod] = []
        self.created: list[str] = []  # every create call, conflicts included
        self.deleted: list[str] = []
        self.log_reads: list[str] = []  # "<pod>#<restart count>" of every log request
        self.ticks = 0
        self.interrupt_at: int | None = None  # the status poll at which the Dagster run is interrupted
        self.on_interrupt: Callable[[], None] = _interrupt_here
        self.lock = threading.RLock()
        self.revision = 0
        self.apis = KubeApis(core=self, batch=self, custom=self)

    def _touch(self, thing: dict[str, Any] | FakePod) -> None:
        self.revision += 1
        if isinstance(thing, FakePod):
            thing.rv = self.revision
        else:
            thing["rv"] = self.revision

    # --- objects, as the API server serves them (JSON)

    def _validate(self, namespace: str, body: dict[str, Any]) -> str:
        res = self.resource
        name = (body.get("metadata") or {}).get("name") or ""
        _check_body(res, namespace, body)
        if res is JOBS:
            documents = [("", body)]
        else:
            replicas = (body.get("spec") or {}).get("pytorchReplicaSpecs") or {}
            if (replicas.get("Master") or {}).get("replicas") != 1:
                self._invalid(name, "spec.pytorchReplicaSpecs.Master.replicas", "a PyTorchJob needs 1 Master")
            documents = [
                (
                    f"spec.pytorchReplicaSpecs.{rtype}",
                    {
                        "apiVersion": "v1",
                        "kind": "PodTemplate",
                        "metadata": {"name": name or "replica"},
                        "template": replica.get("template"),
                    },
                )  # a replica's template is checked as a core PodTemplate's
                for rtype, replica in replicas.items()
            ]
            for rtype, replica in replicas.items():
                containers = ((replica.get("template") or {}).get("spec") or {}).get("containers") or [{}]
                if containers[0].get("name") != CONTAINER:
                    self._invalid(
                        name,
                        f"spec.pytorchReplicaSpecs.{rtype}.template.spec.containers[0].name",
                        f"the training operator requires the container name {CONTAINER!r}",
                    )
        for prefix, document in documents:
            try:
                kubernetes_validate.validate(document, SCHEMA_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                self._invalid(name, _path(exc, prefix), exc.message)
        if not name:
            self._invalid(name, "metadata.name", "Required value: name or generateName is required")
        return name

    def _invalid(self, name: str, where: str, message: str) -> None:
        raise self.resource.invalid(name, where, message)

    def create_object(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = (body.get("metadata") or {}).get("name") or ""
        self.created.append(name)
        self._validate(namespace, body)
        if name in self.objects:
            raise self.resource.already_exists(name)
        obj = {
            "body": copy.deepcopy(body),
            "uid": str(uuid.uuid4()),
            "failed": 0,
            "done": None,
            "namespace": namespace,
            "created": T0 + timedelta(minutes=len(self.pods), seconds=-1),
        }
        self.objects[name] = obj
        self._touch(obj)
        self._start(name)
        return self._object_json(name)

    def _object(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects.get(name)
        if obj is None or obj["namespace"] != namespace:
            raise self.resource.not_found(name)
        return obj

    def read_object(self, namespace: str, name: str) -> dict[str, Any]:
        self._object(namespace, name)
        return self._object_json(name)

    def read_object_status(self, namespace: str, name: str) -> dict[str, Any]:
        self._tick(namespace, name)
        return self._object_json(name)

    def delete_object(self, namespace: str, name: str) -> dict[str, Any]:
        self.deleted.append(name)
        obj = self._object(namespace, name)
        del self.objects[name]  # its pods stay until the garbage collector gets to them
        self.revision += 1
        res = self.resource
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": res.group, "kind": res.plural, "uid": obj["uid"]},
        }

    def _tick(self, namespace: str, name: str) -> dict[str, Any]:
        self.ticks += 1
        assert self.ticks < 100, "the launcher never finished"
        if self.interrupt_at is not None and self.ticks >= self.interrupt_at:
            self.interrupt_at = None
            self.on_interrupt()
        obj = self._object(namespace, name)
        for pod in self.pods:
            if pod.state in ("pending", "restarting"):
                pod.state = "running"
                self._touch(pod)
                if pod.attempt.between_polls:
                    self._run_to_end(pod)
        return obj

    def _object_json(self, name: str) -> dict[str, Any]:
        obj = self.objects[name]
        out = copy.deepcopy(obj["body"])
        out["metadata"] = {
            **out.get("metadata", {}),
            "name": name,
            "namespace": obj["namespace"],
            "uid": obj["uid"],
            "resourceVersion": str(obj["rv"]),
            "generation": 1,
            "creationTimestamp": _ts(obj["created"]),
        }
        if self.resource is JOBS:  # the API server's defaults and the Job controller's selector
            spec = out["spec"]
            for key, value in (("parallelism", 1), ("completions", 1), ("completionMode", "NonIndexed")):
                spec.setdefault(key, value)
            spec.setdefault("suspend", False)
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": obj["uid"]}}
            template = spec["template"].setdefault("metadata", {})
            template["labels"] = {**template.get("labels", {}), **self._pod_labels(name, obj["uid"])}
        out["status"] = self._status_json(name, obj)
        return out

    def _status_json(self, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        mine = [p for p in self.pods if p.owner == obj["uid"]]
        active = sum(p.state != "terminated" for p in mine)
        ready = sum(p.state == "running" for p in mine)
        started, finished = _ts(obj["created"]), _ts(obj["created"] + timedelta(hours=1))

        def condition(kind: str, reason: str = "", message: str = "", status: str = "True") -> dict[str, Any]:
            out = {"type": kind, "status": status, "lastTransitionTime": finished}
            out.update({k: v for k, v in (("reason", reason), ("message", message)) if v})
            return out

        if self.resource is JOBS:
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

    # --- pods

    def _pod_labels(self, job: str, owner: str, role: str = "master", index: int = 0) -> dict[str, str]:
        """The labels the Job controller or the training operator puts on the pods it creates."""
        if self.resource is JOBS:
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

    def _start(self, name: str) -> None:
        obj = self.objects[name]
        attempt = self.attempts.pop(0)
        mine = [p for p in self.pods if p.owner == obj["uid"] and p.role == "master"]
        if self.in_place and mine:
            pod = mine[-1]
            pod.state, pod.restarts, pod.last, pod.attempt = (
                "restarting",
                pod.restarts + 1,
                pod.attempt,
                attempt,
            )
            self._touch(pod)
            return
        suffix = "master-0" if self.kind == "PyTorchJob" else f"{len(self.pods):05d}"
        self.add_pod(name, obj["uid"], attempt, f"{name}-{suffix}")
        if self.kind == "PyTorchJob" and not mine:
            workers = obj["body"]["spec"]["pytorchReplicaSpecs"].get("Worker", {}).get("replicas", 0)
            for i in range(workers):
                waiting = Attempt(plain_logs(f"[torchrun] node {i + 1} waiting for the master"))
                self.add_pod(name, obj["uid"], waiting, f"{name}-worker-{i}", role="worker", index=i)

    def add_pod(
        self,
        job: str,
        owner: str,
        attempt: Attempt,
        pod_name: str,
        state: str = "pending",
        role: str = "master",
        index: int = 0,
    ) -> FakePod:
        """A pod of ``job`` owned by ``owner`` (an object's uid; it may be one that is gone)."""
        obj = next((o for o in self.objects.values() if o["uid"] == owner), None)
        labels = self._pod_labels(job, owner, role, index)
        spec: dict[str, Any] = {"containers": [{"name": CONTAINER, "image": "phi-factory:latest"}]}
        namespace = "phi"
        if obj is not None:
            namespace = obj["namespace"]
            body = obj["body"]
            if self.resource is JOBS:
                template = body["spec"]["template"]
                restart_policy = template["spec"].get("restartPolicy", "Never")
            else:
                replica = body["spec"]["pytorchReplicaSpecs"]["Master" if role == "master" else "Worker"]
                template, restart_policy = replica["template"], replica.get("restartPolicy", "OnFailure")
            labels = {**(template.get("metadata") or {}).get("labels", {}), **labels}
            spec = copy.deepcopy(template["spec"])
            spec["restartPolicy"] = restart_policy
            if self.resource is PYTORCHJOBS:  # what the operator adds for a static rendezvous
                container = spec["containers"][0]
                port = next((p["containerPort"] for p in container.get("ports", [])), 23456)
                nodes = sum(r.get("replicas", 1) for r in body["spec"]["pytorchReplicaSpecs"].values())
                container["env"] = [
                    *container.get("env", []),
                    {"name": "MASTER_PORT", "value": str(port)},
                    {"name": "MASTER_ADDR", "value": f"{job}-master-0"},
                    {"name": "WORLD_SIZE", "value": str(nodes)},
                    {"name": "RANK", "value": str(0 if role == "master" else index + 1)},
                ]
        spec["nodeName"] = f"a100-node-{len(self.pods)}"
        pod = FakePod(
            pod_name,
            str(uuid.uuid4()),
            owner,
            labels,
            T0 + timedelta(minutes=len(self.pods)),
            attempt,
            state=state,
            owner_name=job,
            namespace=namespace,
            spec=spec,
            role=role,
        )
        self._touch(pod)
        self.pods.append(pod)
        return pod

    def _pod_json(self, p: FakePod) -> dict[str, Any]:
        def terminated(attempt: Attempt, restarts: int) -> dict[str, Any]:
            out = {
                "exitCode": attempt.exit_code,
                "reason": attempt.reason,
                "containerID": f"containerd://{p.uid}-{restarts}",
                "startedAt": _ts(p.created),
                "finishedAt": _ts(p.created + timedelta(seconds=30)),
            }
            return out | ({"message": attempt.message} if attempt.message else {})

        running = p.state == "running"
        back_off = f"back-off 10s restarting failed container={CONTAINER} pod={p.name}"
        state = {
            "pending": {"waiting": {"reason": "ContainerCreating"}},
            "restarting": {"waiting": {"reason": "CrashLoopBackOff", "message": back_off}},
            "running": {"running": {"startedAt": _ts(p.created)}},
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
        res = self.resource
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
                "creationTimestamp": _ts(p.created),
                "labels": dict(p.labels),
                "ownerReferences": [owner],
            },
            "spec": copy.deepcopy(p.spec),
            "status": {
                "phase": phase,
                "conditions": conditions,
                "hostIP": "10.0.0.1",
                "podIP": f"10.1.0.{self.pods.index(p) + 2}",
                "startTime": _ts(p.created),
                "qosClass": "Burstable",
                "containerStatuses": [container],
            },
        }

    def list_pods(
        self, namespace: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> dict[str, Any]:
        fields = _pod_fields(field_selector)
        pods = [
            p
            for p in self.pods
            if p.namespace == namespace
            and _selector_matches(label_selector or "", p.labels)
            and fields.get("metadata.name", p.name) == p.name
            and fields.get("metadata.namespace", p.namespace) == p.namespace
        ]
        return _pod_list([self._pod_json(p) for p in pods], self.revision)

    def _pod(self, namespace: str, name: str) -> FakePod:
        pods = [p for p in self.pods if p.name == name and p.namespace == namespace]
        if not pods:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        return pods[-1]

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self._pod_json(self._pod(namespace, name))

    def pod_log(self, namespace: str, name: str, follow: bool = True, timestamps: bool = True) -> list[bytes]:
        """The container's log; following a running container's log runs its attempt to the end."""
        pod = self._pod(namespace, name)
        self.log_reads.append(f"{pod.name}#{pod.restarts}")
        if pod.state in ("pending", "restarting"):
            reason = "ContainerCreating" if pod.state == "pending" else "CrashLoopBackOff"
            raise ApiError(
                400, "BadRequest", f'container "{CONTAINER}" in pod "{name}" is waiting to start: {reason}'
            )
        if pod.state == "running" and pod.attempt.stream_breaks:
            pod.attempt.stream_breaks -= 1
            raise ApiError(500, "InternalError", "connection reset while streaming the container log")
        lines = self._run_to_end(pod) if pod.state == "running" and follow else list(pod.log)
        return lines if timestamps else [line.split(b" ", 1)[1] for line in lines]

    def _run_to_end(self, pod: FakePod) -> list[bytes]:
        env = {e["name"]: e["value"] for e in pod.spec["containers"][0].get("env", []) if "value" in e}
        pod.log = pod.attempt.logs(env)
        pod.state = "terminated"
        self._touch(pod)
        obj = next((o for o in self.objects.values() if o["uid"] == pod.owner), None)
        if pod.role != "master" or obj is None:
            return list(pod.log)
        job = next(n for n, o in self.objects.items() if o is obj)
        self._touch(obj)
        if pod.attempt.exit_code == 0:
            obj["done"] = "succeeded"
        else:
            obj["failed"] += 1
            if obj["failed"] > self.backoff_limit or not self.attempts:
                obj["done"] = "failed"
            else:
                self._start(job)
        if obj["done"]:  # the other nodes end with the master, or are cleaned up (cleanPodPolicy Running)
            for other in [p for p in self.pods if p.owner == obj["uid"] and p.role == "worker"]:
                if obj["done"] == "succeeded":
                    other.state = "terminated"
                    self._touch(other)
                elif other.state != "terminated":
                    self.pods.remove(other)
        return list(pod.log)

    # --- the kubernetes.client API objects' methods, for tests that hand this object to the launcher

    def _call(self, klass: str | None, method: Callable[..., Any], *args: Any) -> Any:
        with self.lock:
            try:
                data = method(*args)
            except ApiError as exc:
                raise exc.exception() from None
        return to_model(data, klass) if klass else data

    def _check(self, group: str, version: str, plural: str) -> None:
        res = self.resource
        assert (group, version, plural) == (res.group, res.version, res.plural), (group, version, plural)

    def create_namespaced_job(self, namespace, body, **_):
        assert self.kind == "Job"
        return self._call("V1Job", self.create_object, namespace, body)

    def read_namespaced_job(self, name, namespace, **_):
        return self._call("V1Job", self.read_object, namespace, name)

    def read_namespaced_job_status(self, name, namespace, **_):
        return self._call("V1Job", self.read_object_status, namespace, name)

    def delete_namespaced_job(self, name, namespace, propagation_policy=None, **_):
        assert propagation_policy == "Background"
        return self._call("V1Status", self.delete_object, namespace, name)

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **_):
        self._check(group, version, plural)
        return self._call(None, self.create_object, namespace, body)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **_):
        self._check(group, version, plural)
        return self._call(None, self.read_object, namespace, name)

    def get_namespaced_custom_object_status(self, group, version, namespace, plural, name, **_):
        self._check(group, version, plural)
        return self._call(None, self.read_object_status, namespace, name)

    def delete_namespaced_custom_object(
        self, group, version, namespace, plural, name, propagation_policy=None, **_
    ):
        self._check(group, version, plural)
        assert propagation_policy == "Background"
        return self._call(None, self.delete_object, namespace, name)

    def list_namespaced_pod(self, namespace, label_selector=None, field_selector=None, **_):
        return self._call("V1PodList", self.list_pods, namespace, label_selector, field_selector)

    def read_namespaced_pod(self, name, namespace, **_):
        return self._call("V1Pod", self.read_pod, namespace, name)

    def read_namespaced_pod_log(self, name, namespace, **kwargs):
        assert kwargs.get("follow") and kwargs.get("timestamps")
        return self._call(None, self.pod_log, namespace, name)


# --- Model servers: Deployments, Services and their pods ----------------------------------------------------


@dataclass
class ServerPods:
    """How the pods of every Deployment that ``FakeServers`` runs come up, counted in status polls of the
    Deployment: the first poll finds the init containers done; the server container is ready from poll
    ``ready_after`` on (None: never, as a server whose startup probe never passes). With a ``reason``
    (``ImagePullBackOff``, ``CrashLoopBackOff``, ...) the ``container`` (an init container or the server's)
    is stuck waiting in it from the first poll on, with ``message`` and ``restarts``."""

    ready_after: int | None = 2
    reason: str = ""
    message: str = ""
    container: str = "vllm"
    restarts: int = 0


class FakeServers:
    """apps/v1 Deployments and core/v1 Services of a fake cluster (no cluster runs here), and the pods of
    each Deployment (its ``replicas``, labelled with the template's labels, following ``pods``). It plays
    the API server, the Deployment controller and the kubelet; ``KubeApiStandin`` serves it over HTTP.

    Created objects are validated as ``FakeCluster`` validates Jobs (``kubernetes-validate``, strict), and
    a Deployment whose selector does not select its template's labels is refused (422) as the API server
    refuses it. A duplicate name is 409 AlreadyExists, a missing one 404 NotFound. A Deployment deleted with
    ``propagationPolicy=Foreground`` is removed at once unless ``linger``: then it stays (being deleted,
    answered 202 with the object) and the next ``linger`` creates of its name still get 409, as while the
    garbage collector removes its ReplicaSet and pods."""

    def __init__(self, pods: ServerPods | None = None, linger: int = 0) -> None:
        self.plan, self.linger = pods or ServerPods(), linger
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, namespace, name) -> object
        self.pods: list[dict[str, Any]] = []
        self.created: list[str] = []  # "Kind/namespace/name" of every create call, conflicts included
        self.deleted: list[str] = []  # "Kind/namespace/name" of every delete call, 404s included
        self.polls = 0
        self.lock = threading.RLock()
        self.revision = 0

    @property
    def live(self) -> set[tuple[str, str, str]]:
        """(kind, namespace, name) of the objects there and not being deleted."""
        return {key for key, obj in self.objects.items() if obj["deleting"] is None}

    # --- objects

    def create(self, res: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = (body.get("metadata") or {}).get("name") or ""
        self.created.append(f"{res.kind}/{namespace}/{name}")
        _check_body(res, namespace, body)
        try:
            kubernetes_validate.validate(body, SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise res.invalid(name, _path(exc), exc.message) from None
        if not name:
            raise res.invalid(name, "metadata.name", "Required value: name or generateName is required")
        if res is DEPLOYMENTS:
            selector = body["spec"]["selector"].get("matchLabels") or {}
            labels = ((body["spec"]["template"].get("metadata") or {}).get("labels")) or {}
            if any(labels.get(k) != v for k, v in selector.items()):
                where = "spec.template.metadata.labels"
                raise res.invalid(name, where, f"{labels}: `selector` does not match template `labels`")
        if res is SERVICES and not body["spec"].get("ports"):
            raise res.invalid(name, "spec.ports", "Required value")
        key = (res.kind, namespace, name)
        if (old := self.objects.get(key)) is not None:
            if old["deleting"] is None:
                raise res.already_exists(name)
            if old["deleting"] > 0:
                old["deleting"] -= 1
                raise res.already_exists(name, "object is being deleted: ")
            self._remove(key)
        self.revision += 1
        obj = {
            "res": res,
            "body": copy.deepcopy(body),
            "uid": str(uuid.uuid4()),
            "rv": self.revision,
            "created": T0 + timedelta(minutes=len(self.created)),
            "polls": 0,
            "deleting": None,
            "cluster_ip": f"10.96.0.{len(self.created) + 10}",
        }
        self.objects[key] = obj
        if res is DEPLOYMENTS:
            for _ in range(body["spec"].get("replicas", 1)):
                self._add_pod(obj, namespace, name)
        return self._json(key)

    def _object(self, res: Resource, namespace: str, name: str) -> tuple[str, str, str]:
        key = (res.kind, namespace, name)
        if key not in self.objects:
            raise res.not_found(name)
        return key

    def read(self, res: Resource, namespace: str, name: str) -> dict[str, Any]:
        return self._json(self._object(res, namespace, name))

    def read_status(self, res: Resource, namespace: str, name: str) -> dict[str, Any]:
        """A Deployment's status read: one poll, which moves its pods along ``plan``."""
        key = self._object(res, namespace, name)
        self.polls += 1
        assert self.polls < 1000, "the client never stopped polling"
        self.objects[key]["polls"] += 1
        return self._json(key)

    def delete(
        self, res: Resource, namespace: str, name: str, policy: str | None
    ) -> tuple[int, dict[str, Any]]:
        self.deleted.append(f"{res.kind}/{namespace}/{name}")
        key = self._object(res, namespace, name)
        obj = self.objects[key]
        self.revision += 1
        if res is DEPLOYMENTS and policy == "Foreground" and self.linger and obj["deleting"] is None:
            obj["deleting"] = self.linger
            self._remove_pods(obj)
            return 202, self._json(key)
        out = self._json(key)
        self._remove(key)
        if res is SERVICES:  # the API server answers a Service's deletion with the object
            return 200, out
        details = {**res.details(name), "uid": obj["uid"]}
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    def _remove(self, key: tuple[str, str, str]) -> None:
        self._remove_pods(self.objects.pop(key))

    def _remove_pods(self, obj: dict[str, Any]) -> None:
        self.pods = [p for p in self.pods if p["owner"] != obj["uid"]]

    def _json(self, key: tuple[str, str, str]) -> dict[str, Any]:
        obj = self.objects[key]
        kind, namespace, name = key
        out = copy.deepcopy(obj["body"])
        out["metadata"] = {
            **out.get("metadata", {}),
            "name": name,
            "namespace": namespace,
            "uid": obj["uid"],
            "resourceVersion": str(obj["rv"]),
            "generation": 1,
            "creationTimestamp": _ts(obj["created"]),
        }
        if obj["deleting"] is not None:
            out["metadata"]["deletionTimestamp"] = _ts(obj["created"] + timedelta(minutes=30))
            out["metadata"]["deletionGracePeriodSeconds"] = 0
            out["metadata"]["finalizers"] = ["foregroundDeletion"]
        spec = out["spec"]
        if kind == "Service":  # the API server's defaults and the allocated address
            spec.update(clusterIP=obj["cluster_ip"], clusterIPs=[obj["cluster_ip"]], ipFamilies=["IPv4"])
            for key_, value in (
                ("type", "ClusterIP"),
                ("sessionAffinity", "None"),
                ("internalTrafficPolicy", "Cluster"),
            ):
                spec.setdefault(key_, value)
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            for port in spec["ports"]:
                port.setdefault("protocol", "TCP")
            out["status"] = {"loadBalancer": {}}
            return out
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault(
            "strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
        )
        template = spec["template"]["spec"]
        for key_, value in (
            ("restartPolicy", "Always"),
            ("dnsPolicy", "ClusterFirst"),
            ("schedulerName", "default-scheduler"),
        ):
            template.setdefault(key_, value)
        template.setdefault("terminationGracePeriodSeconds", 30)
        mine = [p for p in self.pods if p["owner"] == obj["uid"]]
        ready = sum(self._pod_phase(p)[1] for p in mine)
        when = _ts(obj["created"])
        available = {"type": "Available", "lastUpdateTime": when, "lastTransitionTime": when}
        if ready:
            available.update(
                status="True", reason="MinimumReplicasAvailable", message="Deployment has minimum availability."
            )
        else:
            available.update(
                status="False",
                reason="MinimumReplicasUnavailable",
                message="Deployment does not have minimum availability.",
            )
        rs = self._replica_set(obj, name)
        progressing = {
            "type": "Progressing",
            "status": "True",
            "lastUpdateTime": when,
            "lastTransitionTime": when,
            "reason": "NewReplicaSetAvailable" if ready else "ReplicaSetUpdated",
            "message": f'ReplicaSet "{rs}" ' + ("has successfully progressed." if ready else "is progressing."),
        }
        status: dict[str, Any] = {"observedGeneration": 1, "replicas": len(mine), "updatedReplicas": len(mine)}
        counts = (
            ("readyReplicas", ready),
            ("availableReplicas", ready),
            ("unavailableReplicas", len(mine) - ready),
        )
        status.update({k: v for k, v in counts if v})  # the API server leaves zeros out
        status["conditions"] = [available, progressing]
        out["status"] = status
        return out

    # --- pods

    @staticmethod
    def _replica_set(obj: dict[str, Any], name: str) -> str:
        return f"{name}-{uuid.UUID(obj['uid']).hex[:10]}"

    def _add_pod(self, obj: dict[str, Any], namespace: str, name: str) -> None:
        template = obj["body"]["spec"]["template"]
        rs = self._replica_set(obj, name)
        labels = {
            **((template.get("metadata") or {}).get("labels") or {}),
            "pod-template-hash": rs.rsplit("-", 1)[1],
        }
        spec = copy.deepcopy(template["spec"])
        spec.update(nodeName=f"a100-node-{len(self.pods)}", restartPolicy="Always")
        pod = {
            "name": f"{rs}-{uuid.uuid4().hex[:5]}",
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "owner": obj["uid"],
            "rs": rs,
            "labels": labels,
            "spec": spec,
            "created": obj["created"],
            "deployment": obj,
        }
        self.pods.append(pod)

    def _pod_phase(self, pod: dict[str, Any]) -> tuple[str, bool]:
        """Where the pod stands (``initializing``, ``starting``, ``ready`` or ``stuck``) and whether it is
        ready, from its Deployment's status polls."""
        polls, plan = pod["deployment"]["polls"], self.plan
        if plan.reason:
            return ("stuck" if polls >= 1 else "initializing"), False
        if plan.ready_after is not None and polls >= plan.ready_after:
            return "ready", True
        return ("starting" if polls >= 1 else "initializing"), False

    def _pod_json(self, pod: dict[str, Any]) -> dict[str, Any]:
        phase, ready = self._pod_phase(pod)
        plan, started = self.plan, _ts(pod["created"])
        init_names = [c["name"] for c in pod["spec"].get("initContainers") or []]
        stuck_init = phase == "stuck" and plan.container in init_names

        def status(container: dict[str, Any], init: bool) -> dict[str, Any]:
            cname = container["name"]
            out = {"name": cname, "image": container.get("image", ""), "imageID": "", "restartCount": 0}
            if phase == "stuck" and cname == plan.container:
                state = {
                    "waiting": {"reason": plan.reason, **({"message": plan.message} if plan.message else {})}
                }
                out["restartCount"] = plan.restarts
            elif phase == "initializing" or (stuck_init and not init):
                state = {"waiting": {"reason": "PodInitializing"}}
            elif init:
                state = {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": started,
                        "finishedAt": started,
                    }
                }
            else:
                state = {"running": {"startedAt": started}}
            if "running" in state or "terminated" in state:
                out["containerID"] = f"containerd://{pod['uid']}-{cname}"
            return {
                **out,
                "state": state,
                "ready": "terminated" in state if init else ready,
                "started": "running" in state,
            }

        containers = pod["spec"].get("containers") or []
        pod_phase = (
            "Running"
            if phase in ("starting", "ready")
            or (phase == "stuck" and not stuck_init and plan.reason == "CrashLoopBackOff")
            else "Pending"
        )
        conditions = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": str(phase != "initializing" and not stuck_init)},
            {"type": "ContainersReady", "status": str(ready)},
            {"type": "Ready", "status": str(ready)},
        ]
        owner = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": pod["rs"],
            "uid": pod["owner"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod["name"],
                "namespace": pod["namespace"],
                "uid": pod["uid"],
                "resourceVersion": str(self.revision),
                "creationTimestamp": started,
                "labels": dict(pod["labels"]),
                "ownerReferences": [owner],
            },
            "spec": copy.deepcopy(pod["spec"]),
            "status": {
                "phase": pod_phase,
                "conditions": conditions,
                "hostIP": "10.0.0.1",
                "podIP": f"10.1.1.{self.pods.index(pod) + 2}",
                "startTime": started,
                "qosClass": "BestEffort",
                "initContainerStatuses": [status(c, True) for c in pod["spec"].get("initContainers") or []],
                "containerStatuses": [status(c, False) for c in containers],
            },
        }

    def list_pods(
        self, namespace: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> dict[str, Any]:
        fields = _pod_fields(field_selector)
        pods = [
            p
            for p in self.pods
            if p["namespace"] == namespace
            and _selector_matches(label_selector or "", p["labels"])
            and fields.get("metadata.name", p["name"]) == p["name"]
            and fields.get("metadata.namespace", namespace) == namespace
        ]
        return _pod_list([self._pod_json(p) for p in pods], self.revision)

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        for pod in self.pods:
            if (pod["namespace"], pod["name"]) == (namespace, name):
                return self._pod_json(pod)
        raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})

    # --- REST

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any] | None:
        """The answer to a request for a Deployment or Service; None for other paths."""
        if m := _SERVICES.match(path):
            res, ns, name, status = SERVICES, m["ns"], m["name"], None
        elif (m := _OBJECTS.match(path)) and (m["group"], m["version"], m["plural"]) == (
            "apps",
            "v1",
            "deployments",
        ):
            res, ns, name, status = DEPLOYMENTS, m["ns"], m["name"], m["status"]
        else:
            return None
        if name is None and method == "POST":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the request body is not a JSON object")
            return 201, self.create(res, ns, body)
        if name is not None and method == "GET":
            return 200, (self.read_status(res, ns, name) if status else self.read(res, ns, name))
        if name is not None and not status and method == "DELETE":
            policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
            if policy is not None and policy not in _PROPAGATION:
                raise ApiError(400, "BadRequest", f"propagationPolicy {policy!r} is not one of {_PROPAGATION}")
            return self.delete(res, ns, name, policy)
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )


# --- The HTTP stand-in --------------------------------------------------------------------------------------


@dataclass
class Seen:
    """A request the stand-in answered: its method, path, query, JSON body and answer's status code."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    code: int = 0
    answer: Any = None  # the JSON answered (None for a log stream)


_POD_LOG = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$")
_POD = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+))?$")
_OBJECTS = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?P<status>/status)?)?$"
)
_SERVICES = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/services(?:/(?P<name>[^/]+))?$")
_PROPAGATION = ("Background", "Foreground", "Orphan")


_RESOURCE_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def _forbidden(rules: list[dict[str, Any]], user: str, method: str, path: str, query: dict[str, str]) -> None:
    """Refuses (403) a request that no RBAC rule of ``rules`` (a Role's) allows, as the authorizer does."""
    m = _RESOURCE_PATH.match(path)
    if m is None:
        raise ApiError(403, "Forbidden", f'forbidden: User "{user}" cannot {method.lower()} path "{path}"')
    group, resource = m["group"] or "", m["plural"] + (f"/{m['sub']}" if m["sub"] else "")
    if method == "GET":
        verb = "get" if m["name"] else ("watch" if _bool(query.get("watch")) else "list")
    elif method == "DELETE":
        verb = "delete" if m["name"] else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    for rule in rules:
        if (
            group in rule.get("apiGroups", [])
            and resource in rule.get("resources", [])
            and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
            and (not rule.get("resourceNames") or m["name"] in rule["resourceNames"])
        ):
            return
    qualified = m["plural"] + (f".{group}" if group else "")
    named = f'{qualified} "{m["name"]}"' if m["name"] else qualified
    where = f'resource "{resource}" in API group "{group}" in the namespace "{m["ns"]}"'
    details = {**({"name": m["name"]} if m["name"] else {}), "group": group, "kind": m["plural"]}
    raise ApiError(403, "Forbidden", f'{named} is forbidden: User "{user}" cannot {verb} {where}', details)


def _bool(value: str | None) -> bool:
    """A boolean query parameter, read as the API server (Go's ``strconv.ParseBool``) does."""
    if value is None:
        return False
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ApiError(400, "BadRequest", f'strconv.ParseBool: parsing "{value}": invalid syntax')


class _Logs(list):
    """A pod log to stream (chunked) instead of a JSON answer; ``cut``: lines after which the connection
    drops without the stream's end."""

    cut: int | None = None


class KubeApiStandin:
    """The Kubernetes REST API of ``cluster`` (Jobs or PyTorchJobs and their pods) and of ``servers``
    (Deployments, Services and their pods), either or both, served over HTTP on 127.0.0.1 (a free port) for
    the real ``kubernetes`` client; a bearer token is required, as from a kubeconfig's user. ``seen`` records
    every request; ``errors`` the stand-in's own failures (answered 500), which a test should expect to be
    empty. With ``rules`` (a Role's RBAC rules, bound to ``user``) a request that no rule allows is refused
    with 403 Forbidden, as the API server's authorizer refuses it.

    An interrupt of the Dagster run (``cluster.interrupt_at``) is delivered as it is on a real run
    termination, as SIGINT to the main thread, which Dagster turns into ``DagsterExecutionInterruptedError``
    while the step runs."""

    def __init__(
        self,
        cluster: FakeCluster | None = None,
        token: str = "phi-trainer-token",
        servers: FakeServers | None = None,
        rules: list[dict[str, Any]] | None = None,
        user: str = "system:serviceaccount:phi:phi-dagster",
    ) -> None:
        assert cluster is not None or servers is not None, "nothing to serve"
        self.cluster, self.token, self.servers, self.rules, self.user = cluster, token, servers, rules, user
        self.lock = cluster.lock if cluster is not None else servers.lock  # one request at a time
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._connections: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._main = threading.main_thread().ident

    @property
    def url(self) -> str:
        assert self._server is not None, "the stand-in is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "KubeApiStandin":
        standin = self

        class Handler(_Handler):
            pass

        Handler.standin = standin
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        if self.cluster is not None:
            self.cluster.on_interrupt = self._interrupt
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            for connection in self._connections:  # ends the threads waiting on kept-alive connections
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "KubeApiStandin":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, namespace: str = "phi") -> Path:
        """A kubeconfig whose current context reaches this stand-in with its token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "phi-trainer", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "phi-trainer", "namespace": namespace},
                }
            ],
            "current-context": "standin",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def requests(self, method: str | None = None, contains: str = "") -> list[Seen]:
        """The requests seen, optionally only those of ``method`` whose path contains ``contains``."""
        return [s for s in list(self.seen) if (method is None or s.method == method) and contains in s.path]

    def _interrupt(self) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if handler in (signal.default_int_handler, signal.SIG_DFL, signal.SIG_IGN, None):
            self.errors.append("an interrupt was due but no Dagster step is there to take it")
            return
        assert self._main is not None
        signal.pthread_kill(self._main, signal.SIGINT)

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        """The answer (status code, JSON or ``_Logs``) of the model to a REST request."""
        c = self.cluster
        if self.servers is not None and (answer := self.servers.route(method, path, query, body)) is not None:
            return answer
        if m := _POD_LOG.match(path):
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            if c is None:
                raise ApiError(400, "BadRequest", f"the stand-in keeps no log of pod {m['name']}")
            if query.get("container", CONTAINER) != CONTAINER:
                raise ApiError(
                    400, "BadRequest", f"container {query['container']} is not valid for pod {m['name']}"
                )
            pod = c._pod(m["ns"], m["name"])
            cut, running = pod.attempt.stream_cuts > 0, pod.state == "running"
            logs = _Logs(
                c.pod_log(m["ns"], m["name"], _bool(query.get("follow")), _bool(query.get("timestamps")))
            )
            if cut and running:
                pod.attempt.stream_cuts -= 1
                logs.cut = len(logs) // 2
            return 200, logs
        if m := _POD.match(path):
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            models = [x for x in (c, self.servers) if x is not None]
            if m["name"]:
                for model in models[:-1]:
                    with contextlib.suppress(ApiError):
                        return 200, model.read_pod(m["ns"], m["name"])
                return 200, models[-1].read_pod(m["ns"], m["name"])
            items = [
                pod
                for model in models
                for pod in model.list_pods(m["ns"], query.get("labelSelector"), query.get("fieldSelector"))[
                    "items"
                ]
            ]
            revision = max(model.revision for model in models)
            return 200, _pod_list(items, revision)
        m = _OBJECTS.match(path)
        res = c.resource if c is not None else None
        if (
            res is None
            or m is None
            or (m["group"], m["version"], m["plural"]) != (res.group, res.version, res.plural)
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns, name = m["ns"], m["name"]
        if name is None and method == "POST":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the request body is not a JSON object")
            return 201, c.create_object(ns, body)
        if name is not None and m["status"] and method == "GET":
            return 200, c.read_object_status(ns, name)
        if name is not None and not m["status"] and method == "GET":
            return 200, c.read_object(ns, name)
        if name is not None and not m["status"] and method == "DELETE":
            policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
            if policy is not None and policy not in _PROPAGATION:
                raise ApiError(400, "BadRequest", f"propagationPolicy {policy!r} is not one of {_PROPAGATION}")
            return 200, c.delete_object(ns, name)
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: KubeApiStandin

    def setup(self) -> None:
        super().setup()
        self.standin._connections.append(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # requests are kept in ``seen`` instead
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        seen = Seen(method, url.path, query, None)
        self.standin.seen.append(seen)
        try:
            try:
                seen.body = json.loads(raw) if raw else None
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"the request body is not JSON: {exc}") from None
            if self.headers.get("Authorization") != f"Bearer {self.standin.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if self.standin.rules is not None:
                _forbidden(self.standin.rules, self.standin.user, method, url.path, query)
            with self.standin.lock:
                code, answer = self.standin.route(method, url.path, query, seen.body)
        except ApiError as exc:
            code, answer = exc.code, exc.status()
        except Exception as exc:  # the stand-in's own failure (or a failed assertion in the model)
            self.standin.errors.append(f"{method} {self.path}: {traceback.format_exc()}")
            code, answer = 500, ApiError(500, "InternalError", f"stand-in error: {exc!r}").status()
        seen.code = code
        if isinstance(answer, _Logs):
            self._stream(answer)
            return
        seen.answer = answer
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, lines: _Logs) -> None:
        """A followed log, chunked as the API server streams it; every line arrives in two pieces, so the
        client has to put the lines back together."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i, line in enumerate(lines):
                if i == lines.cut:
                    self.close_connection = True  # no closing chunk: the client sees a broken stream
                    return
                cut = len(line) // 2
                for piece in (line[:cut], line[cut:]):
                    if piece:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


# --- Running the launcher -----------------------------------------------------------------------------------


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


def train(launcher: K8sTrainingLauncher, instance: dg.DagsterInstance | None = None) -> list:
    """Materializes an asset that trains through ``launcher`` (as the training assets do); its messages."""
    got: dict[str, list] = {}

    @dg.asset
    def trained(context: dg.AssetExecutionContext, launcher: K8sTrainingLauncher) -> dg.MaterializeResult:
        got["messages"] = launcher.run(context, CONFIG_URI, RUN_KEY)
        return dg.MaterializeResult(metadata={"messages": len(got["messages"])})

    result = dg.materialize([trained], resources={"launcher": launcher}, instance=instance)
    assert result.success
    return got["messages"]


def steps(*numbers: int, summary: int | None = None) -> list[dict]:
    out: list[dict] = [{"kind": "step", "step": n, "loss": round(4.0 / n, 3)} for n in numbers]
    return out + ([{"kind": "summary", "steps": summary}] if summary else [])


def user_logs(instance: dg.DagsterInstance) -> list[str]:
    (run,) = instance.get_runs()
    return [entry.user_message for entry in instance.all_logs(run.run_id)]


@contextlib.contextmanager
def serving(monkeypatch):
    """Yields ``start(*args, **kwargs)``, which starts a ``KubeApiStandin`` (its arguments) and returns it;
    on exit stops every one started and checks that none failed itself. The client talks to them directly
    (no proxy), not in-cluster, and its default configuration is restored afterwards."""
    import kubernetes

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    default = kubernetes.client.Configuration.get_default_copy()
    started: list[KubeApiStandin] = []

    def start(*args: Any, **kwargs: Any) -> KubeApiStandin:
        started.append(KubeApiStandin(*args, **kwargs).start())
        return started[-1]

    try:
        yield start
    finally:
        for api in started:
            api.stop()
        kubernetes.client.Configuration.set_default(default)
    for api in started:
        assert api.errors == []
