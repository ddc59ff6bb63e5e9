"""MinHash signatures on ONE core against datatrove, and the quality of phi-factory's fuzzy dedup.

Corpus: the embedded corpora of a fresh install: the running Python's standard library (``*.py``,
``stdlib_files`` with one shard), every installed package's long description and the pydoc topics.
Empty texts and exact duplicate texts are dropped, so every pair left is a fuzzy question. Planted
near duplicates: ``--planted`` documents with at least 100 words get an edited copy (a third of them
two), made by substituting, inserting and deleting whitespace tokens at random positions, with the
number of edits aimed at a Jaccard similarity drawn uniformly from [0.5, 0.98]. Truth is the exact
Jaccard similarity of the 5-word shingle sets (``normalize`` words, as ``signatures`` uses), computed
for all pairs of the corpus (a sparse product of the document x shingle matrix), natural pairs included.

1. Throughput, same documents, one core: ``signatures`` (texts in memory to the signature matrix)
   against datatrove 0.10.1's ``MinhashDedupSignature`` stage, n_grams=5, num_buckets=14,
   hashes_per_bucket=8, run by ``--peer-python`` (``benchmarks/peers/datatrove_minhash.py``, pinned
   to the same CPU; it also writes and sorts its signature files, part of its stage). Ours: one
   warm-up, ``--repeats`` passes, median; datatrove: a 20-document warm-up and ``--peer-repeats`` passes.
   datatrove runs twice: as shipped (spaCy word tokenizer, its default for English) and with
   ``str.split`` as its tokenizer, which shows how much of its time is tokenization.
2. Quality of ``deduplicate`` (corpus split round-robin into 4 shards) with ``min_similarity`` 0.7
   (its default), 0.75 and None (plain LSH components), and of the staged dedup (``lsh`` and
   ``lsh_pairs``, what the ``dedup_{code,web}_*`` assets run) on the same 4 shards, as local
   temp files (docs.parquet per shard, as tests/test_lsh.py ``run_staged``): ``write_bands``, the 2
   bucket partitions of ``BucketLayout(1, 2)`` (the ci/demo layout: candidates, each shard's shingle
   sets of the rows they need, each candidate pair confirmed on the exact Jaccard of its shingle
   sets), at 0.7, 0.75 and 0.8 (``PairsConfig``'s default), then ``cluster`` (connected components
   of the confirmed pairs). Truth pairs: exact Jaccard >= 0.8;
   recall = share of them placed in one cluster. Precision = share of the pairs placed in one cluster whose
   exact Jaccard is >= 0.7: 14 bands of 8 rows put the LSH threshold at (1/14)^(1/8) ~ 0.72, so pairs
   between 0.7 and 0.8 are the expected grey zone of the method, and only pairs below 0.7 count as
   errors. Also: the share of removed documents whose exact Jaccard with their survivor is >= 0.7,
   and the truth pairs of which both documents are kept (near duplicates left in the output). The
   speed table also times the staged path at its default from the signatures (bands, buckets,
   shingles, pairs, clusters; the docs files are written before the timer).
3. Planted pairs by exact Jaccard: how often they end up in one cluster (also by the staged path at
   its default), next to the LSH candidate probability 1 - (1 - s^8)^14, and the error of the signature
   estimate of Jaccard.

Run from the repository root:  .venv/bin/python benchmarks/minhash.py [--markdown] [--repeats N]
[--peer-repeats N] [--peer-python PATH] [--planted N] [--seed S] [--limit-docs N] [--no-peer]
(about 2.5 minutes on a shared core, most of it datatrove)
"""

from __future__ import annotations

import os

# One core: limit thread pools before any library that owns one is imported, then pin the process.
os.environ["POLARS_MAX_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
CPU = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {CPU})

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

pa.set_cpu_count(1)
pa.set_io_thread_count(1)

import scipy.sparse as sp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, without install
import peer_env  # noqa: E402  (benchmarks/, the script's own folder)
from table import format_table  # noqa: E402

from phi_assets.common.profiles import Sizes  # noqa: E402
from phi_assets.curation import lsh, lsh_pairs  # noqa: E402
from phi_assets.curation.dedup import ShardSignatures, deduplicate  # noqa: E402
from phi_assets.curation.dedup_assets import PairsConfig  # noqa: E402
from phi_assets.curation.minhash import MinHashConfig, normalize, signatures  # noqa: E402
from phi_assets.ingest.embedded import package_doc_records, pydoc_topic_records, stdlib_files  # noqa: E402
from phi_assets.ingest.readers import Record  # noqa: E402
from phi_assets.ingest.schema import doc_id  # noqa: E402

CONFIG = MinHashConfig()  # 5-word shingles, 14 bands x 8 rows, seed 1: FineWeb's parameters
SHARDS = 4  # the corpus split round-robin: shard-k row r is text k + 4 r
LAYOUT = lsh.BucketLayout(1, 2)  # the staged dedup's bucket partitions, as the ci and demo presets
STAGED_MIN_SIMILARITY = PairsConfig().min_similarity  # the dedup_*_pairs assets' default (timed)
STAGED_ALSO = tuple(t for t in (0.7, 0.75, 0.8) if t != STAGED_MIN_SIMILARITY)  # quality only


def natural_corpus() -> list[str]:
    texts = [Path(p).read_text(encoding="utf-8", errors="replace")
             for p, _ in stdlib_files(0, Sizes(num_code_shards=1))]
    records = [*package_doc_records(0, Sizes(num_web_shards=1)), *pydoc_topic_records()]
    texts += [r.text for r in records if isinstance(r, Record) and isinstance(r.text, str)]
    seen: set[str] = set()
    out = []
    for t in texts:
        if normalize(t) and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def shingles(text: str) -> set[str]:
    words = normalize(text).split()
    if len(words) < CONFIG.shingle_words:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + CONFIG.shingle_words]) for i in range(len(words) - CONFIG.shingle_words + 1)}


def plant(texts: list[str], count: int, rng: random.Random) -> list[tuple[int, int, float]]:
    """Append edited copies to ``texts``; returns (base index, copy index, target Jaccard)."""
    vocab = [w for t in rng.sample(texts, min(200, len(texts))) for w in t.split()[:200]]
    bases = [i for i, t in enumerate(texts) if len(normalize(t).split()) >= 100]
    planted = []
    for base in rng.sample(bases, min(count, len(bases))):
        for _ in range(2 if rng.random() < 1 / 3 else 1):
            target = rng.uniform(0.5, 0.98)
            tokens = texts[base].split()
            # An isolated edit changes about 5 shingles per ~1.4 tokens (code tokens hold several words).
            edits = max(1, round(len(tokens) * 1.4 * (1 - target) / (CONFIG.shingle_words * (1 + target))))
            for _ in range(edits):
                i, op = rng.randrange(len(tokens)), rng.random()
                if op < 0.5:
                    tokens[i] = rng.choice(vocab)
                elif op < 0.75:
                    tokens.insert(i, rng.choice(vocab))
                elif len(tokens) > 1:
                    del tokens[i]
            texts.append(" ".join(tokens))
            planted.append((base, len(texts) - 1, target))
    return planted


def exact_jaccard(texts: list[str]) -> tuple[dict[tuple[int, int], float], int]:
    """Exact Jaccard similarity of every pair (i < j) with similarity >= 0.3 (a sparse product of
    the document x shingle matrix finds all pairs that share a shingle), and how many share one."""
    vocab: dict[str, int] = {}
    cols = [np.fromiter((vocab.setdefault(s, len(vocab)) for s in shingles(t)), dtype=np.int64) for t in texts]
    rows = np.repeat(np.arange(len(texts)), [len(c) for c in cols])
    x = sp.csr_matrix((np.ones(len(rows), np.int32), (rows, np.concatenate(cols))),
                      shape=(len(texts), len(vocab)))
    inter = sp.triu(x @ x.T, k=1).tocoo()
    size = np.asarray(x.sum(axis=1)).ravel()
    jac = inter.data / (size[inter.row] + size[inter.col] - inter.data)
    keep = np.flatnonzero(jac >= 0.3)
    return {(int(inter.row[k]), int(inter.col[k])): float(jac[k]) for k in keep}, inter.nnz


def run_peer(python: str, texts: list[str], repeats: int, tokenizer: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="phi-bench-minhash-") as tmp:
        path = Path(tmp) / "docs.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        cmd = [python, str(ROOT / "benchmarks" / "peers" / "datatrove_minhash.py"), "--input", str(path),
               "--cpu", str(CPU), "--repeats", str(repeats), "--tokenizer", tokenizer,
               "--n-grams", str(CONFIG.shingle_words), "--num-buckets", str(CONFIG.num_bands),
               "--hashes-per-bucket", str(CONFIG.rows_per_band)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    if done.returncode != 0:
        return {"error": f"FAILED (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed(fn, repeats: int) -> tuple[list[float], list[float], object]:
    result = fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return wall, cpu, result


def cluster_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        if label is not None:
            groups.setdefault(label, []).append(i)
    return {(a, b) for g in groups.values() for k, a in enumerate(g) for b in g[k + 1:]}


def write_docs(root: Path, ids: list[str], texts: list[str]) -> dict[str, str]:
    """Each shard's docs.parquet (id, text), as the quality-filter step leaves it; shard -> path."""
    docs = {}
    for k in range(SHARDS):
        folder = root / f"shard-{k}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"id": ids[k::SHARDS], "text": texts[k::SHARDS]}), folder / "docs.parquet")
        docs[f"shard-{k}"] = str(folder / "docs.parquet")
    return docs


def staged(docs: dict[str, str], ids: list[str], sigs: np.ndarray, out: Path, min_similarity: float) -> dict:
    """The stages of ``lsh`` on local files (as tests/test_lsh.py runs them): bands per shard, every
    partition of ``LAYOUT`` (candidates, shingle sets per shard, pairs confirmed on exact Jaccard),
    clusters. Returns cluster's result."""
    shards = {}
    for k, shard in enumerate(sorted(docs)):
        folder = out / "bands" / shard
        folder.mkdir(parents=True)
        lsh.write_bands(ids[k::SHARDS], sigs[k::SHARDS], CONFIG, LAYOUT, folder)
        shards[shard] = (docs[shard], str(folder))
    pair_files, _ = lsh_pairs.run_local(shards, LAYOUT, CONFIG, min_similarity, out)
    (out / "dedup").mkdir()
    return lsh.cluster(pair_files, sorted(docs), out / "dedup")


def staged_decisions(docs: dict[str, str], out: Path, result: dict, n: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Per text index: cluster id (None: in no cluster), kept, survivor's text index; and whether the
    survivors of every shard (``survivor_rows``) and the removals add up to the corpus."""
    cluster_of, kept, survivor = np.full(n, None, dtype=object), np.ones(n, dtype=bool), np.arange(n)
    con = duckdb.connect(str(out / "dedup" / lsh.CLUSTER_DB), read_only=True)
    try:
        members = con.execute("""SELECT shard, row, cluster_id, is_survivor, survivor_shard, survivor_row
            FROM cluster_members""").fetchall()
    finally:
        con.close()
    for shard, row, cluster_id, is_survivor, survivor_shard, survivor_row in members:
        i = int(shard.removeprefix("shard-")) + SHARDS * row
        cluster_of[i], kept[i] = cluster_id, is_survivor
        survivor[i] = int(survivor_shard.removeprefix("shard-")) + SHARDS * survivor_row
    removals = result["removals"]
    survivors = sum(lsh.survivor_rows(path, str(out / "dedup" / removals[shard]["file"]) if shard in removals
                                      else None).height for shard, path in docs.items())
    removed = result["num_exact_removed"] + result["num_near_removed"]
    return cluster_of, kept, survivor, survivors + removed == n == int(kept.sum()) + removed


def throughput_rows(peers: dict[str, dict], ours: tuple[list[float], list[float]],
                    dedup: tuple[list[float], list[float]], stages: tuple[list[float], list[float]],
                    docs: int, mbytes: float) -> list[list[str]]:
    def row(name: str, n: int, wall: float, cpu: float, mb: str, ratios: list[str], note: str) -> list[str]:
        return [name, str(n), f"{wall:.3f}", f"{cpu:.3f}", f"{n / wall:,.0f}", mb, *ratios, note]

    rows, base = [], None
    for tokenizer, peer in peers.items():
        name = "datatrove MinhashDedupSignature" + (" (str.split)" if tokenizer == "whitespace" else "")
        if "error" in peer:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", peer["error"]])
            continue
        wall, cpu = statistics.median(peer["seconds"]), statistics.median(peer["cpu_seconds"])
        base = base or (wall, cpu)  # the first (default tokenizer) run is the baseline
        rows.append(row(name, peer["docs"], wall, cpu, f"{mbytes / wall:.2f}",
                        [f"{base[0] / wall:.2f}x", f"{base[1] / cpu:.2f}x"],
                        f"datatrove {peer['datatrove']}, words by "
                        + ("spaCy (its default)" if tokenizer == "default" else "str.split, not spaCy")
                        + f", 64-bit xxhash; writes + sorts {peer['output_bytes'] / 1e6:.1f} MB of bucket files"
                        ))
    wall, cpu = statistics.median(ours[0]), statistics.median(ours[1])
    ratios = [f"{base[0] / wall:.1f}x", f"{base[1] / cpu:.1f}x"] if base else ["-", "-"]
    rows.append(row("phi signatures", docs, wall, cpu, f"{mbytes / wall:.2f}", ratios,
                    f"uint32 ({docs}, {CONFIG.num_hashes}), in memory"))
    rows.append(row("phi deduplicate (from signatures)", docs, statistics.median(dedup[0]),
                    statistics.median(dedup[1]), "-", ["-", "-"],
                    "corpus stage: exact + LSH + components, 4 shards"))
    note = (f"write_bands + {len(LAYOUT.keys())} bucket partitions (candidates; shingle sets per shard; "
            f"exact Jaccard >= {STAGED_MIN_SIMILARITY}) + cluster (DuckDB), 4 shards, temp files")
    rows.append(row("phi lsh stages (from signatures)", docs, statistics.median(stages[0]),
                    statistics.median(stages[1]), "-", ["-", "-"], note))
    return rows


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed passes of ours (median)")
    ap.add_argument("--peer-repeats", type=int, default=1, help="timed passes of datatrove (median)")
    peer_env.add_argument(ap, "datatrove and spaCy")
    ap.add_argument("--planted", type=int, default=300, help="documents that get edited copies")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the planted edits")
    ap.add_argument("--no-peer", action="store_true", help="skip datatrove (quality tables only)")
    ap.add_argument("--limit-docs", type=int, default=None, help="only the first N natural documents")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    return ap.parse_args()


def time_staged(ids: list[str], texts: list[str], sigs: np.ndarray, repeats: int) -> tuple[tuple, dict]:
    """The staged path timed at ``STAGED_MIN_SIMILARITY``, and run once at each of ``STAGED_ALSO`` (for
    quality only): ((wall, cpu), {threshold: (result, (cluster_of, kept, survivor, reconciles))})."""
    with tempfile.TemporaryDirectory(prefix="phi-bench-lsh-") as tmp:
        docs, runs = write_docs(Path(tmp) / "docs", ids, texts), iter(range(repeats + 1))

        def run_staged() -> tuple[Path, dict]:
            out = Path(tmp) / f"run-{next(runs)}"
            return out, staged(docs, ids, sigs, out, STAGED_MIN_SIMILARITY)

        s_wall, s_cpu, (s_out, s_result) = timed(run_staged, repeats)
        runs_by = {STAGED_MIN_SIMILARITY: (s_result, staged_decisions(docs, s_out, s_result, len(texts)))}
        for threshold in STAGED_ALSO:
            out = Path(tmp) / f"min-similarity-{threshold}"
            result = staged(docs, ids, sigs, out, threshold)
            runs_by[threshold] = (result, staged_decisions(docs, out, result, len(texts)))
    return (s_wall, s_cpu), runs_by


def quality_row(label: str, jac: dict, truth: set, cluster_of: np.ndarray, kept: np.ndarray,
                survivor: np.ndarray, clusters: int, reconciles: bool) -> tuple[list[str], set]:
    """One row of the quality table, and the pairs the run placed in one cluster."""
    found = cluster_pairs(cluster_of)
    good, hits = sum(jac.get(p, 0.0) >= 0.7 for p in found), len(truth & found)
    left = sum(kept[a] and kept[b] for a, b in truth)
    removed = np.flatnonzero(~kept)
    fair = sum(jac.get((min(i, survivor[i]), max(i, survivor[i])), 0.0) >= 0.7 for i in removed)
    return [label, str(len(truth)), str(hits), f"{hits / max(1, len(truth)):.3f}", str(len(found)),
            str(good), f"{good / max(1, len(found)):.3f}", f"{fair / max(1, len(removed)):.3f}",
            str(left), str(clusters), str(len(removed)), str(reconciles)], found


def in_process(shards: list[ShardSignatures], order: np.ndarray, n: int, threshold: float | None):
    """``deduplicate`` over the shards, its decisions put back in text order: (result, cluster of each
    text, kept, the survivor's text index)."""
    result = deduplicate(shards, CONFIG, min_similarity=threshold)
    decisions = result.decisions.sort("shard", "row")
    cluster_of, kept = np.empty(n, dtype=object), np.empty(n, dtype=bool)
    cluster_of[order], kept[order] = decisions["cluster_id"].to_numpy(), decisions["keep"].to_numpy()
    survivor = np.empty(n, dtype=np.int64)
    # shard-k row r holds text k + 4 r (round-robin split)
    shard_no = decisions["survivor_shard"].str.slice(len("shard-")).cast(int).fill_null(0).to_numpy()
    survivor[order] = shard_no + SHARDS * decisions["survivor_row"].fill_null(0).to_numpy()
    return result, cluster_of, kept, survivor


def quality_rows(shards: list[ShardSignatures], order: np.ndarray, n: int, jac: dict, truth: set,
                 staged_runs: dict) -> tuple[list[list[str]], dict]:
    """The quality table (in-process at 0.7, 0.75 and None, then the staged path at each threshold), and
    the same-cluster pairs of each run."""
    quality, found_by = [], {}
    for label, threshold in (("min_similarity 0.7 (default)", 0.7), ("min_similarity 0.75", 0.75),
                             ("None (plain LSH components)", None)):
        result, cluster_of, kept, survivor = in_process(shards, order, n, threshold)
        row, found_by[threshold] = quality_row(label, jac, truth, cluster_of, kept, survivor,
                                               result.num_clusters, result.reconciles)
        quality.append(row)
    for threshold, (result, (cluster_of, kept, survivor, ok)) in sorted(staged_runs.items()):
        default = " (default)" if threshold == STAGED_MIN_SIMILARITY else ""
        label = f"lsh stages, exact Jaccard >= {threshold}{default}"
        row, found_by[f"staged {threshold}"] = quality_row(label, jac, truth, cluster_of, kept, survivor,
                                                           result["num_clusters"], ok)
        quality.append(row)
    return quality, found_by


def planted_rows(planted: list, jac: dict, sigs: np.ndarray, found_by: dict) -> tuple[list[list[str]], int]:
    """Planted pairs by exact Jaccard range: how often each run put them in one cluster, the LSH candidate
    probability at the midpoint, the signature estimate's error; and how many fell below J = 0.5."""
    edges = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    pairs_planted = [(min(a, b), max(a, b)) for a, b, _ in planted]
    rows = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        sel = [p for p in pairs_planted if lo <= jac.get(p, 0.0) < hi or (hi == 1.0 and jac.get(p) == 1.0)]
        err = [abs(float(np.mean(sigs[a] == sigs[b])) - jac[a, b]) for a, b in sel]
        same = [f"{sum(p in found_by[t] for p in sel) / max(1, len(sel)):.3f}"
                for t in (0.7, 0.75, None, f"staged {STAGED_MIN_SIMILARITY}")]
        rows.append([f"[{lo:.1f}, {hi:.1f}{']' if hi == 1.0 else ')'}", str(len(sel)), *same,
                     f"{1 - (1 - ((lo + hi) / 2) ** 8) ** 14:.3f}",
                     f"{statistics.mean(err):.3f}" if err else "-"])
    return rows, sum(jac.get(p, 0.0) < 0.5 for p in pairs_planted)


def main() -> None:
    args = parse_args()
    if not args.no_peer:
        peer_env.require(args.peer_python, ", or pass --no-peer")
    texts = natural_corpus()[: args.limit_docs]
    natural = len(texts)
    planted = plant(texts, args.planted, random.Random(args.seed))
    mbytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    jac, sharing = exact_jaccard(texts)
    truth = {pair for pair, j in jac.items() if j >= 0.8}

    peers = {tok: run_peer(args.peer_python, texts, args.peer_repeats, tok) if not args.no_peer
             else {"error": "skipped (--no-peer)"} for tok in ("default", "whitespace")}
    wall, cpu, sigs = timed(lambda: signatures(texts, CONFIG), args.repeats)
    ids = [doc_id(t) for t in texts]
    shards = [ShardSignatures(f"shard-{k}", ids[k::SHARDS], sigs[k::SHARDS]) for k in range(SHARDS)]
    order = np.concatenate([np.arange(k, len(texts), SHARDS) for k in range(SHARDS)])  # decisions row -> text
    d_wall, d_cpu, _ = timed(lambda: deduplicate(shards, CONFIG), args.repeats)
    staged_time, staged_runs = time_staged(ids, texts, sigs, args.repeats)
    speed = throughput_rows(peers, (wall, cpu), (d_wall, d_cpu), staged_time, len(texts), mbytes)
    quality, found_by = quality_rows(shards, order, len(texts), jac, truth, staged_runs)
    buckets, below = planted_rows(planted, jac, sigs, found_by)

    print(f"Python {platform.python_version()}, numpy {np.__version__}; pinned to CPU {CPU} "
          f"(allowed after pinning: {sorted(os.sched_getaffinity(0))}); repeats: ours {args.repeats}, "
          f"datatrove {args.peer_repeats}; planted-edit seed {args.seed}")
    print(f"corpus: {natural} natural documents (stdlib, package docs, pydoc topics; no empty or identical "
          f"texts) + {len(planted)} planted edits of {len({a for a, _, _ in planted})} of them = "
          f"{len(texts)} docs, {mbytes:.1f} MB; {sharing} pairs share a shingle, {len(truth)} pairs have "
          f"exact Jaccard >= 0.8\n")
    print(format_table(["stage", "docs", "median s", "cpu s", "docs/s", "MB/s", "x datatrove",
                        "x datatrove (cpu)", "note"],
                       speed, args.markdown) + "\n")
    print(format_table(["dedup", "truth pairs (J>=0.8)", "same cluster", "recall", "same-cluster pairs",
                        "of them J>=0.7", "precision", "removed with J>=0.7 to survivor",
                        "truth pairs both kept", "clusters", "removed", "reconciles"],
                       quality, args.markdown) + "\n")
    print(format_table(["planted pairs, exact J", "pairs", "same cluster (0.7)", "same cluster (0.75)",
                        "same cluster (None)", f"same cluster (lsh stages {STAGED_MIN_SIMILARITY})",
                        "LSH P(candidate) at midpoint", "mean abs(estimate - J)"],
                       buckets, args.markdown))
    if below:
        print(f"\n({below} planted pairs came out below J = 0.5 and are in no row)")


if __name__ == "__main__":
    main()
