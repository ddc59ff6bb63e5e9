"""Training assets (group ``training``): checkpoints trained outside the Dagster process.

``pretrained_checkpoint`` reads ``mixture_weights``' ``mixture.json`` (the shards and weights) and
the tokenizer, writes the entrypoint's config and launches ``python -m
phi_assets.training.entrypoint`` through Dagster Pipes (``PipesSubprocessClient`` on local/ci), so
the orchestrator never imports CUDA. The run directory is keyed by the work's provenance, so a
retried step resumes from the last checkpoint. The version holds the Hugging Face export and the
metrics; its data version is the sha256 of the weights.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import dagster as dg

from phi_assets import plots
from phi_assets.curation.assets import _current, _local
from phi_assets.mixture.assets import SUBDIR, mixture_weights, tokenizer, tokenizer_dir
from phi_assets.training import entrypoint, model, trainer
from phi_assets.versioning import Built, code_version_of, materialize_versioned, stable_hash
from resources import ArtifactStore, ProfileResource

TRAIN_CODE_VERSION = code_version_of(sys.modules[__name__], model, trainer, entrypoint)


class PretrainConfig(dg.Config):
    recipe: str = "debug"  # a trainer recipe (debug on CPU; phi1_pretrain on the A100 pool)
    train: dict = {}  # TrainConfig fields over the recipe's
    steps: int = 0  # 0: the mixture's token budget / tokens per step


def _sources(store: ArtifactStore, mixture: dict) -> dict[str, list[str]]:
    return {
        name: [
            str(
                _local(
                    store,
                    {"asset": s["asset"], "partition": s["partition"], "data_version": s["data_version"]},
                    SUBDIR,
                )
            )
            for s in shards
        ]
        for name, shards in mixture["shards"].items()
        if mixture["weights"].get(name, 0) > 0
    }


def _run_config(config: PretrainConfig, mixture: dict, seq_len: int) -> trainer.TrainConfig:
    base = trainer.TRAIN_RECIPES[config.recipe]()
    cfg = trainer.TrainConfig(**{**base.__dict__, "seq_len": seq_len, **config.train})
    steps = config.steps or max(1, mixture["token_budget"] // cfg.tokens_per_step)
    return trainer.TrainConfig(**{**cfg.__dict__, "max_steps": steps})


@dg.asset(
    deps=[mixture_weights, tokenizer],
    group_name="training",
    kinds={"pytorch"},
    code_version=TRAIN_CODE_VERSION,
    description="Pretraining on the mixture: the Phi model trained by the training entrypoint (Dagster Pipes), "
    "exported in Hugging Face format with its loss curve and throughput.",
)
def pretrained_checkpoint(
    context: dg.AssetExecutionContext,
    config: PretrainConfig,
    store: ArtifactStore,
    profile: ProfileResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    weights = _current(store, "mixture_weights")
    mixture = json.loads(
        Path(store.version_path("mixture_weights", None, weights["data_version"]), "mixture.json").read_text()
    )
    tok_path, tok_version = tokenizer_dir(store)
    cfg = _run_config(config, mixture, profile.get().sizes.train_seq_len)
    inputs = {"mixture": weights["data_version"], "tokenizer": tok_version, "train": cfg.__dict__}
    run_dir = (
        Path(profile.get().phi_home)
        / "runs"
        / "pretrained_checkpoint"
        / stable_hash([TRAIN_CODE_VERSION, inputs], 16)
    )

    def build(out: Path) -> Built:
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "train": cfg.__dict__,
            "sources": _sources(store, mixture),
            "weights": mixture["weights"],
            "tokenizer": str(tok_path),
            "out": str(run_dir / "run"),
        }
        (run_dir / "config.json").write_text(json.dumps(spec, indent=1, default=list))
        invocation = pipes_subprocess_client.run(
            context=context,
            command=[
                sys.executable,
                "-m",
                "phi_assets.training.entrypoint",
                "--config",
                str(run_dir / "config.json"),
            ],
        )
        messages = invocation.get_custom_messages()
        steps = [m for m in messages if m.get("kind") == "step"]
        shutil.copytree(run_dir / "run" / "hf", out / "hf")
        shutil.copyfile(run_dir / "run" / "metrics.jsonl", out / "metrics.jsonl")
        digest = hashlib.sha256((out / "hf" / "model.safetensors").read_bytes()).hexdigest()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rows = {r["step"]: r for r in rows}  # a resumed run logs the steps after its checkpoint again
        return Built(
            digest[:32],
            {
                "loss": [rows[s]["loss"] for s in sorted(rows)],
                "tokens": cfg.max_steps * cfg.tokens_per_step,
                "steps": cfg.max_steps,
                "tokens_per_s": sorted(r["tokens_per_s"] for r in rows.values())[len(rows) // 2],
                "messages": len(steps),
                "lineage": {"mixture": weights["data_version"], "tokenizer": tok_version},
            },
        )

    outcome = materialize_versioned(context, store, code_version=TRAIN_CODE_VERSION, inputs=inputs, build=build)
    meta = outcome.metadata
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "final_loss": meta["loss"][-1],
            "tokens_seen": meta["tokens"],
            "steps": meta["steps"],
            "tokens_per_s": meta["tokens_per_s"],
            "loss_curve": plots.line_plot({"train": meta["loss"]}, "pretraining loss", "step", "loss"),
            "lineage": dg.MetadataValue.json(meta["lineage"]),
            "path": store.uri(f"{store.version_path('pretrained_checkpoint', None, outcome.data_version)}/hf"),
            "skipped": outcome.skipped,
        },
    )


TRAINING_ASSETS = [pretrained_checkpoint]
