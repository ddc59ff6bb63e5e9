"""Lookups in the durable LLM request cache on ONE core: the indexed ``RequestCache`` against a scan.

Cache: ``--entries`` rows (default 1,000,000) in ``--segments`` segments (default 100 of 10,000),
in a local ``ArtifactStore`` under a temporary directory. Rows are generated directly with pyarrow
(not through an engine) and look like real ones: a sha256 hex key, a chat request as JSON (about
190 characters), one completion of 20 to 60 words drawn from a 150-word vocabulary (numbered, so
no two are equal), token counts, finish reason. Each segment is
written by ``RequestCache.put_table``, i.e. with its key-index sidecar and row groups of
``ROW_GROUP_ROWS`` rows, as the engine's ``put`` writes them.

Query: ``--lookups`` keys (default 1,000), half of them stored (drawn at random over all segments),
half absent. Cases, all answering the same query from the same files:

- baseline: what a user would otherwise write, and what ``RequestCache.lookup`` did before the
  index: ``pyarrow.dataset`` over the directory with the filter ``key isin wanted``, rows to
  Python dicts. It reads every segment. It projects the same columns the cache reads back
  (``RESULT_COLUMNS``: not the request JSON, model or time; the old lookup read all ten).
- cold lookup: a new ``RequestCache`` (a new process, in effect): lists the directory, reads the
  100 sidecars, builds the sorted in-memory index, then looks up.
- warm lookup: the same instance again (the index is loaded; a directory listing finds nothing
  new): binary search, then only the row groups that hold the keys.
- warm lookup of 10 keys: the cost follows the number of keys, not the size of the cache.
- cold lookup, old layout: the sidecars deleted first, so the index is built from the segments'
  ``key`` columns (and the sidecars written back), the one-off cost for a home written before.

Each case gets an untimed warm-up (which also fills the OS page cache), then ``--repeats`` timed
passes, round-robin across cases with the order rotated, ``gc.collect()`` before each; reported
are the median wall and CPU seconds and ``x base`` = baseline median / case median. Every case
must return the same keys and texts as the baseline ("agree"). Memory: the index's arrays
(``KeyIndex.nbytes``) and the peak of Python/numpy allocations (tracemalloc) while a cold lookup
builds it; pyarrow's own pool is not traced by tracemalloc, so its peak is given separately.

Run from the repository root:  .venv/bin/python benchmarks/llm_cache.py [--markdown] [--entries N]
[--segments S] [--lookups K] [--repeats R] [--seed S]   (about 1 minute at 1e6 entries)
"""

from __future__ import annotations

import os

# One core: limit thread pools before any library that owns one is imported, then pin the process.
os.environ["OMP_NUM_THREADS"] = "1"
CPU = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {CPU})

import argparse  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

pa.set_cpu_count(1)
pa.set_io_thread_count(1)

import pyarrow.dataset as pads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, without install
from table import format_table  # noqa: E402

from resources.artifact_store import ArtifactStore  # noqa: E402
from resources.llm.cache import INDEX_DIR, RESULT_COLUMNS, ROW_GROUP_ROWS, SCHEMA, RequestCache  # noqa: E402
from resources.llm.types import ModelRef  # noqa: E402

MODEL = ModelRef(name="bench-model", version="bench-v1")
VOCAB = ("the a function returns list of values sorted by key and loop stops when queue is empty so every "
         "worker gets one item at time while cache keeps results def return for in if else import class self "
         "print range len dict str int none true false yield with open file path read write error raise test "
         "assert value index count sum max min step first last next data model token text line code python "
         "example this that it uses calls each new old small large fast slow").split()
REQUEST = ('{{"messages": [{{"content": "Explain step {} of the algorithm in two sentences.", '
           '"role": "user"}}], "sampling": {{"max_tokens": 128, "n": 1, "seed": 0, "stop": [], '
           '"temperature": 0.0, "top_p": 1.0}}}}')


def key_of(i: int) -> str:
    return hashlib.sha256(f"bench-request-{i}".encode()).hexdigest()


def answer_pool(rng: random.Random, size: int = 20_000) -> list[str]:
    """Answers of 20 to 60 random words; row i uses one of them plus its number, so no two rows match."""
    return [" ".join(rng.choices(VOCAB, k=rng.randint(20, 60))) for _ in range(size)]


def segment_table(start: int, stop: int, pool: list[str]) -> pa.Table:
    n, ids = stop - start, range(start, stop)
    texts = [f"{pool[(i * 7919) % len(pool)]} ({i})" for i in ids]
    return pa.table({
        "key": [key_of(i) for i in ids],
        "model": pa.array([MODEL.name] * n),
        "request": [REQUEST.format(i) for i in ids],
        "texts": pa.array([[t] for t in texts], type=pa.list_(pa.string())),
        "num_tokens": pa.array([[len(t) // 5] for t in texts], type=pa.list_(pa.int32())),
        "finish_reasons": pa.array([["stop"]] * n, type=pa.list_(pa.string())),
        "num_prompt_tokens": pa.array([30 + i % 20 for i in ids], type=pa.int32()),
        "error": pa.nulls(n, pa.string()),
        "error_kind": pa.nulls(n, pa.string()),
        "created_at": pa.array(np.full(n, time.time())),
    }, schema=SCHEMA)


def fill(store: ArtifactStore, entries: int, segments: int, seed: int) -> float:
    pool, cache = answer_pool(random.Random(seed)), RequestCache(store)
    bounds = np.linspace(0, entries, segments + 1).astype(int)
    t0 = time.perf_counter()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        cache.put_table(MODEL, segment_table(int(a), int(b), pool))
    return time.perf_counter() - t0


def baseline(directory: str, wanted: list[str]) -> dict[str, str]:
    """The scan a user would write (and the cache's lookup before the index)."""
    dataset = pads.dataset(directory, format="parquet", schema=SCHEMA)
    table = dataset.to_table(columns=RESULT_COLUMNS, filter=pads.field("key").isin(wanted))
    return {row["key"]: row["texts"][0] for row in table.to_pylist()}


def texts(found: dict) -> dict[str, str]:
    return {k: r.text for k, r in found.items()}


def timed_round_robin(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    out = {name: {"wall": [], "cpu": [], "result": fn()} for name, fn in cases.items()}  # warm-up
    names = list(cases)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            out[name]["result"] = cases[name]()
            out[name]["cpu"].append(time.process_time() - c0)
            out[name]["wall"].append(time.perf_counter() - w0)
    return out


def old_layout_lookup(store: ArtifactStore, directory: str, wanted: list[str]) -> dict[str, str]:
    shutil.rmtree(f"{directory}/{INDEX_DIR}")  # timed too; small next to building the index
    return texts(RequestCache(store).lookup(MODEL, wanted))


def index_memory(store: ArtifactStore, wanted: list[str]) -> tuple[int, int, int, int]:
    """(index arrays in bytes, tracemalloc peak while a cold lookup builds it, pyarrow pool peak,
    entries indexed)."""
    gc.collect()
    tracemalloc.start()
    cache = RequestCache(store)
    cache.lookup(MODEL, wanted)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    index = cache._indexes[cache.directory(MODEL)]
    return index.nbytes, peak, pa.default_memory_pool().max_memory(), index.size


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000, help="cached rows in all")
    ap.add_argument("--segments", type=int, default=100, help="segments they are written in")
    ap.add_argument("--lookups", type=int, default=1000, help="keys per lookup, half of them stored")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per case (median)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the rows and the query")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    return ap.parse_args()


BASELINE = "baseline: dataset scan, filter key isin"


def main() -> None:
    args = parse_args()
    rng = random.Random(args.seed)
    present = [key_of(i) for i in rng.sample(range(args.entries), args.lookups // 2)]
    absent = [key_of(args.entries + i) for i in range(args.lookups - len(present))]
    wanted = present + absent
    rng.shuffle(wanted)
    few = present[:5] + absent[:5]
    with tempfile.TemporaryDirectory(prefix="phi-bench-llm-cache-") as tmp:
        store = ArtifactStore(root=f"{tmp}/artifacts")
        fill_s = fill(store, args.entries, args.segments, args.seed)
        directory = RequestCache(store).directory(MODEL)
        on_disk = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
        sidecars = sum(p.stat().st_size for p in Path(directory, INDEX_DIR).iterdir())
        warm = RequestCache(store)
        cases = {
            BASELINE: lambda: baseline(directory, wanted),
            "cold lookup (new RequestCache)": lambda: texts(RequestCache(store).lookup(MODEL, wanted)),
            "warm lookup (same RequestCache)": lambda: texts(warm.lookup(MODEL, wanted)),
            f"warm lookup, {len(few)} keys": lambda: texts(warm.lookup(MODEL, few)),
            "cold lookup, old layout (no sidecars)": lambda: old_layout_lookup(store, directory, wanted),
        }
        results = timed_round_robin(cases, args.repeats)
        nbytes, peak, arrow_peak, indexed = index_memory(store, wanted)
        counted = warm.count(MODEL)

    print(f"Python {platform.python_version()}, pyarrow {pa.__version__}, numpy {np.__version__}; pinned to "
          f"CPU {CPU} (allowed after pinning: {sorted(os.sched_getaffinity(0))}); repeats {args.repeats}")
    code = hashlib.sha256((ROOT / "resources/llm/cache.py").read_bytes()).hexdigest()[:12]
    print(f"code under test (sha256): cache.py {code}")
    print(f"cache: {args.entries:,} entries in {args.segments} segments, row groups of {ROW_GROUP_ROWS} rows, "
          f"{on_disk / 1e6:.1f} MB on disk (sidecars {sidecars / 1e6:.1f} MB), written in {fill_s:.1f} s; "
          f"count() = {counted:,}")
    print(f"query: {len(wanted)} keys, {len(present)} stored, {len(absent)} absent")
    print(f"index: {indexed:,} entries, arrays {nbytes / 1e6:.1f} MB ({nbytes / max(1, indexed):.0f} B/entry); "
          f"tracemalloc peak during a cold lookup {peak / 1e6:.1f} MB; pyarrow pool peak (whole run, "
          f"baseline included) {arrow_peak / 1e6:.1f} MB\n")
    print(format_table(["case", "keys", "found", "median ms", "cpu ms", "x base", "agree"],
                       table_rows(results, wanted, few), args.markdown))


def table_rows(results: dict[str, dict], wanted: list[str], few: list[str]) -> list[list[str]]:
    truth = results[BASELINE]["result"]
    base = statistics.median(results[BASELINE]["wall"])
    rows = []
    for name, r in results.items():
        query = few if name.startswith("warm lookup, ") else wanted
        expected = {k: truth[k] for k in query if k in truth}
        wall, cpu = statistics.median(r["wall"]), statistics.median(r["cpu"])
        rows.append([name, str(len(query)), str(len(r["result"])), f"{wall * 1e3:,.1f}", f"{cpu * 1e3:,.1f}",
                     f"{base / wall:,.1f}x", "yes" if r["result"] == expected else "NO"])
    return rows


if __name__ == "__main__":
    main()
