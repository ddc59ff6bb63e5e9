"""The ``k8s`` profile's engine talks to the vLLM server that ``k8s/vllm_server.py`` renders.

No cluster runs on these machines: the manifests are validated offline against the Kubernetes
schemas (``kubernetes-validate``) instead of being applied.
"""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import kubernetes_validate
import pytest
import yaml

from k8s.vllm_server import VLLMServerSpec, render
from resources import ArtifactStore, build_llm, load_profile

K8S_ENV = {"PHI_PROFILE": "k8s", "PHI_ARTIFACT_ROOT": "s3://b/phi/artifacts", "PHI_LANDING_ROOT": "s3://b/l"}


def test_k8s_engine_uses_the_rendered_servers_address():
    profile = load_profile(K8S_ENV)
    engine = build_llm(profile, ArtifactStore(root=profile.artifact_root), K8S_ENV)
    spec = VLLMServerSpec()
    assert engine.backend == "openai" and engine.base_url == spec.base_url
    assert engine.base_url == f"http://{spec.name}.{spec.namespace}.svc.cluster.local:{spec.port}/v1"
    assert not engine.enforce_eager


def test_api_key_comes_from_an_env_var_reference(monkeypatch):
    monkeypatch.setenv("PHI_LLM_API_KEY", "sk-secret-value")
    profile = load_profile(K8S_ENV)
    engine = build_llm(profile, ArtifactStore(root=profile.artifact_root), {**K8S_ENV, "PHI_LLM_API_KEY": "x"})
    assert isinstance(engine.api_key, dg.EnvVar) and engine.api_key == "PHI_LLM_API_KEY"
    assert "sk-secret-value" not in repr(engine)


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0"])
def test_server_manifests_are_valid_kubernetes(version):
    docs = render(VLLMServerSpec(model_uri="s3://b/phi/artifacts/generator_model/__all__/v/model", gpus=2,
                                 api_key_secret="vllm-key"))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    pod = docs[0]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 2 and "--tensor-parallel-size" in server["args"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert all(c["securityContext"]["allowPrivilegeEscalation"] is False
               for c in pod["containers"] + pod["initContainers"])
    key = next(e for e in server["env"] if e["name"] == "VLLM_API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "vllm-key", "key": "api-key"}


def test_render_cli_prints_yaml_documents():
    out = subprocess.run([sys.executable, "-m", "k8s.vllm_server", "--model-uri", "s3://b/m", "--gpus", "4"],
                         capture_output=True, text=True, check=True).stdout
    docs = list(yaml.safe_load_all(out))
    assert docs[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_render_refuses_a_spec_without_a_model():
    with pytest.raises(ValueError, match="model_uri is empty"):
        render(VLLMServerSpec())
