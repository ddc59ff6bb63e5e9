"""Dedup assets (group ``curation``): exact and near duplicates across all shards of a source, in
stages that each fit a memory budget (``phi_assets/curation/lsh.py`` has the algorithm).

- ``dedup_{code,web}_buckets``: one static partition per (band group, hash range) of the scale
  preset's ``BucketLayout`` (``dedup_band_groups`` x ``dedup_hash_ranges``: 1 x 2 in ``ci``/``demo``,
  15 x 64 in ``phi1``), one pod each on Kubernetes. Candidate pairs from its slices of every shard,
  confirmed on exact Jaccard similarity. Its inputs are the digests of its slices: a new shard
  recomputes only the partitions it has slices in; the others log that they skip.
- ``dedup_{code,web}``: clusters over the confirmed pairs of every bucket partition (DuckDB under a
  memory limit), a removal file and a small JSON record per shard, and ``clusters.duckdb``.
``filtered_{code,web}_corpus`` reads only its own shard's record and removal file.
"""

import json
from dataclasses import asdict, dataclass

import dagster as dg

from k8s import steps
from phi_assets.common.automation import ON_NEW_PARTITIONS
from phi_assets.common.code_version import code_version
from phi_assets.common.store import file_uri, materialized, user_error
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.curation import lsh, minhash
from phi_assets.curation.filter_assets import LAYOUT, PARTITIONS, QUALITY_FILTERED
from phi_assets.curation.metadata import dedup_metadata
from resources import ArtifactStore

BUCKETS = dg.StaticPartitionsDefinition(LAYOUT.keys())
BUCKETS_CODE_VERSION = code_version(__name__, "buckets_asset")
DEDUP_CODE_VERSION = code_version(__name__, "dedup_asset")


@dataclass(frozen=True)
class FilteredShard:
    shard: str
    version: str
    docs: str  # URI of the quality-filtered docs.parquet
    folder: str  # URI of the version's folder (bands files)
    touched: str  # the bucket partitions it has slices in (lsh.touched)
    kept: int


def filtered_shards(
    context, store: ArtifactStore, source: str, reader: str, layout: lsh.BucketLayout = LAYOUT,
    required: bool = False,
) -> tuple[list[FilteredShard], list]:
    """The current quality-filtered shards of ``source`` and the MinHash settings each was signed with;
    a Failure for a shard whose band slices were cut for another layout (and, ``required``, for none)."""
    asset, shards, settings = f"quality_filtered_{source}_shards", [], []
    keys = sorted(context.instance.get_dynamic_partitions(PARTITIONS[source].name))
    for key, manifest in materialized(context, store, asset, keys, reader):
        bands = manifest["metadata"].get("bands")
        if bands is None or bands["layout"] != asdict(layout):
            raise dg.Failure(
                description=f"{asset}[{key}] was written for another bucket layout "
                f"({bands and bands['layout']}, this scale has {asdict(layout)}); materialize it again"
            )
        docs = file_uri(store, manifest, "docs.parquet")
        shards.append(
            FilteredShard(
                key,
                manifest["data_version"],
                docs,
                docs.rsplit("/", 1)[0],
                bands["touched"],
                manifest["metadata"]["funnel"]["kept"],
            )
        )
        settings.append(manifest["inputs"]["minhash"])
    if required and not shards:
        raise dg.Failure(description=f"{reader}: no {asset} partition is materialized")
    return shards, settings


def signature_config(shards: list[FilteredShard], settings: list[dict]) -> minhash.MinHashConfig:
    seen = {stable_hash(setting): shard.shard for shard, setting in zip(shards, settings, strict=True)}
    if len(seen) > 1:
        raise ValueError(
            f"shards {sorted(seen.values())} were signed with different MinHash settings; "
            "materialize all quality-filtered shards with the same settings"
        )
    return minhash.MinHashConfig(**settings[0])


def _fs(store: ArtifactStore):
    return None if store.is_local else store.fs


class BucketConfig(dg.Config):
    # exact Jaccard of the shingle sets a candidate pair must reach; 0.8, the usual near-duplicate bound:
    # clusters join pairs transitively, and at 0.7 pairs of a cluster fall below 0.7 too often
    # (benchmarks/minhash.py: pair precision 0.92-0.95 at 0.7, 0.98-1.0 at 0.8, recall >= 0.975)
    min_similarity: float = 0.8
    memory_budget_mb: int = 2048  # bounds the texts held at once while confirming


def _slices(store: ArtifactStore, shards: list[FilteredShard], key: str, num_bands: int, layout):
    group, hash_range = layout.parse(key)
    index = layout.keys().index(key)
    found = []
    for s in shards:
        if not lsh.touches(s.touched, index):
            continue
        bands = f"{s.folder}/{lsh.bands_file(group)}"
        slices = lsh.partition_slices(
            lsh.read_slice_index(bands, _fs(store)), layout, group, hash_range, num_bands
        )
        found.append((s, bands, slices))
    return found


def _confirm(context, store: ArtifactStore, found, signature, config: BucketConfig, out) -> dict:
    fs = _fs(store)
    shard_inputs = [lsh.ShardInput(s.shard, s.docs, bands, tuple(x[0] for x in sl)) for s, bands, sl in found]
    sizes = [lsh.avg_text_bytes(s.docs, fs) for s, _, _ in found]
    chunk = lsh.chunk_pairs_for(config.memory_budget_mb << 20, max(sizes, default=1.0))
    return lsh.bucket_pairs(
        shard_inputs,
        signature,
        config.min_similarity,
        out,
        read_groups=lambda path, groups: lsh.read_row_groups(path, groups, fs),
        read_rows=lambda path, rows: lsh.read_doc_rows(path, rows, fs),
        log=context.log.info,
        chunk_pairs=chunk,
    )


def buckets_asset(source: str, upstream=None, layout: lsh.BucketLayout = LAYOUT) -> dg.AssetsDefinition:
    """The bucket partitions of ``source`` (``layout``: the scale's; tests pass a smaller or larger one with
    the quality-filter asset cut for it as ``upstream``)."""
    name, upstream = f"dedup_{source}_buckets", upstream or QUALITY_FILTERED[source]

    @dg.asset(
        name=name,
        partitions_def=BUCKETS if layout == LAYOUT else dg.StaticPartitionsDefinition(layout.keys()),
        deps=[dg.AssetDep(upstream, partition_mapping=dg.AllPartitionMapping())],
        group_name="curation",
        op_tags=steps.tags("shard"),
        code_version=BUCKETS_CODE_VERSION,
        automation_condition=ON_NEW_PARTITIONS,
        kinds={"parquet"},
        description=f"LSH buckets of one (band group, hash range) over all {source} shards: candidate "
        "pairs confirmed on the exact Jaccard similarity of their shingle sets.",
    )
    def _asset(
        context: dg.AssetExecutionContext, config: BucketConfig, store: ArtifactStore
    ) -> dg.MaterializeResult:
        shards, settings = filtered_shards(context, store, source, name, layout, required=True)
        signature = user_error(name, lambda: signature_config(shards, settings))
        if not 0.0 < config.min_similarity <= 1.0:
            raise dg.Failure(
                description=f"{name}: min_similarity must be in (0, 1], got {config.min_similarity}"
            )
        found = _slices(store, shards, context.partition_key, signature.num_bands, layout)
        listed = [(s.shard, s.version, [x[2] for x in sl]) for s, _, sl in found]
        inputs = {"shards": listed, "minhash": asdict(signature), "min_similarity": config.min_similarity}
        outcome = materialize_versioned(
            context,
            store,
            code_version=BUCKETS_CODE_VERSION,
            inputs=inputs,
            build=lambda out: Built(
                stable_hash([BUCKETS_CODE_VERSION, inputs]),
                {
                    **_confirm(context, store, found, signature, config, out),
                    "num_shards": len(found),
                    "shards_digest": stable_hash([x[:2] for x in listed]),
                },
            ),
        )
        meta = outcome.manifest["metadata"]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.data_version),
            metadata={
                "dagster/row_count": meta["confirmed"],
                "pairs": meta["confirmed"],
                "candidates": meta["candidates"],
                "exact_pairs": meta["exact"],
                "below_threshold": meta["below_threshold"],
                "num_shards": meta["num_shards"],
                "skipped": outcome.skipped,
            },
        )

    return _asset


class DedupConfig(dg.Config):
    memory_limit_mb: int = 2048  # DuckDB's limit for the clustering; past it, it spills to disk


def _buckets(
    context, store: ArtifactStore, source: str, shards: list[FilteredShard], layout
) -> dict[str, dict]:
    """The current version of every bucket partition; a Failure naming those missing or not up to date."""
    asset, found, missing, stale = f"dedup_{source}_buckets", {}, [], []
    for index, key in enumerate(layout.keys()):
        manifest = store.current_manifest(asset, key)
        if manifest is None:
            missing.append(key)
            continue
        expected = stable_hash([[s.shard, s.version] for s in shards if lsh.touches(s.touched, index)])
        if manifest["metadata"]["shards_digest"] != expected:
            stale.append(key)
        found[key] = manifest
    if missing or stale:
        raise dg.Failure(
            description=f"dedup_{source}: {asset} partitions {missing} are not materialized and "
            f"{stale} have not seen the current shards; materialize {asset} (all partitions) first"
        )
    return found


def _write_records(store: ArtifactStore, shards: list[FilteredShard], removals: dict, out) -> None:
    (out / lsh.REMOVALS).mkdir(exist_ok=True)
    for s in shards:
        r = removals.get(s.shard)
        record = {
            "shard": s.shard,
            "version": s.version,
            "removed": r["removed"] if r else 0,
            "digest": r["digest"] if r else "none",
            "file": r["file"] if r else None,
        }
        (out / f"{lsh.removal_stem(s.shard)}.json").write_text(json.dumps(record, sort_keys=True))


def dedup_asset(
    source: str, buckets: dg.AssetsDefinition, upstream=None, layout: lsh.BucketLayout = LAYOUT
) -> dg.AssetsDefinition:
    name = f"dedup_{source}"

    @dg.asset(
        name=name,
        deps=[buckets, upstream or QUALITY_FILTERED[source]],
        group_name="curation",
        op_tags=steps.tags("heavy"),
        code_version=DEDUP_CODE_VERSION,
        automation_condition=ON_NEW_PARTITIONS,
        kinds={"duckdb"},
        description=f"Clusters of the confirmed duplicate pairs over all {source} shards, one deterministic "
        "survivor each; a removal list per shard; clusters in DuckDB.",
    )
    def _asset(
        context: dg.AssetExecutionContext, config: DedupConfig, store: ArtifactStore
    ) -> dg.MaterializeResult:
        shards, _ = filtered_shards(context, store, source, name, layout, required=True)
        buckets = _buckets(context, store, source, shards, layout)
        inputs = {
            "buckets": {k: m["data_version"] for k, m in buckets.items()},
            "shards": stable_hash([[s.shard, s.version] for s in shards]),  # a digest: O(1) manifest
            "memory_limit_mb": config.memory_limit_mb,
        }

        def build(out) -> Built:
            pairs = [file_uri(store, m, lsh.PAIRS) for m in buckets.values()]
            result = lsh.cluster(
                pairs,
                [s.shard for s in shards],
                out,
                config.memory_limit_mb,
                log=context.log.info,
                filesystem=_fs(store),
            )
            _write_records(store, shards, result.pop("removals"), out)
            lsh.add_cluster_texts(out / lsh.CLUSTER_DB, {s.shard: s.docs for s in shards})
            num_docs = sum(s.kept for s in shards)
            removed = result["num_exact_removed"] + result["num_near_removed"]
            return Built(
                stable_hash([DEDUP_CODE_VERSION, inputs]),
                {**result, "num_docs": num_docs, "num_kept": num_docs - removed, "num_shards": len(shards)},
            )

        outcome = materialize_versioned(
            context, store, code_version=DEDUP_CODE_VERSION, inputs=inputs, build=build
        )
        db = file_uri(store, outcome.manifest, lsh.CLUSTER_DB)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.data_version),
            metadata={**dedup_metadata(outcome.metadata, db), "skipped": outcome.skipped},
        )

    return _asset


def shard_record(store: ArtifactStore, source: str, shard: str, version: str) -> tuple[dict, str | None]:
    """A shard's removal record in the current ``dedup_{source}`` and the URI of its removal list (None:
    nothing removed); a Failure when that dedup has not seen this version of the shard."""
    version_now = store.current_version(f"dedup_{source}", None)  # CURRENT only: no manifest read
    if version_now is None:
        raise dg.Failure(description=f"dedup_{source} is not materialized; materialize it first")
    where = store.version_path(f"dedup_{source}", None, version_now)
    path = store.uri(f"{where}/{lsh.removal_stem(shard)}.json")
    record = json.loads(store.fs.cat_file(path)) if store.fs.exists(path) else None
    if record is None or record["version"] != version:
        raise dg.Failure(
            description=f"dedup_{source} has not seen quality_filtered_{source}_shards[{shard}] "
            f"version {version}; materialize dedup_{source}_buckets and dedup_{source} first"
        )
    return record, store.uri(f"{where}/{record['file']}") if record["file"] else None


dedup_code_buckets = buckets_asset("code")
dedup_web_buckets = buckets_asset("web")
dedup_code = dedup_asset("code", dedup_code_buckets)
dedup_web = dedup_asset("web", dedup_web_buckets)
DEDUP_ASSETS = [dedup_code_buckets, dedup_web_buckets, dedup_code, dedup_web]
