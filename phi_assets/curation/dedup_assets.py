"""Dedup assets (group ``curation``): exact and near duplicates across all shards of a source, in
stages that each fit a memory budget (``phi_assets/curation/lsh.py`` has the algorithm).

- ``dedup_{code,web}_buckets``: one static partition per (band group, hash range) of the scale
  preset's ``BucketLayout`` (``dedup_band_groups`` x ``dedup_hash_ranges``: 1 x 2 in ``ci``/``demo``,
  15 x 64 in ``phi1``), one pod each on Kubernetes. Candidate pairs from its slices of every shard,
  and the rows they need. Its inputs are the digests of its slices: a new shard recomputes only the
  partitions it has slices in; the others log that they skip.
- ``dedup_{code,web}_shingles``: one partition per shard. The shard's candidate rows, read once, as
  shingle sets: one batch per bucket partition (``lsh_pairs``). Its inputs are the rows the bucket
  partitions want from it: a shard none of whose candidates changed skips.
- ``dedup_{code,web}_pairs``: one partition per bucket partition. Its candidates confirmed on the exact
  Jaccard similarity of their shingle sets (its batch of each shard's sets: one indexed read each).
- ``dedup_{code,web}``: clusters over the confirmed pairs of every pairs partition (DuckDB under a
  memory limit), a removal file and a small JSON record per shard, and ``clusters.duckdb``.
``filtered_{code,web}_corpus`` reads only its own shard's record and removal file.
"""

import json
from dataclasses import asdict, dataclass

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from k8s import steps
from phi_assets.common.automation import ON_NEW_DATA, ON_NEW_PARTITIONS
from phi_assets.common.code_version import code_version
from phi_assets.common.store import file_uri, materialized, user_error
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.curation import lsh, lsh_pairs, minhash
from phi_assets.curation.filter_assets import LAYOUT, PARTITIONS, QUALITY_FILTERED
from phi_assets.curation.metadata import dedup_metadata
from resources import ArtifactStore

BUCKETS = dg.StaticPartitionsDefinition(LAYOUT.keys())
BUCKETS_CODE_VERSION = code_version(__name__, "buckets_asset")
SHINGLES_CODE_VERSION = code_version(__name__, "shingles_asset")
PAIRS_CODE_VERSION = code_version(__name__, "pairs_asset")
DEDUP_CODE_VERSION = code_version(__name__, "dedup_asset")


@dataclass(frozen=True)
class FilteredShard:
    shard: str
    version: str
    docs: str  # URI of the quality-filtered docs.parquet
    folder: str  # URI of the version's folder (bands files)
    touched: str  # the bucket partitions it has slices in (lsh.touched)
    kept: int


def _filtered_shard(asset: str, store: ArtifactStore, key: str, manifest: dict, layout) -> FilteredShard:
    """A quality-filtered shard's manifest read as a FilteredShard; a Failure when its band slices were
    cut for another layout."""
    bands = manifest["metadata"].get("bands")
    if bands is None or bands["layout"] != asdict(layout):
        raise dg.Failure(
            description=f"{asset}[{key}] was written for another bucket layout "
            f"({bands and bands['layout']}, this scale has {asdict(layout)}); materialize it again"
        )
    docs = file_uri(store, manifest, "docs.parquet")
    return FilteredShard(
        key,
        manifest["data_version"],
        docs,
        docs.rsplit("/", 1)[0],
        bands["touched"],
        manifest["metadata"]["funnel"]["kept"],
    )


def filtered_shards(
    context,
    store: ArtifactStore,
    source: str,
    reader: str,
    layout: lsh.BucketLayout = LAYOUT,
    required: bool = False,
) -> tuple[list[FilteredShard], list]:
    """The current quality-filtered shards of ``source`` and the MinHash settings each was signed with;
    a Failure for a shard whose band slices were cut for another layout (and, ``required``, for none)."""
    asset, shards, settings = f"quality_filtered_{source}_shards", [], []
    keys = sorted(context.instance.get_dynamic_partitions(PARTITIONS[source].name))
    for key, manifest in materialized(context, store, asset, keys, reader):
        shards.append(_filtered_shard(asset, store, key, manifest, layout))
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


class PairsConfig(dg.Config):
    # exact Jaccard of the shingle sets a candidate pair must reach; 0.8, the usual near-duplicate bound:
    # clusters join pairs transitively, and at 0.7 pairs of a cluster fall below 0.7 too often
    # (benchmarks/minhash.py: pair precision 0.92-0.95 at 0.7, 0.98-1.0 at 0.8, recall >= 0.975)
    min_similarity: float = 0.8
    memory_budget_mb: int = 2048  # bounds the shingle sets held at once while confirming


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


def _candidates(context, store: ArtifactStore, found, out) -> dict:
    fs = _fs(store)
    shard_inputs = [lsh.ShardInput(s.shard, bands, tuple(x[0] for x in sl)) for s, bands, sl in found]
    return lsh.bucket_candidates(
        shard_inputs, lambda path, groups: lsh.read_row_groups(path, groups, fs), out, log=context.log.info
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
        "pairs and the rows they need from each shard.",
    )
    def _asset(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        shards, settings = filtered_shards(context, store, source, name, layout, required=True)
        signature = user_error(name, lambda: signature_config(shards, settings))
        found = _slices(store, shards, context.partition_key, signature.num_bands, layout)
        listed = [(s.shard, s.version, [x[2] for x in sl]) for s, _, sl in found]
        inputs = {"shards": listed, "minhash": asdict(signature)}
        outcome = materialize_versioned(
            context,
            store,
            code_version=BUCKETS_CODE_VERSION,
            inputs=inputs,
            build=lambda out: Built(
                stable_hash([BUCKETS_CODE_VERSION, inputs]),
                {
                    **_candidates(context, store, found, out),
                    "num_shards": len(found),
                    "shards_digest": stable_hash([x[:2] for x in listed]),
                },
            ),
        )
        meta = outcome.manifest["metadata"]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.data_version),
            metadata={
                "dagster/row_count": meta["candidates"],
                "candidates": meta["candidates"],
                "candidate_rows": meta["candidate_rows"],
                "shards_with_candidates": meta["shards_with_candidates"],
                "num_shards": meta["num_shards"],
                "skipped": outcome.skipped,
            },
        )

    return _asset


def _wanted(context, store: ArtifactStore, source: str, shard: FilteredShard, layout) -> list:
    """The rows each bucket partition wants from ``shard`` (empty where it has no slices); a Failure
    naming the partitions not materialized."""
    asset, wanted, missing = f"dedup_{source}_buckets", [], []
    for index, key in enumerate(layout.keys()):
        wanted.append(np.empty(0, np.int64))
        if not lsh.touches(shard.touched, index):
            continue
        version = store.current_version(asset, key)
        if version is None:
            missing.append(key)
            continue
        path = store.uri(f"{store.version_path(asset, key, version)}/{lsh.WANTED}")
        wanted[-1] = lsh.wanted_rows(path, shard.shard, _fs(store))
    if missing:
        raise dg.Failure(
            description=f"dedup_{source}_shingles[{shard.shard}]: {asset} partitions {missing} are not "
            f"materialized; materialize {asset} (all partitions) first"
        )
    return wanted


def shingles_asset(
    source: str, buckets: dg.AssetsDefinition, upstream=None, layout: lsh.BucketLayout = LAYOUT
) -> dg.AssetsDefinition:
    """Per shard: the shingle sets of its candidate rows, one batch per bucket partition."""
    name, upstream = f"dedup_{source}_shingles", upstream or QUALITY_FILTERED[source]

    @dg.asset(
        name=name,
        partitions_def=PARTITIONS[source],
        deps=[upstream, dg.AssetDep(buckets, partition_mapping=dg.AllPartitionMapping())],
        group_name="curation",
        op_tags=steps.tags("shard"),
        code_version=SHINGLES_CODE_VERSION,
        automation_condition=ON_NEW_DATA,
        kinds={"arrow"},
        description=f"The shingle sets of one {source} shard's candidate rows (read once), one batch per "
        "bucket partition, for the exact Jaccard confirmation.",
    )
    def _asset(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        key, filtered = context.partition_key, f"quality_filtered_{source}_shards"
        manifest = store.current_manifest(filtered, key)
        if manifest is None:
            raise dg.Failure(description=f"{name}[{key}]: {filtered}[{key}] is not materialized")
        shard = _filtered_shard(filtered, store, key, manifest, layout)
        wanted = _wanted(context, store, source, shard, layout)
        digests = [[i, stable_hash(rows.tobytes().hex())] for i, rows in enumerate(wanted) if len(rows)]
        inputs = {
            "shard": key,
            "version": shard.version,
            "minhash": manifest["inputs"]["minhash"],
            "partitions": len(wanted),
            "wanted": stable_hash(digests),
        }
        signature = minhash.MinHashConfig(**manifest["inputs"]["minhash"])
        outcome = materialize_versioned(
            context,
            store,
            code_version=SHINGLES_CODE_VERSION,
            inputs=inputs,
            build=lambda out: Built(
                stable_hash([SHINGLES_CODE_VERSION, inputs]),
                user_error(
                    f"{name}[{key}]",
                    lambda: lsh_pairs.write_shingles(
                        shard.docs, wanted, signature, out, _fs(store), log=context.log.info
                    ),
                ),
            ),
        )
        meta = outcome.manifest["metadata"]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.data_version),
            metadata={
                "dagster/row_count": meta["candidate_rows"],
                "candidate_rows": meta["candidate_rows"],
                "rows_written": meta["rows_written"],
                "partitions_with_rows": meta["partitions_with_rows"],
                "avg_set_bytes": meta["avg_set_bytes"],
                "skipped": outcome.skipped,
            },
        )

    return _asset


def _current_buckets(store: ArtifactStore, source: str, shards: list[FilteredShard], key: str, layout) -> dict:
    """A bucket partition's current manifest; a Failure when it is missing or has not seen the current
    shards."""
    asset, index = f"dedup_{source}_buckets", layout.keys().index(key)
    manifest = store.current_manifest(asset, key)
    expected = stable_hash([[s.shard, s.version] for s in shards if lsh.touches(s.touched, index)])
    if manifest is None or manifest["metadata"]["shards_digest"] != expected:
        state = "is not materialized" if manifest is None else "has not seen the current shards"
        raise dg.Failure(description=f"{asset}[{key}] {state}; materialize {asset} (all partitions) first")
    return manifest


def _shingle_files(
    store: ArtifactStore, source: str, seen: dict[str, str], shards: list[str]
) -> tuple[dict, float]:
    """Each shard's current shingle-set file and the largest average set size; a Failure naming a shard
    whose sets were not made from the version the buckets saw."""
    asset, files, avg = f"dedup_{source}_shingles", {}, 1.0
    for shard in shards:
        manifest = store.current_manifest(asset, shard)
        if manifest is None or manifest["inputs"]["version"] != seen[shard]:
            raise dg.Failure(
                description=f"{asset}[{shard}] is not materialized for quality_filtered_{source}_shards"
                f"[{shard}] version {seen[shard]}; materialize {asset} for it first"
            )
        files[shard] = file_uri(store, manifest, lsh_pairs.SHINGLES)
        avg = max(avg, manifest["metadata"]["avg_set_bytes"])
    return files, avg


def pairs_asset(
    source: str,
    buckets: dg.AssetsDefinition,
    shingles: dg.AssetsDefinition,
    layout: lsh.BucketLayout = LAYOUT,
) -> dg.AssetsDefinition:
    """Per bucket partition: its candidates confirmed on the exact Jaccard similarity of their sets."""
    name = f"dedup_{source}_pairs"

    @dg.asset(
        name=name,
        partitions_def=buckets.partitions_def,
        deps=[buckets, dg.AssetDep(shingles, partition_mapping=dg.AllPartitionMapping())],
        group_name="curation",
        op_tags=steps.tags("shard"),
        code_version=PAIRS_CODE_VERSION,
        automation_condition=ON_NEW_PARTITIONS,
        kinds={"parquet"},
        description=f"The candidate pairs of one {source} bucket partition confirmed on the exact Jaccard "
        "similarity of their shingle sets.",
    )
    def _asset(
        context: dg.AssetExecutionContext, config: PairsConfig, store: ArtifactStore
    ) -> dg.MaterializeResult:
        key = context.partition_key
        if not 0.0 < config.min_similarity <= 1.0:
            raise dg.Failure(
                description=f"{name}: min_similarity must be in (0, 1], got {config.min_similarity}"
            )
        shards, _ = filtered_shards(context, store, source, name, layout, required=True)
        bucket = _current_buckets(store, source, shards, key, layout)
        inputs = {"buckets": bucket["data_version"], "min_similarity": config.min_similarity}

        def build(out) -> Built:
            fs = _fs(store)
            with lsh.open_input(file_uri(store, bucket, lsh.CANDIDATES), fs) as f:
                candidates = pq.read_table(f)
            involved = sorted(set(candidates["u_shard"].to_pylist()) | set(candidates["v_shard"].to_pylist()))
            seen = {s: v for s, v, _ in bucket["inputs"]["shards"]}
            files, avg = _shingle_files(store, source, seen, involved)
            index = layout.keys().index(key)
            stats = user_error(
                f"{name}[{key}]",
                lambda: lsh_pairs.confirm_candidates(
                    candidates,
                    lambda shard: lsh_pairs.read_batch(files[shard], index, fs),
                    config.min_similarity,
                    out,
                    lsh_pairs.chunk_pairs_for(config.memory_budget_mb << 20, avg),
                    log=context.log.info,
                ),
            )
            meta = {**stats, "num_shards": len(involved), "buckets_digest": bucket["metadata"]["shards_digest"]}
            return Built(stable_hash([PAIRS_CODE_VERSION, inputs]), meta)

        outcome = materialize_versioned(
            context, store, code_version=PAIRS_CODE_VERSION, inputs=inputs, build=build
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


def _pairs(context, store: ArtifactStore, source: str, shards: list[FilteredShard], layout) -> dict[str, dict]:
    """The current version of every pairs partition; a Failure naming those missing or made from bucket
    partitions that are not current (or have not seen the current shards)."""
    asset, found, missing, stale = f"dedup_{source}_pairs", {}, [], []
    for index, key in enumerate(layout.keys()):
        manifest, bucket = (
            store.current_manifest(asset, key),
            store.current_version(f"dedup_{source}_buckets", key),
        )
        if manifest is None:
            missing.append(key)
            continue
        expected = stable_hash([[s.shard, s.version] for s in shards if lsh.touches(s.touched, index)])
        if manifest["inputs"]["buckets"] != bucket or manifest["metadata"]["buckets_digest"] != expected:
            stale.append(key)
        found[key] = manifest
    if missing or stale:
        raise dg.Failure(
            description=f"dedup_{source}: {asset} partitions {missing} are not materialized and {stale} have "
            f"not seen the current shards; materialize dedup_{source}_buckets, dedup_{source}_shingles and "
            f"{asset} (all partitions) first"
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
    source: str, pairs: dg.AssetsDefinition, upstream=None, layout: lsh.BucketLayout = LAYOUT
) -> dg.AssetsDefinition:
    name = f"dedup_{source}"

    @dg.asset(
        name=name,
        deps=[pairs, upstream or QUALITY_FILTERED[source]],
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
        pairs = _pairs(context, store, source, shards, layout)
        inputs = {
            "pairs": {k: m["data_version"] for k, m in pairs.items()},
            "shards": stable_hash([[s.shard, s.version] for s in shards]),  # a digest: O(1) manifest
            "memory_limit_mb": config.memory_limit_mb,
        }

        def build(out) -> Built:
            result = lsh.cluster(
                [file_uri(store, m, lsh.PAIRS) for m in pairs.values()],
                [s.shard for s in shards],
                out,
                config.memory_limit_mb,
                log=context.log.info,
                filesystem=_fs(store),
            )
            _write_records(store, shards, result.pop("removals"), out)
            lsh.add_cluster_texts(out / lsh.CLUSTER_DB, {s.shard: s.docs for s in shards}, _fs(store))
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
dedup_code_shingles = shingles_asset("code", dedup_code_buckets)
dedup_web_shingles = shingles_asset("web", dedup_web_buckets)
dedup_code_pairs = pairs_asset("code", dedup_code_buckets, dedup_code_shingles)
dedup_web_pairs = pairs_asset("web", dedup_web_buckets, dedup_web_shingles)
dedup_code = dedup_asset("code", dedup_code_pairs)
dedup_web = dedup_asset("web", dedup_web_pairs)
DEDUP_ASSETS = [
    dedup_code_buckets,
    dedup_web_buckets,
    dedup_code_shingles,
    dedup_web_shingles,
    dedup_code_pairs,
    dedup_web_pairs,
    dedup_code,
    dedup_web,
]
