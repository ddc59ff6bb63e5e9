"""Peak memory (RSS) and wall time of the curation filter step on a big shard: batched against whole-shard.

Shard (``--source code``, the default): every ``*.py`` file under the project's
``.venv/lib/python3.11/site-packages`` (real-world Python source, about 32,000 files), read by the
pipeline's own ``pytree`` reader (``readers.read_source_tree``) and written by ingest
(``shards.ingest_items``: validation, ``doc_id``, dedup by id, files over ``Sizes.max_doc_bytes``
rejected) into one raw ``docs.parquet`` in the document schema, as ``raw_code_shards`` would. With
``--source web``: the embedded web corpus (every installed package's long description and the pydoc
topics, about 2.6 MB of prose) repeated up to ``--web-mb`` (160) MB, each copy's documents suffixed
with the copy number so that their ids differ, through the same ingest. A shard is built once and
cached under ``--cache`` (default ``benchmarks/.work/filter_memory``), keyed by its inputs (for code:
the list of files, their sizes and mtimes); the script stops if a code shard holds less than
``--min-mb`` (400) MB of text.

Cases, each run in a fresh child interpreter so that its peak RSS is its own (``os.wait4`` gives the
child's ``ru_maxrss``), one after the other, whole-shard first in odd rounds and batched first in even:

- ``batched``: ``stages.filter_shard`` with ``--budget-mb`` (default: ``QualityFilterConfig``'s 2048),
  which streams the shard in batches sized from the budget (``stages.FILTER_MEMORY.batches``).
- ``whole-shard``: the step as it was before batching, inline here: ``pl.read_parquet`` of the whole
  shard, ``heuristics.filter_documents`` on all of it, the kept and dropped rows written with
  ``write_parquet``, ``minhash.signatures`` of all kept texts, ``pq.write_table`` of the signatures.
- ``--batch-mb A,B,..``: ``filter_shard`` with explicit batches of that many MiB of text, to measure
  the peak per byte of a batch (the factor ``stages.FILTER_PEAK_PER_TEXT_BYTE`` is set from it).

Both sides use polars' default thread pool (every CPU the process may use) as the asset does; no
pinning. Reported per case: batches, peak RSS, (peak - the child's RSS after imports) per MiB of
text in a batch, wall seconds of the step (the child's imports excluded), and ratios to whole-shard;
then a least-squares line peak = a + b x MiB per batch over the batched cases, which is what
``stages.FILTER_BASELINE_MB`` and ``FILTER_PEAK_PER_TEXT_BYTE`` bound from above. Every case's outputs
(docs, dropped, minhash parquet) are compared with whole-shard's, row by row.
The machine is shared: wall times are noisy, peak RSS much less so.

Run from the repository root:  .venv/bin/python benchmarks/filter_memory.py [--markdown]
[--source code|web] [--budget-mb N] [--batch-mb 32,64,128] [--repeats N] [--min-mb N] [--web-mb N]
[--cache DIR] [--no-whole]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, without install
from table import format_table  # noqa: E402  (benchmarks/, the script's own folder)

SITE_PACKAGES = ROOT / ".venv" / "lib" / "python3.11" / "site-packages"
CACHE = ROOT / "benchmarks" / ".work" / "filter_memory"
OUTPUTS = ("docs.parquet", "dropped.parquet", "minhash.parquet")


# --- the shard -----------------------------------------------------------------------------------

def _fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _web_items(target_mb: float) -> tuple[list, str]:
    """The embedded web corpus repeated up to ``target_mb`` MB; copies differ by a last line."""
    from phi_assets.common.profiles import Sizes
    from phi_assets.ingest.embedded import package_doc_records, pydoc_topic_records
    from phi_assets.ingest.readers import Record

    base = [r for r in [*package_doc_records(0, Sizes(num_web_shards=1)), *pydoc_topic_records()]
            if isinstance(r, Record) and isinstance(r.text, str)]
    size = sum(len(r.text.encode()) for r in base)
    copies = max(1, -(-int(target_mb * 1e6) // size))
    items = [Record(f"{r.text}\n\n(copy {k})", f"{r.uri}#copy{k}", f"{r.position}#{k}", r.license, r.meta)
             for k in range(copies) for r in base]
    return items, f"{len(base)} web documents x {copies} copies"


def build_shard(source: str, cache: Path, min_mb: float, web_mb: float) -> tuple[Path, dict]:
    """The raw shard, built by ingest once per input (see the module doc)."""
    from phi_assets.common.profiles import Sizes
    from phi_assets.ingest import readers, shards

    if source == "code":
        paths = sorted(SITE_PACKAGES.rglob("*.py"))
        where, what = cache / f"code-{_fingerprint(paths)}", f"{len(paths):,} *.py files under site-packages"
    else:
        where = cache / f"web-{hashlib.sha256(f'{web_mb}'.encode()).hexdigest()[:8]}"
    stamp = where / "stats.json"
    if not stamp.exists():
        shutil.rmtree(where, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
        t0 = time.perf_counter()
        if source == "code":
            items = readers.read_source_tree(str(SITE_PACKAGES))
        else:
            items, what = _web_items(web_mb)
        stats = shards.ingest_items(items, source, source, staging, Sizes().max_doc_bytes)
        info = {"what": what, "docs": stats.num_written, "rejected": dict(stats.rejected),
                "text_bytes": stats.num_bytes, "build_s": round(time.perf_counter() - t0, 1)}
        (staging / "stats.json").write_text(json.dumps(info))
        staging.rename(where)  # complete or absent: a killed build is never reused
    info = json.loads(stamp.read_text())
    if source == "code" and info["text_bytes"] < min_mb * 1e6:
        raise SystemExit(f"the shard holds {info['text_bytes'] / 1e6:.0f} MB of text, under --min-mb {min_mb}")
    return where / "docs.parquet", info


# --- the child: one case, in its own process -----------------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def whole_shard(docs_path: str, source: str, out: Path) -> dict:
    """The filter step before batching (stages.filter_shard as it was): everything at once."""
    import polars as pl
    import pyarrow.parquet as pq

    from phi_assets.curation import heuristics, minhash
    from phi_assets.ingest.schema import DOC_COLUMNS

    config = minhash.MinHashConfig()
    docs = pl.read_parquet(docs_path, columns=list(DOC_COLUMNS))
    filtered = heuristics.filter_documents(docs, source, None)  # the source's default rules
    kept = filtered.filter(pl.col("drop_reason").is_null()).select(DOC_COLUMNS)
    dropped = filtered.filter(pl.col("drop_reason").is_not_null()).select(
        "id", "uri", pl.col("drop_reason").alias("reason"), pl.col("drop_detail").alias("detail"))
    kept.write_parquet(out / "docs.parquet", compression="zstd")
    dropped.write_parquet(out / "dropped.parquet", compression="zstd")
    sigs = minhash.signatures(kept["text"].to_list(), config)
    pq.write_table(minhash.signatures_table(kept["id"].to_list(), sigs, config), out / "minhash.parquet",
                   compression="zstd")
    return {"funnel": heuristics.funnel(filtered), "batches": 1}


def child(args: argparse.Namespace) -> None:
    from phi_assets.curation import minhash, stages
    from phi_assets.ingest.batches import Batches

    imported = _rss_mb()
    batches: list[str] = []
    t0 = time.perf_counter()
    if args.child == "whole":
        result = whole_shard(args.docs, args.source, Path(args.out))
    else:
        limits = None
        if args.batch_mb:
            limits = Batches(args.batch_mb << 20, stages.FILTER_MAX_BATCH_ROWS)
        result = stages.filter_shard(args.docs, args.source, None, minhash.MinHashConfig(), Path(args.out),
                                     memory_budget_mb=args.budget_mb, limits=limits, progress=batches.append)
        result["batches"] = len(batches)
        limits = limits or stages.FILTER_MEMORY.batches(args.budget_mb, args.source)
        result["batch_text_mb"] = limits.text_bytes / 2**20
    wall = time.perf_counter() - t0
    import polars as pl

    print(json.dumps({**result, "wall": wall, "imported_mb": imported, "threads": pl.thread_pool_size(),
                      "self_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_case(name: str, extra: list[str], source: str, docs: Path, workdir: Path) -> dict:
    out = workdir / "".join(c if c.isalnum() else "_" for c in name)  # one folder per case
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", *extra, "--source", source, "--docs", str(docs),
           "--out", str(out)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"{name} failed ({proc.returncode}):\n{stderr.read()[-3000:]}")
        stdout.seek(0)
        result = json.loads(stdout.read().splitlines()[-1])
    return {**result, "peak_mb": usage.ru_maxrss / 1024, "child_wall": wall, "out": out}


def digest(path: Path) -> str:
    """Content of a parquet file, row by row in order (not its layout): schema, then a hash per row."""
    import polars as pl
    import pyarrow.parquet as pq

    h = hashlib.sha256(str(pq.read_schema(path)).encode())
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        h.update(pl.from_arrow(batch).hash_rows(seed=0).to_numpy().tobytes())
    return h.hexdigest()


def cases(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    out = [("whole-shard", ["whole"])] if args.whole else []
    out.append((f"batched (budget {args.budget_mb} MB)", ["batched", "--budget-mb", str(args.budget_mb)]))
    out += [(f"batched ({m} MiB batches)", ["batched", "--batch-mb", str(m)]) for m in args.batch_mb]
    return out


def rows(results: dict[str, list[dict]], text_mb: float, same: dict[str, str]) -> list[list[str]]:
    med = statistics.median
    base = results.get("whole-shard")
    out = []
    for name, runs in results.items():
        peak, wall = med(r["peak_mb"] for r in runs), med(r["wall"] for r in runs)
        batch_mb = runs[0].get("batch_text_mb", text_mb)
        per_mb = med((r["peak_mb"] - r["imported_mb"]) / min(batch_mb, text_mb) for r in runs)
        ratio = (lambda x, key: f"{x / med(r[key] for r in base):.2f}x") if base else (lambda x, key: "")
        out.append([name, str(runs[0]["batches"]), f"{min(batch_mb, text_mb):,.0f}", f"{peak:,.0f}",
                    f"{per_mb:.1f}", ratio(peak, "peak_mb"), f"{wall:.1f}", ratio(wall, "wall"), same[name]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-mb", type=int, default=None,
                    help="memory budget of the batched case (default: QualityFilterConfig's, 2048)")
    ap.add_argument("--batch-mb", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="also run with explicit batches of these MiB of text (comma-separated)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds (median); each case takes about a minute")
    ap.add_argument("--source", choices=["code", "web"], default="code", help="the shard and rules (see above)")
    ap.add_argument("--min-mb", type=float, default=400, help="least text in the code shard, MB")
    ap.add_argument("--web-mb", type=float, default=160, help="text in the web shard, MB")
    ap.add_argument("--cache", type=Path, default=CACHE, help="where the built shard is kept")
    ap.add_argument("--no-whole", dest="whole", action="store_false", help="skip the whole-shard baseline")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--child", choices=["whole", "batched"], help=argparse.SUPPRESS)
    ap.add_argument("--docs", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.batch_mb = args.batch_mb[0] if args.batch_mb else None
        args.budget_mb = args.budget_mb or 0  # always passed by the parent
        return child(args)
    if args.budget_mb is None:
        from phi_assets.curation.stages import DEFAULT_MEMORY_BUDGET_MB  # QualityFilterConfig's default

        args.budget_mb = DEFAULT_MEMORY_BUDGET_MB
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    docs, info = build_shard(args.source, args.cache, args.min_mb, args.web_mb)
    todo = cases(args)
    results: dict[str, list[dict]] = {name: [] for name, _ in todo}
    with tempfile.TemporaryDirectory(prefix="filter-memory-") as tmp:
        for r in range(args.repeats):
            for name, extra in todo if r % 2 == 0 else todo[::-1]:
                results[name].append(run_case(name, extra, args.source, docs, Path(tmp)))
                print(f"# round {r + 1}: {name}: peak {results[name][-1]['peak_mb']:,.0f} MB, "
                      f"{results[name][-1]['wall']:.1f} s", file=sys.stderr, flush=True)
        first = {name: runs[-1]["out"] for name, runs in results.items()}
        sums = {name: [digest(out / f) for f in OUTPUTS] for name, out in first.items()}
    print_report(args, info, results, compare(sums))


def compare(sums: dict[str, list[str]]) -> dict[str, str]:
    """Per case: are its three outputs the whole-shard ones, row for row?"""
    ref = sums.get("whole-shard")
    out = {}
    for name, got in sums.items():
        differ = [f for f, a, b in zip(OUTPUTS, got, ref or got, strict=True) if a != b]
        out[name] = ("reference" if name == "whole-shard" else "-" if ref is None
                     else "DIFFERENT: " + ", ".join(differ) if differ else "identical")
    return out


def print_report(args: argparse.Namespace, info: dict, results: dict[str, list[dict]],
                 same: dict[str, str]) -> None:
    import polars as pl
    import pyarrow as pa

    any_run = next(iter(results.values()))[0]
    text_mb = info["text_bytes"] / 2**20
    print(f"Python {platform.python_version()}, polars {pl.__version__} ({any_run['threads']} threads), "
          f"pyarrow {pa.__version__}; {os.cpu_count()} CPUs; repeats {args.repeats}")
    print(f"{args.source} shard: {info['docs']:,} documents of {info['what']}, "
          f"{info['text_bytes'] / 1e6:,.1f} MB ({text_mb:,.1f} MiB) of text; "
          f"rejected by ingest {info['rejected']}")
    print(f"funnel: {any_run['funnel']}")
    print("peak RSS: the child's ru_maxrss; per MiB: (peak - RSS after imports) / MiB of text per batch; "
          "wall: the step, imports excluded; x whole = case / whole-shard (lower is better)\n")
    head = ["case", "batches", "MiB text/batch", "peak RSS MiB", "peak MiB per MiB", "x whole (peak)",
            "wall s", "x whole (wall)", "outputs"]
    print(format_table(head, rows(results, text_mb, same), args.markdown))
    print(fit(results, text_mb))


def fit(results: dict[str, list[dict]], text_mb: float) -> str:
    """Peak RSS against MiB of text per batch, a least-squares line over the batched cases."""
    from phi_assets.curation import stages

    points = [(min(r.get("batch_text_mb", text_mb), text_mb), r["peak_mb"])
              for name, runs in results.items() if name != "whole-shard" for r in runs]
    if len({x for x, _ in points}) < 2:
        return ""
    slope, intercept = statistics.linear_regression(*zip(*points, strict=True))
    return (f"\nfit over the batched cases: peak RSS = {intercept:,.0f} MiB + {slope:.1f} x MiB of text per "
            f"batch; batches are sized with {stages.FILTER_BASELINE_MB} MiB + "
            f"{stages.FILTER_PEAK_PER_TEXT_BYTE} x (per source)")


if __name__ == "__main__":
    main()
