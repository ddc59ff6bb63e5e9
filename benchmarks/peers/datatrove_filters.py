"""datatrove's four quality filters on a JSONL corpus, for benchmarks/heuristic_filters.py.

Run only by the benchmark's peer interpreter (an environment with datatrove and spaCy, never the
product's). Reads ``{"id", "text"}`` lines, builds datatrove ``Document``s outside the timed
region, pins itself to one CPU, and prints one JSON object: per filter the seconds of one pass of
``filter()`` over all documents (wall and CPU), the keep decisions, and the same for the four
filters chained per document as a datatrove pipeline runs them (a dropped document stops).

    <peer python> benchmarks/peers/datatrove_filters.py --corpus FILE --cpu N
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--cpu", type=int, required=True)
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})

    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.utils.text import split_into_parts

    with open(args.corpus, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    filters = {
        "gopher_quality": GopherQualityFilter(),
        "gopher_repetition": GopherRepetitionFilter(),
        # Defaults = the C4 paper / TFDS rules: lines split on newlines, citations removed, terminal
        # punctuation, >= 3 words per line, <= 1000-character words, lorem ipsum, javascript, "{",
        # policy lines, >= 5 sentences. It also rewrites a kept document's text; the keep/drop
        # decision is what the product computes.
        "c4": C4QualityFilter(),
        "fineweb": FineWebQualityFilter(),
    }
    warm = Document(text="Warm up the tokenizer. It loads spaCy's English rules once.", id="warm")
    for flt in filters.values():
        flt.filter(warm)

    def docs() -> list[Document]:  # fresh objects: C4 rewrites the text of documents it keeps
        return [Document(text=r["text"], id=r["id"]) for r in rows]

    out: dict = {"versions": {"python": platform.python_version(), "datatrove": version("datatrove"),
                              "spacy": version("spacy")},
                 "cpu_allowed": sorted(os.sched_getaffinity(0)), "wall": {}, "cpu": {}, "kept": {}}
    for name, flt in filters.items():
        batch = docs()
        split_into_parts.cache_clear()  # datatrove caches the last 5 tokenizations; start cold
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        results = [flt.filter(d) for d in batch]
        out["cpu"][name] = time.process_time() - c0
        out["wall"][name] = time.perf_counter() - w0
        out["kept"][name] = [r is True for r in results]

    # The datatrove pipeline: each document goes through the filters in turn until one drops it
    # (the tokenization cache then serves the later filters of the same document).
    batch = docs()
    split_into_parts.cache_clear()
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    kept = []
    for d in batch:
        kept.append(all(flt.filter(d) is True for flt in filters.values()))
    out["cpu"]["pipeline"] = time.process_time() - c0
    out["wall"]["pipeline"] = time.perf_counter() - w0
    out["kept"]["pipeline"] = kept
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
