"""``dpo_checkpoint`` (group ``training``): DPO against the frozen SFT checkpoint on a mix of pairs.

Two kinds of pairs feed it: ``preference_pairs`` (judged by execution: rejection sampling and Pivotal Token
Search) and ``judged_pairs`` (judged by an LLM, both orders agreeing). ``judged_share`` sets the judged pairs'
share of the mix: all of the scarcer kind is used and the other is sampled (seeded) down to the proportion.
When one kind has no pairs the other is used alone, with a warning and the achieved share in the metadata.
"""


import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current_table
from phi_assets.common.versioning import stable_hash
from phi_assets.training.judged_assets import judged_pairs
from phi_assets.training.post_training import (
    architecture,
    parquet_writer,
    preference_pairs,
    sft_checkpoint,
    with_epochs,
)
from phi_assets.training.runs import current_tokenizer, parent_checkpoint, recipe_config, train_and_record
from phi_assets.training.safety_data import mix_safety, safety_pairs
from resources import ArtifactStore, ProfileResource
from resources.training import TrainingLauncher

DPO_CHECKPOINT_CODE_VERSION = code_version(__name__, "dpo_checkpoint")
KINDS = ("verified", "judged", "safety")


class DPOConfig(dg.Config):
    recipe: str = ""  # a trainer recipe; empty: the scale preset's (demo: debug_dpo, phi1: phi_dpo)
    train: dict = {}  # TrainConfig fields over the recipe's
    beta: float = 0.1  # the DPO temperature
    epochs: float = 2.0  # passes over the pairs
    judged_share: float = 0.25  # the LLM-judged pairs' share of the mix (0: execution-verified pairs only)
    safety_share: float = 0.1  # safety_pairs' share of the whole mix (0: none; the no-safety control: none)
    safety_max_repeats: int = 4  # passes over safety_pairs at most (a small set is not repeated without bound)
    seed: int = 0  # which pairs the sampling down keeps, which safety pairs join


def mix_counts(verified: int, judged: int, share: float) -> tuple[int, int]:
    """How many pairs of each kind make a mix with ``share`` judged: all of the scarcer kind (relative to its
    share), the other in proportion. A kind with no pairs leaves the other alone."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"judged_share must be within [0, 1], got {share}")
    if share == 0.0 or judged == 0:
        return verified, 0
    if share == 1.0 or verified == 0:
        return 0, judged
    total = min(verified / (1.0 - share), judged / share)
    n_judged = min(judged, max(1, round(total * share)))
    n_verified = min(verified, max(1, round(total * (1.0 - share))))
    return n_verified, n_judged


def mix_pairs(verified: pl.DataFrame, judged: pl.DataFrame, share: float, seed: int) -> pl.DataFrame:
    """(kind, prompt, chosen, rejected) rows in the proportions of ``mix_counts``, each kind sampled without
    replacement (seeded) when it is cut down."""
    n_verified, n_judged = mix_counts(verified.height, judged.height, share)
    parts = []
    for kind, frame, n in (("verified", verified, n_verified), ("judged", judged, n_judged)):
        picked = frame if n == frame.height else frame.sample(n, seed=seed, shuffle=False)
        parts.append(picked.select(pl.lit(kind).alias("kind"), "prompt", "chosen", "rejected"))
    return pl.concat(parts)


def _mixed(context, config: DPOConfig, verified: pl.DataFrame, judged: pl.DataFrame,
           asset: str) -> pl.DataFrame:
    try:
        pairs = mix_pairs(verified, judged, config.judged_share, config.seed)
    except ValueError as e:
        raise dg.Failure(description=f"{asset}: {e}") from e
    if not pairs.height:
        raise dg.Failure(
            description=f"{asset}: preference_pairs and judged_pairs hold no pairs (no problem had both "
            "a passing and a failing answer, and the judge agreed with itself on none); raise their problems, "
            "prompts or samples"
        )
    wanted = 0 < config.judged_share < 1
    for kind, frame in (("verified", verified), ("judged", judged)):
        if wanted and not frame.height:
            context.log.warning(f"{asset}: no {kind} pairs; training on the other kind alone "
                                f"(judged_share {config.judged_share} not met)")
    return pairs


def add_safety(context, store: ArtifactStore, pairs: pl.DataFrame, config: DPOConfig,
               reader: str) -> tuple[pl.DataFrame, dict]:
    """``pairs`` plus safety_pairs' at ``config.safety_share`` (kind ``safety``), and the version read."""
    columns = ("prompt", "chosen", "rejected")
    manifest, picked = mix_safety(context, store, "safety_pairs", columns, pairs.height, config, reader)
    added = pl.DataFrame([("safety", *r) for r in picked], schema=pairs.schema, orient="row")
    return pl.concat([pairs, added]), {"safety_pairs": manifest["data_version"]}


def train_dpo(context, config: DPOConfig, store: ArtifactStore, training_launcher: TrainingLauncher,
              profile: ProfileResource, *, parent_asset: str, code_version: str,
              safety_data: bool) -> dg.MaterializeResult:
    """DPO from ``parent_asset`` (its frozen copy the reference) on the verified and judged pairs, and with
    ``safety_data`` safety_pairs' at the config's share (``dpo_checkpoint``; without: the no-safety control)."""
    asset = context.asset_key.to_user_string()
    recipe = config.recipe or profile.get().sizes.dpo_recipe
    parent, init = parent_checkpoint(store, parent_asset)
    verified_manifest, verified = current_table(store, "preference_pairs", "pairs.parquet", asset)
    judged_manifest, judged = current_table(store, "judged_pairs", "pairs.parquet", asset)
    tok, tok_path = current_tokenizer(store)
    pairs, read = _mixed(context, config, verified, judged, asset), {}
    if safety_data and config.safety_share != 0:  # a share outside [0, 1) fails in the mix, naming it
        pairs, read = add_safety(context, store, pairs, config, asset)
    mix = {kind: int((pairs["kind"] == kind).sum()) for kind in KINDS}
    context.log.info(f"dpo pairs: {mix} of {verified.height} verified and {judged.height} judged")
    cfg = recipe_config(recipe, {**architecture(parent), **config.train})
    cfg = with_epochs(cfg, config.epochs, pairs.height, config.train)
    shares = {"judged_share": config.judged_share, "safety_share": config.safety_share if read else 0.0}
    result = train_and_record(
        context,
        store,
        training_launcher,
        code_version=code_version,
        stage="dpo",
        spec={"tokenizer": tok_path, "init": init, "beta": config.beta},
        cfg=cfg,
        recipe=recipe,
        inputs={
            "parent": parent["data_version"],
            "pairs": verified_manifest["data_version"],
            "judged_pairs": judged_manifest["data_version"],
            **read,
            "mix": {**shares, "seed": config.seed, "rows": stable_hash(pairs.rows())},
            "tokenizer": tok["data_version"],
            "beta": config.beta,
            "train": cfg.__dict__,
        },
        lineage={
            parent_asset: parent["data_version"],
            "preference_pairs": verified_manifest["data_version"],
            "judged_pairs": judged_manifest["data_version"],
            **read,
            "tokenizer": tok["data_version"],
            "pairs": {**dict(verified.group_by("kind").len().iter_rows()), "judged": judged.height},
            "mix": {**mix, **shares},
        },
        write_inputs=parquet_writer(store, pairs.select("prompt", "chosen", "rejected"), "pairs.parquet"),
    )
    used = {f"{kind}_pairs_used": mix[kind] for kind in KINDS}
    share = round(mix["judged"] / max(1, mix["verified"] + mix["judged"]), 4)
    return dg.MaterializeResult(data_version=result.data_version,
                                metadata={**result.metadata, **used, "judged_share": share,
                                          "safety_share": round(mix["safety"] / pairs.height, 4)})


@dg.asset(
    deps=[sft_checkpoint, preference_pairs, judged_pairs, safety_pairs],
    group_name="training",
    op_tags=steps.tags("light"),
    pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=DPO_CHECKPOINT_CODE_VERSION,
    description="DPO against the frozen SFT checkpoint as reference, on execution-verified and LLM-judged "
    "pairs mixed at a configurable share, with safety pairs (phi-3) mixed in; reports the share of pairs whose "
    "implicit reward prefers the chosen answer.",
)
def dpo_checkpoint(
    context: dg.AssetExecutionContext,
    config: DPOConfig,
    store: ArtifactStore,
    training_launcher: TrainingLauncher,
    profile: ProfileResource,
) -> dg.MaterializeResult:
    return train_dpo(context, config, store, training_launcher, profile, parent_asset="sft_checkpoint",
                     code_version=DPO_CHECKPOINT_CODE_VERSION, safety_data=True)


DPO_ASSETS = [judged_pairs, dpo_checkpoint]
