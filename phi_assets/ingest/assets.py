"""Raw shard assets (group ``ingest``): one dynamic partition per shard file, and the catalog."""


from dataclasses import asdict
from pathlib import Path

import dagster as dg

from k8s import steps
from phi_assets.common import plots
from phi_assets.common.automation import ON_NEW_PARTITIONS
from phi_assets.common.code_version import code_version
from phi_assets.common.store import materialized
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.ingest import catalog, expectations, readers, shards
from resources import ArtifactStore, ProfileResource

code_shards = dg.DynamicPartitionsDefinition(name="code_shards")
web_shards = dg.DynamicPartitionsDefinition(name="web_shards")
PARTITIONS = {"code": code_shards, "web": web_shards}
INGEST_CODE_VERSION = code_version(__name__, "raw_shards_asset")
CATALOG_CODE_VERSION = code_version(__name__, "raw_catalog")


class ShardConfig(dg.Config):
    text_field: str | None = None  # e.g. "content" for The Stack; default: "text", then "content"
    max_record_bytes: int = 4_000_000
    # Peak memory of the expectations, whatever the shard size: they run over batches sized from it
    # (expectations.VALIDATE_MEMORY); the writer holds 32 MB at most. Not an input of the data version.
    memory_budget_mb: int = 2048


def _build_shard(context: dg.AssetExecutionContext, spec: shards.ShardSpec, profile,
                 options: readers.ReaderOptions, out: Path, memory_budget_mb: int) -> Built:
    def progress(stats: shards.ShardStats) -> None:
        context.log.info(f"{spec.key}: read {stats.num_read:,}, written {stats.num_written:,}, "
                         f"rejected {stats.num_rejected:,} ({stats.num_bytes / 1e6:,.0f} MB)")

    stats = shards.ingest_shard(spec, profile, out, options, progress)
    context.log.info(f"{spec.key}: {stats.num_read:,} read = {stats.num_written:,} written + "
                     f"{stats.num_rejected:,} rejected {dict(stats.rejected)}")
    suite = expectations.validate_docs(out / shards.DOCS_FILE, profile.sizes.max_doc_bytes,
                                       memory_budget_mb=memory_budget_mb)
    context.log.info(f"{spec.key}: expectations {'passed' if suite.success else 'FAILED'} "
                     f"({suite.batches} batches)")
    checks = {"success": suite.success, "failures": suite.failures(),
              "outcomes": [asdict(o) for o in suite.outcomes]}
    return Built(stats.data_version, {"stats": stats.to_json(), "expectations": checks})


def _shard_metadata(manifest: dict, store: ArtifactStore, asset: str, key: str) -> dict:
    stats = manifest["metadata"]["stats"]
    where = store.version_path(asset, key, manifest["data_version"])
    preview = [dg.TableRecord(row) for row in stats["preview"]]
    columns = [dg.TableColumn(n, t) for n, t in
               (("id", "string"), ("uri", "string"), ("chars", "int"), ("text", "string"))]
    return {
        "dagster/row_count": stats["num_written"],
        "num_read": stats["num_read"],
        "num_rejected": stats["num_rejected"],
        "reject_reasons": dg.MetadataValue.json(stats["rejected"]),
        "num_bytes": stats["num_bytes"],
        "est_tokens": stats["est_tokens"],
        "source_uri": stats["uri"],
        "artifact": store.uri(where),
        "preview": dg.MetadataValue.table(preview, dg.TableSchema(columns)),
        "length_histogram": plots.log2_histogram(stats["length_hist"], "document length", "chars"),
    }


def _quarantine(store: ArtifactStore, asset: str, key: str, err: readers.ShardError) -> str:
    path = f"{store.partition_path(asset, key)}/_quarantine/{stable_hash([err.uri, err.reason], 12)}.json"
    store.write_json(path, {"asset": asset, "partition": key, "uri": err.uri, "reason": err.reason})
    return store.uri(path)


def raw_shards_asset(source: str) -> dg.AssetsDefinition:
    name = f"raw_{source}_shards"
    check = dg.AssetCheckSpec("great_expectations", asset=name, blocking=True,
                              description="GX suite: schema, non-null text, length, unique ids")

    @dg.asset(name=name, partitions_def=PARTITIONS[source], group_name="ingest", op_tags=steps.tags("shard"),
              code_version=INGEST_CODE_VERSION, check_specs=[check], kinds={"parquet"},
              description=f"Raw {source} documents of one shard, in the pipeline's document schema.")
    def _asset(context: dg.AssetExecutionContext, config: ShardConfig, store: ArtifactStore,
               profile: ProfileResource) -> dg.MaterializeResult:
        settings, key = profile.get(), context.partition_key
        options = readers.ReaderOptions(config.text_field, config.max_record_bytes)
        try:
            spec = shards.resolve_shard(source, key, settings)
            # listed before the bytes are hashed: a change meanwhile leaves an identity the sensor sees as new
            identity = shards.shard_identity(spec)
            config_inputs = config.model_dump(exclude={"memory_budget_mb"})  # outputs do not depend on it
            inputs = {"shard": shards.shard_fingerprint(spec, settings), "config": config_inputs}
            outcome = materialize_versioned(
                context, store, code_version=INGEST_CODE_VERSION, inputs=inputs,
                build=lambda out: _build_shard(context, spec, settings, options, out, config.memory_budget_mb))
        except readers.ShardError as err:
            where = _quarantine(store, name, key, err)
            raise dg.Failure(description=f"shard {key!r} failed: {err}",
                             metadata={"uri": err.uri, "reason": err.reason, "quarantine": where}) from err
        checks = outcome.metadata["expectations"]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.data_version),
            metadata={**_shard_metadata(outcome.manifest, store, name, key), "skipped": outcome.skipped,
                      **({shards.IDENTITY_METADATA: identity} if identity else {})},
            check_results=[dg.AssetCheckResult(
                check_name="great_expectations", passed=checks["success"],
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"failures": dg.MetadataValue.json(checks["failures"]),
                          "outcomes": dg.MetadataValue.json(checks["outcomes"])})],
        )

    return _asset


raw_code_shards = raw_shards_asset("code")
raw_web_shards = raw_shards_asset("web")


def _shard_files(store: ArtifactStore, source: str, shard: str, data_version: str) -> dict[str, str]:
    """A shard version's parquet files as persisted in catalog rows: relative to the artifact root."""
    where = store.version_path(f"raw_{source}_shards", shard, data_version)
    return {"docs_path": store.relative(f"{where}/docs.parquet"),
            "rejects_path": store.relative(f"{where}/rejects.parquet")}


def _catalog_rows(context: dg.AssetExecutionContext, store: ArtifactStore) -> list[dict]:
    rows = []
    for source, pdef in PARTITIONS.items():
        asset = f"raw_{source}_shards"
        keys = sorted(context.instance.get_dynamic_partitions(pdef.name))
        for key, manifest in materialized(context, store, asset, keys, "the catalog"):
            files = _shard_files(store, source, key, manifest["data_version"])
            rows.append(catalog.shard_row(source, key, manifest, files["docs_path"], files["rejects_path"]))
    return rows


@dg.asset(deps=[raw_code_shards, raw_web_shards], group_name="ingest", kinds={"duckdb"},
          op_tags=steps.tags("light"), code_version=CATALOG_CODE_VERSION,
          automation_condition=ON_NEW_PARTITIONS,
          description="DuckDB catalog over all raw shards: counts, bytes, estimated tokens.")
def raw_catalog(context: dg.AssetExecutionContext, store: ArtifactStore,
                profile: ProfileResource) -> dg.MaterializeResult:
    rows = _catalog_rows(context, store)
    inputs = {"shards": [(r["source"], r["shard"], r["data_version"]) for r in rows]}

    def build(out: Path) -> Built:
        catalog.build_catalog(rows, out / "catalog.duckdb", store.resolve)
        return Built(stable_hash(inputs), {"rows": rows})

    outcome = materialize_versioned(context, store, code_version=CATALOG_CODE_VERSION,
                                    inputs=inputs, build=build)
    # Always the version just reported, with its files located from (source, shard, version) under
    # the root the store has now: a copied home's catalog reads the copy, and rows an older version
    # recorded with absolute paths are located the same way.
    published = Path(profile.get().catalog_path)
    located = [{**r, **_shard_files(store, r["source"], r["shard"], r["data_version"])}
               for r in outcome.metadata["rows"]]
    catalog.build_catalog(located, published, store.resolve)
    totals = catalog.source_totals(published)
    table = "| source | shards | read | docs | rejected | MB | est. tokens |\n|---|---|---|---|---|---|---|\n"
    table += "\n".join(f"| {s} | {n} | {r} | {d} | {x} | {b / 1e6:.1f} | {t:,} |"
                       for s, n, r, d, x, b, t in totals)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={"catalog_path": dg.MetadataValue.path(str(published)), "num_shards": len(rows),
                  "sources": dg.MetadataValue.md(table), "skipped": outcome.skipped})
