"""The curation stages as plain functions over files: what each asset does, without Dagster.

1. ``filter_shard``: heuristic filters on one raw shard -> ``docs.parquet`` (kept, document
   schema), ``dropped.parquet`` (id, uri, reason, detail) and ``minhash.parquet`` (signatures of
   the kept documents, row i = document i), plus the funnel.
2. ``dedup_source``: exact + MinHash LSH dedup over every shard's signatures (never the text) ->
   ``decisions.parquet`` and ``clusters.duckdb``.
3. ``annotation_sample`` / ``annotations_frame``: the documents to annotate and their parsed scores.
4. ``score_shard``: a shard's surviving documents scored by the classifier, kept at or above the
   threshold, decontaminated -> ``docs.parquet``, ``scores.parquet``, ``contaminated.parquet``.
Every count reconciles: in = kept + dropped by reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from phi_assets.curation import dedup, edu, heuristics, minhash
from phi_assets.ingest.schema import DOC_COLUMNS

DOCS, DROPPED, MINHASH = "docs.parquet", "dropped.parquet", "minhash.parquet"
DECISIONS, CLUSTER_DB = "decisions.parquet", "clusters.duckdb"
SCORES, CONTAMINATED = "scores.parquet", "contaminated.parquet"
PREVIEW_CHARS = 240
SCORE_BINS = 20  # histogram of classifier scores: 0.25 wide over 0-5


def _write(frame: pl.DataFrame, path: Path) -> None:
    frame.write_parquet(path, compression="zstd")


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def filter_shard(
    docs_path: str, source: str, filters: Any, minhash_config: minhash.MinHashConfig, out: Path
) -> dict[str, Any]:
    docs = pl.read_parquet(docs_path, columns=list(DOC_COLUMNS))
    filtered = heuristics.filter_documents(docs, source, filters)
    kept = filtered.filter(pl.col("drop_reason").is_null()).select(DOC_COLUMNS)
    dropped = filtered.filter(pl.col("drop_reason").is_not_null()).select(
        "id", "uri", pl.col("drop_reason").alias("reason"), pl.col("drop_detail").alias("detail")
    )
    _write(kept, out / DOCS)
    _write(dropped, out / DROPPED)
    sigs = minhash.signatures(kept["text"].to_list(), minhash_config)
    pq.write_table(
        minhash.signatures_table(kept["id"].to_list(), sigs, minhash_config), out / MINHASH, compression="zstd"
    )
    funnel = heuristics.funnel(filtered)
    assert funnel["in"] == funnel["kept"] + sum(funnel["dropped"].values()) == len(docs)
    examples = [
        {"reason": r["reason"], "detail": r["detail"], "uri": r["uri"]}
        for r in dropped.unique("reason", keep="first", maintain_order=True).head(12).iter_rows(named=True)
    ]
    return {"funnel": funnel, "dropped_examples": examples}


@dataclass(frozen=True)
class ShardFiles:
    shard: str
    data_version: str
    docs: str  # path/URI of the quality-filtered docs.parquet
    minhash: str


def dedup_source(shards: list[ShardFiles], config: minhash.MinHashConfig, out: Path) -> dict[str, Any]:
    inputs = []
    for s in shards:
        ids, sigs = minhash.read_signatures(s.minhash, config)
        inputs.append(dedup.ShardSignatures(shard=s.shard, ids=ids, sigs=sigs))
    result = dedup.deduplicate(inputs, config)
    _write(result.decisions, out / DECISIONS)
    dedup.write_cluster_db(result, out / CLUSTER_DB, {s.shard: s.docs for s in shards})
    sizes = (
        result.decisions.filter(pl.col("cluster_id").is_not_null())
        .group_by("cluster_id", "cluster_kind")
        .len()
        .sort("len", "cluster_id", descending=[True, False])
    )
    return {
        "num_docs": result.num_docs,
        "num_exact_removed": result.num_exact_removed,
        "num_near_removed": result.num_near_removed,
        "num_clusters": result.num_clusters,
        "num_kept": result.num_docs - result.num_exact_removed - result.num_near_removed,
        "largest_clusters": sizes.head(10).rows(named=True),
    }


def survivors(decisions: pl.DataFrame, shard: str) -> pl.DataFrame:
    """Rows (``row``, ``id``) of ``shard`` that dedup keeps."""
    return decisions.filter((pl.col("shard") == shard) & pl.col("keep")).select("row", "id").sort("row")


def read_rows(docs_path: str, rows: pl.DataFrame) -> pl.DataFrame:
    """The documents at ``rows["row"]`` of a docs.parquet, with their row numbers."""
    docs = pl.read_parquet(docs_path, columns=list(DOC_COLUMNS)).with_row_index("row")
    picked = docs.join(rows.select(pl.col("row").cast(pl.UInt32)), on="row", how="semi")
    if len(picked) != len(rows):
        raise ValueError(
            f"{docs_path}: dedup decisions name {len(rows)} rows, the file has {len(picked)} of "
            "them; the shard changed after dedup ran (materialize dedup again)"
        )
    return picked


def annotation_sample(decisions: pl.DataFrame, docs_paths: dict[str, str], n: int, seed: int) -> pl.DataFrame:
    """A seeded sample of the surviving documents: shard, row, id, uri, text."""
    chosen = edu.sample_documents(decisions.filter(pl.col("keep")).select("shard", "row", "id"), n, seed)
    frames = [
        read_rows(docs_paths[shard], part).select("row", "id", "uri", "text").with_columns(shard=pl.lit(shard))
        for (shard,), part in chosen.group_by(["shard"], maintain_order=True)
    ]
    if not frames:
        return pl.DataFrame(
            schema={"shard": pl.String, "row": pl.UInt32, "id": pl.String, "uri": pl.String, "text": pl.String}
        )
    return pl.concat(frames).select("shard", "row", "id", "uri", "text").sort("shard", "row")


def annotations_frame(
    source: str,
    sample: pl.DataFrame,
    answers: list[str | None],
    errors: list[str | None],
    prompt: edu.Prompt,
    max_chars: int,
) -> pl.DataFrame:
    parsed = [
        edu.parse_score(a) if e is None else edu.ParsedScore(None, "llm_error")
        for a, e in zip(answers, errors, strict=True)
    ]
    return sample.with_columns(
        source=pl.lit(source),
        excerpt=pl.Series([edu.excerpt(t, max_chars) for t in sample["text"]], dtype=pl.String),
        answer=pl.Series(answers, dtype=pl.String),
        error=pl.Series(errors, dtype=pl.String),
        score=pl.Series([p.score for p in parsed], dtype=pl.Int8),
        status=pl.Series([p.status for p in parsed], dtype=pl.String),
        prompt_sha256=pl.lit(prompt.sha256),
    ).drop("text")


def status_counts(annotations: pl.DataFrame) -> dict[str, int]:
    return dict(sorted(Counter(annotations["status"].to_list()).items()))


def score_shard(
    docs_path: str,
    keep_rows: pl.DataFrame,
    num_in: int,
    source: str,
    model: Any,
    head: str,
    threshold: float,
    encoder: Any,
    decontaminator: Any,
    max_chars: int,
    out: Path,
) -> dict[str, Any]:
    """Decontaminate and score a shard's dedup survivors; keep the clean ones >= the threshold."""
    docs = read_rows(docs_path, keep_rows)
    texts = docs["text"].to_list()
    is_code = source == "code"
    flagged = decontaminator.scan(texts, is_code=is_code, desc=f"decontaminate {source}")
    embeddings = encoder.encode([edu.excerpt(t, max_chars) for t in texts], desc=f"embed {source}")
    scores = model.score(embeddings, head)
    decision = np.where(scores >= threshold, "kept", "below_threshold").astype(object)
    decision[flagged["row"].to_numpy()] = "contaminated"  # removed whatever its score
    scored = docs.select("row", "id", "uri").with_columns(
        edu_score=pl.Series(scores, dtype=pl.Float32), decision=pl.Series(decision.tolist(), dtype=pl.String)
    )
    kept = docs.filter(pl.Series(decision == "kept"))
    _write(kept.select(DOC_COLUMNS), out / DOCS)
    _write(scored, out / SCORES)
    picked = flagged["row"].cast(pl.UInt32)
    listed = flagged.with_columns(id=docs["id"].gather(picked), uri=docs["uri"].gather(picked))
    _write(listed, out / CONTAMINATED)
    counts = Counter(decision.tolist())
    funnel = {
        "in": num_in,
        "dedup_removed": num_in - len(docs),
        "contaminated": counts["contaminated"],
        "below_threshold": counts["below_threshold"],
        "kept": counts["kept"],
    }
    assert funnel["in"] == sum(v for k, v in funnel.items() if k != "in")
    recheck = decontaminator.scan(
        pl.read_parquet(out / DOCS, columns=["text"])["text"].to_list(), is_code=is_code
    )
    return {
        "funnel": funnel,
        "threshold": threshold,
        "head": head,
        "recheck_flagged": len(recheck),
        "score_hist": np.histogram(scores, bins=SCORE_BINS, range=(0, 5))[0].tolist(),
        "contaminated": listed.select("id", "uri", "benchmark", "task_id", "method", "score").rows(named=True),
        "top": _examples(scored, docs, descending=True),
        "bottom": _examples(scored, docs, descending=False),
    }


def _examples(scored: pl.DataFrame, docs: pl.DataFrame, *, descending: bool, n: int = 5) -> list[dict]:
    best = (
        scored.with_columns(text=docs["text"]).sort("edu_score", "id", descending=[descending, False]).head(n)
    )
    return [
        {"edu_score": round(float(r["edu_score"]), 2), "uri": r["uri"], "text": preview(r["text"])}
        for r in best.iter_rows(named=True)
    ]
