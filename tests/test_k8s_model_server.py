"""``ServedModelBackend``: a trained checkpoint's own vLLM server on the cluster, while an engine needs it.

No Kubernetes cluster runs on these machines. The backend is left as it is and talks through the real
``kubernetes`` client (a kubeconfig, a bearer token, REST, JSON, ``ApiException``) to ``KubeApiStandin``
(``tests/support/k8s_standin.py``), a local stand-in of the Kubernetes API that serves ``FakeServers``: the
Deployments and Services created, validated against the Kubernetes schemas, and the pods of each
Deployment, which become ready after some status polls or stay stuck as a test says. Unless a test says
otherwise the stand-in also enforces the RBAC Role the project renders (``k8s.deploy.rbac``), so the
backend does nothing the step pods' service account may not do. A pod cannot serve the model here, so
``url_for`` sends the engine's requests to the real vLLM OpenAI-compatible server that the ``vllm_server``
fixture starts on loopback with the default small model; the completions are real.
"""

import copy
import json
import re
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from k8s.deploy import PROFILES, DeploymentProfile, rbac
from k8s.security import violations
from k8s.vllm_server import MODEL_MOUNT, VLLMServerSpec, render
from resources import ArtifactStore
from resources.llm import Engine, ModelRef, Request
from resources.llm.engine import LLMEngine
from resources.llm.http_backend import HTTPSettings
from resources.llm.k8s_backend import ServedModelBackend, ServerApis
from resources.llm.vllm_backend import EngineStartError
from tests.support.k8s_standin import FakeServers, KubeApiStandin, ServerPods, serving
from tests.support.vllm import VLLM_API_KEY, VLLM_SERVED

VERSION = "0f3a9c1d"
URI = f"s3://bucket/phi/artifacts/sft_checkpoint/__all__/{VERSION}/hf"
MODEL = ModelRef(name="sft_checkpoint", version=VERSION, path=URI, served_name=VLLM_SERVED)
MAX_MODEL_LEN = 512
DEPLOYMENTS = "/apis/apps/v1/namespaces/phi/deployments"
SERVICES = "/api/v1/namespaces/phi/services"
PODS = "/api/v1/namespaces/phi/pods"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUESTION = Request.chat("What is the capital of France? Answer in one word.", max_tokens=16)
NOWHERE = "http://127.0.0.1:9/v1"  # for tests whose engine never gets as far as the model's server
ROLE_RULES = rbac(PROFILES["a100x8"])[0]["rules"]  # the Role bound to the step pods' service account


def spec_for(model: ModelRef) -> VLLMServerSpec:
    """What ``LLMEngine(backend="k8s-vllm")`` wires on the ``a100x8`` profile, in float32."""
    return PROFILES["a100x8"].model_server(model, MAX_MODEL_LEN, "float32")


NAME = spec_for(MODEL).name


@pytest.fixture
def standin(monkeypatch):
    """Starts stand-ins of the Kubernetes API serving ``FakeServers``, enforcing the project's Role unless
    told otherwise (``k8s_standin.serving``: stopped and checked afterwards)."""
    with serving(monkeypatch) as start:
        yield lambda servers, rules=ROLE_RULES: start(servers=servers, rules=rules)


def apis_for(api: KubeApiStandin, tmp_path: Path) -> ServerApis:
    """The real client's API objects, configured from a kubeconfig that points at the stand-in."""
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    return ServerApis(apps=kubernetes.client.AppsV1Api(client), core=kubernetes.client.CoreV1Api(client))


def backend_for(api: KubeApiStandin, tmp_path: Path, base_url: str, **settings: Any) -> ServedModelBackend:
    """The backend on the stand-in, whose requests go to the real OpenAI-compatible server at ``base_url``."""
    settings = {"spec_for": spec_for, "ready_timeout_s": 30.0, "poll_s": 0.05, **settings}
    return ServedModelBackend(
        http=HTTPSettings(base_url="http://set-when-the-server-is-ready/v1", api_key=VLLM_API_KEY),
        apis=apis_for(api, tmp_path),
        url_for=lambda spec: base_url,
        **settings,
    )


def calls(api: KubeApiStandin, name: str = NAME, since: int = 0) -> list[tuple[str, str, int]]:
    """(method, kind, status code) of the requests for the Deployment and Service named ``name``, from the
    ``since``-th request on."""
    out = []
    for seen in api.seen[since:]:
        kind = "Deployment" if seen.path.startswith(DEPLOYMENTS) else "Service" if SERVICES in seen.path else ""
        named = seen.path.split("/")[-2 if seen.path.endswith("/status") else -1] == name
        if kind and (named or (seen.method == "POST" and seen.body["metadata"]["name"] == name)):
            out.append((seen.method, kind, seen.code))
    return out


def listed_pods(api: KubeApiStandin) -> list[dict[str, Any]]:
    """The pods the stand-in answered to pod lists (the last list's)."""
    lists = [s for s in api.requests("GET", PODS) if s.path == PODS]
    assert lists, "the backend never listed the server's pods"
    return lists[-1].answer["items"]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_an_engine_generates_through_a_server_of_its_own_and_deletes_it(standin, tmp_path, vllm_server):
    """No cluster runs here; the Kubernetes API is a local stand-in, and the OpenAI-compatible server is
    the real vLLM server of the ``vllm_server`` fixture. On the engine's first cache miss the backend
    creates the model's Deployment (1 GPU on the A100 nodes, the object-store URI copied by an init
    container into the directory ``vllm`` serves, float32, the given context length, restricted pod
    security) and its Service, polls until a replica is ready, gets a real completion for the model's
    served name, reuses the server for the next call, and deletes both objects when the engine closes."""
    servers = FakeServers(ServerPods(ready_after=3))
    api = standin(servers)
    backend = backend_for(api, tmp_path, vllm_server)

    with Engine(backend, None) as engine:
        (answer,) = engine.generate(MODEL, [QUESTION]).results
        assert answer.ok and "paris" in answer.text.lower(), answer
        assert servers.live == {("Deployment", "phi", NAME), ("Service", "phi", NAME)}
        (again,) = engine.generate(MODEL, [Request.completion("def add(a, b):\n", max_tokens=8)]).results
        assert again.ok and again.num_generated_tokens > 0
        assert [s.code for s in api.requests("POST")] == [201, 201]  # the second call reused the server
        assert backend.info["server"] == f"phi/{NAME}" and backend.info["endpoint"] == vllm_server

    (deployment,) = api.requests("POST", DEPLOYMENTS)
    assert deployment.path == DEPLOYMENTS and deployment.body["metadata"]["name"] == NAME
    pod = deployment.body["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    (init,) = pod["initContainers"]
    assert (
        server["resources"]["limits"]["nvidia.com/gpu"]
        == 1
        == server["resources"]["requests"]["nvidia.com/gpu"]
    )
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    args = server["args"]
    assert flag(args, "--model") == f"{MODEL_MOUNT}/model" and flag(args, "--served-model-name") == VLLM_SERVED
    assert flag(args, "--dtype") == "float32" and flag(args, "--max-model-len") == str(MAX_MODEL_LEN)
    assert init["command"][-2:] == [URI, f"{MODEL_MOUNT}/model"]  # copies exactly the model's URI there
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert (
        mounts["models"] == MODEL_MOUNT == {m["name"]: m["mountPath"] for m in server["volumeMounts"]}["models"]
    )
    assert violations(pod) == []

    (service,) = api.requests("POST", SERVICES)
    assert (service.path, service.code, service.body["metadata"]["name"]) == (SERVICES, 201, NAME)
    assert service.body["spec"]["selector"] == deployment.body["spec"]["template"]["metadata"]["labels"]
    (port,) = service.body["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in server["ports"]}

    # it polled the Deployment's status until the third poll found a ready replica, listing its pods by label
    assert len(api.requests("GET", f"{DEPLOYMENTS}/{NAME}/status")) == 3
    selector = ",".join(f"{k}={v}" for k, v in spec_for(MODEL).labels().items())
    assert {s.query["labelSelector"] for s in api.requests("GET", PODS)} == {selector}
    (listed,) = listed_pods(api)
    assert listed["metadata"]["name"].startswith(f"{NAME}-")

    assert calls(api)[-2:] == [("DELETE", "Deployment", 200), ("DELETE", "Service", 200)]
    assert {s.query.get("propagationPolicy") for s in api.requests("DELETE")} == {"Foreground"}
    assert servers.objects == {} and servers.pods == []
    assert all(s.code not in (401, 403) for s in api.seen)  # the token was sent; the Role allows all of it


def test_the_server_is_named_after_the_model_with_the_profiles_settings():
    """No cluster runs here (nothing is created). The spec of a model's server comes from the deployment
    profile: a DNS label derived from the model's name (distinct per model, stable per name, at most 63
    characters even for long or odd names), the profile's namespace, loader image and object-store
    Secret, and the model's URI, served name, context length and dtype."""
    profile = PROFILES["a100x8"]
    spec = spec_for(MODEL)
    assert (
        DNS_LABEL.match(spec.name) and len(spec.name) <= 63 and spec.name.startswith("phi-vllm-sft-checkpoint-")
    )
    assert (
        spec_for(MODEL).name
        == spec.name
        != spec_for(ModelRef(name="dpo_checkpoint", version=VERSION, path=URI)).name
    )
    odd = ModelRef(name="Stage 2 / SFT_Checkpoint." * 6, version=VERSION, path=URI)
    assert DNS_LABEL.match(spec_for(odd).name) and len(spec_for(odd).name) <= 63
    assert (spec.namespace, spec.loader_image, spec.env_from_secrets) == (
        profile.namespace,
        profile.image,
        (profile.object_store_secret,),
    )
    assert (spec.model_uri, spec.served_name, spec.max_model_len, spec.dtype, spec.replicas, spec.gpus) == (
        URI,
        VLLM_SERVED,
        MAX_MODEL_LEN,
        "float32",
        1,
        1,
    )


@pytest.mark.parametrize(
    ("container", "reason", "restarts"),
    [("vllm", "ImagePullBackOff", 0), ("fetch-model", "ErrImagePull", 0), ("vllm", "CrashLoopBackOff", 3)],
)
def test_a_stuck_pod_fails_fast_naming_the_pod_and_both_objects_are_deleted(
    standin, tmp_path, container, reason, restarts
):
    """No cluster runs here; the Kubernetes API is a local stand-in, and the engine never gets as far as an
    OpenAI-compatible server. The server's pod is stuck: an image that cannot be pulled (the server's or the
    model loader's), or a container that keeps crashing. Without waiting for the deadline the engine raises
    ``EngineStartError`` naming the pod, the container, the reason and the kubelet's message, and the
    Deployment and Service are deleted before the error reaches the caller."""
    message = f'Back-off pulling image "vllm/vllm-openai:v0.32.0" ({reason})'
    servers = FakeServers(ServerPods(reason=reason, message=message, container=container, restarts=restarts))
    api = standin(servers)
    backend = backend_for(api, tmp_path, NOWHERE, ready_timeout_s=60.0)

    engine = Engine(backend, None)
    t0 = time.monotonic()
    with pytest.raises(EngineStartError) as failed:
        engine.generate(MODEL, [QUESTION])

    assert time.monotonic() - t0 < 20
    (pod,) = listed_pods(api)
    text = str(failed.value)
    assert f"pod {pod['metadata']['name']} container {container} is {reason}: {message}" in text
    assert f"phi/{NAME}" in text
    assert len(api.requests("GET", f"{DEPLOYMENTS}/{NAME}/status")) == 1  # the first poll saw it
    assert calls(api)[-2:] == [("DELETE", "Deployment", 200), ("DELETE", "Service", 200)]
    assert servers.objects == {}
    engine.close()  # nothing left to delete
    assert len(api.requests("DELETE")) == 2


def test_a_server_that_never_gets_ready_times_out_with_a_clear_error(standin, tmp_path):
    """No cluster runs here; the Kubernetes API is a local stand-in, and the engine never gets as far as an
    OpenAI-compatible server. The pod runs but its server never becomes ready (a container restarting
    fewer than three times is not yet taken for a crash loop), so after ``ready_timeout_s`` the
    engine raises ``EngineStartError`` saying which server, how long it waited, what it saw and how to
    look further; both objects are deleted."""
    servers = FakeServers(ServerPods(reason="CrashLoopBackOff", message="back-off 10s", restarts=1))
    api = standin(servers)
    backend = backend_for(api, tmp_path, NOWHERE, ready_timeout_s=0.5)

    t0 = time.monotonic()
    with Engine(backend, None) as engine, pytest.raises(EngineStartError) as failed:
        engine.generate(MODEL, [QUESTION])

    waited = time.monotonic() - t0
    assert 0.5 <= waited < 15
    text = str(failed.value)
    assert f"vLLM server phi/{NAME} was not ready within 0.5 s (1 pod(s), none ready)" in text
    assert f"kubectl -n phi describe deploy/{NAME}" in text
    assert len(api.requests("GET", f"{DEPLOYMENTS}/{NAME}/status")) >= 5  # it kept polling until then
    assert ("DELETE", "Deployment", 200) in calls(api) and ("DELETE", "Service", 200) in calls(api)
    assert servers.objects == {}


def test_a_leftover_server_of_the_same_name_is_replaced(standin, tmp_path, vllm_server):
    """No cluster runs here; the Kubernetes API is a local stand-in, and the OpenAI-compatible server is
    the real vLLM server of the ``vllm_server`` fixture. A step that died left the model's Deployment
    (with an older export) and Service behind. The backend's creates get 409 AlreadyExists; it deletes
    each one (foreground), retries while the Deployment is still being deleted, creates this model's, and
    generates through it."""
    servers = FakeServers(ServerPods(ready_after=1), linger=1)
    api = standin(servers)
    old = ModelRef(
        name=MODEL.name, version="older", path=URI.replace(VERSION, "older"), served_name=VLLM_SERVED
    )
    earlier = apis_for(api, tmp_path)
    left_deployment, left_service = render(spec_for(old))
    earlier.apps.create_namespaced_deployment("phi", left_deployment)
    earlier.core.create_namespaced_service("phi", left_service)
    first = len(api.seen)
    backend = backend_for(api, tmp_path, vllm_server)

    with Engine(backend, None) as engine:
        (answer,) = engine.generate(MODEL, [QUESTION]).results
        assert answer.ok and "paris" in answer.text.lower()
        assert servers.live == {("Deployment", "phi", NAME), ("Service", "phi", NAME)}
        stored = servers.objects[("Deployment", "phi", NAME)]["body"]
        assert stored["spec"]["template"]["spec"]["initContainers"][0]["command"][-2] == URI

    mine = [(method, kind, code) for method, kind, code in calls(api, since=first) if method != "GET"]
    assert mine[: mine.index(("POST", "Service", 201)) + 1] == [
        ("POST", "Deployment", 409),
        ("DELETE", "Deployment", 202),  # foreground: the Deployment stays until its pods are gone
        ("POST", "Deployment", 409),
        ("POST", "Deployment", 201),
        ("POST", "Service", 409),
        ("DELETE", "Service", 200),
        ("POST", "Service", 201),
    ]
    conflict = next(s for s in api.requests("POST", DEPLOYMENTS) if s.code == 409)
    assert conflict.answer["reason"] == "AlreadyExists" and conflict.answer["kind"] == "Status"
    assert servers.live == set()  # the engine's close deleted this model's server as well


def test_a_model_path_that_is_not_a_uri_is_refused_before_anything_is_created(standin, tmp_path):
    """No cluster runs here; the Kubernetes API is a local stand-in. A server's pod can only copy the
    model from the object store, so a local path (or none) is refused with a ValueError naming the model,
    and nothing is sent to the API."""
    api = standin(FakeServers())
    backend = backend_for(api, tmp_path, NOWHERE)
    for path in ("/tmp/phi/artifacts/sft_checkpoint/hf", None):
        local = ModelRef(name="sft_checkpoint", version=VERSION, path=path, served_name=VLLM_SERVED)
        with Engine(backend, None) as engine, pytest.raises(ValueError, match="'sft_checkpoint'.*object store"):
            engine.generate(local, [QUESTION])
    assert api.seen == []


def test_a_refused_service_deletes_the_deployment_at_once(standin, tmp_path):
    """No cluster runs here; the Kubernetes API is a local stand-in whose RBAC Role lacks ``create`` on
    Services. Creating the Service fails with 403 Forbidden; the error reaches the caller, and the
    Deployment already created (which holds a GPU) is deleted at once, not when the engine closes."""
    rules = [
        {**rule, "verbs": [v for v in rule["verbs"] if v != "create"]}
        if rule["resources"] == ["services"]
        else rule
        for rule in ROLE_RULES
    ]
    servers = FakeServers()
    api = standin(servers, rules)
    engine = Engine(backend_for(api, tmp_path, NOWHERE), None)

    with pytest.raises(kubernetes.client.ApiException) as refused:
        engine.generate(MODEL, [QUESTION])

    message = json.loads(refused.value.body)["message"]
    assert refused.value.status == 403 and 'cannot create resource "services"' in message
    assert servers.objects == {}
    assert [c for c in calls(api) if c[0] != "GET"] == [
        ("POST", "Deployment", 201),
        ("POST", "Service", 403),
        ("DELETE", "Deployment", 200),
        ("DELETE", "Service", 404),
    ]
    engine.close()


def test_llm_engine_builds_the_backend_from_the_deployment_profile(standin, tmp_path, vllm_server, monkeypatch):
    """No cluster runs here; the Kubernetes API is a local stand-in, and the OpenAI-compatible server is
    the real vLLM server of the ``vllm_server`` fixture. ``LLMEngine(backend="k8s-vllm")`` builds a
    ``ServedModelBackend`` whose servers follow the deployment profile named by ``PHI_K8S_PROFILE`` (here
    a site's own: another namespace and GPU product) and the engine's context length and dtype; the model
    is served under its own name (``model_for``). With the kube config (``kube_apis``) pointing at the
    stand-in, it generates a real completion and deletes the server when the resource closes."""
    site = DeploymentProfile(name="site-h100", namespace="phi-site", gpu_product="NVIDIA-H100-80GB-HBM3")
    monkeypatch.setitem(PROFILES, site.name, site)
    monkeypatch.setenv("PHI_K8S_PROFILE", site.name)
    llm = LLMEngine(
        store=ArtifactStore(root=str(tmp_path / "artifacts")),
        backend="k8s-vllm",
        api_key=VLLM_API_KEY,
        max_model_len=MAX_MODEL_LEN,
        dtype="float32",
        use_cache=False,
    )
    model = llm.model_for(VLLM_SERVED, VERSION, URI)
    assert (model.name, model.served_name, model.path) == (VLLM_SERVED, VLLM_SERVED, URI)

    backend = llm.engine().backend
    assert isinstance(backend, ServedModelBackend)
    spec = backend.spec_for(model)
    assert (spec.namespace, spec.node_selector) == (
        "phi-site",
        {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    )
    assert (spec.model_uri, spec.served_name, spec.max_model_len, spec.dtype) == (
        URI,
        VLLM_SERVED,
        MAX_MODEL_LEN,
        "float32",
    )
    assert DNS_LABEL.match(spec.name) and spec.name.startswith("phi-vllm-smol-")
    assert spec != PROFILES["a100x8"].model_server(model, MAX_MODEL_LEN, "float32")

    servers = FakeServers(ServerPods(ready_after=2))
    api = standin(servers, rules=rbac(site)[0]["rules"])
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace="phi-site")
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    backend.url_for = lambda spec: vllm_server
    backend.poll_s = 0.05
    try:
        (answer,) = llm.generate(model, [QUESTION]).results
        assert answer.ok and "paris" in answer.text.lower()
        assert llm.describe()["llm_server"] == f"phi-site/{spec.name}"
    finally:
        llm.close()

    (deployment,) = api.requests("POST", "/deployments")
    assert deployment.path == "/apis/apps/v1/namespaces/phi-site/deployments" and deployment.code == 201
    pod = deployment.body["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert flag(pod["containers"][0]["args"], "--served-model-name") == VLLM_SERVED
    assert [s.path for s in api.requests("DELETE")] == [
        f"/apis/apps/v1/namespaces/phi-site/deployments/{spec.name}",
        f"/api/v1/namespaces/phi-site/services/{spec.name}",
    ]
    assert servers.objects == {}


def test_the_standin_refuses_what_an_api_server_refuses(standin, tmp_path):
    """No cluster runs here; the Kubernetes API is a local stand-in, and this checks the stand-in itself
    through the real client: a Deployment with a misspelt field or a selector that does not select its
    pods, and a Service without ports, are refused with 422 and the field's path; a missing object is 404
    NotFound; outside the Role, 403. So the objects the other tests create passed the schemas."""
    api = standin(FakeServers())
    apis = apis_for(api, tmp_path)
    deployment, service = render(spec_for(MODEL))

    def refused(call, *args) -> dict[str, Any]:
        with pytest.raises(kubernetes.client.ApiException) as failed:
            call(*args)
        return {**json.loads(failed.value.body), "http_status": failed.value.status}

    misspelt = copy.deepcopy(deployment)
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    answer = refused(apis.apps.create_namespaced_deployment, "phi", misspelt)
    assert (answer["http_status"], answer["reason"]) == (422, "Invalid")
    assert answer["details"]["causes"][0]["field"] == "spec.template.spec.containers[0]"
    assert "resource" in answer["message"]

    unselected = copy.deepcopy(deployment)
    unselected["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "another"
    answer = refused(apis.apps.create_namespaced_deployment, "phi", unselected)
    assert answer["http_status"] == 422 and "selector` does not match template `labels" in answer["message"]

    portless = copy.deepcopy(service)
    del portless["spec"]["ports"]
    answer = refused(apis.core.create_namespaced_service, "phi", portless)
    assert (answer["http_status"], answer["details"]["causes"][0]["field"]) == (422, "spec.ports")

    answer = refused(apis.apps.read_namespaced_deployment_status, NAME, "phi")
    assert (answer["http_status"], answer["kind"], answer["reason"]) == (404, "Status", "NotFound")
    assert answer["message"] == f'deployments.apps "{NAME}" not found'
    answer = refused(apis.core.delete_namespaced_service, NAME, "phi")
    assert (answer["http_status"], answer["message"]) == (404, f'services "{NAME}" not found')

    answer = refused(apis.core.list_namespaced_service, "phi")  # the Role lets the steps list no Services
    assert (answer["http_status"], answer["reason"]) == (403, "Forbidden")
    assert 'cannot list resource "services" in API group "" in the namespace "phi"' in answer["message"]
