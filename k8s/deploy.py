"""Deployment profiles: one Python description of a cluster, from which every manifest is rendered.

A ``DeploymentProfile`` (``PROFILES``: ``a100x8`` for one 8xA100 node per training run, ``a100x8x4`` for
four-node PyTorchJobs) holds what differs between clusters: namespace, images, the object store, the GPU
pool (node selector, tolerations, node count), the checkpoint volume, the sandbox service and the vLLM
server. The same object configures the code that runs on the cluster (``resources.build_*`` read it
through ``PHI_K8S_PROFILE``): the training launcher's Job spec, the engine's server address, the step
pods' security and the sandbox URL; ``python -m k8s.render --profile NAME`` prints the manifests and
``--helm-values`` the values for the official Dagster Helm chart. Nothing is copied by hand between them.

Security (``k8s/security.py``): the namespace enforces the ``restricted`` Pod Security Standard, so every
pod must run as non-root, without privilege escalation or capabilities, under RuntimeDefault seccomp.
Untrusted generated code runs only in the sandbox service's pods (``phi-factory/network: none``), whose
NetworkPolicy denies all egress and admits requests only from evaluation steps. Evaluation steps
(``phi-factory/network: restricted``) may reach DNS, the namespace's pods (the vLLM server, the sandbox),
Postgres, the Kubernetes API and, outside the cluster, the object store over HTTPS; no other private
address, never the cloud metadata address. Credentials come only from Kubernetes Secrets (``envFrom``),
read as environment variables (``dagster.EnvVar`` for the engine's API key).

Sandbox isolation: under the restricted standard (RuntimeDefault seccomp, no capabilities) the sandbox
cannot create its own namespaces in a runc pod, so ``sandbox_isolation`` says what isolates the programs:
``gvisor`` (the default: the pods run under gVisor, RuntimeClass ``sandbox_runtime_class``, which
implements the namespaces itself and stands between the programs and the node's kernel),
``user-namespaces`` (``hostUsers: false``: the pod's uids are unprivileged on the node) or ``none``. The
last two leave the programs unisolated inside the pod, which the sandbox refuses unless
``sandbox_allow_unisolated`` renders ``PHI_SANDBOX_ALLOW_UNISOLATED=1`` into its pods (docs/sandbox.md).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from k8s import steps
from k8s.security import TMP_MOUNT, WRITABLE_ENV, container_security, pod_security, violations
from k8s.training_job import (
    GPU_TOLERATIONS,
    TrainingJobSpec,
    job_manifest,
    job_name,
    pytorchjob_manifest,
)
from k8s.vllm_server import VLLMServerSpec
from k8s.vllm_server import render as render_vllm

PART_OF = "phi-factory"
GPU_POOL_TAG = steps.GPU_POOL_TAG
GPU_POOL = steps.GPU_POOL
SA_DAGSTER, SA_TRAINING, SA_SANDBOX, SA_VLLM = "phi-dagster", "phi-training", "phi-sandbox", "phi-vllm"
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10")
SANDBOX_ISOLATIONS = ("gvisor", "user-namespaces", "none")
# phi_assets.sandbox.ALLOW_UNISOLATED_ENV, spelled out: k8s imports none of the project's other packages
SANDBOX_ALLOW_ENV = "PHI_SANDBOX_ALLOW_UNISOLATED"
USER_NAMESPACES_SINCE = (1, 33)  # hostUsers: false, on by default (UserNamespacesSupport beta, enabled)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class DeploymentProfile:
    """One cluster's settings. Every field has a working default except the site-specific addresses
    (bucket, Postgres host, image registry), which ``docs/deploy-k8s.md`` tells you to set."""

    name: str
    namespace: str = "phi"
    kubernetes_version: str = "1.33"  # manifests are validated against it; Pod Security is pinned to it
    image: str = "ghcr.io/phi-factory/phi-factory:0.1.0"  # k8s/Dockerfile: orchestration and data steps
    training_image: str = "ghcr.io/phi-factory/phi-factory-train:0.1.0"  # k8s/Dockerfile.train (CUDA)
    artifact_root: str = "s3://phi-factory/artifacts"
    landing_root: str = "s3://phi-factory/landing"
    object_store_secret: str = "phi-object-store"  # AWS_ACCESS_KEY_ID/..., or the GCS/Azure equivalents
    postgres_secret: str = "phi-postgresql"  # key postgresql-password (the chart's convention)
    postgres_host: str = "phi-postgres.phi-data.svc.cluster.local"
    postgres_cidr: str = "10.0.0.0/8"  # where Postgres lives, for the restricted egress policy
    # the Kubernetes API's endpoints (evaluation steps start a checkpoint's vLLM server through it); set it
    # to your control plane's address (kubectl get endpoints kubernetes -n default)
    api_server_cidr: str = "10.0.0.0/8"
    llm_api_key_secret: str = ""  # a Secret with key api-key: the vLLM server then requires it
    gpu_label: str = "nvidia.com/gpu.product"
    gpu_product: str = "NVIDIA-A100-SXM4-80GB"
    gpu_nodes: int = 2  # 8-GPU nodes in the pool
    nodes_per_run: int = 1  # 1: a batch/v1 Job per training run; more: a Kubeflow PyTorchJob
    gpus_per_node: int = 8
    checkpoint_size: str = "4Ti"
    checkpoint_storage_class: str = ""  # empty: the cluster's default class
    max_concurrent_runs: int = 20
    sandbox_replicas: int = 2
    sandbox_cpu: str = "4"
    sandbox_memory: str = "8Gi"
    sandbox_port: int = 8080
    # What isolates the generated programs in the sandbox pods (SANDBOX_ISOLATIONS; docs/sandbox.md, "On the
    # cluster"). "gvisor": runtimeClassName sandbox_runtime_class; gVisor (runsc) must be installed on the
    # nodes that run the sandbox. "user-namespaces": hostUsers: false (Kubernetes >= 1.33). "none": neither.
    sandbox_isolation: str = "gvisor"
    sandbox_runtime_class: str = "gvisor"
    # the RuntimeClass's handler (containerd's runtime name for runsc); empty: the cluster already has the
    # RuntimeClass (GKE Sandbox's "gvisor") and none is rendered
    sandbox_runtime_handler: str = "runsc"
    # PHI_SANDBOX_ALLOW_UNISOLATED=1 in the sandbox pods: run programs even where the sandbox cannot isolate
    # them inside the pod (required with "user-namespaces" and "none", where it never can)
    sandbox_allow_unisolated: bool = False
    vllm_replicas: int = 1
    model_servers: int = 2  # checkpoints served at once (one GPU each) by evaluation / preference steps
    vllm_model_uri: str = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"  # any fsspec URI of an HF directory
    scale: str = "phi1"  # PHI_SCALE of every pod: how big the runs are (docs/scale.md); "demo" for a first try
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "gpu_nodes",
            "nodes_per_run",
            "gpus_per_node",
            "max_concurrent_runs",
            "sandbox_replicas",
            "vllm_replicas",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"DeploymentProfile.{name} must be >= 1, got {getattr(self, name)}")
        if self.nodes_per_run > self.gpu_nodes:
            raise ValueError(
                f"DeploymentProfile.nodes_per_run ({self.nodes_per_run}) exceeds gpu_nodes "
                f"({self.gpu_nodes}): no training run could ever be scheduled"
            )
        self._check_sandbox_isolation()

    def _check_sandbox_isolation(self) -> None:
        choice = self.sandbox_isolation
        if choice not in SANDBOX_ISOLATIONS:
            raise ValueError(
                f"DeploymentProfile.sandbox_isolation must be one of {', '.join(SANDBOX_ISOLATIONS)}, "
                f"got {choice!r}"
            )
        if choice == "gvisor":
            if not _DNS_SUBDOMAIN.fullmatch(self.sandbox_runtime_class):
                raise ValueError(
                    f"DeploymentProfile.sandbox_runtime_class {self.sandbox_runtime_class!r} is not a valid "
                    "RuntimeClass name (lowercase letters, digits, '-' and '.')"
                )
            if self.sandbox_runtime_handler and not _DNS_LABEL.fullmatch(self.sandbox_runtime_handler):
                raise ValueError(
                    f"DeploymentProfile.sandbox_runtime_handler {self.sandbox_runtime_handler!r} is not a "
                    "valid RuntimeClass handler (lowercase letters, digits and '-', at most 63)"
                )
            return
        if choice == "user-namespaces" and _version(self.kubernetes_version) < USER_NAMESPACES_SINCE:
            raise ValueError(
                f"DeploymentProfile.sandbox_isolation 'user-namespaces' needs Kubernetes "
                f"{'.'.join(map(str, USER_NAMESPACES_SINCE))} or later (hostUsers: false on by default), but "
                f"kubernetes_version is {self.kubernetes_version!r}"
            )
        if not self.sandbox_allow_unisolated:
            raise ValueError(
                f"DeploymentProfile.sandbox_isolation {choice!r} leaves the programs unisolated inside the "
                "sandbox pods (under the restricted standard's RuntimeDefault seccomp profile the sandbox "
                "cannot create its namespaces there), so the service would refuse every program: set "
                "sandbox_allow_unisolated=True to run them anyway, or choose 'gvisor'"
            )

    # -- derived settings (what the code on the cluster uses) -------------------------------------------
    @property
    def max_gpu_runs(self) -> int:
        """Runs that may hold the GPU pool at once: whole training runs that fit on its nodes."""
        return self.gpu_nodes // self.nodes_per_run

    @property
    def node_selector(self) -> dict[str, str]:
        return {self.gpu_label: self.gpu_product}

    @property
    def tolerations(self) -> list[dict[str, str]]:
        return [dict(t) for t in GPU_TOLERATIONS]  # the GPU taint's, as the training launcher tolerates it

    @property
    def checkpoint_pvc(self) -> str:
        return "phi-checkpoints"

    def training(self) -> TrainingJobSpec:
        """The training Job / PyTorchJob spec (``K8sTrainingLauncher`` on this cluster)."""
        return TrainingJobSpec(
            namespace=self.namespace,
            image=self.training_image,
            nodes=self.nodes_per_run,
            gpus_per_node=self.gpus_per_node,
            checkpoint_pvc=self.checkpoint_pvc,
            service_account_name=SA_TRAINING,
            env_from_secrets=(self.object_store_secret,),
            node_selector=self.node_selector,
            tolerations=self.tolerations,
        )

    def vllm(self) -> VLLMServerSpec:
        """The vLLM server the ``k8s`` profile's engine talks to."""
        return VLLMServerSpec(
            namespace=self.namespace,
            loader_image=self.image,
            model_uri=self.vllm_model_uri,
            replicas=self.vllm_replicas,
            node_selector=self.node_selector,
            tolerations=self.tolerations,
            api_key_secret=self.llm_api_key_secret,
            env_from_secrets=(self.object_store_secret,),
        )

    def model_server(self, model: Any, max_model_len: int, dtype: str) -> VLLMServerSpec:
        """The vLLM server of one model (a checkpoint's export on the object store, ``model.path``), which
        ``resources/llm/k8s_backend.py`` starts for as long as an engine needs it; named after the model."""
        return dataclasses.replace(
            self.vllm(),
            name=job_name(model.name, "phi-vllm"),
            model_uri=model.path,
            served_name=model.served_name or model.name,
            max_model_len=max_model_len,
            dtype=dtype,
            replicas=1,
        )

    @property
    def sandbox_url(self) -> str:
        return f"http://phi-sandbox.{self.namespace}.svc.cluster.local:{self.sandbox_port}"

    def env(self) -> dict[str, str]:
        """The environment of the user code, run and step pods (no secrets: those come from envFrom)."""
        return {
            "PHI_PROFILE": "k8s",
            "PHI_K8S_PROFILE": self.name,
            "PHI_SCALE": self.scale,
            "PHI_ARTIFACT_ROOT": self.artifact_root,
            "PHI_LANDING_ROOT": self.landing_root,
            "PHI_SANDBOX_URL": self.sandbox_url,
            "PHI_HOME": "/tmp/phi",
            **WRITABLE_ENV,
            **self.extra_env,
        }

    def labels(self, component: str) -> dict[str, str]:
        return {"app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/component": component}

    def step_k8s_config(self) -> dict[str, Any]:
        """``k8s_job_executor``'s ``step_k8s_config``: every step pod runs restricted, as ``phi-dagster``.
        The root filesystem stays writable here: Dagster writes compute logs and caches under its home."""
        return {
            "container_config": {"security_context": container_security(read_only_root=False)},
            "pod_spec_config": {"security_context": pod_security(), "service_account_name": SA_DAGSTER},
            "pod_template_spec_metadata": {"labels": self.labels("dagster-step")},
        }


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise ValueError(
            f"DeploymentProfile.kubernetes_version {text!r} is not a version like '1.33'"
        ) from None


PROFILES: dict[str, DeploymentProfile] = {
    "a100x8": DeploymentProfile(name="a100x8"),
    "a100x8x4": DeploymentProfile(name="a100x8x4", gpu_nodes=8, nodes_per_run=4, checkpoint_size="16Ti"),
}


def get_profile(name: str) -> DeploymentProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"no deployment profile {name!r}; choose one of {sorted(PROFILES)}") from None


# -- manifests ---------------------------------------------------------------------------------------------
def _meta(p: DeploymentProfile, name: str, component: str, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": p.labels(component)}
    if namespaced:
        meta["namespace"] = p.namespace
    return meta


def namespace(p: DeploymentProfile) -> dict[str, Any]:
    version = f"v{p.kubernetes_version}"
    labels = {**p.labels("namespace"), "kubernetes.io/metadata.name": p.namespace}
    for mode in ("enforce", "audit", "warn"):
        labels[f"pod-security.kubernetes.io/{mode}"] = "restricted"
        labels[f"pod-security.kubernetes.io/{mode}-version"] = version
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": p.namespace, "labels": labels}}


def service_accounts(p: DeploymentProfile) -> list[dict[str, Any]]:
    """``phi-dagster`` (user code, run and step pods: creates step and training Jobs) is the only one
    whose token is mounted; training, sandbox and vLLM pods talk to no Kubernetes API."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(p, name, "identity"),
            "automountServiceAccountToken": name == SA_DAGSTER,
        }
        for name in (SA_DAGSTER, SA_TRAINING, SA_SANDBOX, SA_VLLM)
    ]


def rbac(p: DeploymentProfile) -> list[dict[str, Any]]:
    """What the run launcher, the step executor and the training launcher do, and nothing more."""
    rules = [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log", "events"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": ["kubeflow.org"],
            "resources": ["pytorchjobs"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        },
        {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs/status"], "verbs": ["get"]},
        # a checkpoint's own vLLM server (resources/llm/k8s_backend.py), for as long as a step evaluates it
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "get", "list", "delete"]},
        {"apiGroups": ["apps"], "resources": ["deployments/status"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get", "delete"]},
    ]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(p, "phi-launcher", "identity"),
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(p, "phi-launcher", "identity"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "phi-launcher"},
        "subjects": [{"kind": "ServiceAccount", "name": SA_DAGSTER, "namespace": p.namespace}],
    }
    return [role, binding]


def checkpoint_volume(p: DeploymentProfile) -> dict[str, Any]:
    """Training's output directory: a pod that is replaced resumes from it. Several nodes share it."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany" if p.nodes_per_run > 1 else "ReadWriteOnce"],
        "resources": {"requests": {"storage": p.checkpoint_size}},
    }
    if p.checkpoint_storage_class:
        spec["storageClassName"] = p.checkpoint_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(p, p.checkpoint_pvc, "training"),
        "spec": spec,
    }


def gpu_quota(p: DeploymentProfile) -> dict[str, Any]:
    """A ceiling on the GPUs the namespace may request: the pool's training nodes, the shared vLLM server and
    the checkpoints' own servers."""
    gpus = p.gpu_nodes * p.gpus_per_node + p.vllm().gpus * (p.vllm_replicas + p.model_servers)
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta(p, "phi-gpus", "training"),
        "spec": {"hard": {"requests.nvidia.com/gpu": str(gpus)}},
    }


def network_policies(p: DeploymentProfile) -> list[dict[str, Any]]:
    sandbox = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(p, "phi-sandbox-deny-egress", "sandbox"),
        "spec": {
            "podSelector": {"matchLabels": {steps.NETWORK_LABEL: "none"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {steps.NETWORK_LABEL: "restricted"}}}],
                    "ports": [{"protocol": "TCP", "port": p.sandbox_port}],
                }
            ],
            "egress": [],  # none at all: not DNS, not the cluster, not the internet
        },
    }
    dns = {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    restricted = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(p, "phi-eval-restricted-egress", "evaluation"),
        "spec": {
            "podSelector": {"matchLabels": {steps.NETWORK_LABEL: "restricted"}},
            "policyTypes": ["Egress"],
            "egress": [
                dns,
                {"to": [{"podSelector": {}}]},  # this namespace: the vLLM server, the sandbox service
                {"to": [{"ipBlock": {"cidr": p.postgres_cidr}}], "ports": [{"protocol": "TCP", "port": 5432}]},
                {
                    "to": [{"ipBlock": {"cidr": p.api_server_cidr}}],
                    "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
                },
                {
                    "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}}],
                    "ports": [{"protocol": "TCP", "port": 443}],
                },  # the object store
            ],
        },
    }
    return [sandbox, restricted]


def sandbox_runtime_class(p: DeploymentProfile) -> list[dict[str, Any]]:
    """The RuntimeClass the sandbox pods run under with ``sandbox_isolation="gvisor"`` (cluster-scoped;
    applying it needs cluster-admin), unless the cluster provides it (``sandbox_runtime_handler`` empty)."""
    if p.sandbox_isolation != "gvisor" or not p.sandbox_runtime_handler:
        return []
    return [
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": _meta(p, p.sandbox_runtime_class, "sandbox", namespaced=False),
            "handler": p.sandbox_runtime_handler,
        }
    ]


def sandbox_service(p: DeploymentProfile) -> list[dict[str, Any]]:
    """The pods that execute generated code (``phi_assets.sandbox.service``), isolated as the profile's
    ``sandbox_isolation`` says."""
    labels = {**p.labels("sandbox"), "app.kubernetes.io/name": "phi-sandbox", steps.NETWORK_LABEL: "none"}
    selector = {"app.kubernetes.io/name": "phi-sandbox", "app.kubernetes.io/part-of": PART_OF}
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10}
    container = {
        "name": "sandbox",
        "image": p.image,
        "command": [
            "python",
            "-m",
            "phi_assets.sandbox.service",
            "--host",
            "0.0.0.0",
            "--port",
            str(p.sandbox_port),
        ],
        "env": [{"name": k, "value": v} for k, v in _sandbox_env(p).items()],
        "ports": [{"name": "http", "containerPort": p.sandbox_port}],
        "resources": {
            "requests": {"cpu": p.sandbox_cpu, "memory": p.sandbox_memory},
            "limits": {"cpu": p.sandbox_cpu, "memory": p.sandbox_memory},
        },
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 6},
        "securityContext": container_security(),
        "volumeMounts": [dict(TMP_MOUNT)],
    }
    pod = {
        "securityContext": pod_security(),
        "serviceAccountName": SA_SANDBOX,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}],
    }
    if p.sandbox_isolation == "gvisor":
        pod["runtimeClassName"] = p.sandbox_runtime_class
    elif p.sandbox_isolation == "user-namespaces":
        pod["hostUsers"] = False
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(p, "phi-sandbox", "sandbox"),
        "spec": {
            "replicas": p.sandbox_replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(p, "phi-sandbox", "sandbox"),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": p.sandbox_port, "targetPort": "http"}],
        },
    }
    return [deployment, service]


def _sandbox_env(p: DeploymentProfile) -> dict[str, str]:
    env = dict(WRITABLE_ENV)
    if p.sandbox_allow_unisolated:
        env[SANDBOX_ALLOW_ENV] = "1"
    return env


def training_pod_template(p: DeploymentProfile) -> dict[str, Any]:
    """The pod every training run gets (the launcher creates the Job or PyTorchJob around it per run,
    with that run's config and Pipes variables): a ``PodTemplate``, harmless to apply, for review."""
    spec = p.training()
    args = ["--config", f"{spec.checkpoint_mount}/<asset>/<run>/config.json"]
    if spec.nodes == 1:
        template = job_manifest(spec, "phi-train-template", args, {})["spec"]["template"]
    else:  # the Master's pod; the Workers' differ only in the node rank torchrun is given
        job = pytorchjob_manifest(spec, "phi-train-template", args, {})
        template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": _meta(p, "phi-train", "training"),
        "template": template,
    }


def manifests(p: DeploymentProfile) -> list[dict[str, Any]]:
    """Every object of a profile, in the order ``kubectl apply`` needs them (Helm values excepted)."""
    vllm = render_vllm(p.vllm())
    vllm[0]["spec"]["template"]["spec"]["serviceAccountName"] = SA_VLLM
    objects = [
        namespace(p),
        *service_accounts(p),
        *rbac(p),
        checkpoint_volume(p),
        gpu_quota(p),
        *network_policies(p),
        *sandbox_runtime_class(p),  # before the pods that name it: admission refuses an unknown class
        *sandbox_service(p),
        *vllm,
        training_pod_template(p),
    ]
    for obj in objects:  # the namespace would refuse them at admission: refuse them here, by name
        for pod in pod_specs(obj):
            if found := violations(pod):
                raise ValueError(
                    f"{obj['kind']} {obj['metadata']['name']} breaks the restricted Pod Security "
                    f"Standard: {'; '.join(found)}"
                )
    return objects


def pod_specs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs inside a manifest (Deployment, Job, PodTemplate, PyTorchJob), for checks."""
    kind, spec = manifest["kind"], manifest.get("spec", {})
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return [spec["template"]["spec"]]
    if kind == "PodTemplate":
        return [manifest["template"]["spec"]]
    if kind == "Pod":
        return [spec]
    if kind == "PyTorchJob":
        return [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
    return []
