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

``FakeServers`` is the model of the vLLM servers that ``resources/llm/k8s_backend.py`` starts for a trained
checkpoint: apps/v1 Deployments, core/v1 Services and the pods of each Deployment, which become ready after
a number of the Deployment's status polls or stay stuck waiting (``ImagePullBackOff``, ...) as
``ServerPods`` says. ``KubeApiStandin`` serves it on its own or beside a ``FakeCluster``.

Created objects are validated offline against the Kubernetes schemas (``kubernetes-validate``, strict) and
refused with 422 when invalid. That is stricter than a real API server, which by default only warns about
unknown fields and drops them, so a misspelt field fails here instead of being silently ignored.

The modules: ``k8s_standin_api`` (kinds, errors, selectors, REST paths), ``k8s_standin_attempts`` (the
training process's attempts and logs), ``k8s_standin_cluster`` and ``k8s_standin_jobs_json`` (the Jobs and
PyTorchJobs), ``k8s_standin_servers`` (the model servers), ``k8s_standin_http`` (``KubeApiStandin``); this
module names what the tests use and runs the launcher.
"""

import contextlib
from typing import Any

import dagster as dg

from resources.launcher import K8sTrainingLauncher
from tests.support.k8s_standin_api import ApiError, Resource, to_model
from tests.support.k8s_standin_attempts import (
    STANDIN,
    Attempt,
    FakePod,
    crashed_session_env,
    entrypoint_logs,
    kube_log,
    plain_logs,
    rank0_env,
)
from tests.support.k8s_standin_cluster import FakeCluster
from tests.support.k8s_standin_http import KubeApiStandin, Seen
from tests.support.k8s_standin_servers import FakeServers, ServerPods

CONFIG_URI = "s3://bucket/phi/runs/pretrained_checkpoint-0f3a/config.json"
RUN_KEY = "pretrained_checkpoint-0f3a9c"


# --- Running the launcher -----------------------------------------------------------------------------------


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


__all__ = [
    "CONFIG_URI",
    "RUN_KEY",
    "STANDIN",
    "ApiError",
    "Attempt",
    "FakeCluster",
    "FakePod",
    "FakeServers",
    "KubeApiStandin",
    "Resource",
    "Seen",
    "ServerPods",
    "crashed_session_env",
    "entrypoint_logs",
    "kube_log",
    "plain_logs",
    "rank0_env",
    "serving",
    "steps",
    "to_model",
    "train",
    "user_logs",
]
