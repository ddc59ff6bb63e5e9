"""Small real inputs for the mixture tests: standard-library source as a corpus, a byte-level BPE trained
on it, token shards written with it, and the loader's batches as arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from phi_assets.mixture import tokenizer, tokens
from phi_assets.mixture.tokens import TokenShard

STDLIB = Path(os.__file__).parent
CORPUS_FILES = (
    "argparse.py",
    "dataclasses.py",
    "functools.py",
    "textwrap.py",
    "string.py",
    "json/encoder.py",
    "json/decoder.py",
    "os.py",
)


def stdlib_corpus() -> list[str]:
    """About 300 KB of real text: standard-library modules, in a fixed order."""
    return [(STDLIB / name).read_text(encoding="utf-8") for name in CORPUS_FILES]


def paragraphs_of(corpus: list[str]) -> list[str]:
    """Documents: the non-blank paragraphs of the corpus, in order (about a thousand)."""
    return [p for text in corpus for p in text.split("\n\n") if p.strip()]


def train_tokenizer(corpus: list[str], out: Path) -> Path:
    """A byte-level BPE of 512 tokens trained on ``corpus``, saved to ``out``."""
    tokenizer.save(tokenizer.train_bpe(iter(corpus), 512), out)
    return out


def encode(loaded, text):
    return tokenizer.encode_documents(loaded, [text])[0]


def write(loaded, out, texts, prefix):
    """A one-batch shard of ``texts`` with ids ``prefix-0000``, ``prefix-0001``, ..."""
    ids = [f"{prefix}-{i:04d}" for i in range(len(texts))]
    tokens.write_shard(iter([(ids, list(texts))]), loaded, out, "test")
    return TokenShard.open(out)


def write_parquet(path, ids, texts):
    pl.DataFrame({"id": ids, "text": texts}).write_parquet(path, row_group_size=50)
    return path


def rows_of(batch):
    """Each row's seq_len + 1 tokens: the inputs and the last label."""
    return np.concatenate([batch.input_ids, batch.labels[:, -1:]], axis=1)


def batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_array_equal(x.input_ids, y.input_ids)
        np.testing.assert_array_equal(x.labels, y.labels)
        assert x.sources == y.sources
