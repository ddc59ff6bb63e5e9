"""Peak memory (RSS) and wall time of the per-shard steps besides the filter: ingest (with its Great
Expectations suite), scoring with decontamination, tokenization; batched under a budget against before.

Shards (Python source, at least ``--min-mb`` (400) MB of text):

- *code*: filter_memory.py's shard, imported from it (``build_shard``: every ``*.py`` under
  ``.venv/lib/python3.11/site-packages`` through the pipeline's ``pytree`` reader and ingest, cached under
  ``benchmarks/.work/filter_memory``; about 31,000 documents, 430 MB). Ingest reads the same tree.
- *grouped 1 MB* (score): the same text, its files joined in order (a blank line between) into
  documents of at most ``Sizes.max_doc_bytes`` (1 MB), written by ingest (``shards.ingest_items``):
  about 450 documents. Scoring embeds one excerpt per document with all-MiniLM-L6-v2 on CPU (roughly
  17 excerpts per CPU-second), so the big text volume comes in few documents and the embedding takes
  about a minute; the decontamination scan (about 1 MB/s for its syntax pass on 2 shared CPUs) takes
  most of the case.
- *grouped 100 KB* (tokenize): the same, in documents of at most 100,000 bytes (about 4,300). Before,
  tokenization took 1,024 documents a batch whatever their size: on the code shard (14 KB on average)
  that is 23 MiB of text, no more than the budget's batches, while 100 KB documents, which real
  corpora hold, make it 100 MB (1 MB documents would make it the whole shard, about 14 GB of peak).

The shards and the models the cases need are built once, in a child process, and cached under
``--cache`` (default ``benchmarks/.work/step_memory``): the classifier (``classifier.train`` on the
embedded excerpts of 300 documents of the code shard, labels from a hash of their ids) and a byte-level
BPE of 8,192 tokens (``tokenizer.train_bpe`` on the first 10 MB of the code shard).

Steps and cases, each case in a fresh child interpreter so that its peak RSS is its own (``os.wait4``
gives the child's ``ru_maxrss``), ``before`` first:

- ``ingest`` (``raw_code_shards``' ``_build_shard``), on the site-packages tree as a landed ``pytree``
  shard: ``shards.ingest_shard`` then ``expectations.validate_docs``. *batched*: as the asset runs them,
  the suite with ``--budget-mb`` (batches from ``expectations.VALIDATE_MEMORY``). *before*: the writer
  without ``release_freed_memory`` after each flush, and the suite over 50,000-row pandas frames whatever
  their size (``validate_docs`` with rows-only batches: the old ``BATCH_ROWS``). The peak after
  writing (the child's ``VmHWM`` then) is reported besides the step's.
- ``score``, scoring and decontamination together as ``filtered_code_corpus`` runs them
  (``stages.score_shard``: the decontamination scan, excerpt embeddings, forest scores, the written
  docs/scores/contaminated files and the blocking check's re-scan of the written docs), on the grouped
  1 MB shard, every document a dedup survivor, threshold ``--threshold`` (default 2.6: about half the
  documents kept, so that the writing and the re-scan hold something; the config's 3 keeps almost none
  with this classifier).
  *batched*: with ``--budget-mb`` (``stages.SCORE_MEMORY``). *before*: the step before batching
  (``tests/support/score_before.py``, which the tests compare with too): ``read_rows`` (the whole
  shard), ``Decontaminator.scan`` and ``Encoder.encode`` of all texts, the outputs written with
  ``write_parquet``, the re-scan of the whole written file.
- ``tokenize`` (``tokenized_filtered_code``' build), on the grouped 100 KB shard: ``tokens.write_shard`` over
  ``tokens.read_documents`` of the open file. *batched*: with ``--budget-mb`` (``tokens.TOKENIZE_MEMORY``)
  and the length histogram read from the ``num_tokens`` column. *before*: inline, the reader of 1,024
  documents a batch whatever their size, and ``documents.parquet`` read whole for the histogram.
- ``--batch-mb A,B,..``: the batched case again with explicit batches of that many MiB of text, to
  measure the peak per MiB of a batch; a least-squares line ``peak = a + b x MiB per batch`` is printed
  per step (``VALIDATE_MEMORY``, ``SCORE_MEMORY`` and ``TOKENIZE_MEMORY`` bound it from above).

Reported per case: batches, MiB of text per batch, peak RSS, the budget check (``peak <= --budget-mb``,
default 2048: the configs' ``memory_budget_mb``), wall seconds of the step (the child's imports and model
loading excluded), the ratio to before, and whether the outputs are before's (every parquet file row by
row, the token files byte for byte, the suite's outcomes, the step's metadata). ``--torch-threads N`` sets
torch's threads in the score children (the default: torch's own; on a CPU-starved machine 1 avoids
spinning threads); polars and the tokenizers use their default pools, as the assets do.
The machine is shared: wall times are noisy, peak RSS much less so.

Run from the repository root:  .venv/bin/python benchmarks/step_memory.py [--markdown]
[--steps ingest,score,tokenize] [--budget-mb N] [--batch-mb 32,64] [--no-before] [--threshold T]
[--torch-threads N] [--mbpp PATH] [--min-mb N] [--cache DIR]
(about 55 minutes on 2 shared vCPUs: ingest 1, score 2 x 15 to 20, tokenize 2 x 6)
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
import filter_memory  # noqa: E402  (benchmarks/, the script's own folder: the code shard)
from table import format_table  # noqa: E402

CACHE = ROOT / "benchmarks" / ".work" / "step_memory"
STEPS = ("ingest", "score", "tokenize")
SHARD = {"ingest": "tree", "score": "grouped-1mb", "tokenize": "grouped-100kb"}
EXCERPT_CHARS = 1500  # AnnotationConfig.max_doc_chars: the excerpts the classifier was trained on
TRAIN_DOCS, TOKENIZER_MB, VOCAB = 300, 10, 8192


# --- the inputs: shards and models, built once -----------------------------------------------------

def _cached(where: Path, build) -> Path:
    """``where``, built by ``build(staging)`` into a staging folder renamed into place when complete."""
    if not where.exists():
        where.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="building-", dir=where.parent))
        build(staging)
        staging.rename(where)
    return where


def grouped_shard(code: Path, cache: Path, doc_bytes: int) -> tuple[Path, dict]:
    """The code shard's files joined in order into documents of at most ``doc_bytes`` (a larger file
    stays alone), through ingest (see the module doc)."""

    def build(staging: Path) -> None:
        from phi_assets.common.profiles import Sizes
        from phi_assets.ingest import shards
        from phi_assets.ingest.batches import Batches, read_batches
        from phi_assets.ingest.readers import Record

        def grouped(parts: list[str], k: int) -> Record:
            return Record("\n\n".join(parts), f"grouped://{k}", str(k), None, {"files": len(parts)})

        def records():
            parts, size, k = [], 0, 0
            for table in read_batches(str(code), Batches(64 << 20, 1 << 20), columns=["text"]):
                for text in table.column("text").to_pylist():
                    n = len(text.encode()) + 2
                    if parts and size + n > doc_bytes:
                        yield grouped(parts, k)
                        parts, size, k = [], 0, k + 1
                    parts.append(text)
                    size += n
            if parts:
                yield grouped(parts, k)

        stats = shards.ingest_items(records(), "code", "grouped", staging, Sizes().max_doc_bytes)
        (staging / "stats.json").write_text(json.dumps(
            {"what": f"the code shard's files in documents of at most {doc_bytes:,} bytes",
             "docs": stats.num_written, "rejected": dict(stats.rejected), "text_bytes": stats.num_bytes}))

    where = _cached(cache / f"grouped-{doc_bytes}-{code.parent.name}", build)
    return where / "docs.parquet", json.loads((where / "stats.json").read_text())


def classifier_dir(code: Path, cache: Path) -> Path:
    """A forest + linear classifier on the excerpts of the code shard's first documents."""
    from phi_assets.common.embeddings import Encoder

    encoder = Encoder()

    def build(staging: Path) -> None:
        import numpy as np
        import pyarrow.parquet as pq

        from phi_assets.curation import classifier as clf
        from phi_assets.curation import edu

        docs = pq.ParquetFile(code).iter_batches(batch_size=TRAIN_DOCS, columns=["id", "text"])
        batch = next(docs)
        excerpts = [edu.excerpt(t, EXCERPT_CHARS) for t in batch.column("text").to_pylist()]
        labels = np.array([int(i[:8], 16) % 6 for i in batch.column("id").to_pylist()])
        model = clf.train(encoder.encode(excerpts, desc="embed training excerpts"), labels,
                          clf.ClassifierConfig(), encoder.version)
        model.save(staging)

    return _cached(cache / f"classifier-{code.parent.name}-{encoder.version}", build)


def tokenizer_dir(code: Path, cache: Path) -> Path:
    def build(staging: Path) -> None:
        from phi_assets.ingest.batches import Batches, read_batches
        from phi_assets.mixture import tokenizer as tk

        batch = next(read_batches(str(code), Batches(TOKENIZER_MB << 20, 1 << 20), columns=["text"]))
        tk.save(tk.train_bpe(iter(batch.column("text").to_pylist()), VOCAB), staging)

    return _cached(cache / f"tokenizer-{code.parent.name}-{VOCAB}", build)


def prepare(args: argparse.Namespace) -> None:
    """The shards and models the cases read (built once, cached), and how to pass them: one JSON line."""
    code, code_info = filter_memory.build_shard("code", filter_memory.CACHE, args.min_mb, 0)
    infos = {"tree": {**code_info, "what": code_info["what"] + " (the landed pytree shard)"}, "code": code_info}
    common = ["--budget-mb", str(args.budget_mb)]
    inputs = {"ingest": common}
    if "score" in args.steps:
        from phi_assets.common.mbpp_source import resolve_mbpp
        from phi_assets.common.profiles import Sizes

        grouped, infos["grouped-1mb"] = grouped_shard(code, args.cache, Sizes().max_doc_bytes)
        inputs["score"] = [*common, "--docs", str(grouped), "--model", str(classifier_dir(code, args.cache)),
                           "--threshold", str(args.threshold), "--torch-threads", str(args.torch_threads),
                           "--mbpp", str(args.mbpp or resolve_mbpp())]
    if "tokenize" in args.steps:
        grouped, infos["grouped-100kb"] = grouped_shard(code, args.cache, 100_000)
        inputs["tokenize"] = [*common, "--docs", str(grouped), "--model", str(tokenizer_dir(code, args.cache))]
    print(json.dumps({"infos": infos, "inputs": inputs}))


# --- the child: one case, in its own process -----------------------------------------------------

def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:")) / 1024


def ingest(args: argparse.Namespace, out: Path, limits) -> dict:
    from dataclasses import asdict

    from phi_assets.common.profiles import Profile, Sizes
    from phi_assets.ingest import expectations, readers, shards
    from phi_assets.ingest.batches import rows_only

    if args.before:  # the writer before: freed pages kept by glibc
        shards.release_freed_memory = lambda: None
    spec = shards.ShardSpec("code", "site-packages", str(filter_memory.SITE_PACKAGES), "pytree")
    profile = Profile("bench", str(out), str(out), str(out), str(out), str(out / "catalog.duckdb"))
    stats = shards.ingest_shard(spec, profile, out, readers.ReaderOptions())
    written_peak = _status("VmHWM")
    path, max_chars = out / shards.DOCS_FILE, profile.sizes.max_doc_bytes
    if args.before:  # the suite before: 50,000 rows a pandas frame, whatever their size
        suite = expectations.validate_docs(path, max_chars, limits=rows_only(50_000))
    else:
        suite = expectations.validate_docs(path, max_chars, memory_budget_mb=args.budget_mb, limits=limits)
    assert Sizes().max_doc_bytes == max_chars
    return {"batches": suite.batches, "written_peak_mb": written_peak, "text_bytes": stats.num_bytes,
            "same": {"stats": stats.to_json(), "success": suite.success,
                     "outcomes": [asdict(o) for o in suite.outcomes]}}


def score(args: argparse.Namespace, out: Path, limits, loaded: dict) -> dict:
    from phi_assets.curation import stages
    from tests.support.score_before import score_whole_shard  # the step before batching

    keep = loaded["keep"]
    common = (args.docs, keep, len(keep), "code", loaded["model"], "forest", args.threshold, loaded["encoder"],
              loaded["decontaminator"], EXCERPT_CHARS, out)
    if args.before:
        result = score_whole_shard(*common)
        return {"batches": 1, "same": result}
    lines: list[str] = []
    result = stages.score_shard(*common, memory_budget_mb=args.budget_mb, limits=limits, progress=lines.append)
    return {"batches": sum(": batch " in line for line in lines), "same": result}


def score_models(args: argparse.Namespace) -> dict:
    """What the asset gets from its resources and upstream before the step: loaded here, untimed."""
    from phi_assets.common.benchmarks import load_eval_tasks
    from phi_assets.common.decontaminate import Decontaminator
    from phi_assets.common.embeddings import Encoder
    from phi_assets.curation import classifier as clf
    from phi_assets.curation import lsh

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    encoder = Encoder()
    encoder.encode(["warm up"])
    return {"encoder": encoder, "decontaminator": Decontaminator(load_eval_tasks(args.mbpp), encoder=encoder),
            "model": clf.EduClassifier.load(Path(args.model)), "keep": lsh.survivor_rows(args.docs, None)}


def tokenize(args: argparse.Namespace, out: Path, limits) -> dict:
    import polars as pl
    import pyarrow.parquet as pq

    from phi_assets.mixture import tokenizer as tk
    from phi_assets.mixture import tokens

    loaded = tk.load(Path(args.model))
    counted = {"batches": 0, "largest": 0}

    def measured(batches):  # the batches as they are, and the text of the largest one
        for ids, texts in batches:
            counted["batches"] += 1
            counted["largest"] = max(counted["largest"], sum(len(t.encode()) for t in texts))
            yield ids, texts

    with open(args.docs, "rb") as f:
        if args.before:  # the reader before: 1,024 documents a batch, whatever their size
            def read_documents(path, batch_rows=1024):
                with pq.ParquetFile(path) as parquet:
                    for batch in parquet.iter_batches(batch_size=batch_rows, columns=["id", "text"]):
                        yield batch.column("id").to_pylist(), batch.column("text").to_pylist()

            stats = tokens.write_shard(measured(read_documents(f)), loaded, out / "tokens", "bench")
            lengths = pl.read_parquet(out / "tokens" / tokens.DOCUMENTS)["num_tokens"]
        else:
            limits = limits or tokens.TOKENIZE_MEMORY.batches(args.budget_mb)
            batches = measured(tokens.read_documents(f, limits=limits))
            stats = tokens.write_shard(batches, loaded, out / "tokens", "bench")
            lengths = pl.read_parquet(out / "tokens" / tokens.DOCUMENTS, columns=["num_tokens"])["num_tokens"]
    hist = [0] * 24
    for n in lengths.to_list():
        hist[min(n.bit_length() - 1, 23)] += 1
    return {"batches": counted["batches"], "largest_batch_mb": counted["largest"] / 2**20,
            "same": {"stats": stats.__dict__, "length_hist": hist}}


def child(args: argparse.Namespace) -> None:
    from phi_assets.ingest.batches import Batches

    loaded = score_models(args) if args.child == "score" else {}
    imported = _status("VmRSS")
    limits = Batches(args.batch_mb << 20, 1 << 30) if args.batch_mb else None
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.child == "ingest":
        result = ingest(args, out, limits)
    elif args.child == "score":
        result = score(args, out, limits, loaded)
    else:
        result = tokenize(args, out, limits)
    wall = time.perf_counter() - t0
    print(json.dumps({**result, "wall": wall, "imported_mb": imported,
                      "self_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, default=str))


def batch_text_mb(step: str, case: dict, budget_mb: int, text_mb: float) -> float:
    """MiB of text per batch of a case: its explicit size, its budget's, or (before) the whole shard."""
    from phi_assets.curation import stages
    from phi_assets.ingest import expectations
    from phi_assets.mixture import tokens

    if "largest_batch_mb" in case:  # measured by the case (tokenize)
        return case["largest_batch_mb"]
    if case.get("batch_mb"):
        return min(case["batch_mb"], text_mb)
    if case["before"]:
        return text_mb
    memory = {"ingest": expectations.VALIDATE_MEMORY, "score": stages.SCORE_MEMORY,
              "tokenize": tokens.TOKENIZE_MEMORY}[step]
    return min(memory.batches(budget_mb, "code").text_bytes / 2**20, text_mb)


def run_case(step: str, name: str, extra: list[str], inputs: dict, workdir: Path) -> dict:
    out = workdir / "".join(c if c.isalnum() else "_" for c in f"{step} {name}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", step, *extra, "--out", str(out), *inputs[step]]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"{step} {name} failed ({proc.returncode}):\n{stderr.read()[-3000:]}")
        stdout.seek(0)
        result = json.loads(stdout.read().splitlines()[-1])
    return {**result, "peak_mb": usage.ru_maxrss / 1024, "out": out}


def digests(out: Path) -> dict[str, str]:
    """Every output file: parquet row by row (schema, then a hash per row, as filter_memory.py), the rest
    byte for byte."""
    sums = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            sums[str(path.relative_to(out))] = filter_memory.digest(path)
        else:
            sums[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


def compare(runs: dict[str, dict]) -> dict[str, str]:
    """Per case: are its outputs and its result's comparable part before's?"""
    ref = runs.get("before")
    out = {}
    for name, run in runs.items():
        if name == "before":
            out[name] = "reference"
        elif ref is None:
            out[name] = "-"
        else:
            differ = [f for f in sorted(set(run["files"]) | set(ref["files"]))
                      if run["files"].get(f) != ref["files"].get(f)]
            if json.dumps(run["same"], sort_keys=True, default=str) != json.dumps(ref["same"], sort_keys=True,
                                                                                   default=str):
                differ.append("metadata")
            out[name] = "DIFFERENT: " + ", ".join(differ) if differ else "identical"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=lambda v: [s for s in v.split(",") if s], default=list(STEPS),
                    help=f"comma-separated, of {','.join(STEPS)}")
    ap.add_argument("--budget-mb", type=int, default=None, help="memory budget (default: the configs' 2048)")
    ap.add_argument("--batch-mb", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="also run each step with explicit batches of these MiB of text (comma-separated)")
    ap.add_argument("--no-before", dest="before", action="store_false", help="skip the before cases")
    ap.add_argument("--threshold", type=float, default=2.6, help="scoring threshold (keeps about half)")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch threads in the score children")
    ap.add_argument("--mbpp", default="", help="MBPP's mbpp.jsonl (default: mbpp_source.resolve_mbpp())")
    ap.add_argument("--min-mb", type=float, default=400, help="least text in the code shard, MB")
    ap.add_argument("--cache", type=Path, default=CACHE, help="where the built shards and models are kept")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--before", dest="child_before", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--docs", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.before = args.child_before
        args.batch_mb = args.batch_mb[0] if args.batch_mb else None
        return child(args)
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown:
        raise SystemExit(f"unknown steps {unknown}; choose from {STEPS}")
    if args.budget_mb is None:
        from phi_assets.ingest.batches import DEFAULT_MEMORY_BUDGET_MB  # every step config's default

        args.budget_mb = DEFAULT_MEMORY_BUDGET_MB
    if args.prepare:
        return prepare(args)
    # The inputs are built in a child: a child's ru_maxrss starts at its parent's RSS when it is spawned
    # (the address space it has until exec), so the parent must stay small (it is reported).
    todo = [sys.executable, __file__, "--prepare", "--steps", ",".join(args.steps), "--min-mb",
            str(args.min_mb), "--cache", str(args.cache), "--budget-mb", str(args.budget_mb), "--threshold",
            str(args.threshold), "--torch-threads", str(args.torch_threads), "--mbpp", args.mbpp]
    built = subprocess.run(todo, stdout=subprocess.PIPE, text=True, check=True)
    prepared = json.loads(built.stdout.splitlines()[-1])
    infos, inputs = prepared["infos"], prepared["inputs"]
    cases = ([("before", ["--before"], {"before": True})] if args.before else []) + [
        (f"batched (budget {args.budget_mb} MB)", [], {"before": False})] + [
        (f"batched ({m} MiB batches)", ["--batch-mb", str(m)], {"before": False, "batch_mb": m})
        for m in args.batch_mb]
    results: dict[str, dict[str, dict]] = {}
    parent_rss = []
    with tempfile.TemporaryDirectory(prefix="step-memory-") as tmp:
        for step in args.steps:
            results[step] = {}
            for name, extra, case in cases:
                parent_rss.append(_status("VmRSS"))
                run = run_case(step, name, extra, inputs, Path(tmp))
                results[step][name] = {**run, **case}
                print(f"# {step}: {name}: peak {run['peak_mb']:,.0f} MB, {run['wall']:.1f} s",
                      file=sys.stderr, flush=True)
        for runs in results.values():  # after every child: reading the outputs makes this process grow
            for run in runs.values():
                run["files"] = digests(run.pop("out"))
    args.parent_rss = max(parent_rss)
    print_report(args, infos, results)


def print_report(args: argparse.Namespace, infos: dict, results: dict[str, dict[str, dict]]) -> None:
    import polars as pl
    import pyarrow as pa

    print(f"Python {platform.python_version()}, polars {pl.__version__} ({pl.thread_pool_size()} threads), "
          f"pyarrow {pa.__version__}; {os.cpu_count()} CPUs; budget {args.budget_mb} MB"
          + (f"; torch threads in score: {args.torch_threads}" if args.torch_threads else "")
          + f"; this process's RSS when it started a case: at most {args.parent_rss:,.0f} MiB")
    for step in results:
        info = infos[SHARD[step]]
        print(f"{step} shard: {info['docs']:,} documents of {info['what']}, {info['text_bytes'] / 1e6:,.1f} MB "
              f"({info['text_bytes'] / 2**20:,.1f} MiB) of text")
    for step, runs in results.items():
        for name, run in runs.items():
            written = run.get("written_peak_mb")
            extra = f", peak after writing {written:,.0f} MiB" if written else ""
            if step == "score":
                extra += f"; funnel {run['same']['funnel']}, re-check flagged {run['same']['recheck_flagged']}"
            print(f"{step} {name}: RSS after imports {run['imported_mb']:,.0f} MiB{extra}")
    print("peak RSS: the child's ru_maxrss; budget: peak <= budget; wall: the step, imports and models "
          "excluded; x before = case / before (lower is better)\n")
    head = ["step", "case", "batches", "MiB text/batch", "peak RSS MiB", "budget", "x before (peak)", "wall s",
            "x before (wall)", "outputs"]
    rows = []
    for step, runs in results.items():
        text_mb = infos[SHARD[step]]["text_bytes"] / 2**20
        same = compare(runs)
        base = runs.get("before")
        for name, run in runs.items():
            ratio = {key: f"{run[key] / base[key]:.2f}x" if base else "" for key in ("peak_mb", "wall")}
            rows.append([step, name, f"{run['batches']:,}",
                         f"{batch_text_mb(step, run, args.budget_mb, text_mb):,.0f}", f"{run['peak_mb']:,.0f}",
                         "ok" if run["peak_mb"] <= args.budget_mb else "OVER", ratio["peak_mb"],
                         f"{run['wall']:.1f}", ratio["wall"], same[name]])
    print(format_table(head, rows, args.markdown))
    for step, runs in results.items():
        print(fit(step, runs, args.budget_mb, infos[SHARD[step]]["text_bytes"] / 2**20))


def fit(step: str, runs: dict[str, dict], budget_mb: int, text_mb: float) -> str:
    """Peak RSS against MiB of text per batch, a least-squares line over the batched cases."""
    points = [(batch_text_mb(step, r, budget_mb, text_mb), r["peak_mb"])
              for r in runs.values() if not r["before"]]
    if len({x for x, _ in points}) < 2:
        return ""
    slope, intercept = statistics.linear_regression(*zip(*points, strict=True))
    return (f"{step}: fit over the batched cases: peak RSS = {intercept:,.0f} MiB + {slope:.1f} x MiB of text "
            "per batch")


if __name__ == "__main__":
    main()
