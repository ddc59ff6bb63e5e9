"""A vLLM server of its own for one model, for as long as an engine needs it (``k8s`` profile).

The ``k8s`` profile's engine talks to the shared vLLM server (``phi-vllm``), which serves the generator
model. A trained checkpoint (``eval_scores`` of a training stage, ``preference_pairs``' SFT policy) needs a
server of its own: ``ServedModelBackend`` is the engine backend (``LLMEngine(backend="k8s-vllm")``) that,
when the engine first needs the model (a cache miss), creates a Deployment and Service for it on the GPU
pool (``VLLMServerSpec``, rendered by ``k8s/vllm_server.py``: its init container copies the Hugging Face
export from the object store), waits until a replica is ready, sends the requests through the
OpenAI-compatible HTTP backend, and deletes both objects when the engine closes (at the end of the step,
or when it fails).

A pod that cannot start (image pull, crash loop, unschedulable past the deadline) is reported by name
with its reason; the objects are deleted in every case.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from k8s.client import load_kube_config
from k8s.vllm_server import VLLMServerSpec, render
from resources.llm.http_backend import HTTPBackend, HTTPSettings
from resources.llm.types import ModelRef, Request, Result
from resources.llm.vllm_backend import EngineStartError

STUCK = {
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
}


class ServerApis(NamedTuple):
    apps: Any  # kubernetes.client.AppsV1Api
    core: Any  # kubernetes.client.CoreV1Api


def kube_apis() -> ServerApis:
    """In-cluster credentials inside a pod, the kube config elsewhere (as the training launcher loads them)."""
    import kubernetes

    load_kube_config()
    return ServerApis(apps=kubernetes.client.AppsV1Api(), core=kubernetes.client.CoreV1Api())


def _status(exc: Exception) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _stuck(pod: Any) -> str | None:
    """Why a pod will not become ready by waiting (None: it may still)."""
    status = _get(pod, "status")
    for c in [*(_get(status, "init_container_statuses") or []), *(_get(status, "container_statuses") or [])]:
        waiting = _get(_get(c, "state"), "waiting")
        reason = _get(waiting, "reason") if waiting else None
        if reason in STUCK and (reason != "CrashLoopBackOff" or (_get(c, "restart_count") or 0) >= 3):
            pod_name, message = _get(_get(pod, "metadata"), "name"), _get(waiting, "message") or "no message"
            return f"pod {pod_name} container {_get(c, 'name')} is {reason}: {message}"
    return None


class ServedModelBackend:
    """Engine backend: one vLLM server Deployment per model, started on first use, deleted on close."""

    def __init__(
        self,
        spec_for: Callable[[ModelRef], VLLMServerSpec],
        http: HTTPSettings,
        log: Any = None,
        apis: ServerApis | None = None,
        ready_timeout_s: float = 1800.0,
        poll_s: float = 5.0,
        url_for: Callable[[VLLMServerSpec], str] | None = None,
    ) -> None:
        self.spec_for, self.http_settings, self.log = spec_for, http, log
        self._apis, self.ready_timeout_s, self.poll_s = apis, ready_timeout_s, poll_s
        self.url_for = url_for or (lambda spec: spec.base_url)
        self._spec: VLLMServerSpec | None = None
        self._http: HTTPBackend | None = None
        self._model_path: str | None = None
        self.info: dict[str, Any] = {}

    @property
    def apis(self) -> ServerApis:
        if self._apis is None:
            self._apis = kube_apis()
        return self._apis

    def start(self, model: ModelRef) -> None:
        if self._http is not None and self._model_path == model.path:
            return
        self.close()
        if not model.path or "://" not in model.path:
            raise ValueError(
                f"model {model.name!r}: the k8s-vllm backend serves a Hugging Face directory on the "
                f"object store (an fsspec URI the server's pod can copy), got {model.path!r}"
            )
        spec = self.spec_for(model)
        t0 = time.monotonic()
        self._spec = spec
        deployment, service = render(spec)
        try:  # whatever fails from here on (the Service refused, a pod stuck), nothing is left behind
            self._create(self.apis.apps.create_namespaced_deployment, spec, deployment)
            self._create(self.apis.core.create_namespaced_service, spec, service)
            self._say(f"Created vLLM server {spec.namespace}/{spec.name} for {model.name} ({spec.model_uri})")
            self._wait_ready(spec)
            url = self.url_for(spec)
            self._http = HTTPBackend(dataclasses.replace(self.http_settings, base_url=url), log=self.log)
            self._http.start(model)
        except BaseException:
            self.close()
            raise
        self._model_path = model.path
        self.info = {
            "endpoint": url,
            "server": f"{spec.namespace}/{spec.name}",
            "startup_s": round(time.monotonic() - t0, 1),
        }
        self._say(f"vLLM server {spec.name} ready in {self.info['startup_s']} s")

    def generate(self, model: ModelRef, batch: list[tuple[str, Request]]) -> list[Result]:
        self.start(model)
        assert self._http is not None
        return self._http.generate(model, batch)

    def close(self) -> None:
        spec, http = self._spec, self._http
        self._spec = self._http = self._model_path = None
        if http is not None:
            http.close()
        if spec is None:
            return
        for delete in (self.apis.apps.delete_namespaced_deployment, self.apis.core.delete_namespaced_service):
            try:
                delete(spec.name, spec.namespace, propagation_policy="Foreground")
            except Exception as exc:
                if _status(exc) != 404:
                    raise
        self._say(f"Deleted vLLM server {spec.namespace}/{spec.name}")

    # -- internals --------------------------------------------------------------------------------------
    def _create(self, create: Callable[..., Any], spec: VLLMServerSpec, body: dict[str, Any]) -> None:
        try:
            create(spec.namespace, body)
        except Exception as exc:  # a leftover of a step that died: replace it with this model's
            if _status(exc) != 409:
                raise
            kind = body["kind"]
            self._say(f"{kind} {spec.namespace}/{spec.name} exists (a run that died?): replacing it")
            delete = (
                self.apis.apps.delete_namespaced_deployment
                if kind == "Deployment"
                else self.apis.core.delete_namespaced_service
            )
            delete(spec.name, spec.namespace, propagation_policy="Foreground")
            deadline = time.monotonic() + 120
            while True:
                try:
                    create(spec.namespace, body)
                    return
                except Exception as again:
                    if _status(again) != 409 or time.monotonic() > deadline:
                        raise
                time.sleep(self.poll_s)

    def _wait_ready(self, spec: VLLMServerSpec) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        selector = ",".join(f"{k}={v}" for k, v in spec.labels().items())
        described = ""
        while True:
            status = _get(self.apis.apps.read_namespaced_deployment_status(spec.name, spec.namespace), "status")
            if (_get(status, "ready_replicas") or _get(status, "readyReplicas") or 0) >= 1:
                return
            pods = (
                _get(self.apis.core.list_namespaced_pod(spec.namespace, label_selector=selector), "items") or []
            )
            for pod in pods:
                if stuck := _stuck(pod):
                    raise EngineStartError(f"vLLM server {spec.namespace}/{spec.name}: {stuck}")
            now = f"{len(pods)} pod(s), none ready"
            if now != described:
                self._say(f"Waiting for vLLM server {spec.name}: {now}")
                described = now
            if time.monotonic() > deadline:
                raise EngineStartError(
                    f"vLLM server {spec.namespace}/{spec.name} was not ready within "
                    f"{self.ready_timeout_s:g} s ({now}); see `kubectl -n {spec.namespace} "
                    f"describe deploy/{spec.name}`"
                )
            time.sleep(self.poll_s)

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log.info(message)
