"""The curation stages as plain functions over files: what each asset does, without Dagster.

1. ``filter_shard``: heuristic filters on one raw shard -> ``docs.parquet`` (kept, document
   schema), ``dropped.parquet`` (id, uri, reason, detail) and ``minhash.parquet`` (signatures of
   the kept documents, row i = document i), plus the funnel. The shard is streamed in batches sized
   from a memory budget (``FilterBatches``), the outputs appended batch by batch.
2. Dedup runs in stages of its own: ``lsh.py``.
3. ``annotations_frame``: the annotated documents and their parsed scores.
4. ``score_shard``: a shard's surviving documents scored by the classifier, kept at or above the
   threshold, decontaminated -> ``docs.parquet``, ``scores.parquet``, ``contaminated.parquet``.
Every count reconciles: in = kept + dropped by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from phi_assets.curation import edu, heuristics, minhash
from phi_assets.ingest.schema import DOC_COLUMNS

DOCS, DROPPED, MINHASH = "docs.parquet", "dropped.parquet", "minhash.parquet"
SCORES, CONTAMINATED = "scores.parquet", "contaminated.parquet"
PREVIEW_CHARS = 240
SCORE_BINS = 20  # histogram of classifier scores: 0.25 wide over 0-5


def _write(frame: pl.DataFrame, path: Path) -> None:
    frame.write_parquet(path, compression="zstd")


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Memory of the filter step (benchmarks/filter_memory.py measures it): a shard is read and filtered in
# batches of at most ``text_bytes`` of text, sized so that
#     FILTER_BASELINE_MB + FILTER_PEAK_PER_TEXT_BYTE[source] x text_bytes <= the memory budget.
# The factor bounds the peak RSS growth per byte of text of a batch while it is filtered and signed:
# the features of every rule (line lists, regex matches; the web rules' token lists make theirs
# larger), the kept texts as Python strings for MinHash, and what the allocators keep from earlier
# batches. The baseline is the interpreter and its libraries after the first batch (compiled regexes,
# thread pools), the parquet reader and writers. Measured (2 CPUs, polars 2.1): peak ~ 650 MiB +
# 13.8 x batch MiB for Python source, ~ 520 MiB + 23.4 x batch MiB for web prose; these bound both.
DEFAULT_MEMORY_BUDGET_MB = 2048
FILTER_PEAK_PER_TEXT_BYTE = {"code": 16, "web": 25}
FILTER_BASELINE_MB = 640
FILTER_MAX_BATCH_ROWS = 65_536  # also bound the per-document overheads of many small documents
MAX_DOC_BYTES = 1 << 20  # ingest keeps documents up to Sizes.max_doc_bytes (1 MB) of UTF-8
DROPPED_EXAMPLES = 12
# Rows per row group of a quality-filtered docs.parquet. Confirming a candidate pair decodes the row groups
# of its two documents: 512 rows (about 1.5 MB of text at 3 KB per document) instead of a whole batch.
DOCS_ROW_GROUP_ROWS = 512

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FilterBatches:
    """How much of a shard the filter step holds at a time."""

    text_bytes: int  # UTF-8 bytes of text per batch (a larger document alone is a batch of one)
    rows: int  # documents per batch

    @classmethod
    def for_budget(cls, memory_budget_mb: int, source: str) -> FilterBatches:
        """The largest batches of ``source`` documents whose peak stays under ``memory_budget_mb``."""
        if source not in FILTER_PEAK_PER_TEXT_BYTE:
            raise ValueError(f"source must be one of {sorted(FILTER_PEAK_PER_TEXT_BYTE)}, got {source!r}")
        factor = FILTER_PEAK_PER_TEXT_BYTE[source]
        text_bytes = ((memory_budget_mb - FILTER_BASELINE_MB) << 20) // factor
        if text_bytes < MAX_DOC_BYTES:
            raise ValueError(
                f"memory_budget_mb={memory_budget_mb} is too small for the {source} filter step: it needs "
                f"at least {FILTER_BASELINE_MB + factor * (MAX_DOC_BYTES >> 20)} MB (a {FILTER_BASELINE_MB} MB "
                f"baseline plus {factor}x the largest document, {MAX_DOC_BYTES >> 20} MiB)"
            )
        return cls(text_bytes=int(text_bytes), rows=FILTER_MAX_BATCH_ROWS)


def _parquet_source(path: str) -> AbstractContextManager[Any]:
    """A local path as itself (arrow's own reader: no Python buffers), a URI as an fsspec file."""
    return nullcontext(path) if "://" not in path else fsspec.open(path, "rb")


def _text_bytes(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    return pc.binary_length(table.column("text")).to_numpy(zero_copy_only=False).astype(np.int64)


def _cut(sizes: np.ndarray, limits: FilterBatches) -> int:
    """How many leading documents make one batch: within both limits, at least one."""
    within = int(np.searchsorted(np.cumsum(sizes), limits.text_bytes, side="right"))
    return max(1, min(within, limits.rows))


def read_batches(docs_path: str, limits: FilterBatches) -> Iterator[pa.Table]:
    """The documents of a docs.parquet, in order, as single-chunk tables within ``limits``. The file is
    read a few documents at a time (as many as fit in ``limits.text_bytes`` if each were
    ``MAX_DOC_BYTES``), so what is held besides the batch is at most one such read."""
    step = max(1, min(limits.rows, limits.text_bytes // MAX_DOC_BYTES))
    pending: list[pa.RecordBatch] = []
    size = rows = 0
    with _parquet_source(docs_path) as f:
        for chunk in pq.ParquetFile(f).iter_batches(batch_size=step, columns=list(DOC_COLUMNS)):
            pending.append(chunk)
            size, rows = size + int(_text_bytes(chunk).sum()), rows + chunk.num_rows
            while size > limits.text_bytes or rows >= limits.rows:  # a full batch is pending
                table = pa.Table.from_batches(pending)
                sizes = _text_bytes(table)
                cut = _cut(sizes, limits)
                batch = table.slice(0, cut).combine_chunks()  # contiguous: the chunks read can go
                pending = table.slice(cut).to_batches()
                size, rows = int(sizes[cut:].sum()), table.num_rows - cut
                del table
                yield batch
                del batch
    if rows:
        yield pa.Table.from_batches(pending).combine_chunks()


class _FilterOutputs:
    """docs.parquet, dropped.parquet and minhash.parquet, appended batch by batch (zstd). Closed
    writers leave valid files, empty ones included; on an error the staging directory is discarded."""

    def __init__(self, out: Path, minhash_config: minhash.MinHashConfig) -> None:
        empty_sigs = np.empty((0, minhash_config.num_hashes), np.uint32)
        self.schemas = {
            DOCS: _arrow_schema(DOC_COLUMNS),
            DROPPED: _arrow_schema(("id", "uri", "reason", "detail")),
            MINHASH: minhash.signatures_table([], empty_sigs, minhash_config).schema,
        }
        self.stack = ExitStack()
        self.writers = {
            name: self.stack.enter_context(pq.ParquetWriter(out / name, schema, compression="zstd"))
            for name, schema in self.schemas.items()
        }
        self.rows = dict.fromkeys(self.schemas, 0)

    def __enter__(self) -> _FilterOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def write(self, name: str, table: pa.Table) -> None:
        if table.num_rows:
            # small row groups in docs.parquet: dedup's bucket steps read single candidate rows by row group
            size = DOCS_ROW_GROUP_ROWS if name == DOCS else None
            self.writers[name].write_table(table.cast(self.schemas[name]), row_group_size=size)
            self.rows[name] += table.num_rows


def _arrow_schema(columns: tuple[str, ...]) -> pa.Schema:
    """The arrow schema polars writes for string columns (as ``_write`` did for the whole shard)."""
    return pl.DataFrame(schema=dict.fromkeys(columns, pl.String)).to_arrow().schema


def _filter_batch(
    docs: pl.DataFrame, source: str, filters: Any, minhash_config: minhash.MinHashConfig
) -> tuple[pl.DataFrame, pl.DataFrame, pa.Table, dict[str, Any]]:
    """One batch through the filters: kept documents, dropped rows, signatures of the kept, funnel."""
    filtered = heuristics.filter_documents(docs, source, filters)
    funnel = heuristics.funnel(filtered)
    kept = filtered.filter(pl.col("drop_reason").is_null()).select(DOC_COLUMNS)
    dropped = filtered.filter(pl.col("drop_reason").is_not_null()).select(
        "id", "uri", pl.col("drop_reason").alias("reason"), pl.col("drop_detail").alias("detail")
    )
    del filtered
    sigs = minhash.signatures(kept["text"].to_list(), minhash_config)
    return kept, dropped, minhash.signatures_table(kept["id"].to_list(), sigs, minhash_config), funnel


def filter_shard(
    docs_path: str,
    source: str,
    filters: Any,
    minhash_config: minhash.MinHashConfig,
    out: Path,
    *,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
    limits: FilterBatches | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The heuristic filters and MinHash signatures of one raw shard, in batches: peak memory about
    ``memory_budget_mb`` whatever the shard size (``limits`` overrides the batches derived from it).
    Every filter judges each document on its own text, so the outputs are those of the whole shard
    at once, row for row. ``progress`` (e.g. ``context.log.info``) gets a line per batch."""
    limits = limits or FilterBatches.for_budget(memory_budget_mb, source)
    funnels: list[dict[str, Any]] = []
    examples: dict[str, dict[str, Any]] = {}  # the first dropped row of each reason, in order
    text_bytes = 0
    with _FilterOutputs(out, minhash_config) as outputs:
        for number, table in enumerate(read_batches(docs_path, limits), 1):
            text_bytes += int(_text_bytes(table).sum())
            kept, dropped, sigs, funnel = _filter_batch(pl.from_arrow(table), source, filters, minhash_config)
            del table
            outputs.write(DOCS, kept.to_arrow())
            outputs.write(DROPPED, dropped.to_arrow())
            outputs.write(MINHASH, sigs)
            funnels.append(funnel)
            for r in dropped.unique("reason", keep="first", maintain_order=True).iter_rows(named=True):
                if len(examples) < DROPPED_EXAMPLES and r["reason"] not in examples:
                    examples[r["reason"]] = {"reason": r["reason"], "detail": r["detail"], "uri": r["uri"]}
            if progress is not None:
                done = heuristics.merge_funnels(funnels)
                progress(
                    f"{source} filter: batch {number}: {done['in']:,} documents read "
                    f"({text_bytes / 1e6:,.0f} MB of text), {done['kept']:,} kept, "
                    f"{done['in'] - done['kept']:,} dropped"
                )
    funnel = heuristics.merge_funnels(funnels)
    dropped_rows = sum(funnel["dropped"].values())
    assert funnel["kept"] == outputs.rows[DOCS] == outputs.rows[MINHASH]
    assert funnel["in"] == funnel["kept"] + dropped_rows and dropped_rows == outputs.rows[DROPPED]
    return {"funnel": funnel, "dropped_examples": list(examples.values())}


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
