"""The curation stages as plain functions over files: what each asset does, without Dagster.

1. ``filter_shard``: heuristic filters on one raw shard -> ``docs.parquet`` (kept, document
   schema), ``dropped.parquet`` (id, uri, reason, detail) and ``minhash.parquet`` (signatures of
   the kept documents, row i = document i), plus the funnel. The shard is streamed in batches sized
   from a memory budget (``FILTER_MEMORY``), the outputs appended batch by batch.
2. Dedup runs in stages of its own: ``lsh.py``.
3. ``annotations_frame``: the annotated documents and their label distributions.
4. ``score_shard``: a shard's surviving documents scored by the classifier, kept at or above the
   threshold, decontaminated -> ``docs.parquet``, ``scores.parquet``, ``contaminated.parquet``. The
   shard is streamed twice in batches sized from a memory budget (``SCORE_MEMORY``).
Every count reconciles: in = kept + dropped by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from phi_assets.curation import edu, heuristics, minhash
from phi_assets.ingest import batches
from phi_assets.ingest.batches import (
    DEFAULT_MEMORY_BUDGET_MB,
    Batches,
    StepMemory,
    read_batches,
)
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
FILTER_PEAK_PER_TEXT_BYTE = {"code": 16, "web": 25}
FILTER_BASELINE_MB = 640
FILTER_MAX_BATCH_ROWS = 65_536  # also bound the per-document overheads of many small documents
FILTER_MEMORY = StepMemory("filter", FILTER_BASELINE_MB, FILTER_PEAK_PER_TEXT_BYTE, FILTER_MAX_BATCH_ROWS)
# Memory of the scoring step (benchmarks/step_memory.py measures it): batches of at most ``text_bytes``
# of text, sized so that SCORE_BASELINE_MB + SCORE_PEAK_PER_TEXT_BYTE x text_bytes <= the memory budget.
# Per byte of a batch: its texts as Python strings for the decontamination scan (and what the scan of
# each document leaves in the allocators) and the excerpts; in the second pass its rows on their way to
# the writers (the kept ones filtered, cast and compressed). The baseline: torch, the encoder, the
# classifier and the decontaminator's task index (about 770 MiB once loaded), the encoder's activations
# for a chunk of 512 excerpts, pass 2's pending functions against every task function.
SCORE_PEAK_PER_TEXT_BYTE = 20
SCORE_BASELINE_MB = 1000
SCORE_MEMORY = StepMemory("score", SCORE_BASELINE_MB, SCORE_PEAK_PER_TEXT_BYTE, FILTER_MAX_BATCH_ROWS)
DROPPED_EXAMPLES = 12
# Rows per row group of a quality-filtered docs.parquet. Confirming a candidate pair decodes the row groups
# of its two documents: 512 rows (about 1.5 MB of text at 3 KB per document) instead of a whole batch.
DOCS_ROW_GROUP_ROWS = 512

Progress = Callable[[str], None]


class _ParquetOutputs:
    """Parquet files in ``out``, appended batch by batch (zstd), with fixed schemas (``row_groups``: rows
    per row group, per file). Closed writers leave valid files, empty ones included; on an error the
    staging directory is discarded."""

    def __init__(self, out: Path, schemas: dict[str, pa.Schema], row_groups: dict[str, int] | None = None):
        self.schemas, self.row_groups = schemas, row_groups or {}
        self.stack = ExitStack()
        self.writers = {
            name: self.stack.enter_context(pq.ParquetWriter(out / name, schema, compression="zstd"))
            for name, schema in self.schemas.items()
        }
        self.rows = dict.fromkeys(self.schemas, 0)

    def __enter__(self) -> _ParquetOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def write(self, name: str, table: pa.Table) -> None:
        if table.num_rows:
            size = self.row_groups.get(name)
            self.writers[name].write_table(table.cast(self.schemas[name]), row_group_size=size)
            self.rows[name] += table.num_rows


def _filter_outputs(out: Path, minhash_config: minhash.MinHashConfig) -> _ParquetOutputs:
    """docs.parquet, dropped.parquet and minhash.parquet of the filter step."""
    empty_sigs = np.empty((0, minhash_config.num_hashes), np.uint32)
    schemas = {
        DOCS: _arrow_schema(DOC_COLUMNS),
        DROPPED: _arrow_schema(("id", "uri", "reason", "detail")),
        MINHASH: minhash.signatures_table([], empty_sigs, minhash_config).schema,
    }
    # small row groups in docs.parquet: dedup's bucket steps read single candidate rows by row group
    return _ParquetOutputs(out, schemas, {DOCS: DOCS_ROW_GROUP_ROWS})


def _arrow_schema(columns: tuple[str, ...] | dict[str, Any]) -> pa.Schema:
    """The arrow schema polars writes for these columns (all strings, or {name: polars type}), as
    ``_write`` does for a whole frame."""
    schema = dict.fromkeys(columns, pl.String) if isinstance(columns, tuple) else columns
    return pl.DataFrame(schema=schema).to_arrow().schema


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
    limits: Batches | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The heuristic filters and MinHash signatures of one raw shard, in batches: peak memory about
    ``memory_budget_mb`` whatever the shard size (``limits`` overrides the batches derived from it).
    Every filter judges each document on its own text, so the outputs are those of the whole shard
    at once, row for row. ``progress`` (e.g. ``context.log.info``) gets a line per batch."""
    limits = limits or FILTER_MEMORY.batches(memory_budget_mb, source)
    funnels: list[dict[str, Any]] = []
    examples: dict[str, dict[str, Any]] = {}  # the first dropped row of each reason, in order
    text_bytes = 0
    with _filter_outputs(out, minhash_config) as outputs:
        for number, table in enumerate(read_batches(docs_path, limits), 1):
            text_bytes += int(batches.text_bytes(table).sum())
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
    distributions: list[edu.LabelDistribution],
    prompt: edu.Prompt,
    max_chars: int,
) -> pl.DataFrame:
    """One row per annotated document: the sample's columns (without its text), the excerpt the
    annotator read, the token it generated (``answer``), the engine's error, and the label distribution
    (``probs``: p_0..p_5, ``label_mass``, ``expected_score``, ``label``, ``entropy``; null unless
    ``status`` is ok)."""
    d = distributions
    return sample.with_columns(
        source=pl.lit(source),
        excerpt=pl.Series([edu.excerpt(t, max_chars) for t in sample["text"]], dtype=pl.String),
        answer=pl.Series(answers, dtype=pl.String),
        error=pl.Series(errors, dtype=pl.String),
        status=pl.Series([x.status for x in d], dtype=pl.String),
        probs=pl.Series([None if x.probs is None else list(x.probs) for x in d], dtype=pl.List(pl.Float64)),
        label_mass=pl.Series([x.label_mass for x in d], dtype=pl.Float64),
        expected_score=pl.Series([x.expected_score for x in d], dtype=pl.Float64),
        label=pl.Series([x.label for x in d], dtype=pl.Int8),
        entropy=pl.Series([x.entropy for x in d], dtype=pl.Float64),
        prompt_sha256=pl.lit(prompt.sha256),
    ).drop("text")


def status_counts(annotations: pl.DataFrame) -> dict[str, int]:
    """Documents per status, every status of ``edu.STATUSES`` listed (0 when none)."""
    counts = Counter(annotations["status"].to_list())
    return {**{s: counts.pop(s, 0) for s in edu.STATUSES}, **dict(sorted(counts.items()))}


SCORES_SCHEMA = {"row": pl.UInt32, "id": pl.String, "uri": pl.String, "edu_score": pl.Float32,
                 "decision": pl.String}


def survivor_positions(docs_path: str, keep_rows: pl.DataFrame) -> np.ndarray:
    """The file rows of ``keep_rows["row"]``, sorted: the documents ``read_rows`` would return, in their
    order. Raises as ``read_rows`` does when some are not rows of the file (or named twice)."""
    rows = keep_rows["row"].to_numpy()
    with batches.parquet_source(docs_path) as f:
        num_rows = pq.ParquetFile(f).metadata.num_rows
    unique = np.unique(rows)
    found = int(np.count_nonzero((unique >= 0) & (unique < num_rows)))
    if found != len(rows):
        raise ValueError(
            f"{docs_path}: dedup decisions name {len(rows)} rows, the file has {found} of "
            "them; the shard changed after dedup ran (materialize dedup again)"
        )
    return unique.astype(np.int64)


def survivor_batches(
    docs_path: str, positions: np.ndarray, limits: Batches
) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """(file rows, documents) of the survivors at ``positions`` (sorted), in file order, a batch of the
    file (within ``limits``) at a time; batches without survivors are skipped."""
    start = 0
    for table in read_batches(docs_path, limits):
        lo, hi = np.searchsorted(positions, [start, start + table.num_rows])
        rows = positions[lo:hi]
        if len(rows):
            yield rows, table.take(pa.array(rows - start))
        start += table.num_rows


class _Scorer:
    """Classifier scores of a stream of excerpts, computed in the encoder's own chunks (``Encoder.chunk``
    texts a call, counted from the first excerpt): each excerpt is embedded in the company it would have
    had in one ``encode`` of them all, so the scores are those of the whole shard at once, bit for bit."""

    def __init__(self, encoder: Any, model: Any, head: str, total: int, desc: str) -> None:
        from tqdm import tqdm

        self.encoder, self.model, self.head = encoder, model, head
        self.pending: list[str] = []
        self.parts: list[np.ndarray] = []
        self.bar = tqdm(total=total, desc=desc, unit="text")

    def add(self, excerpts: list[str]) -> None:
        self.pending += excerpts
        while len(self.pending) >= self.encoder.chunk:
            self._score(self.encoder.chunk)

    def _score(self, n: int) -> None:
        chunk, self.pending = self.pending[:n], self.pending[n:]
        self.parts.append(self.model.score(self.encoder.encode(chunk), self.head))
        self.bar.update(n)
        batches.release_freed_memory()  # the model's activations: a few hundred MB for a full chunk

    def scores(self) -> np.ndarray:
        if self.pending:
            self._score(len(self.pending))
        self.bar.close()
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)


class _Examples:
    """The ``n`` documents first by (score, id), ascending or descending, over batches."""

    def __init__(self, descending: bool, n: int = 5) -> None:
        self.descending, self.n = descending, n
        self.best = pl.DataFrame(schema={"edu_score": pl.Float32, "id": pl.String, "uri": pl.String,
                                         "text": pl.String})

    def add(self, batch: pl.DataFrame, texts: pa.ChunkedArray) -> None:
        order = [self.descending, False]
        top = batch.select("edu_score", "id", "uri").with_row_index("i").sort(
            "edu_score", "id", descending=order).head(self.n)
        previews = [preview(t) for t in texts.take(pa.array(top["i"].to_numpy())).to_pylist()]
        candidates = top.drop("i").with_columns(text=pl.Series(previews, dtype=pl.String))
        self.best = pl.concat([self.best, candidates]).sort("edu_score", "id", descending=order).head(self.n)

    def rows(self) -> list[dict]:
        return [
            {"edu_score": round(float(r["edu_score"]), 2), "uri": r["uri"], "text": r["text"]}
            for r in self.best.iter_rows(named=True)
        ]


def _scan_and_score(
    docs_path: str, positions: np.ndarray, limits: Batches, source: str, model: Any, head: str, encoder: Any,
    decontaminator: Any, max_chars: int, progress: Progress | None,
) -> tuple[pl.DataFrame, np.ndarray]:
    """Pass 1 of ``score_shard``: the decontamination flags and the scores of every survivor."""
    scan = decontaminator.scanner(is_code=source == "code", desc=f"decontaminate {source}",
                                  total=len(positions))
    scorer = _Scorer(encoder, model, head, len(positions), f"embed {source}")
    for number, (rows, docs) in enumerate(survivor_batches(docs_path, positions, limits), 1):
        texts = docs.column("text").to_pylist()
        del docs
        scan.add(texts)
        scorer.add([edu.excerpt(t, max_chars) for t in texts])
        del texts
        batches.release_freed_memory()
        if progress is not None:
            progress(f"{source} scoring: batch {number}: {scan.rows:,} of {len(positions):,} documents "
                     f"scanned and scored (through row {int(rows[-1]):,})")
    return scan.result(), scorer.scores()


def _write_scored(
    docs_path: str, positions: np.ndarray, limits: Batches, scores: np.ndarray, decision: np.ndarray,
    flagged: pl.DataFrame, out: Path, source: str, progress: Progress | None,
) -> tuple[pl.DataFrame, dict[bool, _Examples]]:
    """Pass 2 of ``score_shard``: docs.parquet (the kept) and scores.parquet (every survivor), batch by
    batch; the flagged rows with their id and uri; the top and bottom documents."""
    flagged_at = {int(r): i for i, r in enumerate(flagged["row"].to_list())}
    ids, uris = [None] * len(flagged_at), [None] * len(flagged_at)
    examples = {True: _Examples(descending=True), False: _Examples(descending=False)}
    schemas = {DOCS: _arrow_schema(DOC_COLUMNS), SCORES: _arrow_schema(SCORES_SCHEMA)}
    done = 0
    with _ParquetOutputs(out, schemas) as outputs:
        for number, (rows, docs) in enumerate(survivor_batches(docs_path, positions, limits), 1):
            span = slice(done, done + len(rows))
            scored = pl.from_arrow(docs.select(["id", "uri"])).select(
                row=pl.Series(rows, dtype=pl.UInt32),
                id=pl.col("id"),
                uri=pl.col("uri"),
                edu_score=pl.Series(scores[span], dtype=pl.Float32),
                decision=pl.Series(decision[span].tolist(), dtype=pl.String),
            )
            outputs.write(SCORES, scored.to_arrow())
            outputs.write(DOCS, docs.filter(pa.array(decision[span] == "kept")).select(list(DOC_COLUMNS)))
            for i in np.flatnonzero(decision[span] == "contaminated").tolist():
                ids[flagged_at[done + i]], uris[flagged_at[done + i]] = scored["id"][i], scored["uri"][i]
            for which in examples.values():
                which.add(scored, docs.column("text"))
            done += len(rows)
            del docs, scored
            batches.release_freed_memory()
            if progress is not None:
                progress(f"{source} scoring: writing batch {number}: {done:,} of {len(positions):,} "
                         f"documents, {outputs.rows[DOCS]:,} kept")
    assert outputs.rows[DOCS] == int((decision == "kept").sum()) and outputs.rows[SCORES] == len(positions)
    listed = flagged.with_columns(id=pl.Series(ids, dtype=pl.String), uri=pl.Series(uris, dtype=pl.String))
    return listed, examples


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
    *,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
    limits: Batches | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Decontaminate and score a shard's dedup survivors; keep the clean ones >= the threshold.

    The shard is read twice in batches (peak memory about ``memory_budget_mb`` whatever its size;
    ``limits`` overrides the batches derived from it): first to scan and score every survivor (the
    decontamination scan and the encoder's chunks carry over from batch to batch), then to write the
    kept documents and the scores; the re-check scans the written documents in the same batches. The
    outputs are those of the whole shard at once, row for row. ``progress`` (e.g.
    ``context.log.info``) gets a line per batch of each pass."""
    limits = limits or SCORE_MEMORY.batches(memory_budget_mb, source)
    positions = survivor_positions(docs_path, keep_rows)
    flagged, scores = _scan_and_score(docs_path, positions, limits, source, model, head, encoder,
                                      decontaminator, max_chars, progress)
    decision = np.where(scores >= threshold, "kept", "below_threshold").astype(object)
    decision[flagged["row"].to_numpy()] = "contaminated"  # removed whatever its score
    listed, examples = _write_scored(docs_path, positions, limits, scores, decision, flagged, out, source,
                                     progress)
    _write(listed, out / CONTAMINATED)
    counts = Counter(decision.tolist())
    funnel = {
        "in": num_in,
        "dedup_removed": num_in - len(positions),
        "contaminated": counts["contaminated"],
        "below_threshold": counts["below_threshold"],
        "kept": counts["kept"],
    }
    assert funnel["in"] == sum(v for k, v in funnel.items() if k != "in")
    recheck = decontaminator.scanner(is_code=source == "code")
    for table in read_batches(str(out / DOCS), limits, columns=["text"]):
        recheck.add(table.column("text").to_pylist())
        del table
        batches.release_freed_memory()
    return {
        "funnel": funnel,
        "threshold": threshold,
        "head": head,
        "recheck_flagged": recheck.result().height,
        "score_hist": np.histogram(scores, bins=SCORE_BINS, range=(0, 5))[0].tolist(),
        "contaminated": listed.select("id", "uri", "benchmark", "task_id", "method", "score").rows(named=True),
        "top": examples[True].rows(),
        "bottom": examples[False].rows(),
    }
