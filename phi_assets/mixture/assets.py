"""The mixture weights asset (group ``mixture``): what the trainer reads.

``mixture_weights``: per-source weights (phi-4's table, the mixture search's proposal, or explicit)
and the epochs each implies for the token budget; ``mixture.json`` names every token shard of it.
The tokenizer and the token sources are in ``token_assets.py``, the mixture search (proxies and
regression) in ``search_assets.py``; ``MIXTURE_ASSETS`` lists the tokenizer, the token sources and
the weights.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from k8s import steps
from phi_assets.common import plots
from phi_assets.common.automation import ON_NEW_PARTITIONS
from phi_assets.common.code_version import code_version
from phi_assets.common.store import user_error
from phi_assets.common.tables import md_table
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.mixture import weights as mix
from phi_assets.mixture.search_assets import mixture_search
from phi_assets.mixture.token_assets import (
    TOKEN_ASSETS,
    TOKEN_SOURCES,
    TOKENIZED_ASSETS,
    shard_versions,
    source_shards,
    token_counts,
)
from resources import ArtifactStore, ProfileResource

WEIGHTS_CODE_VERSION = code_version(__name__, "mixture_weights")


class MixtureWeightsConfig(dg.Config):
    weights_from: str = "phi4"  # phi4 (the report's table), search (mixture_search's proposal), explicit
    weights: dict[str, float] = {}  # weights_from=explicit: source -> weight (renormalised)
    token_budget: int = 0  # 0: the profile's size (ci 200k, local 2M)
    max_epochs: float = mix.DEFAULT_MAX_EPOCHS  # no source repeated more often than this
    enforce_cap: bool = True  # move over-cap weight to other sources; False: the check fails instead


def requested_weights(
    config: MixtureWeightsConfig, tokens: dict[str, int], store: ArtifactStore
) -> tuple[dict, str]:
    """The weights asked for, and what they came from (a search version when from the search)."""
    if config.weights_from == "phi4":
        return mix.default_weights(tokens), "phi4"
    if config.weights_from == "explicit":
        return mix.normalise(config.weights, tokens), "explicit"
    if config.weights_from == "search":
        manifest = store.current_manifest(mixture_search.key.to_user_string(), None)
        if manifest is None:
            raise ValueError(
                "weights_from='search' but mixture_search has no materialization; materialize it first"
            )
        proposal = manifest["metadata"]["proposal"]
        return mix.normalise(
            {s: proposal.get(s, 0.0) for s in tokens}, tokens
        ), f"search:{manifest['data_version']}"
    raise ValueError(f"weights_from must be phi4, search or explicit, got {config.weights_from!r}")


@dg.asset(
    deps=[
        *(dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in TOKENIZED_ASSETS.values()),
        mixture_search,
    ],
    group_name="mixture",
    op_tags=steps.tags("light"),
    kinds={"json"},
    code_version=WEIGHTS_CODE_VERSION,
    automation_condition=ON_NEW_PARTITIONS,
    check_specs=[
        dg.AssetCheckSpec(
            "weights_sum_to_one",
            asset="mixture_weights",
            blocking=True,
            description="The sampling weights are non-negative and sum to 1.",
        ),
        dg.AssetCheckSpec(
            "epochs_within_cap",
            asset="mixture_weights",
            blocking=True,
            description="No source is repeated more than max_epochs times for the token budget.",
        ),
    ],
    description="Per-source sampling weights (phi-4's table by default, or mixture_search's proposal) and the "
    "epochs each implies for the token budget; mixture.json names every token shard the trainer reads.",
)
def mixture_weights(
    context: dg.AssetExecutionContext,
    config: MixtureWeightsConfig,
    store: ArtifactStore,
    profile: ProfileResource,
) -> dg.MaterializeResult:
    budget = config.token_budget or profile.get().sizes.token_budget
    shards = source_shards(context, store, "mixture_weights")
    tokens = token_counts(shards)
    requested, origin = user_error("mixture_weights", lambda: requested_weights(config, tokens, store))
    inputs = {
        "shards": shard_versions(shards),
        "origin": origin,
        "requested": requested,
        "config": {**config.model_dump(), "token_budget": budget},
    }

    def build(out: Path) -> Built:
        final = requested
        if config.enforce_cap:
            final = user_error(
                "mixture_weights", lambda: mix.cap_epochs(requested, tokens, budget, config.max_epochs)
            )
        table = mix.table(requested, final, tokens, budget)
        table.write_parquet(out / "table.parquet")
        mixture = {
            "weights": final,
            "requested": requested,
            "origin": origin,
            "token_budget": budget,
            "max_epochs": config.max_epochs,
            "tokens": tokens,
            "shards": {
                n: [{"asset": TOKEN_SOURCES[n].asset, "partition": k, "data_version": v} for k, v in found]
                for n, found in shard_versions(shards).items()
            },
        }
        (out / "mixture.json").write_text(json.dumps(mixture, indent=1))
        return Built(stable_hash([WEIGHTS_CODE_VERSION, mixture]), {**mixture, "table": table.rows(named=True)})

    outcome = materialize_versioned(
        context, store, code_version=WEIGHTS_CODE_VERSION, inputs=inputs, build=build
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata=weights_metadata(store, outcome),
        check_results=weights_checks(outcome.metadata),
    )


def mixture_table_md(rows: list[dict[str, Any]]) -> dg.MarkdownMetadataValue:
    return md_table(
        ["source", "category", "requested", "weight", "unique tokens", "tokens seen", "epochs"],
        [
            [
                r["source"],
                r["category"],
                f"{r['requested_weight']:.3f}",
                f"{r['weight']:.3f}",
                f"{r['unique_tokens']:,}",
                f"{r['tokens_seen']:,}",
                f"{r['epochs']:.2f}",
            ]
            for r in rows
        ],
    )


def weights_metadata(store: ArtifactStore, outcome) -> dict[str, Any]:
    meta = outcome.metadata
    rows = meta["table"]
    return {
        "mixture": mixture_table_md(rows),
        "origin": meta["origin"],
        "token_budget": meta["token_budget"],
        "max_epochs": meta["max_epochs"],
        **{f"weight_{r['source']}": float(r["weight"]) for r in rows},
        **{f"epochs_{r['source']}": float(r["epochs"]) for r in rows},
        "weights_plot": plots.grouped_bar_plot(
            [r["source"] for r in rows],
            {"requested": [r["requested_weight"] for r in rows], "weight": [r["weight"] for r in rows]},
            "mixture weights",
            "weight",
        ),
        "epochs_plot": plots.bar_plot(
            [r["source"] for r in rows],
            [r["epochs"] for r in rows],
            f"epochs for {meta['token_budget']:,} tokens (cap {meta['max_epochs']:g})",
            "",
            "epochs",
        ),
        "path": store.uri(f"{store.version_path('mixture_weights', None, outcome.data_version)}/mixture.json"),
        "skipped": outcome.skipped,
    }


def weights_checks(meta: dict[str, Any]) -> list[dg.AssetCheckResult]:
    weights = meta["weights"]
    total = sum(weights.values())
    over = {
        r["source"]: round(r["epochs"], 3) for r in meta["table"] if r["epochs"] > meta["max_epochs"] + 1e-6
    }
    return [
        dg.AssetCheckResult(
            check_name="weights_sum_to_one",
            passed=abs(total - 1) < 1e-6 and min(weights.values()) >= 0,
            metadata={"sum": total},
        ),
        dg.AssetCheckResult(
            check_name="epochs_within_cap",
            passed=not over,
            metadata={"over_cap": dg.MetadataValue.json(over), "max_epochs": meta["max_epochs"]},
        ),
    ]


MIXTURE_ASSETS = [*TOKEN_ASSETS, mixture_weights]
