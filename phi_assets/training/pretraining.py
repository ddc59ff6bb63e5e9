"""Pretraining assets (group ``training``): ``pretrained_checkpoint`` and ``midtrained_checkpoint``.

Both train on the mixture (``mixture_weights``' shards and weights, the current ``tokenizer``);
midtraining derives its config from pretraining's (phi-4's context extension) and reweights the mix
toward long documents. The runs are launched and recorded by ``runs.train_and_record``.
"""

import json
import shutil
from pathlib import Path

import dagster as dg

from k8s import steps
from phi_assets.common import plots
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, user_error
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.mixture.assets import mixture_weights
from phi_assets.mixture.token_assets import SUBDIR, tokenizer
from phi_assets.training import configs, long_context
from phi_assets.training.runs import (
    HF,
    current_tokenizer,
    final_loss,
    launch_run,
    materialization,
    metric_rows,
    parent_checkpoint,
    recipe_config,
    run_and_record,
    steps_for,
    stored_input,
    train_and_record,
    with_recipe,
)
from resources import ArtifactStore, ProfileResource
from resources.training import TrainingLauncher

PRETRAINED_CHECKPOINT_CODE_VERSION = code_version(__name__, "pretrained_checkpoint")
MIDTRAINED_CHECKPOINT_CODE_VERSION = code_version(__name__, "midtrained_checkpoint")
TRANSFERRED_CHECKPOINT_CODE_VERSION = code_version(__name__, "transferred_checkpoint")


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


def _derived_recipe(stage: str, parent: dict) -> str:
    """``<stage>(<the recipe the parent's run chose>)``; ``<stage>(unrecorded)`` for a parent stored before
    its lineage named its recipe."""
    recorded = parent["metadata"].get("lineage", {}).get("recipe", {}).get("name", "unrecorded")
    return f"{stage}({recorded})"


def _parent_train_config(parent: dict) -> configs.TrainConfig:
    """The TrainConfig a stored checkpoint was trained with."""
    train = parent["inputs"]["train"]
    return configs.TrainConfig(**{**train, "betas": tuple(train["betas"])})


def _midtrain_config(parent: dict, config: MidtrainConfig, token_budget: int) -> configs.TrainConfig:
    """phi-4's context extension of the parent's config, at a fraction of the pretraining budget."""
    base = _parent_train_config(parent)
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
        recipe=_derived_recipe("midtrain", parent),
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


# --- scaled knowledge transfer ---------------------------------------------------------------------


class TransferConfig(dg.Config):
    width: int = 2  # the hidden size, the heads (of the same size) and the MLP, times this
    layers: int = 0  # blocks of the expanded model; 0: half as many again as the parent's (default_layers)
    split_noise: float = 0.5  # how far the copies' shares of a unit stray from 1 / width (they must differ)
    seed: int = 0  # of the shares
    token_fraction: float = 1.0  # each run's tokens relative to the pretraining token budget
    target: float = 0.95  # the loss both runs race to, relative to the small model's final loss
    baseline: bool = True  # also train the same shape from random init on the same data (the comparison)
    train: dict = {}  # TrainConfig fields over the parent's


def _transfer_config(parent: dict, config: TransferConfig, vocab: int, token_budget: int):
    """(the expanded run's TrainConfig, the expand spec): the parent's recipe at the expanded shape."""
    from phi_assets.training import transfer

    base = _parent_train_config(parent)
    small = base.model_config(vocab)
    layers = config.layers or transfer.default_layers(small.num_layers)
    big = user_error("transferred_checkpoint", lambda: transfer.expanded_config(small, config.width, layers))
    shape = ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "num_layers")
    overrides = {**base.overrides, **{k: getattr(big, k) for k in shape if hasattr(big, k)}}
    cfg = configs.TrainConfig(**{**base.__dict__, "overrides": overrides, **config.train})
    steps = steps_for(config.token_fraction * token_budget, cfg)
    cfg = configs.TrainConfig(**{**cfg.__dict__, "max_steps": steps})
    expand = {"width": config.width, "layers": layers, "split_noise": config.split_noise, "seed": config.seed,
              "parent_overrides": base.overrides}
    return cfg, expand


def _transfer_report(parent: dict, config: TransferConfig, losses: list[float], summary: dict,
                     baseline: dict | None) -> dict:
    """The comparison: the small model's final loss and the target, the expanded model's initial
    validation loss beside the small model's, and the steps each run takes to the target."""
    from phi_assets.training import transfer

    small_final = final_loss(parent["metadata"]["loss"])
    target = config.target * small_final
    report = {
        "small_final_loss": small_final,
        "target_loss": target,
        "small_val_loss": parent["metadata"]["summary"].get("val_loss", {}),
        "expanded_initial_val_loss": summary.get("parent_val_loss", {}),
        "steps": len(losses),
        "steps_to_target": transfer.steps_to_reach(losses, target),
        "baseline_steps_to_target": None,
        "baseline_final_loss": None,
    }
    if baseline is not None:
        report["baseline_steps_to_target"] = transfer.steps_to_reach(baseline["loss"], target)
        report["baseline_final_loss"] = final_loss(baseline["loss"])
        report["baseline_val_loss"] = baseline["summary"].get("val_loss", {})
    return report


@dg.asset(
    deps=[pretrained_checkpoint, mixture_weights, tokenizer],
    group_name="training",
    op_tags=steps.tags("light"),
    pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=TRANSFERRED_CHECKPOINT_CODE_VERSION,
    description="Scaled knowledge transfer (phi-2 from phi-1.5): the pretrained model widened and deepened "
    "by a function-preserving expansion (Net2Net / bert2BERT), then pretrained on the mixture; beside it the "
    "same shape from random init on the same data, and the steps each takes to a loss 5% below the small "
    "model's final loss.",
)
def transferred_checkpoint(
    context: dg.AssetExecutionContext,
    config: TransferConfig,
    store: ArtifactStore,
    training_launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    parent, init = parent_checkpoint(store, "pretrained_checkpoint")
    weights, mixture = _mixture(store)
    tok, tok_path = current_tokenizer(store)
    vocab = json.loads(store.fs.cat_file(file_uri(store, parent, f"{HF}/config.json")))["vocab_size"]
    cfg, expand = _transfer_config(parent, config, vocab, mixture["token_budget"])
    spec = {"stage": "pretrain", "sources": _sources(store, mixture), "weights": mixture["weights"],
            "tokenizer": tok_path, "eval_seq_lens": [cfg.seq_len]}
    inputs = {"parent": parent["data_version"], "mixture": weights["data_version"],
              "tokenizer": tok["data_version"], "expand": expand,
              "baseline": config.baseline, "target": config.target, "train": cfg.__dict__}
    lineage = with_recipe({"pretrained_checkpoint": parent["data_version"], "mixture": weights["data_version"],
                           "tokenizer": tok["data_version"], "expand": expand},
                          _derived_recipe("transfer", parent), cfg)
    asset, key = "transferred_checkpoint", stable_hash([TRANSFERRED_CHECKPOINT_CODE_VERSION, inputs], 16)

    def build(out: Path) -> Built:
        baseline = None
        if config.baseline:  # first: the checkpoint's own run is the last one the log shows
            launch_run(context, store, training_launcher, asset, f"{key}-baseline", spec, cfg, out / "baseline")
            shutil.rmtree(out / "baseline" / HF)  # its curve and summary are kept, not its weights
            baseline = {"loss": [r["loss"] for r in metric_rows(out / "baseline")],
                        "summary": json.loads((out / "baseline" / "summary.json").read_text())}
        built = run_and_record(context, store, training_launcher, asset, key,
                               {**spec, "init": init, "expand": expand}, cfg, out, lineage)
        built.metadata["transfer"] = _transfer_report(
            parent, config, built.metadata["loss"], built.metadata["summary"], baseline)
        if baseline is not None:
            built.metadata["baseline_loss"] = baseline["loss"]
        return built

    outcome = materialize_versioned(
        context, store, code_version=TRANSFERRED_CHECKPOINT_CODE_VERSION, inputs=inputs, build=build
    )
    result = materialization(store, outcome, "transfer", cfg.__dict__)
    meta = outcome.metadata
    report = meta["transfer"]
    series = {"expanded": meta["loss"],
              **({"random init": meta["baseline_loss"]} if "baseline_loss" in meta else {}),
              f"target {report['target_loss']:.3f}": [report["target_loss"]] * len(meta["loss"])}
    return dg.MaterializeResult(
        data_version=result.data_version,
        metadata={
            **result.metadata,
            "transfer": dg.MetadataValue.json(report),
            "steps_to_target": report["steps_to_target"] or -1,  # -1: not reached
            "baseline_steps_to_target": report["baseline_steps_to_target"] or -1,
            "transfer_curves": plots.line_plot(series, "expanded vs random init", "step", "loss"),
        },
    )


PRETRAINING_ASSETS = [pretrained_checkpoint, midtrained_checkpoint, transferred_checkpoint]
