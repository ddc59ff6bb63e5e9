"""Quality-filter assets (group ``curation``): one dynamic partition per raw shard, one pod each on
Kubernetes. Heuristic filters in batches under a memory budget, MinHash signatures of the kept
documents, and their LSH band hashes split into the slices the dedup bucket partitions read
(``phi_assets/curation/lsh.py``)."""

from dataclasses import asdict
from typing import Any

import dagster as dg

from k8s import steps
from phi_assets.common.automation import ON_NEW_DATA
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, user_error
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.curation import heuristics, lsh, minhash, stages
from phi_assets.curation.metadata import filter_metadata
from phi_assets.ingest.assets import PARTITIONS, raw_code_shards, raw_web_shards
from resources import ArtifactStore, load_profile

RAW = {"code": raw_code_shards, "web": raw_web_shards}
SIZES = load_profile().sizes
LAYOUT = lsh.BucketLayout(SIZES.dedup_band_groups, SIZES.dedup_hash_ranges)
FILTER_CODE_VERSION = code_version(__name__, "quality_filtered_asset")
__all__ = [
    "LAYOUT",
    "PARTITIONS",
    "QUALITY_FILTERED",
    "quality_filtered_code_shards",
    "quality_filtered_web_shards",
]


class QualityFilterConfig(dg.Config):
    rules: dict[str, Any] = {}  # overrides of WebFilterConfig / CodeFilterConfig fields
    shingle_words: int = 5  # MinHash (FineWeb): 5-word shingles, 14 bands x 8 rows
    num_bands: int = 14
    rows_per_band: int = 8
    minhash_seed: int = 1
    # Peak memory of the step, whatever the shard size: the shard is filtered in batches sized from it
    # (stages.FILTER_MEMORY.batches). Not an input of the data version: outputs do not depend on it.
    memory_budget_mb: int = 2048


def _filters(source: str, rules: dict[str, Any]):
    config = heuristics.CodeFilterConfig if source == "code" else heuristics.WebFilterConfig
    unknown = sorted(set(rules) - set(config.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"unknown {source} filter setting(s) {unknown}; known: {sorted(config.__dataclass_fields__)}"
        )
    return config(**rules)


def _build(
    context, store: ArtifactStore, raw: dict, source: str, filters, signature, config, layout, out
) -> dict:
    built = stages.filter_shard(
        file_uri(store, raw, "docs.parquet"),
        source,
        filters,
        signature,
        out,
        memory_budget_mb=config.memory_budget_mb,
        progress=context.log.info,
    )
    ids, sigs = minhash.read_signatures(out / stages.MINHASH, signature)
    written = lsh.write_bands(ids, sigs, signature, layout, out)
    return {**built, "bands": {"layout": asdict(layout), "touched": lsh.touched(written, layout)}}


def quality_filtered_asset(source: str, layout: lsh.BucketLayout = LAYOUT) -> dg.AssetsDefinition:
    """The quality filter of ``source``'s shards, its band slices cut for ``layout`` (the scale's)."""
    name = f"quality_filtered_{source}_shards"

    @dg.asset(
        name=name,
        partitions_def=PARTITIONS[source],
        deps=[RAW[source]],
        group_name="curation",
        op_tags=steps.tags("shard"),
        code_version=FILTER_CODE_VERSION,
        automation_condition=ON_NEW_DATA,
        kinds={"parquet", "polars"},
        description=f"Raw {source} documents that pass the heuristic quality filters (every drop "
        "has a reason), with the MinHash signatures and LSH band slices dedup reads.",
    )
    def _asset(
        context: dg.AssetExecutionContext, config: QualityFilterConfig, store: ArtifactStore
    ) -> dg.MaterializeResult:
        raw = current(store, f"raw_{source}_shards", context.partition_key)
        filters = user_error(name, lambda: _filters(source, config.rules))
        signature = user_error(
            name,
            lambda: minhash.MinHashConfig(
                config.shingle_words, config.num_bands, config.rows_per_band, config.minhash_seed
            ),
        )
        inputs = {
            "raw": raw["data_version"],
            "filters": asdict(filters),
            "minhash": asdict(signature),
            "buckets": asdict(LAYOUT),
        }
        outcome = materialize_versioned(
            context,
            store,
            code_version=FILTER_CODE_VERSION,
            inputs=inputs,
            build=lambda out: Built(
                stable_hash([FILTER_CODE_VERSION, inputs]),
                _build(context, store, raw, source, filters, signature, config, layout, out),
            ),
        )
        context.log.info(f"{name}[{context.partition_key}]: {outcome.metadata['funnel']}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.data_version),
            metadata={
                **filter_metadata(outcome.metadata, store.uri(file_uri(store, outcome.manifest, stages.DOCS))),
                "skipped": outcome.skipped,
            },
        )

    return _asset


quality_filtered_code_shards = quality_filtered_asset("code")
quality_filtered_web_shards = quality_filtered_asset("web")
QUALITY_FILTERED = {"code": quality_filtered_code_shards, "web": quality_filtered_web_shards}
