"""Dedup in stages (``phi_assets/curation/lsh.py``, ``lsh_pairs.py``) at 1e5, 1e6 and 1e7 documents:
peak memory per task and time per stage, beside the single-process ``dedup.deduplicate`` where it fits.

Corpus, per size N: shards of ``SHARD_DOCS`` (1e5) documents (1, 10 and 100 shards). Most documents
are generated: a random 32-hex id, an empty text in ``docs.parquet`` (never read: they have no
candidates) and a random uint32 signature (seeded by (--seed, shard), regenerated where needed, never
stored). About 1% are planted clusters of real text: ``N / 400`` distinct originals, 20-line chunks
(at least 50 words) of the running Python's standard library ``*.py`` files, each with 2 to 4 copies
(the first an exact copy half the time, the others near copies with 1 to 3 words replaced), spread
over different shards at random rows, with their real ``minhash.signatures`` and real text, so the
exact-Jaccard confirmation reads and shingles real text. Ids: ``doc_id`` of the text for real documents.

Stages, each task in its own child process (forked from a forkserver that has imported this module,
numpy, pyarrow, pandas, polars, duckdb and ``lsh``; ``max_tasks_per_child=1``), ``--workers`` at a time:

- prep (data generation, not part of dedup): per shard, docs.parquet (id, text; row groups of 65,536
  rows, as the filter step writes them) and the planted documents' signatures.
- bands, per shard: ``write_bands`` of the shard's ids and signatures (timed: that call; the task
  first reads the ids and rebuilds the signatures, which the filter step has in memory).
- buckets, per partition of ``BucketLayout(15, max(1, N // 1_000_000))``: 15 band groups (one band
  each, the id band included) x 1, 1, 10 hash ranges, so a partition holds about 1M band hashes at 1e6
  and 1e7 (1e5 at 1e5). As ``dedup_buckets`` does: every shard's slice index from its footer, then
  ``bucket_candidates`` (candidate pairs and the rows they need).
- shingles, per shard: ``wanted_rows`` from every partition, ``write_shingles`` (its candidate rows read
  once, one batch per partition); counts the rows of the row groups that hold them (all decoded).
- pairs, per partition: each named shard's record (its average set size), ``confirm_candidates`` (its
  batch of each shard, exact Jaccard) at min_similarity 0.7, chunks sized from a 2048 MB budget.
- clusters: ``cluster`` over every partition's pairs (DuckDB, memory_limit_mb 2048, 2 threads).
- survivors, per shard: ``survivor_rows`` of its docs and removal list.
- old: ``dedup.deduplicate`` of all shards' signatures in one process (timed: that call), up to
  ``--old-max`` documents.

Per task: wall and CPU seconds of the timed part (``time.perf_counter``, ``time.process_time``) and
peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end of the task, in the child; it
includes the forkserver's imports: the "idle task" in the header). Goals: max per-task peak RSS at 1e7 /
at 1e6 within 1.1, and total task time (sum over the six dedup stages) at 1e7 / (10 x at 1e6) within 1.2.

Run from the repository root:  .venv/bin/python benchmarks/curation_scale.py [--sizes 1e5,1e6,1e7]
[--workers 2] [--seed 0] [--old-max 1e6] [--work-dir DIR] [--markdown]
(about 5 minutes on 2 cores, 1e7 most of it; 3.2 GB of temp files at 1e7)
"""

from __future__ import annotations

import os

# One thread per task: --workers tasks run side by side.
os.environ["POLARS_MAX_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from pathlib import Path  # noqa: E402

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pandas  # noqa: E402, F401  (pyarrow imports it on first use of a table: once here, not in every task)
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

pa.set_cpu_count(1)
pa.set_io_thread_count(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, without install
from table import format_table  # noqa: E402

from phi_assets.curation import dedup, lsh, lsh_pairs, minhash, stages  # noqa: E402
from phi_assets.ingest.schema import doc_id  # noqa: E402

CONFIG = minhash.MinHashConfig()  # 14 bands x 8 rows: 112 uint32 per document
SHARD_DOCS = 100_000
DOCS_ROW_GROUP = stages.DOCS_ROW_GROUP_ROWS  # as the filter step writes docs.parquet
HASHES_PER_PARTITION = 1_000_000  # hash_ranges = max(1, N // this): band hashes per bucket partition
BAND_GROUPS = CONFIG.num_bands + 1  # one partition column per band, the id band included
MIN_SIMILARITY = 0.7
BUDGET_MB = 2048  # dedup_assets' BucketConfig.memory_budget_mb and DedupConfig.memory_limit_mb


# --- corpus ----------------------------------------------------------------------------------------

def text_pool(seed: int) -> list[str]:
    """Distinct 20-line chunks (at least 50 words) of the stdlib's ``*.py`` files, shuffled."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen, out = set(), []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i in range(0, len(lines), 20):
            chunk = "\n".join(lines[i:i + 20])
            if len(chunk.split()) >= 50 and chunk not in seen:
                seen.add(chunk)
                out.append(chunk)
    random.Random(seed).shuffle(out)
    return out


def near_copy(text: str, rng: random.Random) -> str:
    """``text`` with 1 to 3 of its words (one per 60) replaced by random 6-letter words (layout kept)."""
    parts = re.split(r"(\s+)", text)
    words = [i for i, p in enumerate(parts) if p and not p.isspace()]
    for i in rng.sample(words, max(1, min(3, len(words) // 60))):
        parts[i] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
    return "".join(parts)


def plan(n_docs: int, shards: int, shard_docs: int, pool: list[str], seed: int
         ) -> tuple[dict[int, list[tuple[int, str]]], dict]:
    """The planted documents of each shard, as (row, text), and what was planted."""
    rng = random.Random(seed + 1)
    clusters = n_docs // 400
    if clusters > len(pool):
        raise SystemExit(f"{n_docs:.0e} documents need {clusters} originals, the stdlib gives {len(pool)}")
    placed: dict[int, dict[int, str]] = {s: {} for s in range(shards)}
    exact = near = similar = 0
    for original in pool[:clusters]:
        copies = 2 + rng.randrange(3)
        first_exact = rng.random() < 0.5
        members = [original] + [original if k == 0 and first_exact else near_copy(original, rng)
                                for k in range(copies)]
        exact += first_exact
        near += copies - first_exact
        sets = minhash.shingle_sets(members, CONFIG)
        similar += sum(lsh_pairs.jaccard(sets[0], other) >= MIN_SIMILARITY for other in sets[1 + first_exact:])
        targets = rng.sample(range(shards), len(members)) if shards >= len(members) else \
            [rng.randrange(shards) for _ in members]
        for text, s in zip(members, targets, strict=True):
            row = rng.randrange(shard_docs)
            while row in placed[s]:
                row = rng.randrange(shard_docs)
            placed[s][row] = text
    docs = {s: sorted(rows.items()) for s, rows in placed.items()}
    planted = sum(len(v) for v in docs.values())
    return docs, {"clusters": clusters, "docs": planted, "exact_copies": exact, "near_copies": near,
                  "near_similar": similar,
                  "text_mb": sum(len(t.encode()) for v in docs.values() for _, t in v) / 1e6}


def generated(seed: int, shard: int, n: int) -> tuple[list[str], np.ndarray]:
    """Random ids and signatures of a shard's generated documents (the same every call)."""
    rng = np.random.default_rng([seed, shard])
    hexed = rng.bytes(16 * n).hex()
    ids = [hexed[i:i + 32] for i in range(0, 32 * n, 32)]
    return ids, rng.integers(0, 2**32, size=(n, CONFIG.num_hashes), dtype=np.uint32)


def shard_key(s: int) -> str:
    return f"shard-{s:05d}"


def shard_signatures(root: str, seed: int, s: int, n: int) -> tuple[list[str], np.ndarray]:
    """A shard's ids (from its docs.parquet) and signatures (generated, planted rows overwritten)."""
    folder = Path(root) / "shards" / shard_key(s)
    ids = pq.read_table(folder / "docs.parquet", columns=["id"])["id"].to_pylist()
    _, sigs = generated(seed, s, n)
    planted = np.load(folder / "planted.npz")
    sigs[planted["rows"]] = planted["sigs"]
    return ids, sigs


# --- tasks (each in its own child process) ---------------------------------------------------------

def task(fn: Callable[..., dict], *args) -> dict:
    """Run ``fn`` in this child; its dict gets the task's peak RSS and, unless ``fn`` timed its own
    part (``wall``, ``cpu``), the time of the whole call."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    out.setdefault("cpu", time.process_time() - c0)
    out.setdefault("wall", time.perf_counter() - w0)
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def idle() -> dict:
    return {"preloaded": "curation_scale" in sys.modules}


def prep_shard(root: str, seed: int, s: int, n: int, planted: list[tuple[int, str]]) -> dict:
    folder = Path(root) / "shards" / shard_key(s)
    folder.mkdir(parents=True)
    ids, _ = generated(seed, s, n)
    texts = [""] * n
    rows = np.array([r for r, _ in planted], dtype=np.int64)
    for row, text in planted:
        ids[row], texts[row] = doc_id(text), text
    sigs = minhash.signatures([t for _, t in planted], CONFIG)
    np.savez(folder / "planted.npz", rows=rows, sigs=sigs)
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())}),
                   folder / "docs.parquet", row_group_size=DOCS_ROW_GROUP, compression="zstd")
    return {}


def bands_shard(root: str, seed: int, s: int, n: int, layout: lsh.BucketLayout) -> dict:
    ids, sigs = shard_signatures(root, seed, s, n)
    w0, c0 = time.perf_counter(), time.process_time()
    written = lsh.write_bands(ids, sigs, CONFIG, layout, Path(root) / "shards" / shard_key(s))
    return {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0,
            "slices": sum(len(v) for v in written.values())}


def bucket_partition(root: str, key: str, layout: lsh.BucketLayout, shards: int) -> dict:
    """One bucket partition, as ``dedup_buckets`` runs it (every shard has slices in every partition):
    every shard's slice index from its footer, then ``bucket_candidates``."""
    group, hash_range = layout.parse(key)
    inputs = []
    for s in range(shards):
        bands = str(Path(root) / "shards" / shard_key(s) / lsh.bands_file(group))
        slices = lsh.partition_slices(lsh.read_slice_index(bands), layout, group, hash_range, CONFIG.num_bands)
        inputs.append(lsh.ShardInput(shard_key(s), bands, tuple(x[0] for x in slices)))
    out = Path(root) / "buckets" / key
    out.mkdir(parents=True)
    return lsh.bucket_candidates(inputs, lsh.read_row_groups, out)


def shingles_shard(root: str, s: int, keys: list[str], shard_docs: int) -> dict:
    """One shard's shingle sets, as ``dedup_shingles`` runs it: the rows every bucket partition wants
    from it, read once (counted: the rows wanted and the rows of the row groups that hold them, all
    decoded), one batch per partition."""
    folder = Path(root) / "shards" / shard_key(s)
    wanted = [lsh.wanted_rows(str(Path(root) / "buckets" / k / lsh.WANTED), shard_key(s)) for k in keys]
    out = Path(root) / "shingles" / shard_key(s)
    out.mkdir(parents=True)
    stats = lsh_pairs.write_shingles(str(folder / "docs.parquet"), wanted, CONFIG, out)
    (out / "meta.json").write_text(json.dumps(stats))  # what the pairs step reads from the manifest
    union = np.unique(np.concatenate(wanted))
    groups = np.unique(union // DOCS_ROW_GROUP)
    decoded = int(np.minimum(DOCS_ROW_GROUP, shard_docs - groups * DOCS_ROW_GROUP).sum())
    return {**stats, "rows_decoded": decoded}


def pairs_partition(root: str, key: str, index: int) -> dict:
    """One partition's candidates confirmed, as ``dedup_pairs`` runs it: each named shard's record
    (its average set size), then ``confirm_candidates`` reading the partition's batch of each."""
    candidates = pq.read_table(Path(root) / "buckets" / key / lsh.CANDIDATES)
    involved = sorted(set(candidates["u_shard"].to_pylist()) | set(candidates["v_shard"].to_pylist()))
    folders = {s: Path(root) / "shingles" / s for s in involved}
    records = [json.loads((f / "meta.json").read_text()) for f in folders.values()]
    avg = max([r["avg_set_bytes"] for r in records], default=1.0)
    out = Path(root) / "pairs" / key
    out.mkdir(parents=True)
    return lsh_pairs.confirm_candidates(
        candidates,
        lambda s: lsh_pairs.read_batch(str(folders[s] / lsh_pairs.SHINGLES), index),
        MIN_SIMILARITY,
        out,
        lsh_pairs.chunk_pairs_for(BUDGET_MB << 20, avg),
    )


def cluster_all(root: str, keys: list[str], shards: int) -> dict:
    out = Path(root) / "dedup"
    out.mkdir()
    pairs = [str(Path(root) / "pairs" / k / lsh.PAIRS) for k in keys]
    result = lsh.cluster(pairs, [shard_key(s) for s in range(shards)], out, memory_limit_mb=BUDGET_MB)
    result["removal_paths"] = {k: str(out / r["file"]) for k, r in result.pop("removals").items()}
    return result


def survivors_shard(root: str, s: int, removal: str | None) -> dict:
    docs = str(Path(root) / "shards" / shard_key(s) / "docs.parquet")
    return {"kept": lsh.survivor_rows(docs, removal).height}


def old_dedup(root: str, seed: int, shards: int, n: int) -> dict:
    signed = [dedup.ShardSignatures(shard_key(s), *shard_signatures(root, seed, s, n)) for s in range(shards)]
    w0, c0 = time.perf_counter(), time.process_time()
    result = dedup.deduplicate(signed, CONFIG, min_similarity=MIN_SIMILARITY)
    return {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0,
            "removed": result.num_exact_removed + result.num_near_removed,
            "exact_removed": result.num_exact_removed, "clusters": result.num_clusters}


# --- driver -----------------------------------------------------------------------------------------

class Stage:
    """The results of a stage's tasks."""

    def __init__(self, name: str, results: list[dict], elapsed: float) -> None:
        self.name, self.results, self.elapsed = name, results, elapsed

    def total(self, field: str) -> float:
        """Sum over the tasks run."""
        return sum(r[field] for r in self.results)

    def work(self, field: str) -> float:
        return self.total(field)

    def rss(self) -> tuple[float, float]:
        values = [r["rss_mb"] for r in self.results]
        return max(values), statistics.median(values)


def run_stage(pool: ProcessPoolExecutor, name: str, calls: list[tuple], log: Callable[[str], None]) -> Stage:
    t0 = time.perf_counter()
    futures = [pool.submit(task, *call) for call in calls]
    results = []
    for done, future in enumerate(as_completed(futures), 1):
        results.append(future.result())
        if done % 50 == 0 and done < len(calls):
            log(f"  {name}: {done}/{len(calls)} tasks, {time.perf_counter() - t0:.0f} s")
    stage = Stage(name, results, time.perf_counter() - t0)
    log(f"  {name}: {len(calls)} tasks in {stage.elapsed:.1f} s, max RSS {stage.rss()[0]:.0f} MB")
    return stage


def run_size(pool: ProcessPoolExecutor, n_docs: int, args: argparse.Namespace, texts: list[str],
             log: Callable[[str], None]) -> dict:
    shard_docs = min(n_docs, SHARD_DOCS)
    shards = -(-n_docs // shard_docs)
    if shards * shard_docs != n_docs:
        raise SystemExit(f"{n_docs} documents: not a whole number of shards of {shard_docs}")
    layout = lsh.BucketLayout(BAND_GROUPS, max(1, n_docs // HASHES_PER_PARTITION))
    planted, summary = plan(n_docs, shards, shard_docs, texts, args.seed)
    log(f"{n_docs:,} documents: {shards} shards, {len(layout.keys())} bucket partitions, "
        f"{summary['docs']:,} planted ({summary['clusters']:,} clusters)")
    root = tempfile.mkdtemp(prefix="phi-bench-scale-", dir=args.work_dir)
    try:
        stages = {"prep": run_stage(pool, "prep", [(prep_shard, root, args.seed, s, shard_docs, planted[s])
                                                   for s in range(shards)], log)}
        del planted
        stages["bands"] = run_stage(pool, "bands", [(bands_shard, root, args.seed, s, shard_docs, layout)
                                                    for s in range(shards)], log)
        keys = layout.keys()
        stages["buckets"] = run_stage(pool, "buckets", [(bucket_partition, root, k, layout, shards)
                                                        for k in keys], log)
        stages["shingles"] = run_stage(pool, "shingles", [(shingles_shard, root, s, keys, shard_docs)
                                                          for s in range(shards)], log)
        stages["pairs"] = run_stage(pool, "pairs", [(pairs_partition, root, k, i) for i, k in enumerate(keys)],
                                    log)
        stages["clusters"] = run_stage(pool, "clusters", [(cluster_all, root, keys, shards)], log)
        removals = stages["clusters"].results[0]["removal_paths"]
        stages["survivors"] = run_stage(pool, "survivors", [
            (survivors_shard, root, s, removals.get(shard_key(s))) for s in range(shards)], log)
        if n_docs <= args.old_max:
            stages["old"] = run_stage(pool, "old", [(old_dedup, root, args.seed, shards, shard_docs)], log)
        disk = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"n": n_docs, "shards": shards, "layout": layout, "planted": summary, "stages": stages,
            "disk_mb": disk / 1e6}


STAGE_NOTES = {
    "prep": "data generation (not dedup): docs.parquet + planted signatures",
    "bands": "write_bands (ids read and signatures rebuilt before the timer)",
    "buckets": "slice index per shard, bucket_candidates (candidate pairs and the rows they need)",
    "shingles": "wanted_rows from every partition, write_shingles (candidate rows read once, one batch per "
                "partition)",
    "pairs": "each shard's record, confirm_candidates (its batch of each shard, exact Jaccard)",
    "clusters": "cluster (DuckDB, memory_limit 2048 MB, 2 threads)",
    "survivors": "survivor_rows",
    "old": "dedup.deduplicate, all signatures in one process (loading them before the timer)",
}
DEDUP_STAGES = ("bands", "buckets", "shingles", "pairs", "clusters", "survivors")


def stage_rows(run: dict) -> list[list[str]]:
    rows = []
    for name, stage in run["stages"].items():
        top, mid = stage.rss()
        note = STAGE_NOTES[name]
        tasks, wall, cpu = str(len(stage.results)), f"{stage.work('wall'):.1f}", f"{stage.work('cpu'):.1f}"
        if name == "buckets":
            counts = [int(stage.total(k)) for k in ("candidates", "candidate_rows")]
            note += f"; {counts[0]:,} candidate pairs naming {counts[1]:,} rows"
        if name == "shingles":
            wanted, decoded = stage.total("candidate_rows"), stage.total("rows_decoded")
            written = int(stage.total("rows_written"))
            note += (f"; {int(wanted):,} candidate rows read once ({int(decoded):,} rows of the row groups "
                     f"holding them decoded, {decoded / max(1, wanted):,.0f}x), {written:,} written over the "
                     "batches")
        if name == "pairs":
            counts = [int(stage.total(k)) for k in ("candidates", "confirmed", "exact")]
            note += f"; {counts[0]:,} candidates, {counts[1]:,} confirmed ({counts[2]:,} exact)"
        rss = [f"{top:.0f}", f"{mid:.0f}"]
        if name == "clusters":
            r = stage.results[0]
            note += (f"; {r['num_pairs']:,} pairs, {r['num_clusters']:,} clusters, removed "
                     f"{r['num_exact_removed']:,} exact + {r['num_near_removed']:,} near, "
                     f"{r['component_rounds']} rounds")
        if name == "survivors":
            note += f"; {int(stage.total('kept')):,} kept"
        if name == "old":
            r = stage.results[0]
            note += f"; removed {r['removed']:,} ({r['exact_removed']:,} exact), {r['clusters']:,} clusters"
        rows.append([name, tasks, wall, cpu, f"{stage.elapsed:.1f}", *rss, note])
    t, stages = totals(run), [run["stages"][s] for s in DEDUP_STAGES]
    rows.append([f"total ({len(DEDUP_STAGES)} dedup stages)", str(sum(len(s.results) for s in stages)),
                 f"{t['wall']:.1f}", f"{t['cpu']:.1f}", f"{sum(s.elapsed for s in stages):.1f}",
                 f"{t['rss']:.0f}", "-",
                 f"{' + '.join(DEDUP_STAGES)}; {run['disk_mb']:.0f} MB on disk"])
    return rows


def totals(run: dict) -> dict:
    return {"wall": sum(run["stages"][s].work("wall") for s in DEDUP_STAGES),
            "cpu": sum(run["stages"][s].work("cpu") for s in DEDUP_STAGES),
            "rss": max(run["stages"][s].rss()[0] for s in DEDUP_STAGES)}


def summary_rows(runs: list[dict], baseline: float, old_max: float) -> list[list[str]]:
    rows = []
    for run in runs:
        t, stages = totals(run), run["stages"]
        removed = sum(stages["clusters"].results[0][k] for k in ("num_exact_removed", "num_near_removed"))
        planted = run["planted"]
        if "old" in stages:
            old = stages["old"].results[0]
            old_cells = [f"{old['wall']:.1f}", f"{old['cpu']:.1f}", f"{old['rss_mb']:.0f}",
                         f"{old['removed']:,}"]
        else:
            old_cells = ["skipped (> --old-max)", "-", est_old(runs, baseline, run["n"]), "-"]
        rows.append([f"{run['n']:.0e}", str(run["shards"]), str(len(run["layout"].keys())),
                     f"{planted['docs']:,} ({planted['exact_copies'] + planted['near_similar']:,})",
                     f"{t['wall']:.1f}", f"{t['cpu']:.1f}", f"{t['rss']:.0f}", f"{removed:,}", *old_cells])
    return rows


def est_old(runs: list[dict], baseline: float, n: int) -> str:
    """The single-process dedup's peak at ``n``, extrapolated linearly above the idle task from the
    largest size it ran at."""
    ran = [r for r in runs if "old" in r["stages"]]
    if not ran:
        return f"signatures alone ~{n * CONFIG.num_hashes * 4 / 1e6:,.0f} MB"
    ref = max(ran, key=lambda r: r["n"])
    peak = ref["stages"]["old"].results[0]["rss_mb"]
    estimate = (baseline + (peak - baseline) * n / ref["n"]) / 1024
    return f"est. ~{estimate:.1f} GB ({n / ref['n']:g} x its {ref['n']:.0e} peak above the idle task)"


def goal_rows(runs: list[dict]) -> list[list[str]]:
    by_n = {r["n"]: totals(r) for r in runs}
    if 10**6 not in by_n or 10**7 not in by_n:
        return []
    a, b = by_n[10**6], by_n[10**7]
    rss = b["rss"] / a["rss"]
    wall, cpu = b["wall"] / (10 * a["wall"]), b["cpu"] / (10 * a["cpu"])
    return [
        ["per-task peak memory flat (within 10%) from 1e6 to 1e7", "max per-task peak RSS 1e7 / 1e6",
         f"{b['rss']:.0f} / {a['rss']:.0f} MB = {rss:.2f}", "met" if rss <= 1.1 else "missed"],
        ["total work within 1.2x of linear", "sum of task wall s 1e7 / (10 x 1e6)",
         f"{b['wall']:.0f} / (10 x {a['wall']:.1f}) = {wall:.2f}", "met" if wall <= 1.2 else "missed"],
        ["(the same on CPU time)", "sum of task CPU s 1e7 / (10 x 1e6)",
         f"{b['cpu']:.0f} / (10 x {a['cpu']:.1f}) = {cpu:.2f}", "met" if cpu <= 1.2 else "missed"],
    ]


def parse_size(text: str) -> int:
    value = float(text)
    if value < 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"not a document count: {text}")
    return int(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e5,1e6,1e7",
                    help="document counts, comma-separated (default 1e5,1e6,1e7)")
    ap.add_argument("--workers", type=int, default=2, help="tasks run side by side (default 2)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the generated signatures and the planted copies (default 0)")
    ap.add_argument("--old-max", type=parse_size, default=10**6,
                    help="largest size at which the single-process deduplicate runs (default 1e6; 0: never)")
    ap.add_argument("--work-dir", default=None, help="where the shards are written (default: the temp dir)")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.workers < 1 or min(sizes) < 1:
        raise SystemExit("--workers and --sizes must be >= 1")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    texts = text_pool(args.seed)
    # The forkserver imports this module and what it imports once; each task is a fork of it. (It must
    # be found by name: Python 3.11's forkserver ignores the parent's sys.path and never preloads __main__.)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"),
                                                             os.environ.get("PYTHONPATH")]))
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["curation_scale"])
    runs = []
    with ProcessPoolExecutor(args.workers, mp_context=context, max_tasks_per_child=1) as pool:
        idles = [pool.submit(task, idle).result() for _ in range(3)]
        if not all(r["preloaded"] for r in idles):
            log("warning: the forkserver did not preload this module; every task imports it again")
        baseline = statistics.median(r["rss_mb"] for r in idles)
        for n in sizes:
            runs.append(run_size(pool, n, args, texts, log))

    print(f"Python {platform.python_version()}, numpy {np.__version__}, pyarrow {pa.__version__}, polars "
          f"{pl.__version__}, duckdb {duckdb.__version__}; {os.cpu_count()} CPUs, {args.workers} workers, "
          f"one child process per task (forkserver, max_tasks_per_child=1); seed {args.seed}; "
          f"whole run {time.perf_counter() - started:.0f} s")
    print(f"shards of {SHARD_DOCS:,} documents; BucketLayout({BAND_GROUPS}, "
          f"max(1, N // {HASHES_PER_PARTITION:,})); "
          f"min_similarity {MIN_SIMILARITY}; text pool: {len(texts):,} stdlib chunks; idle task (the "
          f"forkserver's imports) peak RSS {baseline:.0f} MB")
    print("wall s / cpu s: sums over the stage's tasks of the timed part; elapsed: the stage with "
          f"{args.workers} workers; RSS: peak per task, MB\n")
    for run in runs:
        p = run["planted"]
        print(f"{run['n']:,} documents, {run['shards']} shards, {run['layout']}: {p['docs']:,} planted "
              f"({p['clusters']:,} originals + {p['exact_copies']:,} exact and {p['near_copies']:,} near "
              "copies, "
              f"{p['near_similar']:,} of them with exact Jaccard >= {MIN_SIMILARITY} to their original, "
              f"{p['text_mb']:.1f} MB of text)\n")
        print(format_table(["stage", "tasks", "wall s", "cpu s", "elapsed s", "max RSS", "median RSS", "note"],
                           stage_rows(run), args.markdown) + "\n")
    print(format_table(["documents", "shards", "partitions", "planted (copies J>=0.7)", "staged wall s",
                        "staged cpu s", "staged max RSS MB", "staged removed", "old wall s", "old cpu s",
                        "old RSS MB", "old removed"], summary_rows(runs, baseline, args.old_max),
                       args.markdown))
    goals = goal_rows(runs)
    if goals:
        print()
        print(format_table(["goal", "measure", "value", "verdict"], goals, args.markdown))


if __name__ == "__main__":
    main()
