"""A vLLM OpenAI-compatible server on the GPU pool, for large generation jobs (``k8s`` profile).

The same ``VLLMServerSpec`` renders the Deployment and Service here and gives the ``k8s``
profile's ``LLMEngine`` its ``base_url``, so the engine always talks to the server this file
describes. The model directory (the ``generator_model`` artifact on the object store) is copied
into the pod by an init container; the server serves it under ``served_name``.

Render and apply:
``python -m k8s.vllm_server --model-uri s3://bucket/phi/artifacts/generator_model/__all__/<version>/model
| kubectl apply -f -``
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from k8s.security import TMP_MOUNT, TMP_VOLUME, WRITABLE_ENV, container_security, pod_security

MODEL_MOUNT = "/models"


@dataclass(frozen=True)
class VLLMServerSpec:
    name: str = "phi-vllm"
    namespace: str = "phi"
    image: str = "vllm/vllm-openai:v0.32.0"
    loader_image: str = "phi-factory:latest"  # the project image: copies the model with fsspec
    model_uri: str = ""  # the generator_model directory on the object store
    served_name: str = "SmolLM2-135M-Instruct"
    replicas: int = 1
    gpus: int = 1
    port: int = 8000
    max_model_len: int = 4096
    dtype: str = "auto"  # float32 for the project's small checkpoints (as the offline engine evaluates them)
    gpu_memory_utilization: float = 0.9
    node_selector: dict[str, str] = field(
        default_factory=lambda: {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"})
    tolerations: list[dict[str, str]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    api_key_secret: str = ""  # a Secret with key "api-key"; the server then requires it
    env_from_secrets: tuple[str, ...] = ()  # Secrets with the object store's credentials (the model copy)

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.replicas < 1:
            raise ValueError("VLLMServerSpec needs gpus >= 1 and replicas >= 1")

    @property
    def base_url(self) -> str:
        """The in-cluster address the engine's openai backend uses."""
        return f"http://{self.name}.{self.namespace}.svc.cluster.local:{self.port}/v1"

    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.name, "app.kubernetes.io/component": "llm-server",
                "app.kubernetes.io/part-of": "phi-factory"}


def _server_container(spec: VLLMServerSpec) -> dict[str, Any]:
    args = ["--model", f"{MODEL_MOUNT}/model", "--served-model-name", spec.served_name,
            "--host", "0.0.0.0", "--port", str(spec.port), "--max-model-len", str(spec.max_model_len),
            "--gpu-memory-utilization", str(spec.gpu_memory_utilization),
            "--tensor-parallel-size", str(spec.gpus), "--dtype", spec.dtype]
    env = [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    env += [{"name": k, "value": v} for k, v in WRITABLE_ENV.items()]
    if spec.api_key_secret:
        env.append({"name": "VLLM_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": spec.api_key_secret, "key": "api-key"}}})
    probe = {"httpGet": {"path": "/health", "port": spec.port}, "periodSeconds": 10}
    return {
        "name": "vllm", "image": spec.image, "args": args, "env": env,
        "ports": [{"name": "http", "containerPort": spec.port}],
        "resources": {"limits": {"nvidia.com/gpu": spec.gpus}, "requests": {"nvidia.com/gpu": spec.gpus}},
        "readinessProbe": probe, "startupProbe": {**probe, "failureThreshold": 60},
        "securityContext": container_security(),
        "volumeMounts": [{"name": "models", "mountPath": MODEL_MOUNT},
                         {"name": "shm", "mountPath": "/dev/shm"}, dict(TMP_MOUNT)],
    }


def _loader_container(spec: VLLMServerSpec) -> dict[str, Any]:
    copy = ("import fsspec, sys; fs, path = fsspec.core.url_to_fs(sys.argv[1]); "
            "fs.get(path, sys.argv[2], recursive=True)")
    return {"name": "fetch-model", "image": spec.loader_image,
            "command": ["python", "-c", copy, spec.model_uri, f"{MODEL_MOUNT}/model"],
            "envFrom": [{"secretRef": {"name": s}} for s in spec.env_from_secrets],
            "env": [{"name": k, "value": v} for k, v in WRITABLE_ENV.items()],
            "securityContext": container_security(),
            "volumeMounts": [{"name": "models", "mountPath": MODEL_MOUNT}, dict(TMP_MOUNT)]}


def render(spec: VLLMServerSpec) -> list[dict[str, Any]]:
    """The Deployment and Service of the server."""
    if not spec.model_uri:
        raise ValueError("VLLMServerSpec.model_uri is empty: give the generator_model directory's URI")
    meta = {"name": spec.name, "namespace": spec.namespace, "labels": spec.labels()}
    pod = {
        "securityContext": pod_security(), "automountServiceAccountToken": False,
        "nodeSelector": dict(spec.node_selector), "tolerations": list(spec.tolerations),
        "initContainers": [_loader_container(spec)], "containers": [_server_container(spec)],
        "volumes": [{"name": "models", "emptyDir": {}}, {"name": "shm", "emptyDir": {"medium": "Memory"}},
                    dict(TMP_VOLUME)],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"replicas": spec.replicas, "selector": {"matchLabels": spec.labels()},
                 "template": {"metadata": {"labels": spec.labels()}, "spec": pod}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"selector": spec.labels(),
                 "ports": [{"name": "http", "port": spec.port, "targetPort": "http"}]},
    }
    return [deployment, service]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--served-name", default=VLLMServerSpec.served_name)
    parser.add_argument("--namespace", default=VLLMServerSpec.namespace)
    parser.add_argument("--gpus", type=int, default=VLLMServerSpec.gpus)
    parser.add_argument("--replicas", type=int, default=VLLMServerSpec.replicas)
    args = parser.parse_args(argv)
    spec = VLLMServerSpec(model_uri=args.model_uri, served_name=args.served_name,
                          namespace=args.namespace, gpus=args.gpus, replicas=args.replicas)
    sys.stdout.write(yaml.safe_dump_all(render(spec), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
