"""The stand-in's model of the vLLM servers that ``resources/llm/k8s_backend.py`` starts for a trained
checkpoint (``tests/support/k8s_standin.py`` says how it behaves): apps/v1 Deployments, core/v1 Services and the
pods of each Deployment."""

import copy
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import kubernetes_validate

from tests.support.k8s_standin_api import (
    DEPLOYMENTS,
    OBJECTS_PATH,
    PROPAGATION,
    SCHEMA_VERSION,
    SERVICES,
    SERVICES_PATH,
    T0,
    ApiError,
    Resource,
    check_body,
    pod_fields,
    pod_list,
    selector_matches,
    ts,
    validation_path,
)


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
        check_body(res, namespace, body)
        try:
            kubernetes_validate.validate(body, SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise res.invalid(name, validation_path(exc), exc.message) from None
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
            "creationTimestamp": ts(obj["created"]),
        }
        if obj["deleting"] is not None:
            out["metadata"]["deletionTimestamp"] = ts(obj["created"] + timedelta(minutes=30))
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
        when = ts(obj["created"])
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

    def _pod_state(self, pod: dict[str, Any]) -> tuple[str, bool, bool]:
        """``_pod_phase``, and whether the container that is stuck is an init container."""
        phase, ready = self._pod_phase(pod)
        init_names = [c["name"] for c in pod["spec"].get("initContainers") or []]
        return phase, ready, phase == "stuck" and self.plan.container in init_names

    def _container_json(self, pod: dict[str, Any], container: dict[str, Any], init: bool) -> dict[str, Any]:
        """The status of one of the pod's containers (``init``: an init container)."""
        phase, ready, stuck_init = self._pod_state(pod)
        plan, started = self.plan, ts(pod["created"])
        cname = container["name"]
        out = {"name": cname, "image": container.get("image", ""), "imageID": "", "restartCount": 0}
        if phase == "stuck" and cname == plan.container:
            state = {"waiting": {"reason": plan.reason, **({"message": plan.message} if plan.message else {})}}
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

    def _pod_json(self, pod: dict[str, Any]) -> dict[str, Any]:
        phase, ready, stuck_init = self._pod_state(pod)
        plan, started = self.plan, ts(pod["created"])

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
                "initContainerStatuses": [
                    self._container_json(pod, c, True) for c in pod["spec"].get("initContainers") or []
                ],
                "containerStatuses": [self._container_json(pod, c, False) for c in containers],
            },
        }

    def list_pods(
        self, namespace: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> dict[str, Any]:
        fields = pod_fields(field_selector)
        pods = [
            p
            for p in self.pods
            if p["namespace"] == namespace
            and selector_matches(label_selector or "", p["labels"])
            and fields.get("metadata.name", p["name"]) == p["name"]
            and fields.get("metadata.namespace", namespace) == namespace
        ]
        return pod_list([self._pod_json(p) for p in pods], self.revision)

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        for pod in self.pods:
            if (pod["namespace"], pod["name"]) == (namespace, name):
                return self._pod_json(pod)
        raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})

    # --- REST

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any] | None:
        """The answer to a request for a Deployment or Service; None for other paths."""
        if m := SERVICES_PATH.match(path):
            res, ns, name, status = SERVICES, m["ns"], m["name"], None
        elif (m := OBJECTS_PATH.match(path)) and (m["group"], m["version"], m["plural"]) == (
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
            if policy is not None and policy not in PROPAGATION:
                raise ApiError(400, "BadRequest", f"propagationPolicy {policy!r} is not one of {PROPAGATION}")
            return self.delete(res, ns, name, policy)
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )


# --- The HTTP stand-in --------------------------------------------------------------------------------------
