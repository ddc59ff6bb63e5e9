"""``generator_model``: the default model converted, hashed and sampled through the engine.

Under ``.ci/run`` (``PHI_TEST_DEMO_HOME``) the first materialization is the one the ci graph ran through
``dagster asset materialize`` (the same asset, code and model): the module's home holds that graph's
artifacts, hard-linked, and ``first`` reads that run's metadata, so CI does not convert and sample the
model a second time. Elsewhere the module's own first materialization does it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from phi_assets.common import model_files as gm
from phi_assets.models.assets import generator_model, model_ref
from resources import ArtifactStore, build_llm, build_resources, load_profile
from resources.llm import Request


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    """One ci-profile home for the module: the default model is converted and sampled once (by the ci
    graph, whose artifacts it then holds, or by ``first``)."""
    home = tmp_path_factory.mktemp("gm") / "phi"
    if os.environ.get("PHI_TEST_DEMO_HOME"):
        shutil.copytree(Path(os.environ["PHI_TEST_DEMO_HOME"]) / "artifacts", home / "artifacts",
                        copy_function=os.link)
    profile = load_profile({"PHI_PROFILE": "ci", "PHI_HOME": str(home)})
    with dg.instance_for_test() as instance:
        yield instance, build_resources(profile), ArtifactStore(root=profile.artifact_root)


def materialize(instance, resources, config: dict | None = None):
    run_config = {"ops": {"generator_model": {"config": config}}} if config else None
    result = dg.materialize([generator_model], instance=instance, resources=resources, run_config=run_config,
                            raise_on_error=False)
    events = result.asset_materializations_for_node("generator_model")
    return result, ({k: v.value for k, v in events[0].metadata.items()} if events else {})


def ci_graph_materialization(home: Path) -> dict | None:
    """The metadata of the ci graph's own materialization of ``generator_model`` in ``home`` (the first
    that did the work; later ones, the demo's second pass, skipped it)."""
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        records = instance.fetch_materializations(dg.AssetKey("generator_model"), limit=100).records
        for record in reversed(records):  # newest first: the oldest is the ci graph's
            meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
            if not meta.get("skipped"):
                return meta
    return None


@pytest.fixture(scope="module")
def first(env):
    """The first materialization's metadata, ``model_path`` in this module's home."""
    given = os.environ.get("PHI_TEST_DEMO_HOME")
    meta = ci_graph_materialization(Path(given)) if given else None
    if meta is not None:
        relative = Path(meta["model_path"]).relative_to(Path(given) / "artifacts")
        return {**meta, "model_path": str(Path(env[2].root) / relative)}
    result, meta = materialize(*env[:2])
    assert result.success
    return meta


@pytest.mark.slow  # starts vLLM
def test_default_model_is_converted_hashed_and_sampled(first, env):
    _, resources, store = env
    manifest = store.current_manifest("generator_model", None)
    model_dir = Path(first["model_path"])
    weights = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert first["weights_sha256"] == weights and manifest["data_version"] == weights[:16]
    assert model_dir == Path(store.version_path("generator_model", None, manifest["data_version"])) / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert first["num_parameters"] == 134_515_008 and first["has_chat_template"]
    assert first["source"] == "gguf" and first["model_name"] == gm.DEFAULT_MODEL_NAME
    # The sample really ran through the engine: three answered prompts in the metadata.
    assert first["llm_requests"] == 3 and first["llm_cache_hits"] == 0 and first["llm_failures"] == {}
    assert first["llm_generated_tokens"] > 30 and first["sample"].count("\n| ") == 3
    assert "Fibonacci" in first["sample"] and "def " in first["sample"]
    assert first["llm_backend"] == "vllm" and "api_key" not in json.dumps(first)
    # Downstream assets address the model through the manifest.
    ref = model_ref(manifest, store, resources["llm"], "/unused")
    assert ref.path == str(model_dir) and ref.version == manifest["data_version"]


@pytest.mark.slow  # starts vLLM
def test_rerun_skips_conversion_and_answers_from_the_cache(first, env):
    result, again = materialize(*env[:2])
    assert result.success and again["skipped"] and again["llm_cache_hits"] == 3
    assert again["weights_sha256"] == first["weights_sha256"] and again["sample"] == first["sample"]
    assert "llm_startup_s" not in again  # the engine never started


@pytest.mark.slow  # starts vLLM
def test_a_local_directory_replaces_the_default_and_versions_by_its_weights(first, smol_dir, tmp_path):
    home = tmp_path / "phi"
    profile = load_profile({"PHI_PROFILE": "ci", "PHI_HOME": str(home)})
    config = {"model_dir": str(smol_dir), "model_name": "my-smol", "sample_prompts": ["Say hi."],
              "sample_max_tokens": 4}
    with dg.instance_for_test() as instance:
        result, meta = materialize(instance, build_resources(profile), config)
    assert result.success and meta["source"] == "directory" and meta["model_name"] == "my-smol"
    assert meta["model_path"] == str(smol_dir) and meta["llm_requests"] == 1
    assert not (home / "artifacts" / "generator_model" / "__all__" / "model").exists()  # not copied
    # The same weights as the default conversion: the same data version (content-addressed).
    assert meta["weights_sha256"] == first["weights_sha256"]


@pytest.mark.slow  # the generator_model asset, which starts vLLM on a good directory
def test_a_bad_model_directory_fails_with_the_path_and_reason(tmp_path, env):
    (tmp_path / "not-a-model").mkdir()
    result, _ = materialize(*env[:2], {"model_dir": str(tmp_path / "not-a-model")})
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "not-a-model: missing config.json" in message


def test_an_endpoint_model_is_addressed_by_its_served_name(profile, store):
    engine = build_llm(profile, store, {"PHI_LLM_BACKEND": "openai", "PHI_LLM_BASE_URL": "http://h:1/v1"})
    source = {"kind": "endpoint", "name": "big-model", "version": "2026-11"}
    manifest = {"data_version": "abc", "metadata": {"source": source, "model": {"name": "big-model"}}}
    ref = model_ref(manifest, store, engine, "/unused")
    assert ref.path is None and ref.served_name == "big-model" and ref.version == "abc"
    assert Request.chat("x").to_json()["messages"] == [{"role": "user", "content": "x"}]
