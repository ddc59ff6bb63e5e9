"""datatrove's MinHash signature stage on one core: the peer of ``benchmarks/minhash.py``.

Runs in the separate benchmark interpreter that has datatrove installed (never the product's venv).
Reads the documents from a JSONL file (one ``{"text": ...}`` per line), builds datatrove
``Document`` objects (not timed), runs one untimed warm-up on the first 20 documents (loads the
spaCy word tokenizer), then times ``--repeats`` full passes of
``MinhashDedupSignature(output_folder=<fresh temp dir>, config=MinhashConfig(n_grams, num_buckets,
hashes_per_bucket, seed))``.run(...): per document simplify_text, word tokenization, xxhash64 of
each shingle and the permutations, plus writing the 14 per-bucket signature files and sorting
them, all part of its stage. ``--tokenizer whitespace`` swaps its default English word tokenizer
(spaCy) for ``str.split`` on the simplified text, to show how much of its time the tokenizer takes.
Prints one JSON object: docs, seconds, cpu_seconds, output bytes.

Usage (normally started by benchmarks/minhash.py):  PEER_PYTHON datatrove_minhash.py --input FILE
--cpu N [--repeats R] [--tokenizer default|whitespace] [--n-grams 5] [--num-buckets 14]
[--hashes-per-bucket 8] [--seed 1]
"""

from __future__ import annotations

import argparse
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
    os.environ[var] = "1"

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--cpu", type=int, required=True, help="the one CPU to pin this process to")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tokenizer", choices=["default", "whitespace"], default="default")
    ap.add_argument("--n-grams", type=int, default=5)
    ap.add_argument("--num-buckets", type=int, default=14)
    ap.add_argument("--hashes-per-bucket", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})

    from importlib.metadata import version

    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.logging import logger
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Whitespace(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    logger.remove()  # its per-stage log lines would only slow it down and clutter our output
    with open(args.input, encoding="utf-8") as f:
        docs = [Document(text=json.loads(line)["text"], id=str(i)) for i, line in enumerate(f)]
    config = MinhashConfig(n_grams=args.n_grams, num_buckets=args.num_buckets,
                           hashes_per_bucket=args.hashes_per_bucket, seed=args.seed)

    def run(batch: list[Document]) -> tuple[float, float, int]:
        with tempfile.TemporaryDirectory(prefix="dt-minhash-") as out:
            extra = {"language": Whitespace()} if args.tokenizer == "whitespace" else {}  # default: English
            stage = MinhashDedupSignature(output_folder=out, config=config, **extra)
            w0, c0 = time.perf_counter(), time.process_time()
            stage.run(iter(batch), rank=0)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
        return wall, cpu, size

    run(docs[:20])
    results = [run(docs) for _ in range(args.repeats)]
    print(json.dumps({"docs": len(docs), "seconds": [r[0] for r in results],
                      "cpu_seconds": [r[1] for r in results], "output_bytes": results[-1][2],
                      "datatrove": version("datatrove"),
                      "cpus": sorted(os.sched_getaffinity(0))}))


if __name__ == "__main__":
    main()
