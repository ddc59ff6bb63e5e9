"""Pretraining assets (group ``training``): ``pretrained_checkpoint`` and ``midtrained_checkpoint``.

Both train on the mixture (``mixture_weights``' shards and weights, the current ``tokenizer``);
midtraining derives its config from pretraining's (phi-4's context extension) and reweights the mix
toward long documents. The runs are launched and recorded by ``runs.train_and_record``.
"""

import json

import dagster as dg

from k8s import steps
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, user_error
from phi_assets.mixture.assets import mixture_weights
from phi_assets.mixture.token_assets import SUBDIR, tokenizer
from phi_assets.training import configs, long_context
from phi_assets.training.runs import (
    current_tokenizer,
    parent_checkpoint,
    recipe_config,
    steps_for,
    stored_input,
    train_and_record,
)
from resources import ArtifactStore, ProfileResource
from resources.training import TrainingLauncher

PRETRAINED_CHECKPOINT_CODE_VERSION = code_version(__name__, "pretrained_checkpoint")
MIDTRAINED_CHECKPOINT_CODE_VERSION = code_version(__name__, "midtrained_checkpoint")


def _mixture(store: ArtifactStore) -> tuple[dict, dict]:
    weights = current(store, "mixture_weights")
    return weights, json.loads(store.fs.cat_file(file_uri(store, weights, "mixture.json")))


def _sources(store: ArtifactStore, mixture: dict) -> dict[str, list[str]]:
    return {
        name: [stored_input(store, s, SUBDIR) for s in shards]
        for name, shards in mixture["shards"].items()
        if mixture["weights"].get(name, 0) > 0
    }


def _long_tokens(store: ArtifactStore, shards: list[dict], min_tokens: int, log) -> long_context.LongTokens:
    """A source's tokens and those in documents of >= ``min_tokens``, from its shards' ``tokens.json``
    (the length histogram; ``long_context`` says when a shard's ``documents.parquet`` is streamed)."""
    from phi_assets.mixture import tokens

    def shard(s: dict):
        meta = json.loads(store.fs.cat_file(file_uri(store, s, f"{SUBDIR}/{tokens.META}")))
        stats = tokens.ShardStats(**meta)
        if stats.length_docs is None:
            log(
                f"{s['asset']}[{s['partition']}]: no length histogram (written before it); its "
                "documents.parquet is streamed instead: re-materialize the partition to skip this"
            )

        def lengths():
            with store.fs.open(file_uri(store, s, f"{SUBDIR}/{tokens.DOCUMENTS}"), "rb") as f:
                yield from tokens.document_lengths(f)

        return stats, lengths

    return long_context.source_long_tokens(map(shard, shards), min_tokens)


# --- pretraining ----------------------------------------------------------------------------------


class PretrainConfig(dg.Config):
    recipe: str = ""  # a trainer recipe; empty: the preset's (demo: debug, phi1: phi1_pretrain) in the family's
    family: str = ""  # the model family (configs.FAMILIES); empty: the preset's model_family / PHI_MODEL_FAMILY
    train: dict = {}  # TrainConfig fields over the recipe's
    steps: int = 0  # 0: the mixture's token budget / tokens per step


@dg.asset(
    deps=[mixture_weights, tokenizer],
    group_name="training",
    op_tags=steps.tags("light"),
    pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=PRETRAINED_CHECKPOINT_CODE_VERSION,
    description="Pretraining on the mixture: the Phi model trained by the training entrypoint (Dagster Pipes), "
    "exported in Hugging Face format with its loss curve and throughput.",
)
def pretrained_checkpoint(
    context: dg.AssetExecutionContext,
    config: PretrainConfig,
    store: ArtifactStore,
    profile: ProfileResource,
    training_launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    weights, mixture = _mixture(store)
    tok, tok_path = current_tokenizer(store)
    sizes = profile.get().sizes
    recipe = config.recipe or user_error(
        "pretrained_checkpoint",
        lambda: configs.family_recipe(config.family or sizes.model_family, sizes.pretrain_recipe),
    )
    cfg = recipe_config(recipe, {"seq_len": sizes.train_seq_len, **config.train})
    cfg = configs.TrainConfig(
        **{**cfg.__dict__, "max_steps": config.steps or steps_for(mixture["token_budget"], cfg)}
    )
    return train_and_record(
        context,
        store,
        training_launcher,
        code_version=PRETRAINED_CHECKPOINT_CODE_VERSION,
        stage="pretrain",
        spec={
            "sources": _sources(store, mixture),
            "weights": mixture["weights"],
            "tokenizer": tok_path,
            "eval_seq_lens": [cfg.seq_len],
        },
        cfg=cfg,
        recipe=recipe,
        inputs={"mixture": weights["data_version"], "tokenizer": tok["data_version"], "train": cfg.__dict__},
        lineage={"mixture": weights["data_version"], "tokenizer": tok["data_version"]},
    )


# --- midtraining ----------------------------------------------------------------------------------


class MidtrainConfig(dg.Config):
    extension: str = ""  # rope_theta, yarn or longrope; empty: the model's (phi-3/3.5: longrope, else theta)
    rope_theta: float = 250_000.0  # phi-4 raised the RoPE base from 10K to 250K for 16K context
    seq_len_factor: int = 2  # the new context length is the parent's times this (phi-4: 4K -> 16K)
    lr_factor: float = 0.1  # peak lr relative to pretraining (phi-4: a tenth)
    long_mix: float = 0.3  # share of the mix given to long documents (phi-4: 30% long, 70% recall)
    token_fraction: float = 0.25  # tokens relative to the pretraining token budget
    train: dict = {}  # TrainConfig fields over the derived ones


def _midtrain_recipe(parent: dict) -> str:
    """``midtrain(<the recipe pretraining chose>)``; ``midtrain(unrecorded)`` for a parent stored before
    its lineage named its recipe."""
    recorded = parent["metadata"].get("lineage", {}).get("recipe", {}).get("name", "unrecorded")
    return f"midtrain({recorded})"


def _midtrain_config(parent: dict, config: MidtrainConfig, token_budget: int) -> configs.TrainConfig:
    """phi-4's context extension of the parent's config, at a fraction of the pretraining budget."""
    base = configs.TrainConfig(
        **{**parent["inputs"]["train"], "betas": tuple(parent["inputs"]["train"]["betas"])}
    )
    cfg = user_error(
        "midtrained_checkpoint",
        lambda: configs.midtrain(
            base, config.rope_theta, config.seq_len_factor, config.lr_factor, config.extension
        ),
    )
    return configs.TrainConfig(
        **{
            **cfg.__dict__,
            "warmup_steps": max(1, base.warmup_steps // 2),
            "max_steps": steps_for(config.token_fraction * token_budget, cfg),
            **config.train,
        }
    )


@dg.asset(
    deps=[pretrained_checkpoint, mixture_weights, tokenizer],
    group_name="training",
    op_tags=steps.tags("light"),
    pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=MIDTRAINED_CHECKPOINT_CODE_VERSION,
    description="Context extension: a higher RoPE base (phi-4) or rotary scaling (LongRoPE as phi-3.5, YaRN), "
    "longer sequences, a mix weighted toward long documents, a lower peak lr; validation loss at the old and "
    "the new length.",
)
def midtrained_checkpoint(
    context: dg.AssetExecutionContext,
    config: MidtrainConfig,
    store: ArtifactStore,
    training_launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    parent, init = parent_checkpoint(store, "pretrained_checkpoint")
    weights, mixture = _mixture(store)
    tok, tok_path = current_tokenizer(store)
    cfg = _midtrain_config(parent, config, mixture["token_budget"])
    sources = _sources(store, mixture)
    long = {n: _long_tokens(store, mixture["shards"][n], cfg.seq_len, context.log.warning) for n in sources}
    mixed, long_share = long_context.long_context_weights(long, mixture["weights"], config.long_mix)
    context.log.info(
        "midtraining mix (long-document share in brackets): "
        + ", ".join(f"{n} {w:.3f} ({long_share[n]:.2f})" for n, w in mixed.items())
    )
    return train_and_record(
        context,
        store,
        training_launcher,
        code_version=MIDTRAINED_CHECKPOINT_CODE_VERSION,
        stage="midtrain",
        spec={
            "sources": sources,
            "weights": mixed,
            "tokenizer": tok_path,
            "init": init,
            "eval_seq_lens": [parent["inputs"]["train"]["seq_len"], cfg.seq_len],
        },
        cfg=cfg,
        recipe=_midtrain_recipe(parent),
        inputs={
            "parent": parent["data_version"],
            "mixture": weights["data_version"],
            "tokenizer": tok["data_version"],
            "weights": mixed,
            "train": cfg.__dict__,
        },
        lineage={
            "pretrained_checkpoint": parent["data_version"],
            "mixture": weights["data_version"],
            "tokenizer": tok["data_version"],
            "long_document_share": long_share,
        },
    )


PRETRAINING_ASSETS = [pretrained_checkpoint, midtrained_checkpoint]
