"""The stand-in's fake cluster of training Jobs or PyTorchJobs (``k8s_standin.py`` says how it behaves):
it plays the API server, the Job controller or the training operator, and the kubelet."""

import copy
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import dagster as dg
import kubernetes_validate

from k8s.training_workload import KubeApis
from tests.support.k8s_standin_api import (
    CONTAINER,
    JOBS,
    PYTORCHJOBS,
    RESOURCES,
    SCHEMA_VERSION,
    T0,
    ApiError,
    check_body,
    pod_fields,
    pod_list,
    selector_matches,
    to_model,
    ts,
    validation_path,
)
from tests.support.k8s_standin_attempts import Attempt, FakePod, plain_logs
from tests.support.k8s_standin_jobs_json import job_status_json, pod_json, pod_labels


def _interrupt_here() -> None:
    raise dg.DagsterExecutionInterruptedError()


class FakeCluster:
    """A fake Kubernetes cluster (no cluster runs here) running one kind of object, ``Job`` or
    ``PyTorchJob``, whose rank-0 attempts are ``attempts`` in order; see ``tests/support/k8s_standin.py``."""

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
        check_body(res, namespace, body)
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
                self._invalid(name, validation_path(exc, prefix), exc.message)
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
            "creationTimestamp": ts(obj["created"]),
        }
        if self.resource is JOBS:  # the API server's defaults and the Job controller's selector
            spec = out["spec"]
            for key, value in (("parallelism", 1), ("completions", 1), ("completionMode", "NonIndexed")):
                spec.setdefault(key, value)
            spec.setdefault("suspend", False)
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": obj["uid"]}}
            template = spec["template"].setdefault("metadata", {})
            template["labels"] = {**template.get("labels", {}), **pod_labels(self.resource, name, obj["uid"])}
        out["status"] = job_status_json(self.resource, name, obj, self.pods)
        return out

    # --- pods

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
        labels = pod_labels(self.resource, job, owner, role, index)
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

    def list_pods(
        self, namespace: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> dict[str, Any]:
        fields = pod_fields(field_selector)
        pods = [
            p
            for p in self.pods
            if p.namespace == namespace
            and selector_matches(label_selector or "", p.labels)
            and fields.get("metadata.name", p.name) == p.name
            and fields.get("metadata.namespace", p.namespace) == p.namespace
        ]
        return pod_list([pod_json(self.resource, p, self.pods.index(p)) for p in pods], self.revision)

    def pod_named(self, namespace: str, name: str) -> FakePod:
        pods = [p for p in self.pods if p.name == name and p.namespace == namespace]
        if not pods:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        return pods[-1]

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        pod = self.pod_named(namespace, name)
        return pod_json(self.resource, pod, self.pods.index(pod))

    def pod_log(self, namespace: str, name: str, follow: bool = True, timestamps: bool = True) -> list[bytes]:
        """The container's log; following a running container's log runs its attempt to the end."""
        pod = self.pod_named(namespace, name)
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
