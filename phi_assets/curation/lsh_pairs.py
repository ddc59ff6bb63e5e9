"""Candidate pairs confirmed on exact Jaccard similarity, as a shuffle (Dagster-free).

A bucket partition's candidates (``lsh.bucket_candidates``) name rows of any shard. Reading each
candidate's text inside the partition would decode a row group of text per candidate, once per
(partition, shard): with partitions and shards both growing with the corpus, that work grows with its
square. Instead, two partitioned steps:

1. **Shingle sets, per shard** (``write_shingles``). A shard gathers the rows each bucket partition
   wants from it (``lsh.wanted_rows``: one indexed read per partition), reads those rows once (in
   chunks, only the row groups that hold them), computes each row's shingle set once, and writes
   ``SHINGLES``: an Arrow IPC file with one record batch per bucket partition, batch i holding the
   rows partition i wants (row, id, shingles; sorted by row). A row several partitions want is
   written in each of their batches.
2. **Pairs, per bucket partition** (``confirm_candidates``). Reads its batch from each shard its
   candidates name (one indexed read per shard, nothing else of the shard), and keeps the pairs whose
   exact Jaccard similarity reaches ``min_similarity`` (same id: 1.0) -> ``lsh.PAIRS``.

Texts are read once per shard; every later read is of exactly the sets a partition needs.

Memory: the shard step holds its candidate rows' shingle sets (its duplicates: at most about its
text's size again) and one chunk of texts; the pair step confirms ``chunk_pairs`` pairs at a time,
holding their sets and one shard's batch while it picks them out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from phi_assets.curation import lsh
from phi_assets.curation.minhash import MinHashConfig, shingle_sets

SHINGLES = "shingles.arrow"
SHINGLE_SCHEMA = pa.schema([("row", pa.int64()), ("id", pa.string()), ("shingles", pa.large_list(pa.uint64()))])
_META = b"phi.lsh_shingles"


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique arrays (two empty sets: 0, nothing in common)."""
    if not len(a) and not len(b):
        return 0.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


# --- 1. shingle sets, per shard ---------------------------------------------------------------------


def _sets_array(sets: Sequence[np.ndarray]) -> pa.LargeListArray:
    lengths = np.fromiter((len(s) for s in sets), dtype=np.int64, count=len(sets))
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    values = np.concatenate(sets).astype(np.uint64) if len(sets) else np.empty(0, np.uint64)
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(values, pa.uint64()))


def write_shingles(
    docs: str,
    wanted: Sequence[np.ndarray],
    config: MinHashConfig,
    out: Path,
    fs=None,
    chunk_rows: int = 2048,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """``SHINGLES`` for one shard: ``wanted[i]`` are the sorted rows bucket partition i wants from it
    (empty for most); batch i of the file holds their (row, id, shingles)."""
    union = np.unique(np.concatenate(wanted)) if len(wanted) else np.empty(0, np.int64)
    parts = []
    for start in range(0, len(union), chunk_rows):
        rows = union[start : start + chunk_rows]
        got = lsh.take_rows(docs, rows, ("id", "text"), fs)
        sets = shingle_sets(got["text"].to_pylist(), config)
        parts.append(
            pa.table([pa.array(rows, pa.int64()), got["id"], _sets_array(sets)], schema=SHINGLE_SCHEMA)
        )
        log(f"shingle sets: {min(start + chunk_rows, len(union)):,} of {len(union):,} candidate rows")
    table = (pa.concat_tables(parts) if parts else SHINGLE_SCHEMA.empty_table()).combine_chunks()
    set_bytes = table["shingles"].chunk(0).values.nbytes if table.num_rows else 0
    avg = set_bytes / max(table.num_rows, 1)
    meta = {"partitions": len(wanted), "rows": int(len(union)), "avg_set_bytes": avg}
    schema = SHINGLE_SCHEMA.with_metadata({_META: json.dumps(meta).encode()})
    written = 0
    with pa.OSFile(str(out / SHINGLES), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for rows in wanted:
            picked = table.take(pa.array(np.searchsorted(union, rows), pa.int64()))
            writer.write_batch(pa.record_batch([c.combine_chunks() for c in picked.columns], schema=schema))
            written += len(rows)
    return {
        "candidate_rows": int(len(union)),
        "rows_written": written,
        "partitions_with_rows": sum(bool(len(w)) for w in wanted),
        "avg_set_bytes": round(avg, 1),
    }


def read_batch(path: str, index: int, fs=None) -> pa.RecordBatch:
    """Batch ``index`` (a bucket partition's rows) of a shard's ``SHINGLES`` file."""
    reader = pa.ipc.open_file(lsh.open_input(path, fs, mapped=True))
    if index >= reader.num_record_batches:
        raise ValueError(
            f"{path}: {reader.num_record_batches} bucket partitions' batches, partition {index} asked "
            "(written for another bucket layout); materialize the shingle sets again"
        )
    return reader.get_batch(index)


# --- 2. pairs, per bucket partition -------------------------------------------------------------------


def chunk_pairs_for(budget_bytes: int, avg_set_bytes: float) -> int:
    """Pairs confirmed at a time: a chunk holds up to two sets per pair, beside one shard's batch and
    temporaries: ~4x the sets."""
    return int(min(50_000, max(64, budget_bytes // (2 * 4 * max(avg_set_bytes, 1.0)))))


def _pick(shard: str, batch: pa.RecordBatch, rows: np.ndarray, ids: dict, sets: dict) -> None:
    have = batch.column("row").to_numpy()
    pos = np.searchsorted(have, rows)
    missing = have[np.minimum(pos, len(have) - 1)] != rows if len(have) else np.ones(len(rows), bool)
    if missing.any():
        raise ValueError(
            f"the shingle sets of shard {shard} lack {int(missing.sum())} rows this partition's candidates "
            f"name (row {int(rows[missing][0])}): they were written for other candidates; "
            "materialize that shard's shingle sets again"
        )
    column = batch.column("shingles")
    offsets, values = column.offsets.to_numpy(), column.values.to_numpy()
    batch_ids = batch.column("id").to_pylist()
    for row, p in zip(rows.tolist(), pos.tolist(), strict=True):
        ids[(shard, row)] = batch_ids[p]
        sets[(shard, row)] = values[offsets[p] : offsets[p + 1]]


def confirm_candidates(
    candidates: pa.Table,
    read_sets: Callable[[str], pa.RecordBatch],
    min_similarity: float,
    out: Path,
    chunk_pairs: int = 20_000,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """A bucket partition's candidates (``lsh.CANDIDATE_SCHEMA``) confirmed -> ``lsh.PAIRS``;
    ``read_sets(shard)`` is the partition's batch of that shard's ``SHINGLES``."""
    out_tables = []
    for start in range(0, candidates.num_rows, chunk_pairs):
        chunk = candidates.slice(start, chunk_pairs)
        us, vs = chunk["u_shard"].to_pylist(), chunk["v_shard"].to_pylist()
        ur, vr = chunk["u_row"].to_numpy(), chunk["v_row"].to_numpy()
        names = sorted(set(us) | set(vs))
        code = {name: i for i, name in enumerate(names)}
        uc = np.fromiter((code[s] for s in us), np.int64, len(us))
        vc = np.fromiter((code[s] for s in vs), np.int64, len(vs))
        ids: dict = {}
        sets: dict = {}
        for i, shard in enumerate(names):
            rows = np.unique(np.concatenate([ur[uc == i], vr[vc == i]]))
            _pick(shard, read_sets(shard), rows, ids, sets)
        a_keys = list(zip(us, ur.tolist(), strict=True))
        b_keys = list(zip(vs, vr.tolist(), strict=True))
        sim = np.array(
            [
                1.0 if ids[a] == ids[b] else jaccard(sets[a], sets[b])
                for a, b in zip(a_keys, b_keys, strict=True)
            ],
            dtype=np.float32,
        )
        keep = np.flatnonzero(sim >= min_similarity)
        kept = chunk.take(pa.array(keep, pa.int64()))
        out_tables.append(
            pa.table(
                {
                    "u_shard": kept["u_shard"],
                    "u_row": kept["u_row"],
                    "u_id": pa.array([ids[a_keys[i]] for i in keep.tolist()], pa.string()),
                    "v_shard": kept["v_shard"],
                    "v_row": kept["v_row"],
                    "v_id": pa.array([ids[b_keys[i]] for i in keep.tolist()], pa.string()),
                    "similarity": pa.array(sim[keep], pa.float32()),
                },
                schema=lsh.PAIR_SCHEMA,
            )
        )
        log(
            f"confirmed {min(start + chunk_pairs, candidates.num_rows):,} of {candidates.num_rows:,} candidates"
        )
    pairs = pa.concat_tables(out_tables) if out_tables else lsh.PAIR_SCHEMA.empty_table()
    pq.write_table(pairs, out / lsh.PAIRS, compression="zstd")
    exact = pc.sum(pc.equal(pairs["u_id"], pairs["v_id"])).as_py() or 0
    below = candidates.num_rows - pairs.num_rows
    log(f"{pairs.num_rows:,} confirmed ({exact:,} exact), {below:,} below {min_similarity}")
    return {
        "candidates": candidates.num_rows,
        "confirmed": pairs.num_rows,
        "exact": exact,
        "below_threshold": candidates.num_rows - pairs.num_rows,
        "min_similarity": min_similarity,
    }


# --- the stages in one process (tests, benchmarks) ---------------------------------------------------


def run_local(
    shards: Mapping[str, tuple[str, str]],
    layout: lsh.BucketLayout,
    config: MinHashConfig,
    min_similarity: float,
    root: Path,
) -> tuple[list[str], dict[str, dict]]:
    """Buckets, shingle sets and pairs for ``shards`` (key -> (docs.parquet, folder with its bands
    files)), every partition in turn in this process, under ``root``. Returns the pair files and each
    partition's statistics (candidates, confirmed, ...)."""
    keys = layout.keys()
    for key in keys:
        group, hash_range = layout.parse(key)
        inputs = []
        for shard, (_, folder) in shards.items():
            bands = f"{folder}/{lsh.bands_file(group)}"
            slices = lsh.partition_slices(
                lsh.read_slice_index(bands), layout, group, hash_range, config.num_bands
            )
            inputs.append(lsh.ShardInput(shard, bands, tuple(s[0] for s in slices)))
        (root / "buckets" / key).mkdir(parents=True)
        lsh.bucket_candidates(inputs, lsh.read_row_groups, root / "buckets" / key)
    for shard, (docs, _) in shards.items():
        wanted = [lsh.wanted_rows(str(root / "buckets" / key / lsh.WANTED), shard) for key in keys]
        (root / "shingles" / shard).mkdir(parents=True)
        write_shingles(docs, wanted, config, root / "shingles" / shard)
    files, stats = [], {}
    for index, key in enumerate(keys):
        out = root / "pairs" / key
        out.mkdir(parents=True)
        candidates = pq.read_table(root / "buckets" / key / lsh.CANDIDATES)
        stats[key] = confirm_candidates(
            candidates,
            lambda s, i=index: read_batch(str(root / "shingles" / s / SHINGLES), i),
            min_similarity,
            out,
        )
        files.append(str(out / lsh.PAIRS))
    return files, stats
