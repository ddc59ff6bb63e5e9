"""Kubernetes deployment: the manifests, Helm values, step pods and images rendered from one profile.

No cluster runs on these machines: every manifest is validated offline against the Kubernetes schemas of
the profile's pinned version (``kubernetes-validate``), the step pods are built by dagster-k8s' own
``construct_dagster_k8s_job`` (what ``k8s_job_executor`` creates on a cluster), and the images are
checked as files (no Docker daemon here to build them).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import tomllib
from ipaddress import ip_address, ip_network
from pathlib import Path

import dagster as dg
import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient

from k8s import steps
from k8s.deploy import (
    GPU_POOL,
    GPU_POOL_TAG,
    PROFILES,
    SANDBOX_ALLOW_ENV,
    DeploymentProfile,
    get_profile,
    manifests,
    network_policies,
    pod_specs,
    sandbox_service,
)
from k8s.helm import DAGSTER_VERSION, helm_values
from k8s.security import violations
from k8s.training_job import job_manifest, pytorchjob_manifest
from phi_assets.sandbox import ALLOW_UNISOLATED_ENV
from phi_assets.sandbox.policy import unisolated_allowed
from resources import ArtifactStore, build_llm, build_training_launcher, load_profile
from resources.launcher import K8sTrainingLauncher

ROOT = Path(__file__).resolve().parents[1]
K8S_ENV = {"PHI_PROFILE": "k8s", "PHI_ARTIFACT_ROOT": "s3://b/phi/artifacts", "PHI_LANDING_ROOT": "s3://b/l"}


def render_stream(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "k8s.render", *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout


@pytest.fixture(scope="module", params=sorted(PROFILES))
def profile(request) -> DeploymentProfile:
    return PROFILES[request.param]


@pytest.fixture(scope="module")
def stream(profile) -> list[dict]:
    return list(yaml.safe_load_all(render_stream("--profile", profile.name)))


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def test_the_render_command_prints_every_manifest_and_each_validates(profile, stream):
    assert stream == manifests(profile)  # the CLI prints exactly what the code renders
    kinds = {o["kind"] for o in stream}
    assert {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "ResourceQuota",
        "NetworkPolicy",
        "Deployment",
        "Service",
        "PodTemplate",
    } <= kinds
    for obj in stream:
        kubernetes_validate.validate(obj, f"{profile.kubernetes_version}.0", strict=True)
    assert all(o["metadata"].get("namespace", profile.namespace) == profile.namespace for o in stream)


def test_the_namespace_enforces_the_restricted_standard_and_every_pod_meets_it(profile, stream):
    ns = by_kind(stream, "Namespace")[0]["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "restricted"
    assert ns["pod-security.kubernetes.io/enforce-version"] == f"v{profile.kubernetes_version}"
    pods = [pod for obj in stream for pod in pod_specs(obj)]
    assert len(pods) == 3  # the sandbox, the vLLM server, the training pod
    for pod in pods:
        assert violations(pod) == []
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True  # writes go to emptyDirs
        assert pod["automountServiceAccountToken"] is False  # none of them talks to the Kubernetes API


def test_the_pod_security_check_catches_what_admission_would_refuse():
    pod = job_manifest(PROFILES["a100x8"].training(), "phi-train-x", ["--config", "c"], {})["spec"]["template"]
    assert violations(pod["spec"]) == []
    broken = json.loads(json.dumps(pod["spec"]))
    broken["containers"][0]["securityContext"].pop("allowPrivilegeEscalation")
    broken["containers"][0]["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    broken["securityContext"].pop("seccompProfile")
    broken["containers"][0]["securityContext"].pop("seccompProfile")
    broken["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    found = "\n".join(violations(broken))
    for reason in ("allowPrivilegeEscalation", "drop ALL", "adds capabilities", "seccomp", "hostPath"):
        assert reason in found


def test_the_training_pod_asks_for_eight_a100s_with_shared_memory_and_checkpoints(profile, stream):
    template = by_kind(stream, "PodTemplate")[0]["template"]
    pod = template["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 8
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == profile.checkpoint_pvc
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["shm"] == "/dev/shm" and mounts["checkpoints"] == profile.training().checkpoint_mount
    assert pod["serviceAccountName"] == "phi-training"
    assert {"secretRef": {"name": profile.object_store_secret}} in container["envFrom"]
    claim = next(o for o in stream if o["kind"] == "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == profile.checkpoint_pvc
    assert claim["spec"]["accessModes"] == ["ReadWriteMany" if profile.nodes_per_run > 1 else "ReadWriteOnce"]


def test_the_launcher_on_the_cluster_creates_the_rendered_pod(profile, stream):
    """One source of truth: the k8s profile's launcher (built from PHI_K8S_PROFILE) renders the same pod as
    the stream, and the Job / PyTorchJob it would create validates."""
    launcher = build_training_launcher(load_profile(K8S_ENV), {"PHI_K8S_PROFILE": profile.name})
    assert isinstance(launcher, K8sTrainingLauncher) and launcher.spec() == profile.training()
    args = ["--config", f"{profile.training().checkpoint_mount}/<asset>/<run>/config.json"]
    if profile.nodes_per_run == 1:
        job = job_manifest(launcher.spec(), "phi-train-template", args, {})
        created = job["spec"]["template"]
        kubernetes_validate.validate(job, f"{profile.kubernetes_version}.0", strict=True)
        assert job["spec"]["backoffLimit"] >= 1  # a lost pod is replaced and resumes from its checkpoint
    else:
        job = pytorchjob_manifest(launcher.spec(), "phi-train-template", args, {})
        created = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
        assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == profile.nodes_per_run - 1
    assert by_kind(stream, "PodTemplate")[0]["template"] == created


def test_sandbox_pods_are_denied_all_egress_and_admit_only_evaluation_steps(profile):
    deployment, service = sandbox_service(profile)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    policies = network_policies(profile)

    def selects(policy: dict, labels: dict) -> bool:
        wanted = policy["spec"]["podSelector"].get("matchLabels", {})
        return all(labels.get(k) == v for k, v in wanted.items())

    on_sandbox = [p for p in policies if selects(p, pod_labels)]
    assert on_sandbox  # policies add up: every one that selects the sandbox must allow no egress
    assert all("Egress" in p["spec"]["policyTypes"] and not p["spec"].get("egress") for p in on_sandbox)
    ingress = [rule for p in on_sandbox for rule in p["spec"].get("ingress", [])]
    eval_labels = steps.k8s_config("eval")["pod_template_spec_metadata"]["labels"]
    shard_labels = steps.k8s_config("shard")["pod_template_spec_metadata"]["labels"]
    assert ingress and all(
        all(selects({"spec": {"podSelector": peer["podSelector"]}}, eval_labels) for peer in rule["from"])
        for rule in ingress
    )
    assert not any(
        selects({"spec": {"podSelector": peer["podSelector"]}}, shard_labels)
        for rule in ingress
        for peer in rule["from"]
    )
    assert [p["port"] for rule in ingress for p in rule["ports"]] == [profile.sandbox_port]
    assert service["spec"]["ports"][0]["port"] == profile.sandbox_port
    assert profile.env()["PHI_SANDBOX_URL"] == profile.sandbox_url
    assert profile.sandbox_url.endswith(
        f"phi-sandbox.{profile.namespace}.svc.cluster.local:{profile.sandbox_port}"
    )


def sandbox_pod(objects: list[dict]) -> dict:
    [deployment] = [o for o in by_kind(objects, "Deployment") if o["metadata"]["name"] == "phi-sandbox"]
    return deployment["spec"]["template"]["spec"]


def test_the_sandbox_pods_run_under_gvisor_through_a_runtime_class(profile, stream):
    """The default: the sandbox pods run under gVisor (runsc), where the sandbox isolates each program; the
    RuntimeClass comes before the pods that name it, and nothing lets programs run unisolated."""
    [runtime] = by_kind(stream, "RuntimeClass")
    assert runtime["apiVersion"] == "node.k8s.io/v1" and runtime["handler"] == "runsc"
    assert runtime["metadata"]["name"] == profile.sandbox_runtime_class == "gvisor"
    assert "namespace" not in runtime["metadata"]  # cluster-scoped
    kubernetes_validate.validate(runtime, f"{profile.kubernetes_version}.0", strict=True)
    order = [(o["kind"], o["metadata"]["name"]) for o in stream]
    assert order.index(("RuntimeClass", "gvisor")) < order.index(("Deployment", "phi-sandbox"))
    pod = sandbox_pod(stream)
    assert pod["runtimeClassName"] == "gvisor" and "hostUsers" not in pod
    assert violations(pod) == []
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert SANDBOX_ALLOW_ENV not in env  # under gVisor the sandbox isolates the programs, or refuses them
    others = [p for o in stream for p in pod_specs(o) if p is not pod]
    assert others and not any("runtimeClassName" in p for p in others)  # the GPU pods stay on runc


@pytest.mark.parametrize(
    ("settings", "runtime_classes", "runtime_class", "host_users", "allowed"),
    [
        ({"sandbox_runtime_handler": ""}, [], "gvisor", None, False),  # the cluster's own (GKE Sandbox)
        (
            {"sandbox_runtime_class": "gvisor-sandbox", "sandbox_allow_unisolated": True},
            ["gvisor-sandbox"],
            "gvisor-sandbox",
            None,
            True,
        ),
        ({"sandbox_isolation": "user-namespaces", "sandbox_allow_unisolated": True}, [], None, False, True),
        ({"sandbox_isolation": "none", "sandbox_allow_unisolated": True}, [], None, None, True),
    ],
    ids=["gvisor-cluster-class", "gvisor-allowing", "user-namespaces", "none"],
)
def test_each_sandbox_isolation_renders_valid_restricted_manifests(
    settings, runtime_classes, runtime_class, host_users, allowed
):
    p = dataclasses.replace(PROFILES["a100x8"], **settings)
    objects = manifests(p)  # refuses any pod that breaks the restricted standard
    for obj in objects:  # what the choice changes (the other objects: the render test)
        if obj["kind"] == "RuntimeClass" or obj["metadata"]["name"] == "phi-sandbox":
            kubernetes_validate.validate(obj, f"{p.kubernetes_version}.0", strict=True)
    assert [o["metadata"]["name"] for o in by_kind(objects, "RuntimeClass")] == runtime_classes
    pod = sandbox_pod(objects)
    assert pod.get("runtimeClassName") == runtime_class and pod.get("hostUsers") == host_users
    assert violations(pod) == []
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert unisolated_allowed(env) is allowed  # what the service in that pod will read


def test_the_rendered_allow_setting_is_the_one_the_sandbox_reads():
    assert SANDBOX_ALLOW_ENV == ALLOW_UNISOLATED_ENV


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        (
            {"sandbox_isolation": "kata"},
            "sandbox_isolation must be one of gvisor, user-namespaces, none, got 'kata'",
        ),
        ({"sandbox_isolation": "none"}, "sandbox_isolation 'none' leaves the programs unisolated"),
        ({"sandbox_isolation": "user-namespaces"}, "set sandbox_allow_unisolated=True to run them anyway"),
        (
            {
                "sandbox_isolation": "user-namespaces",
                "sandbox_allow_unisolated": True,
                "kubernetes_version": "1.30",
            },
            "needs Kubernetes 1.33 or later (hostUsers: false on by default), but kubernetes_version is '1.30'",
        ),
        (
            {"sandbox_runtime_class": "gVisor"},
            "sandbox_runtime_class 'gVisor' is not a valid RuntimeClass name",
        ),
        ({"sandbox_runtime_handler": "run_sc"}, "sandbox_runtime_handler 'run_sc' is not a valid RuntimeClass"),
    ],
    ids=["unknown", "none-unallowed", "userns-unallowed", "userns-old-k8s", "class-name", "handler"],
)
def test_sandbox_isolation_settings_are_checked_naming_the_field(settings, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        dataclasses.replace(PROFILES["a100x8"], **settings)


def test_evaluation_steps_reach_no_private_range_or_metadata_address(profile):
    eval_labels = steps.k8s_config("eval")["pod_template_spec_metadata"]["labels"]
    [policy] = [
        p
        for p in network_policies(profile)
        if all(eval_labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())
    ]
    assert policy["spec"]["policyTypes"] == ["Egress"]
    external = [
        peer["ipBlock"]
        for rule in policy["spec"]["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer and peer["ipBlock"]["cidr"] == "0.0.0.0/0"
    ]
    assert len(external) == 1
    excluded = [ip_network(c) for c in external[0]["except"]]
    for address in ("169.254.169.254", "10.1.2.3", "192.168.0.1", "172.20.0.1"):
        assert any(ip_address(address) in net for net in excluded), address
    # the Kubernetes API stays reachable: these steps start a checkpoint's own vLLM server through it
    api = [
        rule
        for rule in policy["spec"]["egress"]
        if any(peer.get("ipBlock", {}).get("cidr") == profile.api_server_cidr for peer in rule.get("to", []))
        and {p["port"] for p in rule.get("ports", [])} >= {443, 6443}
    ]
    assert api


def test_step_pods_built_by_dagster_k8s_are_restricted_and_sized_by_their_asset_tags(profile):
    """The Job dagster-k8s' ``construct_dagster_k8s_job`` builds for a step, merging the executor's
    ``step_k8s_config`` with the asset's ``dagster-k8s/config`` tag, as ``k8s_job_executor`` does."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    from phi_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    eval_tags = graph.get(dg.AssetKey("eval_scores")).assets_def.op.tags
    context = K8sContainerContext(
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(profile.step_k8s_config())
    )
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(eval_tags)))
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image=profile.image, dagster_home="/opt/dagster/dagster_home"),
        ["dagster", "api", "execute_step"],
        "dagster-step-0123abcd",
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
    )
    manifest = ApiClient().sanitize_for_serialization(job)
    kubernetes_validate.validate(manifest, f"{profile.kubernetes_version}.0", strict=True)
    pod = manifest["spec"]["template"]["spec"]
    assert violations(pod) == []
    assert pod["serviceAccountName"] == "phi-dagster"
    resources = pod["containers"][0]["resources"]
    cpu, memory, limit, _ = steps.SIZES["eval"]
    assert resources == {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": limit}}
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert labels[steps.NETWORK_LABEL] == "restricted"  # the restricted-egress policy selects it


def test_every_asset_names_its_step_size_and_gpu_assets_share_the_pool():
    from jobs import ablation_job, posttraining_job, safety_job, training_job, transfer_job
    from phi_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_materializable:
            continue
        config = json.loads(node.assets_def.op.tags[steps.USER_DEFINED_K8S_CONFIG_KEY])
        assert config["pod_template_spec_metadata"]["labels"][steps.SIZE_LABEL] in steps.SIZES, key
    pooled = {
        k.to_user_string()
        for k in graph.get_all_asset_keys()
        if graph.get(k).is_materializable and graph.get(k).assets_def.op.pool == GPU_POOL
    }
    assert pooled == {"pretrained_checkpoint", "midtrained_checkpoint", "sft_checkpoint", "dpo_checkpoint",
                      "sft_checkpoint_no_safety", "dpo_checkpoint_no_safety", "transferred_checkpoint",
                      "data_ablations"}
    assert training_job.tags == GPU_POOL_TAG and posttraining_job.tags == GPU_POOL_TAG == ablation_job.tags
    assert transfer_job.tags == GPU_POOL_TAG == safety_job.tags


def test_helm_values_are_rendered_from_the_profile_and_committed_without_drift(profile):
    committed = (ROOT / "k8s" / "helm" / f"values-{profile.name}.yaml").read_text()
    assert committed == render_stream("--profile", profile.name, "--helm-values")  # regenerate on drift
    values = yaml.safe_load(committed)
    assert values == json.loads(json.dumps(helm_values(profile)))
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["codeServerArgs"] == ["-m", "phi_assets.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env == profile.env() and env["PHI_K8S_PROFILE"] == profile.name
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher" and launcher["jobNamespace"] == profile.namespace
    queue = values["dagsterDaemon"]["runCoordinator"]
    assert queue["type"] == "QueuedRunCoordinator" and queue["enabled"]
    [limit] = queue["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert {limit["key"]: limit["value"]} == GPU_POOL_TAG and limit["limit"] == profile.max_gpu_runs
    assert values["concurrency"]["pools"] == {"defaultLimit": profile.max_gpu_runs, "granularity": "run"}
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"]
    assert values["global"]["postgresqlSecretName"] == profile.postgres_secret
    assert values["postgresql"]["postgresqlHost"] == profile.postgres_host
    # secrets only by reference: no password, token or key value anywhere in the values
    flat = json.dumps(values).lower()
    assert not re.search(r'"(postgresqlpassword|password|token|api_key|secret_access_key)"\s*:', flat)
    assert {"name": profile.object_store_secret} in launcher["envSecrets"]
    # every pod the chart starts gets the restricted security contexts
    for component in (values["dagsterWebserver"], values["dagsterDaemon"], deployment):
        pod = {
            "securityContext": component["podSecurityContext"],
            "containers": [{"name": "c", "securityContext": component["securityContext"]}],
        }
        assert violations(pod) == []
    run = launcher["runK8sConfig"]
    pod = {
        "securityContext": run["podSpecConfig"]["securityContext"],
        "containers": [{"name": "run", "securityContext": run["containerConfig"]["securityContext"]}],
    }
    assert violations(pod) == [] and run["podSpecConfig"]["serviceAccountName"] == "phi-dagster"


def test_the_k8s_profile_resources_read_the_deployment_profile(profile):
    env = {**K8S_ENV, "PHI_K8S_PROFILE": profile.name}
    engine = build_llm(load_profile(env), ArtifactStore(root="s3://b/phi/artifacts"), env)
    assert engine.base_url == profile.vllm().base_url
    assert engine.checkpoint_backend == "k8s-vllm"  # a checkpoint is served by a server of its own
    with pytest.raises(ValueError, match="no deployment profile 'nope'"):
        get_profile("nope")
    with pytest.raises(ValueError, match="nodes_per_run"):
        DeploymentProfile(name="x", gpu_nodes=1, nodes_per_run=2)


def test_the_images_pin_their_bases_and_install_the_projects_pins():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    user, train = (ROOT / "k8s" / "Dockerfile").read_text(), (ROOT / "k8s" / "Dockerfile.train").read_text()
    for dockerfile in (user, train):
        bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
        assert bases and all(re.search(r":\d[\w.-]*$", b) for b in bases), bases  # a version tag, never latest
        assert re.search(r"^USER 1000:1000$", dockerfile, re.M)  # the uid the pod security context runs as
    assert "python:3.11" in user and "python3.11" in train  # the project's Python
    assert "download.pytorch.org/whl/cpu" in user and "[gpu]" not in user  # no CUDA in the orchestration image
    assert re.search(r"nvidia/cuda:12\.\d+\.\d+-cudnn-devel", train) and "'.[gpu]'" in train
    gpu = pins["optional-dependencies"]["gpu"]
    assert any(d.startswith("flash-attn==") for d in gpu) and any(d.startswith("vllm==") for d in gpu)
    assert any(d.startswith("deepspeed==") for d in pins["dependencies"])
    assert any(d == "torch==2.13.0" for d in pins["dependencies"])
    vllm_pin = next(d for d in gpu if d.startswith("vllm=="))
    assert PROFILES["a100x8"].vllm().image.endswith(":v" + vllm_pin.split("==")[1])  # server = engine version
    assert f"dagster=={DAGSTER_VERSION}" in pins["dependencies"]  # the chart's images match the code's dagster


def test_the_launcher_role_allows_what_the_launchers_call_and_nothing_else(profile, stream):
    [role] = by_kind(stream, "Role")
    allowed = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    calls = {  # dagster-k8s' run launcher and step executor, the training launcher, the model servers
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("batch", "jobs", "get"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
        ("kubeflow.org", "pytorchjobs", "create"),
        ("kubeflow.org", "pytorchjobs", "delete"),
        ("apps", "deployments", "create"),
        ("apps", "deployments/status", "get"),
        ("apps", "deployments", "delete"),
        ("", "services", "create"),
        ("", "services", "delete"),
    }
    assert calls <= allowed
    assert not any(
        resource in ("secrets", "roles", "rolebindings", "nodes") or verb in ("escalate", "bind", "*")
        for _, resource, verb in allowed
    )
    [binding] = by_kind(stream, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "phi-dagster", "namespace": profile.namespace}
    ]
    quota = by_kind(stream, "ResourceQuota")[0]["spec"]["hard"]["requests.nvidia.com/gpu"]
    assert (
        int(quota) == profile.gpu_nodes * profile.gpus_per_node + profile.vllm_replicas + profile.model_servers
    )
