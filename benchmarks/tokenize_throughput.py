"""Tokenization throughput on ONE core: phi-factory's token shards, transformers, a naive loop, datatrove.

Corpus: the running Python's standard library (``stdlib_files`` with one code shard, ~1790 ``*.py``
files, ~31.5 MB of UTF-8 text; ``--limit-files K`` keeps the first K), written once with the
relative path as ``id`` and the text as ``text`` to a zstd parquet file in a temp dir. One
byte-level BPE is trained on it with ``tokenizer.train_bpe(texts, vocab_size)`` (``--vocab-size``,
default 8192) and saved with ``tokenizer.save``, so every case loads the same ``tokenizer.json``.

Cases: each reads that corpus, encodes every document, appends the separator ``<|endoftext|>``
after each one and writes the packed token ids to disk (uint16 while the vocabulary fits):

a. ours: ``write_shard(read_documents(parquet), load(dir), out, "bench")``, end to end (parquet
   batches of 1024 rows, ``encode_batch_fast``, tokens.bin, offsets.bin, documents.parquet, tokens.json).
b. transformers: ``AutoTokenizer.from_pretrained(dir)`` (the fast tokenizer), the parquet read with
   pyarrow in batches of 1024, ``tok(texts)["input_ids"]``, eos appended to each, written with
   ``np.array(..., dtype=np.uint16).tofile`` (plus an int64 offsets file), as a user would write it.
c. naive loop: ``Tokenizer.from_file(tokenizer.json).encode(text).ids`` per document, appended to
   one list, written with numpy at the end.
d. datatrove 0.10.1 ``DocumentTokenizer`` (``tokenizer_name_or_path`` = the tokenizer.json, eos
   ``<|endoftext|>``, no shuffling, writing to a local folder), run by ``--peer-python`` through
   ``benchmarks/peers/datatrove_tokenize.py``. The peer environment has no pyarrow, so it gets the
   same documents as JSONL and builds its ``Document``s before timing: its time has no file reading.

Every timed pass includes loading the tokenizer. One core: ``RAYON_NUM_THREADS=1`` and
``TOKENIZERS_PARALLELISM=false`` (the tokenizers crate then encodes batches sequentially) and the
other pools' variables are set before any import, the process pins itself to one CPU and the peer
pins itself to the same one. Each case gets an untimed warm-up on the first 64 documents, then
``--repeats`` rounds time every case once, ours, b and c in rotated order and the peer (one timed
pass after its own warm-up, in a fresh interpreter) alternately first and last. Reported: median
wall and CPU seconds; tokens written (separators included); ``tokens/s (per core)`` = tokens /
median CPU seconds (one thread each, so CPU time is the work done on the core; on a shared core wall
time also counts waiting for it); ``x ours`` = the case's tokens/s / ours (above 1: faster than
ours). The token files of b, c and d are compared with ours, id for id and document end for
document end. No timed assertions.

Run from the repository root:  .venv/bin/python benchmarks/tokenize_throughput.py [--markdown]
[--repeats N] [--limit-files K] [--peer-python PATH] [--no-peer] [--vocab-size V]
(about 4 to 5 minutes on a 2-vCPU machine, almost all of it encoding 4 cases x 3 rounds x 8.7M
tokens; ``--limit-files 200 --repeats 2`` about 1 minute)
"""

from __future__ import annotations

import os
import time

STARTED = time.perf_counter()  # the whole run, imports included

# One core: limit thread pools before any library that owns one is imported, then pin the process.
os.environ["RAYON_NUM_THREADS"] = "1"  # the tokenizers crate's pool (encode_batch, BPE training)
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # and encode_batch runs sequentially
for _var in ("POLARS_MAX_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
CPU = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {CPU})

import argparse  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

pa.set_cpu_count(1)
pa.set_io_thread_count(1)

import pyarrow.parquet as pq  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

transformers.logging.set_verbosity_error()  # "sequence longer than model_max_length": no truncation here

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, without install
import peer_env  # noqa: E402  (benchmarks/, the script's own folder)
from table import format_table  # noqa: E402

from phi_assets.common.profiles import Sizes  # noqa: E402
from phi_assets.ingest.embedded import stdlib_files  # noqa: E402
from phi_assets.mixture import tokenizer as ptok  # noqa: E402
from phi_assets.mixture import tokens as ptokens  # noqa: E402

PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "datatrove_tokenize.py"
EOT = ptok.EOT
WARMUP_DOCS = 64
BATCH = 1024


@dataclass
class Case:
    name: str
    run: Callable[[Path, Path], None]  # (parquet, output folder): tokenizes the corpus once
    note: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    error: str = ""


def write_corpus(tmp: Path, limit: int | None) -> tuple[Path, Path, Path, list[str], list[str]]:
    files = stdlib_files(0, Sizes(num_code_shards=1))[:limit]
    ids = [rel for _, rel in files]
    texts = [Path(p).read_text(encoding="utf-8", errors="replace") for p, _ in files]
    paths = tmp / "corpus.parquet", tmp / "warmup.parquet", tmp / "corpus.jsonl"
    pq.write_table(pa.table({"id": ids, "text": texts}), paths[0], compression="zstd")
    pq.write_table(pa.table({"id": ids[:WARMUP_DOCS], "text": texts[:WARMUP_DOCS]}), paths[1],
                   compression="zstd")
    rows = zip(ids, texts, strict=True)
    paths[2].write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows), encoding="utf-8")
    return *paths, ids, texts


def make_cases(tok_dir: Path, dtype: np.dtype) -> list[Case]:
    tok_json = tok_dir / "tokenizer.json"

    def ours(parquet: Path, out: Path) -> None:
        ptokens.write_shard(ptokens.read_documents(str(parquet)), ptok.load(tok_dir), out, "bench")

    def with_transformers(parquet: Path, out: Path) -> None:
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        eos = tok.convert_tokens_to_ids(EOT)
        lengths: list[int] = []
        with open(out / "tokens.bin", "wb") as f, pq.ParquetFile(parquet) as pf:
            for batch in pf.iter_batches(batch_size=BATCH, columns=["text"]):
                ids = tok(batch.column("text").to_pylist())["input_ids"]
                for doc in ids:
                    doc.append(eos)
                lengths += map(len, ids)
                np.array(list(itertools.chain.from_iterable(ids)), dtype=dtype).tofile(f)
        np.cumsum([0, *lengths], dtype=np.int64).tofile(out / "offsets.bin")

    def naive(parquet: Path, out: Path) -> None:
        tok = Tokenizer.from_file(str(tok_json))
        eos = tok.token_to_id(EOT)
        ids: list[int] = []
        ends = [0]
        for text in pq.read_table(parquet, columns=["text"]).column("text").to_pylist():
            ids += tok.encode(text).ids
            ids.append(eos)
            ends.append(len(ids))
        np.array(ids, dtype=dtype).tofile(out / "tokens.bin")
        np.array(ends, dtype=np.int64).tofile(out / "offsets.bin")

    return [
        Case("ours: read_documents + write_shard", ours,
             "encode_batch_fast (no offsets), 1024 docs a batch; writes tokens.bin, offsets.bin, "
             "documents.parquet (ids), tokens.json"),
        Case("transformers AutoTokenizer, batches of 1024", with_transformers,
             f"transformers {transformers.__version__} {{cls}}: encode_batch (with offsets); "
             "tokens.bin + offsets.bin"),
        Case("naive Tokenizer.encode per document", naive,
             "one encode (with offsets) per document into one list; tokens.bin + offsets.bin"),
    ]


def timed(case: Case, parquet: Path, out: Path) -> None:
    if case.error:
        return
    gc.collect()
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        case.run(parquet, out)
        case.cpu.append(time.process_time() - c0)
        case.wall.append(time.perf_counter() - w0)
    except Exception as exc:  # reported in the table, not raised
        case.error = f"FAILED: {type(exc).__name__}: {exc}"


def run_peer(python: str, jsonl: Path, tok_json: Path, out: Path) -> dict:
    cmd = [python, str(PEER_SCRIPT), "--input", str(jsonl), "--tokenizer", str(tok_json), "--out-dir", str(out),
           "--cpu", str(CPU), "--repeats", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": f"FAILED (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(tokens: np.ndarray, ends: np.ndarray, ref_tokens: np.ndarray, ref_ends: np.ndarray) -> str:
    """How a case's token file differs from ours (empty: identical ids and document ends)."""
    if len(tokens) == len(ref_tokens) and np.array_equal(tokens, ref_tokens):
        return "" if np.array_equal(ends, ref_ends) else "same ids, DIFFERENT document ends"
    n = min(len(tokens), len(ref_tokens))
    diff = np.flatnonzero(tokens[:n] != ref_tokens[:n])
    first = int(diff[0]) if len(diff) else n
    doc = int(np.searchsorted(ref_ends, first, side="right"))
    return f"DIFFERENT ids: {len(tokens) - len(ref_tokens):+d} tokens, first difference at {first} (doc {doc})"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (median)")
    ap.add_argument("--limit-files", type=int, default=None, help="only the first K stdlib files")
    ap.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary (with <|endoftext|>)")
    peer_env.add_argument(ap, "datatrove")
    ap.add_argument("--no-peer", action="store_true", help="skip datatrove")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    return ap.parse_args()


def case_rows(cases, outs, dtype, stats, ref) -> tuple[list[list[str]], float | None]:
    """One table row per case (its last pass's files against ours), and our tokens/s."""
    ours_tps = None
    table = []
    ref_tokens, ref_ends = ref
    ours_dir = outs[cases[0].name]
    for case in cases:
        if case.error:
            table.append([case.name, "-", "-", "-", "-", "-", case.error])
            continue
        tok_arr = np.fromfile(outs[case.name] / "tokens.bin", dtype=dtype)
        ends = np.fromfile(outs[case.name] / "offsets.bin", dtype=np.int64)[1:]
        wall, cpu = statistics.median(case.wall), statistics.median(case.cpu)
        tps = len(tok_arr) / cpu
        if case is cases[0]:
            ours_tps = tps
            same = (f"{stats['num_docs']} docs; tokens.bin sha256 {sha(ours_dir / ptokens.TOKENS)}"
                    if stats["num_tokens"] == len(tok_arr) else "tokens.json and tokens.bin DISAGREE")
        else:
            same = compare(tok_arr, ends, ref_tokens, ref_ends) or "ids and document ends identical to ours"
        table.append([case.name, f"{wall:.3f}", f"{cpu:.3f}", f"{len(tok_arr):,}", f"{tps:,.0f}",
                      f"{tps / ours_tps:.2f}x" if ours_tps else "-", f"{case.note}; {same}"])
    return table, ours_tps


def peer_row(peer_runs, dtype, ref, ours_tps) -> tuple[list[str], str]:
    """datatrove's row (its last run's files against ours) and its versions line (None: skipped)."""
    ref_tokens, ref_ends = ref
    peer_name = "datatrove DocumentTokenizer (peer)"
    peer_versions = ""
    if peer_runs is None:
        return [peer_name, "-", "-", "-", "-", "-", "skipped (--no-peer)"], peer_versions
    if errors := [p["error"] for p in peer_runs if "error" in p]:
        return [peer_name, "-", "-", "-", "-", "-", errors[0]], peer_versions
    v = peer_runs[0]["versions"]
    peer_versions = (f"; peer: Python {v['python']}, datatrove {v['datatrove']}, tokenizers "
                     f"{v['tokenizers']}, pinned to {peer_runs[0]['cpus']}")
    files = [Path(f) for f in peer_runs[-1]["files"]]
    ds = next(f for f in files if f.suffix == ".ds")
    tok_arr = np.fromfile(ds, dtype=dtype)
    ends = np.fromfile(ds.with_name(ds.name + ".index"), dtype=np.uint64).astype(np.int64)
    count, stat = peer_runs[-1]["tokens_metadata"], peer_runs[-1]["tokens_stat"]
    counts = "" if count == stat == len(tok_arr) else (
        f"; COUNTS DISAGREE: .metadata {count}, stats {stat}, file {len(tok_arr)}")
    wall = statistics.median(s for p in peer_runs for s in p["seconds"])
    cpu = statistics.median(s for p in peer_runs for s in p["cpu_seconds"])
    tps = count / cpu
    same = compare(tok_arr, ends, ref_tokens, ref_ends) or "ids and document ends identical to ours"
    note = (f"datatrove {v['datatrove']}: encode_batch (with offsets) of 10,000 docs, struct.pack per doc; "
            ".ds + .index + .metadata (no ids); documents built before timing (JSONL, no parquet read); "
            f"tokens from its .metadata{counts}; {same}")
    row = [peer_name, f"{wall:.3f}", f"{cpu:.3f}", f"{count:,}", f"{tps:,.0f}",
           f"{tps / ours_tps:.2f}x" if ours_tps else "-", note]
    return row, peer_versions


def main() -> None:
    # the code under test as imported (hashed now: the files may change while the benchmark runs)
    stamp = ", ".join(f"{Path(m.__file__).name} {sha(Path(m.__file__))}" for m in (ptok, ptokens))
    args = parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    use_peer = not args.no_peer
    if use_peer:
        peer_env.require(args.peer_python, ", or pass --no-peer")

    with tempfile.TemporaryDirectory(prefix="phi-bench-tokenize-") as tmp_name:
        tmp = Path(tmp_name)
        parquet, warmup, jsonl, ids, texts = write_corpus(tmp, args.limit_files)
        mbytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        literal_eot = sum(EOT in t for t in texts)

        c0 = time.process_time()
        tok_dir = tmp / "tokenizer"
        ptok.save(ptok.train_bpe(texts, vocab_size=args.vocab_size), tok_dir)
        train_cpu = time.process_time() - c0
        loaded = ptok.load(tok_dir)
        cases = make_cases(tok_dir, loaded.dtype)
        cls = type(AutoTokenizer.from_pretrained(str(tok_dir))).__name__
        cases[1].note = cases[1].note.format(cls=cls)
        outs = {c.name: tmp / f"out-{k}" for k, c in enumerate(cases)}
        for case in cases:  # warm-up (imports, first tokenizer load, allocator), on a small parquet
            outs[case.name].mkdir()
            try:
                case.run(warmup, outs[case.name])
            except Exception as exc:
                case.error = f"FAILED: {type(exc).__name__}: {exc}"

        peer_runs: list[dict] = []
        for r in range(args.repeats):
            order = cases[r % len(cases):] + cases[: r % len(cases)]
            if use_peer and r % 2 == 1:
                peer_runs.append(run_peer(args.peer_python, jsonl, tok_dir / "tokenizer.json", tmp / "peer"))
            for case in order:
                timed(case, parquet, outs[case.name])
            if use_peer and r % 2 == 0:
                peer_runs.append(run_peer(args.peer_python, jsonl, tok_dir / "tokenizer.json", tmp / "peer"))

        # The files of the last pass of every case, against ours.
        dtype = loaded.dtype
        ours_dir = outs[cases[0].name]
        stats = json.loads((ours_dir / ptokens.META).read_text()) if not cases[0].error else None
        ref_tokens, ref_ends = np.zeros(0, dtype), np.zeros(0, np.int64)
        if stats:
            ref_tokens = np.fromfile(ours_dir / ptokens.TOKENS, dtype=dtype)
            ref_ends = np.fromfile(ours_dir / ptokens.OFFSETS, dtype=np.int64)[1:]
        table, ours_tps = case_rows(cases, outs, dtype, stats, (ref_tokens, ref_ends))

        runs = peer_runs if use_peer else None
        row, peer_versions = peer_row(runs, dtype, (ref_tokens, ref_ends), ours_tps)
        table.append(row)

    print(f"Python {platform.python_version()}, tokenizers {tokenizers.__version__}, transformers "
          f"{transformers.__version__}, pyarrow {pa.__version__}, numpy {np.__version__}{peer_versions}; "
          f"pinned to CPU {CPU} (allowed after pinning: {sorted(os.sched_getaffinity(0))}); "
          f"RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false; repeats {args.repeats}")
    print(f"code under test (sha256): {stamp}")
    per_token = f"{mbytes * 1e6 / max(stats['num_tokens'] - stats['num_docs'], 1):.2f}" if stats else "-"
    print(f"corpus: {len(ids)} stdlib files, {mbytes:.1f} MB UTF-8 text ({literal_eot} contain a literal "
          f"{EOT}); byte-level BPE, vocab {loaded.vocab_size} ({dtype.name} ids), trained in {train_cpu:.1f} "
          f"CPU s; {per_token} bytes/token")
    print("tokens include one separator per document; tokens/s (per core) = tokens / median CPU s (one thread, "
          "pinned; wall time on a shared core also counts waiting for it); x ours = case tokens/s / ours "
          f"tokens/s (higher is faster); whole run {time.perf_counter() - STARTED:.0f} s\n")
    print(format_table(["case", "median s", "cpu s", "tokens", "tokens/s (per core)", "x ours", "notes"],
                       table, args.markdown))


if __name__ == "__main__":
    main()
