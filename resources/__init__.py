"""Resources and the executor, chosen in one place from the active profile."""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from phi_assets.common.profiles import Profile, load_profile
from resources.artifact_store import ArtifactStore
from resources.curation import DecontaminationResource, EncoderResource
from resources.llm import LLMEngine
from resources.retraining import RetrainingPolicy
from resources.training import SubprocessLauncher, TrainingLauncher


class ProfileResource(dg.ConfigurableResource):
    """The active profile's settings, as a resource so runs record what they ran with."""

    name: str
    phi_home: str
    landing_root: str
    catalog_path: str
    artifact_root: str
    scale: str = ""  # the Sizes preset (PHI_SCALE); empty: the profile's default
    model_family: str = ""  # the training chain's model family (PHI_MODEL_FAMILY); empty: the preset's

    @classmethod
    def from_profile(cls, profile: Profile) -> ProfileResource:
        return cls(name=profile.name, phi_home=profile.phi_home, landing_root=profile.landing_root,
                   catalog_path=profile.catalog_path, artifact_root=profile.artifact_root,
                   scale=profile.scale, model_family=profile.sizes.model_family)

    def get(self) -> Profile:
        env = {"PHI_PROFILE": self.name, "PHI_HOME": self.phi_home,
               "PHI_LANDING_ROOT": self.landing_root, "PHI_CATALOG": self.catalog_path,
               "PHI_ARTIFACT_ROOT": self.artifact_root, "PHI_SCALE": self.scale,
               "PHI_MODEL_FAMILY": self.model_family}
        return load_profile(env)


def deployment_profile(env: Mapping[str, str] | None = None):
    """The cluster's ``k8s.deploy.DeploymentProfile`` named by ``PHI_K8S_PROFILE`` (default ``a100x8``): the
    same object ``python -m k8s.render`` renders the manifests and Helm values from."""
    from k8s.deploy import get_profile

    env = os.environ if env is None else env
    return get_profile(env.get("PHI_K8S_PROFILE") or "a100x8")


def build_executor(profile: Profile, env: Mapping[str, str] | None = None) -> dg.ExecutorDefinition:
    if profile.name == "k8s":
        from dagster_k8s import k8s_job_executor

        cluster = deployment_profile(env)
        # one pod per step (per-shard fan-out on the cluster), each restricted; assets add their
        # CPU/memory through dagster-k8s/config op tags (k8s/steps.py)
        return k8s_job_executor.configured(
            {"job_namespace": cluster.namespace, "step_k8s_config": cluster.step_k8s_config()},
            name="k8s_phi",
        )
    # a process per step by default; run config `execution: {config: {in_process: {}}}` runs a run's
    # steps in its own process (the demo's CLI mode, where a run is one partition of a slice)
    return dg.multi_or_in_process_executor


def build_llm(profile: Profile, store: ArtifactStore, env: Mapping[str, str] | None = None) -> LLMEngine:
    """The LLM engine of a profile: vLLM offline on CPU for ``local``/``ci``, the GPU pool's vLLM
    server (``k8s/vllm_server.py``) for ``k8s``. ``PHI_LLM_BACKEND``, ``PHI_LLM_BASE_URL`` and
    ``PHI_LLM_API_KEY`` point any profile at another OpenAI-compatible endpoint; ``PHI_LLM_DTYPE``
    sets the offline engine's precision (default ``auto``: float32 on a CPU without native bfloat16)."""
    env = os.environ if env is None else env
    backend = env.get("PHI_LLM_BACKEND") or ("openai" if profile.name == "k8s" else "vllm")
    base_url = env.get("PHI_LLM_BASE_URL", "")
    if backend == "openai" and not base_url and profile.name == "k8s":
        base_url = deployment_profile(env).vllm().base_url
    tiny = profile.name == "ci"
    return LLMEngine(
        store=store, backend=backend, base_url=base_url,
        # on the cluster a trained checkpoint gets a vLLM server of its own (resources/llm/k8s_backend.py)
        checkpoint_backend="k8s-vllm" if profile.name == "k8s" and backend == "openai" else "",
        api_key=dg.EnvVar("PHI_LLM_API_KEY") if env.get("PHI_LLM_API_KEY") else None,
        max_model_len=2048 if tiny else 4096,
        cpu_kvcache_gib=int(env.get("PHI_LLM_CPU_KVCACHE_GIB", 1 if tiny else 2)),
        cpu_threads=int(env.get("PHI_LLM_CPU_THREADS", 0)),
        dtype=env.get("PHI_LLM_DTYPE") or "auto",  # bfloat16 where computed natively, else float32
        enforce_eager=profile.name != "k8s",  # on CPU, torch.compile costs ~50 s at every start
    )


def build_training_launcher(profile: Profile, env: Mapping[str, str] | None = None) -> TrainingLauncher:
    """Training runs as child processes on local/ci; as Kubernetes Jobs (PyTorchJobs across nodes) on
    the A100 pool for k8s (``resources.launcher``), as the deployment profile describes them."""
    if profile.name == "k8s":
        from resources.launcher import K8sTrainingLauncher

        return K8sTrainingLauncher.from_spec(deployment_profile(env).training())
    return SubprocessLauncher(root=f"{profile.phi_home}/runs")


def build_resources(profile: Profile) -> dict[str, dg.ConfigurableResource]:
    store = ArtifactStore(root=profile.artifact_root)
    return {
        "store": store,
        "profile": ProfileResource.from_profile(profile),
        "llm": build_llm(profile, store),
        "encoder": EncoderResource(model=os.environ.get("PHI_ENCODER_MODEL", "")),
        "decontamination": DecontaminationResource(),  # MBPP: phi_assets/common/mbpp_source.py
        "training_launcher": build_training_launcher(profile),
        "retraining": RetrainingPolicy(margin=float(os.environ.get("PHI_EVAL_REGRESSION_MARGIN", "0.02"))),
    }


__all__ = ["ArtifactStore", "DecontaminationResource", "EncoderResource", "LLMEngine", "Profile",
           "ProfileResource", "RetrainingPolicy", "build_executor", "build_llm", "build_resources",
           "deployment_profile", "load_profile"]
