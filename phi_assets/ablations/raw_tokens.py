"""``tokenized_raw_code`` / ``tokenized_raw_web``: the raw shards as a training source, for the ablations.

One partition per raw shard (the shard partitions of ingest). The documents of ``raw_{source}_shards``,
minus
- exact duplicates: a second copy of the same text (same ``id``, the content hash) in the shard, and every
  document the dedup stage removed as an exact copy of a document in another shard (its removal list's
  ``exact`` rows: the exact-id band over every shard, so no shard reads another);
- contaminated documents: the decontamination scan the filtered corpora use (HumanEval/MBPP n-grams,
  functions and embeddings), so an ablation never compares models on contaminated data.

The shard is read twice in batches within ``memory_budget_mb`` (scan, then tokenize the clean documents);
``dropped.parquet`` lists every document left out with its reason, and the counts reconcile:
``read = kept + exact_duplicate + contaminated``. The token shard has the format of every tokenized source
(``mixture/tokens.py``). Exact copies among documents the heuristic filters dropped in two shards stay (the
dedup stage never sees them): a raw baseline that is, if anything, slightly cleaner than the raw crawl.
"""

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common import plots
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, user_error
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.curation import stages
from phi_assets.curation.dedup_assets import dedup_code, dedup_web, shard_record
from phi_assets.ingest.assets import PARTITIONS, raw_code_shards, raw_web_shards
from phi_assets.ingest.batches import read_batches
from phi_assets.mixture import tokenizer as tk
from phi_assets.mixture import tokens as tokfiles
from phi_assets.mixture.token_assets import SUBDIR, plot_bins, tokenizer, tokenizer_dir
from resources import ArtifactStore
from resources.curation import DecontaminationResource, EncoderResource

RAW_TOKENS_CODE_VERSION = code_version(__name__, "raw_tokens_asset")
DROPPED = "dropped.parquet"
REASONS = ("exact_duplicate", "contaminated")
RAW_UPSTREAM = {"code": raw_code_shards, "web": raw_web_shards}
DEDUP = {"code": dedup_code, "web": dedup_web}


class RawTokensConfig(dg.Config):
    # Peak memory of the step whatever the shard size (tokens.TOKENIZE_MEMORY's batches). Not an input of the
    # data version: the outputs do not depend on it.
    memory_budget_mb: int = 2048


def exact_removals(store: ArtifactStore, source: str, key: str) -> set[str]:
    """Ids the dedup stage removed from this shard as exact copies of a document elsewhere."""
    shard = current(store, f"quality_filtered_{source}_shards", key)
    _, removal = shard_record(store, source, key, shard["data_version"])
    if removal is None:
        return set()
    removed = pl.read_parquet(f"{removal.rstrip('/')}/*.parquet", columns=["id", "kind"])
    return set(removed.filter(pl.col("kind") == "exact")["id"].to_list())


def drop_decisions(
    docs_uri: str, elsewhere: set[str], scanner, source: str, limits
) -> tuple[pl.DataFrame, int]:
    """Pass 1: (row, id, reason) of every document left out of the raw source, and how many were read."""
    scan = scanner.scanner(is_code=source == "code", desc=f"decontaminate raw {source}")
    seen: set[str] = set()
    order: list[str] = []  # every id in file order (a shard's ids: what the duplicate check holds anyway)
    rows, ids, reasons = [], [], []
    start = 0
    for table in read_batches(docs_uri, limits, columns=["id", "text"]):
        batch_ids = table.column("id").to_pylist()
        order += batch_ids
        scan.add(table.column("text").to_pylist())
        del table
        for i, doc_id in enumerate(batch_ids, start):
            if doc_id in seen or doc_id in elsewhere:
                rows.append(i)
                ids.append(doc_id)
                reasons.append("exact_duplicate")
            seen.add(doc_id)
        start += len(batch_ids)
    duplicate = set(rows)
    for found in scan.result().select("row").to_series().to_list():
        if found not in duplicate:  # a duplicate is dropped as one whatever it contains
            rows.append(found)
            ids.append(order[found])
            reasons.append("contaminated")
    frame = pl.DataFrame(
        {"row": rows, "id": ids, "reason": reasons},
        schema={"row": pl.Int64, "id": pl.String, "reason": pl.String},
    )
    return frame.sort("row"), start


def kept_documents(docs_uri: str, dropped: set[int], limits) -> Iterator[tuple[list[str], list[str]]]:
    """Pass 2: (ids, texts) of the documents not in ``dropped`` (row numbers), in file order."""
    start = 0
    for table in read_batches(docs_uri, limits, columns=["id", "text"]):
        ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
        del table
        keep = [i for i in range(len(ids)) if start + i not in dropped]
        start += len(ids)
        if keep:
            yield [ids[i] for i in keep], [texts[i] for i in keep]


def raw_tokens_asset(source: str) -> dg.AssetsDefinition:
    name = f"tokenized_raw_{source}"

    @dg.asset(
        name=name,
        partitions_def=PARTITIONS[source],
        deps=[RAW_UPSTREAM[source], f"quality_filtered_{source}_shards", DEDUP[source], tokenizer],
        group_name="ablations",
        op_tags=steps.tags("shard"),
        kinds={"numpy"},
        code_version=RAW_TOKENS_CODE_VERSION,
        description=f"Raw {source} shards as tokens for the data ablations: exact duplicates and "
        "HumanEval/MBPP-contaminated documents removed (listed in dropped.parquet), nothing else filtered.",
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: RawTokensConfig,
        store: ArtifactStore,
        encoder: EncoderResource,
        decontamination: DecontaminationResource,
    ) -> dg.MaterializeResult:
        key = context.partition_key
        raw = current(store, f"raw_{source}_shards", key, reader=name)
        elsewhere = user_error(name, lambda: exact_removals(store, source, key))
        directory, tok_version = tokenizer_dir(store)
        scanner = user_error(name, lambda: decontamination.get(encoder))
        limits = user_error(name, lambda: tokfiles.TOKENIZE_MEMORY.batches(config.memory_budget_mb))
        inputs = {
            "raw": raw["data_version"],
            "exact_elsewhere": stable_hash(sorted(elsewhere)),
            "tokenizer": tok_version,
            "decontamination": scanner.version,
        }
        docs_uri = file_uri(store, raw, stages.DOCS)

        def build(out: Path) -> Built:
            dropped, num_read = drop_decisions(docs_uri, elsewhere, scanner, source, limits)
            dropped.write_parquet(out / DROPPED)
            stats = tokfiles.write_shard(
                kept_documents(docs_uri, set(dropped["row"].to_list()), limits),
                tk.load(directory),
                out / SUBDIR,
                tok_version,
            )
            reasons = Counter(dropped["reason"].to_list())
            funnel = {"read": num_read, "kept": stats.num_docs, **{r: reasons.get(r, 0) for r in REASONS}}
            if funnel["read"] != funnel["kept"] + sum(reasons.values()):
                raise ValueError(f"{name}[{key}]: counts do not reconcile: {funnel}")
            context.log.info(f"{name}[{key}]: {funnel}")
            return Built(
                stable_hash([RAW_TOKENS_CODE_VERSION, stats.content_sha256]),
                {
                    **stats.__dict__,
                    "funnel": funnel,
                    "length_hist": plot_bins(stats),
                },
            )

        outcome = materialize_versioned(
            context, store, code_version=RAW_TOKENS_CODE_VERSION, inputs=inputs, build=build
        )
        meta = outcome.metadata
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.data_version),
            metadata={
                "dagster/row_count": meta["num_docs"],
                "num_tokens": meta["num_tokens"],
                "funnel": dg.MetadataValue.json(meta["funnel"]),
                "document_tokens": plots.log2_histogram(
                    meta["length_hist"], f"raw {source} document lengths", "tokens"
                ),
                "path": store.uri(f"{store.version_path(name, key, outcome.data_version)}/{SUBDIR}"),
                "skipped": outcome.skipped,
            },
        )

    return _asset


tokenized_raw_code = raw_tokens_asset("code")
tokenized_raw_web = raw_tokens_asset("web")
RAW_TOKEN_ASSETS = {"code": tokenized_raw_code, "web": tokenized_raw_web}
