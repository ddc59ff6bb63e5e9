"""Mixture search assets (group ``mixture``), RegMix-style.

- ``mixture_proxies``: one static partition per proxy (``proxy-000``...), so they fan out as
  parallel steps (pods on Kubernetes). Each samples its mixture from a Dirichlet (``search.py``),
  trains a tiny ``PhiForCausalLM`` on it (``proxy.py``) and records validation loss per source.
- ``mixture_search``: fans in over the proxies, fits loss ~ weights, and proposes the mixture with
  the lowest predicted loss under the real run's epoch cap. ``mixture_weights`` (``assets.py``)
  takes it with ``weights_from: search``.
"""

import json
import sys
from pathlib import Path

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common import plots
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, materialized, user_error
from phi_assets.common.tables import md_table
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.mixture import loader, proxy, search
from phi_assets.mixture import weights as mix
from phi_assets.mixture.token_assets import (
    TOKENIZED_ASSETS,
    open_shards,
    shard_versions,
    source_shards,
    token_counts,
    tokenizer,
)
from resources import ArtifactStore, ProfileResource, load_profile

SIZES = load_profile().sizes
PROXIES = dg.StaticPartitionsDefinition([f"proxy-{i:03d}" for i in range(SIZES.mixture_proxies)])
_HERE = sys.modules[__name__]
PROXY_CODE_VERSION = code_version(__name__, "mixture_proxies")
SEARCH_CODE_VERSION = code_version(__name__, "mixture_search")


class ProxyTrainingConfig(dg.Config):
    steps: int = 0  # 0: the profile's size (ci 20, local 100)
    seq_len: int = 0  # 0: the profile's size (ci 64, local 128)
    batch_size: int = 8
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    lr: float = 3e-3
    warmup_steps: int = 5
    eval_batches: int = 4
    prior: str = "uniform"  # Dirichlet prior: uniform over sources, or their token shares (RegMix)
    val_fraction: float = 0.05  # documents of each source held out for the validation loss
    seed: int = 0
    threads: int = 1  # torch threads per proxy (proxies run side by side)


def _proxy_config(config: ProxyTrainingConfig, index: int, profile: ProfileResource) -> proxy.ProxyConfig:
    sizes = profile.get().sizes
    return proxy.ProxyConfig(
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        seq_len=config.seq_len or sizes.proxy_seq_len,
        batch_size=config.batch_size,
        steps=config.steps or sizes.proxy_steps,
        lr=config.lr,
        warmup_steps=config.warmup_steps,
        eval_batches=config.eval_batches,
        seed=config.seed + index,
        threads=config.threads,
    )


def _train_one(context, opened, config: ProxyTrainingConfig, cfg: proxy.ProxyConfig, index: int, vocab: int):
    """Sample this proxy's mixture over the sources with training tokens, train it, evaluate it."""
    split = {"seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "val_fraction": config.val_fraction}
    train_tokens = {
        n: loader.Source(n, s, "train", config.val_fraction, config.seed).num_tokens for n, s in opened.items()
    }
    trainable = {n: s for n, s in opened.items() if train_tokens[n] > 0}
    prior = search.prior_of(train_tokens, config.prior)
    mixture = search.sample_mixture(prior, index, config.seed)
    train = loader.MixtureLoader(trainable, mixture, loader.LoaderConfig(seed=cfg.seed, split="train", **split))
    val = {}
    for name, shards in opened.items():
        try:
            val[name] = loader.MixtureLoader(
                {name: shards}, {name: 1.0}, loader.LoaderConfig(seed=config.seed, split="val", **split)
            )
        except ValueError:  # no validation documents in this source
            context.log.info(f"mixture_proxies: {name} has no validation documents; no loss for it")

    def progress(step: int, loss: float) -> None:
        if step % max(cfg.steps // 5, 1) == 0 or step == cfg.steps - 1:
            context.log.info(f"proxy {index}: step {step + 1}/{cfg.steps} loss {loss:.3f}")

    return prior, mixture, proxy.train_proxy(train, val, vocab, cfg, progress)


@dg.asset(
    partitions_def=PROXIES,
    deps=[
        *(dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in TOKENIZED_ASSETS.values()),
        tokenizer,
    ],
    group_name="mixture",
    op_tags=steps.tags("heavy"),
    kinds={"pytorch"},
    code_version=PROXY_CODE_VERSION,
    description="RegMix proxies: each partition samples a mixture from a Dirichlet, trains a tiny "
    "PhiForCausalLM on it and records the validation loss of every source.",
)
def mixture_proxies(
    context: dg.AssetExecutionContext,
    config: ProxyTrainingConfig,
    store: ArtifactStore,
    profile: ProfileResource,
) -> dg.MaterializeResult:
    index = int(context.partition_key.rsplit("-", 1)[1])
    cfg = user_error("mixture_proxies", lambda: _proxy_config(config, index, profile))
    shards = source_shards(context, store, "mixture_proxies")
    tok = current(store, "tokenizer")
    versions = shard_versions(shards)
    inputs = {
        "shards": versions,
        "tokenizer": tok["data_version"],
        "config": cfg.__dict__,
        "prior": config.prior,
        "val_fraction": config.val_fraction,
    }

    def build(out: Path) -> Built:
        opened = open_shards(store, {n: f for n, f in shards.items() if f})
        prior, mixture, result = user_error(
            "mixture_proxies",
            lambda: _train_one(context, opened, config, cfg, index, tok["metadata"]["vocab_size"]),
        )
        record = {
            "mixture": mixture,
            "prior": prior,
            "val_loss": result.val_loss,
            "train_loss": result.train_loss,
            "tokens": token_counts(shards),
            "data": stable_hash(versions),
            "num_params": result.num_params,
            "tokens_seen": result.tokens_seen,
            "seconds": round(result.seconds, 2),
            "epochs": result.epochs,
        }
        (out / "result.json").write_text(json.dumps(record, indent=1))
        return Built(stable_hash([PROXY_CODE_VERSION, mixture, result.val_loss, result.train_loss]), record)

    outcome = materialize_versioned(context, store, code_version=PROXY_CODE_VERSION, inputs=inputs, build=build)
    meta = outcome.metadata
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "mixture": dg.MetadataValue.json({s: round(w, 4) for s, w in meta["mixture"].items()}),
            "val_loss": dg.MetadataValue.json({s: round(v, 4) for s, v in meta["val_loss"].items()}),
            "final_train_loss": meta["train_loss"][-1],
            "num_params": meta["num_params"],
            "tokens_seen": meta["tokens_seen"],
            "tokens_per_s": round(meta["tokens_seen"] / max(meta["seconds"], 1e-9)),
            "loss_curve": plots.line_plot(
                {"train": meta["train_loss"]}, f"proxy {index} training loss", "step", "loss"
            ),
            "skipped": outcome.skipped,
        },
    )


class MixtureSearchConfig(dg.Config):
    target: list[str] = []  # sources whose mean validation loss is minimised (empty: all with validation docs)
    regressor: str = "linear"  # linear (ridge) or gbm (gradient-boosted trees, for many proxies)
    num_candidates: int = 10_000  # mixtures scored by the regression
    top_k: int = 100  # the proposal averages the best top_k candidates (RegMix)
    token_budget: int = 0  # 0: the profile's size; candidates respect max_epochs at this budget
    max_epochs: float = mix.DEFAULT_MAX_EPOCHS
    seed: int = 0


def run_search(records: list[dict], config: MixtureSearchConfig, budget: int) -> dict:
    """Fit and propose from proxy records (plain dicts, as ``mixture_proxies`` writes them)."""
    if len({r["data"] for r in records}) > 1:
        raise ValueError("the proxies were trained on different token data; rematerialize mixture_proxies")
    evaluated = set.intersection(*(set(r["val_loss"]) for r in records))
    target = list(config.target) or sorted(evaluated)
    losses = [search.target_loss(r["val_loss"], target) for r in records]
    model = search.fit([r["mixture"] for r in records], losses, config.regressor)
    tokens, prior = records[0]["tokens"], records[0]["prior"]
    proposal, predicted = search.propose(
        model,
        prior,
        tokens,
        budget,
        config.max_epochs,
        num_candidates=config.num_candidates,
        top_k=config.top_k,
        seed=config.seed,
    )
    phi4 = {
        s: w
        for s, w in mix.cap_epochs(mix.default_weights(tokens), tokens, budget, config.max_epochs).items()
        if s in prior
    }
    phi4_total = sum(phi4.values())
    phi4_predicted = float(model.predict([[phi4[s] / phi4_total for s in model.sources]])[0])
    return {
        "proposal": proposal,
        "predicted_loss": predicted,
        "phi4_predicted_loss": phi4_predicted,
        "target": target,
        "losses": losses,
        "loo_predictions": model.loo_predictions,
        "spearman": model.spearman,
        "mae": model.mae,
        "sources": model.sources,
        "token_budget": budget,
    }


@dg.asset(
    deps=[dg.AssetDep(mixture_proxies, partition_mapping=dg.AllPartitionMapping())],
    group_name="mixture",
    op_tags=steps.tags("heavy"),
    kinds={"sklearn"},
    code_version=SEARCH_CODE_VERSION,
    description="RegMix: regress the proxies' validation loss on their mixture weights and propose the mixture "
    "with the lowest predicted loss (within the epoch cap); feeds mixture_weights with weights_from: search.",
)
def mixture_search(
    context: dg.AssetExecutionContext,
    config: MixtureSearchConfig,
    store: ArtifactStore,
    profile: ProfileResource,
) -> dg.MaterializeResult:
    budget = config.token_budget or profile.get().sizes.token_budget
    found = materialized(context, store, "mixture_proxies", PROXIES.get_partition_keys(), "mixture_search")
    inputs = {
        "proxies": [(k, m["data_version"]) for k, m in found],
        "config": {**config.model_dump(), "budget": budget},
    }

    def build(out: Path) -> Built:
        records = [m["metadata"] for _, m in found]
        result = user_error("mixture_search", lambda: run_search(records, config, budget))
        (out / "proposal.json").write_text(json.dumps(result, indent=1))
        rows = [
            {"proxy": k, **{s: r["mixture"].get(s, 0.0) for s in result["sources"]}, "loss": loss, "loo": loo}
            for (k, _), r, loss, loo in zip(
                found, records, result["losses"], result["loo_predictions"], strict=True
            )
        ]
        pl.DataFrame(rows).write_parquet(out / "proxies.parquet")
        return Built(stable_hash([SEARCH_CODE_VERSION, result]), {**result, "rows": rows})

    outcome = materialize_versioned(
        context, store, code_version=SEARCH_CODE_VERSION, inputs=inputs, build=build
    )
    meta = outcome.metadata
    sources = meta["sources"]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "num_proxies": len(meta["rows"]),
            "target": ", ".join(meta["target"]),
            "proposal": dg.MetadataValue.json({s: round(w, 4) for s, w in meta["proposal"].items()}),
            "predicted_loss": meta["predicted_loss"],
            "phi4_predicted_loss": meta["phi4_predicted_loss"],
            "loo_spearman": meta["spearman"],
            "loo_mae": meta["mae"],
            "proxies": md_table(
                ["proxy", *sources, "loss", "LOO predicted"],
                [
                    [r["proxy"], *(f"{r[s]:.3f}" for s in sources), f"{r['loss']:.4f}", f"{r['loo']:.4f}"]
                    for r in meta["rows"]
                ],
            ),
            "fit": plots.scatter_plot(
                meta["losses"],
                meta["loo_predictions"],
                "leave-one-out fit",
                "observed loss",
                "predicted loss",
                diagonal=True,
            ),
            "skipped": outcome.skipped,
        },
    )


SEARCH_ASSETS = [mixture_proxies, mixture_search]
