"""datatrove's ``DocumentTokenizer`` on one core: the peer of ``benchmarks/tokenize_throughput.py``.

Runs in the separate benchmark interpreter that has datatrove installed (never the product's venv).
That environment has no pyarrow, so datatrove's ``ParquetReader`` cannot read the benchmark's parquet
file; the parent script writes the same documents (same order) as JSONL (``{"id", "text"}`` per line)
and this script builds the datatrove ``Document`` objects from it before any timing. Then one untimed
warm-up on the first 20 documents (imports, first tokenizer load), then ``--repeats`` timed passes of

    DocumentTokenizer(output_folder=<out-dir>/pass-k, tokenizer_name_or_path=<tokenizer.json>,
                      eos_token="<|endoftext|>", shuffle_documents=False).run(iter(docs), rank=0)

which loads the tokenizer file (``Tokenizer.from_file`` for a local path), sets a post-processor that
appends the eos token to every document, ``encode_batch``-es 10,000 documents at a time (its default:
the whole corpus here) and writes ``00000_unshuffled.ds`` (uint16 tokens), ``.ds.index`` (uint64
document ends) and ``.ds.metadata`` (tokenizer name and token count). The thread pools are limited
and the process is pinned to ``--cpu`` before tokenizers is imported. The last pass's files are left
in ``--out-dir`` for the parent to compare with its own. Prints one JSON object: docs, tokens (from
the .metadata file, and from datatrove's "tokens" stat), seconds, cpu_seconds, files, versions.

Usage (normally started by benchmarks/tokenize_throughput.py):  PEER_PYTHON datatrove_tokenize.py
--input FILE.jsonl --tokenizer DIR/tokenizer.json --out-dir DIR --cpu N [--repeats R]
"""

from __future__ import annotations

import os

# One core: the tokenizers crate's rayon pool and every other pool get one thread, set before import.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

EOT = "<|endoftext|>"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="JSONL with id and text per line")
    ap.add_argument("--tokenizer", required=True, help="path of the tokenizer.json")
    ap.add_argument("--out-dir", required=True, help="folder for the token files (last pass kept)")
    ap.add_argument("--cpu", type=int, required=True, help="the one CPU to pin this process to")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})

    from importlib.metadata import version

    from datatrove.data import Document
    from datatrove.pipeline.tokens.tokenizer import DocumentTokenizer
    from datatrove.utils.logging import logger

    logger.remove()  # its log lines would only clutter the parent's output
    with open(args.input, encoding="utf-8") as f:
        docs = [Document(text=row["text"], id=row["id"]) for row in map(json.loads, f)]
    out = Path(args.out_dir)

    def run(batch: list[Document], folder: Path) -> tuple[float, float, int]:
        shutil.rmtree(folder, ignore_errors=True)
        step = DocumentTokenizer(output_folder=str(folder), tokenizer_name_or_path=args.tokenizer,
                                 eos_token=EOT, shuffle_documents=False)
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        result = step.run(iter(batch), rank=0, world_size=1)
        if result is not None:  # a generator in some versions: drain it
            for _ in result:
                pass
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        return wall, cpu, int(step.stats.stats["tokens"].total)

    run(docs[:20], out / "warmup")
    shutil.rmtree(out / "warmup", ignore_errors=True)
    results, folder = [], out
    for k in range(args.repeats):
        if k:
            shutil.rmtree(folder)  # keep only the last pass's files
        folder = out / f"pass-{k}"
        results.append(run(docs, folder))
    ds = sorted(folder.glob("*.ds"))
    meta = (folder / f"{ds[0].name}.metadata").read_text().splitlines() if len(ds) == 1 else []
    print(json.dumps({
        "docs": len(docs), "seconds": [r[0] for r in results], "cpu_seconds": [r[1] for r in results],
        "tokens_stat": results[-1][2], "tokens_metadata": int(meta[1]) if len(meta) > 1 else None,
        "files": [str(p) for p in sorted(folder.iterdir())],
        "versions": {"python": platform.python_version(), "datatrove": version("datatrove"),
                     "tokenizers": version("tokenizers")},
        "cpus": sorted(os.sched_getaffinity(0)),
    }))


if __name__ == "__main__":
    main()
