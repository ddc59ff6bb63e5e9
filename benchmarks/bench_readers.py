"""Throughput of phi-factory's shard readers on ONE core, next to what a user would write by hand.

Corpus: the running Python's standard library (``stdlib_files`` with one code shard, ~1790
``*.py`` files, ~30 MB of text). Groups, each timed in the same run with its own baseline:

1. source tree: naive ``Path.read_text`` loop (baseline) vs ``read_source_files`` vs the full
   ``ingest_items`` path (read + validate + dedup + zstd parquet docs/rejects into a temp dir).
2. JSONL (.jsonl, .jsonl.gz, .jsonl.zst): ``json.loads`` per line over ``open``/``gzip.open``/
   ``zstandard`` (baseline) vs ``read_jsonl``; plus ``polars.read_ndjson`` on the plain file.
3. parquet (zstd, ``content`` column): ``pq.read_table(...).to_pylist()`` (baseline) vs
   ``read_parquet``.

Each case gets one untimed warm-up pass (page cache, imports), then ``--repeats`` timed passes,
interleaved round-robin across the cases of a group so that machine noise hits all of them alike.
Reported: median wall seconds, median CPU seconds, docs/s, MB/s (UTF-8 bytes of the corpus text
divided by median wall time) and ``x base`` = baseline median time / case median time (>1: faster
than the baseline). Only the ratios are meant to be compared across machines.

Run from the repository root:  .venv/bin/python benchmarks/bench_readers.py [--repeats N]
[--limit-files K] [--markdown]
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
import gzip  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO  # noqa: E402

import pyarrow as pa  # noqa: E402

pa.set_cpu_count(1)
pa.set_io_thread_count(1)

import polars as pl  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import zstandard  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, without install
from table import format_table  # noqa: E402  (benchmarks/, the script's own folder)

from phi_assets.common.profiles import Sizes  # noqa: E402
from phi_assets.ingest.embedded import stdlib_files  # noqa: E402
from phi_assets.ingest.readers import (  # noqa: E402
    ReaderOptions,
    Rejected,
    read_jsonl,
    read_parquet,
    read_source_files,
)
from phi_assets.ingest.shards import ingest_items  # noqa: E402


@dataclass
class Case:
    group: str
    name: str
    run: Callable[[], int]  # processes the whole corpus once; returns how many documents it saw
    note: str = ""
    docs: int = 0
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    error: str | None = None


def time_group(cases: list[Case], repeats: int) -> None:
    """Warm up every case once, then time ``repeats`` rounds, rotating the order each round."""
    for case in cases:
        try:
            case.docs = case.run()
        except Exception as exc:  # a failing reader is a result to report, not a crash
            case.error = f"FAILED: {type(exc).__name__}: {exc}"
    live = [c for c in cases if c.error is None]
    for r in range(repeats if live else 0):
        for case in live[r % len(live):] + live[: r % len(live)]:
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            case.run()
            case.cpu.append(time.process_time() - c0)
            case.wall.append(time.perf_counter() - w0)


def count(items: Iterable[object]) -> int:
    return sum(1 for _ in items)


def naive_source(files: list[tuple[str, str]]) -> int:
    n = 0
    for path, _ in files:
        Path(path).read_text(encoding="utf-8", errors="replace")
        n += 1
    return n


def open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if path.suffix == ".zst":
        reader = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
        return io.TextIOWrapper(reader, encoding="utf-8")
    return open(path, encoding="utf-8")


def naive_jsonl(path: Path) -> int:
    n = 0
    with open_text(path) as f:
        for line in f:
            if line.strip():
                json.loads(line)["text"]
                n += 1
    return n


def write_corpus(tmp: Path, texts: list[str], rels: list[str]) -> dict[str, Path]:
    lines = "".join(json.dumps({"text": t, "path": r}, ensure_ascii=False) + "\n"
                    for t, r in zip(texts, rels, strict=True)).encode("utf-8")
    out = {k: tmp / f"stdlib.{k}" for k in ("jsonl", "jsonl.gz", "jsonl.zst", "parquet")}
    out["jsonl"].write_bytes(lines)
    out["jsonl.gz"].write_bytes(gzip.compress(lines, compresslevel=6))
    out["jsonl.zst"].write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
    pq.write_table(pa.table({"content": texts, "path": rels}), out["parquet"], compression="zstd")
    return out


def build_cases(files: list[tuple[str, str]], paths: dict[str, Path], tmp: Path) -> list[Case]:
    opts = ReaderOptions()
    ingest_dir = tmp / "ingest"
    ingest_dir.mkdir()

    def ingest() -> int:
        items = read_source_files(files, "PSF-2.0", opts)
        stats = ingest_items(items, "code", "embedded:stdlib-00", ingest_dir, Sizes().max_doc_bytes)
        ingest_case.note = f"written {stats.num_written}, rejected {dict(stats.rejected)}"
        return stats.num_read

    bad = [i for i in read_source_files(files, None, opts) if isinstance(i, Rejected)]
    bad_note = f"incl. {len(bad)} Rejected ({', '.join(sorted({b.reason for b in bad}))})"

    src = "1 source tree"
    ingest_case = Case(src, "ingest_items (read+validate+write)", ingest)
    cases = [
        Case(src, "naive Path.read_text loop", lambda: naive_source(files), "baseline"),
        Case(src, "read_source_files", lambda: count(read_source_files(files, None, opts)),
             bad_note if bad else ""),
        ingest_case,
    ]
    for fmt in ("jsonl", "jsonl.gz", "jsonl.zst"):
        p, group = paths[fmt], f"2 {fmt}"
        cases += [Case(group, "naive json.loads per line", lambda p=p: naive_jsonl(p), "baseline"),
                  Case(group, "read_jsonl", lambda p=p: count(read_jsonl(str(p), opts)))]
        if fmt == "jsonl":
            cases.append(Case(group, "polars.read_ndjson", lambda p=p: pl.read_ndjson(p).height,
                              "loads the whole file into memory; read_jsonl streams"))
    pqp = paths["parquet"]
    cases += [
        Case("3 parquet", "pq.read_table().to_pylist()",
             lambda: len(pq.read_table(pqp).to_pylist()), "baseline; whole table in memory"),
        Case("3 parquet", "read_parquet", lambda: count(read_parquet(str(pqp), opts))),
    ]
    return cases


def rows(cases: list[Case], mbytes: float) -> list[list[str]]:
    out = []
    base: dict[str, float] = {}
    for case in cases:
        med = statistics.median(case.wall) if case.wall else float("nan")
        if case.note.startswith("baseline"):
            base[case.group] = med
        note = case.error or case.note
        if case.error:
            out.append([case.group, case.name, "-", "-", "-", "-", "-", "-", note])
            continue
        out.append([case.group, case.name, str(case.docs), f"{med:.3f}",
                    f"{statistics.median(case.cpu):.3f}", f"{case.docs / med:,.0f}",
                    f"{mbytes / med:.1f}", f"{base[case.group] / med:.2f}x", note])
    return out


def render(table: list[list[str]], markdown: bool) -> str:
    head = ["group", "case", "docs", "median s", "cpu s", "docs/s", "MB/s", "x base", "note"]
    return format_table(head, table, markdown)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per case (median)")
    ap.add_argument("--limit-files", type=int, default=None, help="only the first K stdlib files")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args()

    files = stdlib_files(0, Sizes(num_code_shards=1))[: args.limit_files]
    texts = [Path(p).read_text(encoding="utf-8", errors="replace") for p, _ in files]
    mbytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    with tempfile.TemporaryDirectory(prefix="phi-bench-") as tmp:
        paths = write_corpus(Path(tmp), texts, [r for _, r in files])
        del texts
        cases = build_cases(files, paths, Path(tmp))
        for group in dict.fromkeys(c.group for c in cases):
            time_group([c for c in cases if c.group == group], args.repeats)
        sizes = ", ".join(f"{k} {p.stat().st_size / 1e6:.1f} MB" for k, p in paths.items())
    print(f"Python {platform.python_version()}, pyarrow {pa.__version__}, polars {pl.__version__}, "
          f"zstandard {zstandard.__version__}; pinned to CPU {CPU} "
          f"(allowed after pinning: {sorted(os.sched_getaffinity(0))}); repeats {args.repeats}")
    root = Path(__file__).resolve().parents[1] / "phi_assets" / "ingest"
    stamp = ", ".join(f"{n} {hashlib.sha256((root / n).read_bytes()).hexdigest()[:12]}"
                      for n in ("readers.py", "shards.py"))
    print(f"code under test (sha256): {stamp}")
    print(f"corpus: {len(files)} stdlib files, {mbytes:.1f} MB UTF-8 text; files: {sizes}")
    print("x base = baseline median wall time / case median wall time (higher is faster)\n")
    print(render(rows(cases, mbytes), args.markdown))


if __name__ == "__main__":
    main()
