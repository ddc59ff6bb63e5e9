"""Throughput of phi-factory's heuristic web filters on ONE core, next to datatrove's filters.

Corpus: the embedded web corpus, package long descriptions (``package_doc_records`` with
``Sizes(num_web_shards=1)``) and pydoc topics, repeated ``--copies`` times (default 2, about 600
documents), written once to ``benchmarks/.work/heuristic_corpus.jsonl``.

Cases, all on the same documents, timed in one run:

- ours: ``filter_documents(docs, "web", config)`` with all four families, and each family alone.
- datatrove 0.10.1: ``GopherQualityFilter``, ``GopherRepetitionFilter``, ``C4QualityFilter`` and
  ``FineWebQualityFilter`` (defaults: the papers' thresholds), each ``filter()`` called on every
  document, plus the four chained per document as a datatrove pipeline runs them. They run in a
  separate interpreter (``--peer-python``, an environment with datatrove and spaCy; the product
  never imports datatrove) executing ``benchmarks/peers/datatrove_filters.py``, which builds the
  ``Document``s outside the timed region and prints JSON.

Both sides are pinned to the same CPU, with thread pools limited to one thread. Each of our cases
gets an untimed warm-up; then ``--repeats`` rounds interleave our cases (rotated) and one peer run,
alternating which goes first. Reported: median wall and CPU seconds; docs/s and MB/s (UTF-8 text)
per CPU second; ``x datatrove`` = datatrove's median CPU seconds / ours for the same family (for
all four: the sum of the four datatrove filters, and the chained pipeline); the documents each
side keeps; and the agreement, the fraction of documents on which ours and datatrove make the same
keep/drop decision. Both sides run one thread, so CPU time is their work; on a shared core the
wall time also counts waiting for it. Compare the ratios, not the absolute numbers.

Run from the repository root:  .venv/bin/python benchmarks/heuristic_filters.py [--repeats N]
[--copies K] [--peer-python PATH] [--markdown]
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
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402

pa.set_cpu_count(1)
pa.set_io_thread_count(1)

import polars as pl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, without install
import peer_env  # noqa: E402  (benchmarks/, the script's own folder)
from table import format_table  # noqa: E402

from phi_assets.common.profiles import Sizes  # noqa: E402
from phi_assets.curation.heuristics import FAMILIES, WebFilterConfig, filter_documents  # noqa: E402
from phi_assets.ingest.embedded import package_doc_records, pydoc_topic_records  # noqa: E402

WORK = ROOT / "benchmarks" / ".work"
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "datatrove_filters.py"


@dataclass
class Case:
    name: str
    run: Callable[[], pl.DataFrame]
    kept: list[bool] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def corpus(copies: int) -> list[dict[str, str]]:
    records = [*package_doc_records(0, Sizes(num_web_shards=1)), *pydoc_topic_records()]
    base = [{"id": r.position, "text": r.text, "uri": r.uri} for r in records if getattr(r, "text", None)]
    return [{**r, "id": f"{r['id']}#{k}"} for k in range(copies) for r in base]


def write_jsonl(rows: list[dict[str, str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def our_cases(docs: pl.DataFrame) -> list[Case]:
    # datatrove's word definition for the alphabetic-word ratio, so both sides do the same work
    configs = {"all four": WebFilterConfig(gopher_alpha_words="tokens")}
    configs.update({f: WebFilterConfig(gopher_alpha_words="tokens", **{g: g == f for g in FAMILIES})
                    for f in FAMILIES})
    return [Case(name, lambda c=cfg: filter_documents(docs, "web", c)) for name, cfg in configs.items()]


def time_ours(cases: list[Case], round_: int) -> None:
    for case in cases[round_ % len(cases):] + cases[: round_ % len(cases)]:
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        case.run()
        case.cpu.append(time.process_time() - c0)
        case.wall.append(time.perf_counter() - w0)


def run_peer(python: str, path: Path) -> dict:
    proc = subprocess.run([python, str(PEER_SCRIPT), "--corpus", str(path), "--cpu", str(CPU)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"peer {python} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def agreement(a: list[bool], b: list[bool]) -> str:
    return f"{sum(x == y for x, y in zip(a, b, strict=True)) / len(a):.3f}"


def rows(ours: dict[str, Case], peer: list[dict], n: int, mbytes: float) -> list[list[str]]:
    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    peer_wall = {k: [p["wall"][k] for p in peer] for k in peer[0]["wall"]}
    peer_cpu = {k: [p["cpu"][k] for p in peer] for k in peer[0]["cpu"]}
    peer_kept = peer[0]["kept"]
    peer_wall["sum of four"] = [sum(p["wall"][f] for f in FAMILIES) for p in peer]
    peer_cpu["sum of four"] = [sum(p["cpu"][f] for f in FAMILIES) for p in peer]
    peer_kept["sum of four"] = [all(k) for k in zip(*(peer_kept[f] for f in FAMILIES), strict=True)]
    # ours, each family on every document: the per-round sum of the four single-family runs
    ours["sum of four"] = Case("sum of four", ours["all four"].run, ours["all four"].kept,
                               [sum(x) for x in zip(*(ours[f].wall for f in FAMILIES), strict=True)],
                               [sum(x) for x in zip(*(ours[f].cpu for f in FAMILIES), strict=True)])
    out = []
    for family, mine_names, peers in [*((f, [f], [f]) for f in FAMILIES),
                                      ("all four", ["all four", "sum of four"], ["sum of four", "pipeline"])]:
        for name in mine_names:
            mine = ours[name]
            c = med(mine.cpu)
            label = "ours, 4 families one after the other" if name == "sum of four" else "ours"
            out.append([family, label, str(n), f"{med(mine.wall):.3f}", f"{c:.3f}", f"{n / c:,.0f}",
                        f"{mbytes / c:.2f}", "", str(sum(mine.kept)), ""])
        c = med(ours[family].cpu)
        for p in peers:
            pc = med(peer_cpu[p])
            label = {"sum of four": "datatrove, 4 filters one after the other",
                     "pipeline": "datatrove pipeline (a dropped doc stops)"}.get(p, "datatrove")
            ratio = f"{pc / c:.1f}x"
            if p == "sum of four":  # also against ours running every family on every document
                ratio += f" ({pc / med(ours['sum of four'].cpu):.1f}x)"
            out.append([family, label, str(n), f"{med(peer_wall[p]):.3f}", f"{pc:.3f}", f"{n / pc:,.0f}",
                        f"{mbytes / pc:.2f}", ratio, str(sum(peer_kept[p])),
                        agreement(ours[family].kept, peer_kept[p])])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (median)")
    ap.add_argument("--copies", type=int, default=2, help="times the corpus is repeated")
    peer_env.add_argument(ap, "datatrove and spaCy")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args()
    if args.repeats < 1 or args.copies < 1:
        raise SystemExit("--repeats and --copies must be >= 1")
    peer_env.require(args.peer_python)

    rows_in = corpus(args.copies)
    path = WORK / "heuristic_corpus.jsonl"
    write_jsonl(rows_in, path)
    docs = pl.read_ndjson(path)
    n, mbytes = docs.height, sum(len(r["text"].encode("utf-8")) for r in rows_in) / 1e6

    cases = our_cases(docs)
    for case in cases:  # warm-up (regex compilation, page cache), and the decisions
        case.kept = case.run().get_column("drop_reason").is_null().to_list()
    peer: list[dict] = []
    for r in range(args.repeats):
        if r % 2 == 0:
            time_ours(cases, r)
            peer.append(run_peer(args.peer_python, path))
        else:
            peer.append(run_peer(args.peer_python, path))
            time_ours(cases, r)

    v = peer[0]["versions"]
    print(f"Python {platform.python_version()}, polars {pl.__version__}; peer: Python {v['python']}, "
          f"datatrove {v['datatrove']}, spaCy {v['spacy']}; pinned to CPU {CPU} (allowed after pinning: "
          f"ours {sorted(os.sched_getaffinity(0))}, peer {peer[0]['cpu_allowed']}); repeats {args.repeats}")
    rules = ("heuristics", "heuristic_checks", "web_heuristics", "ngram_repetition", "code_heuristics",
             "filter_config")
    stamp = hashlib.sha256(b"".join((ROOT / "phi_assets" / "curation" / f"{m}.py").read_bytes()
                                    for m in rules)).hexdigest()[:12]
    print(f"code under test (sha256): the curation rule modules ({', '.join(rules)}) {stamp}")
    print(f"corpus: {n} documents ({n // args.copies} package descriptions and pydoc topics x {args.copies}), "
          f"{mbytes:.2f} MB UTF-8 text")
    print("docs/s, MB/s and x datatrove use the median CPU seconds (one thread on each side; the wall time on "
          "a shared core also counts waiting for it). x datatrove = datatrove CPU s / ours, higher is faster; "
          "for all four against ours with all families (in brackets: against ours running every family on "
          "every document). agreement = fraction of documents with the same keep/drop decision as ours\n")
    head = ["family", "implementation", "docs", "wall s", "cpu s", "docs/s", "MB/s", "x datatrove", "kept",
            "agreement"]
    print(format_table(head, rows({c.name: c for c in cases}, peer, n, mbytes), args.markdown))


if __name__ == "__main__":
    main()
