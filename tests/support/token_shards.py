"""Token shards written straight from NumPy (``tokens.write_encoded``, no tokenizer): many documents of
chosen lengths in a fraction of a second, for the loader's memory and the long-document shares."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from phi_assets.mixture import tokens
from phi_assets.mixture.tokens import TokenShard


def numpy_shard(out: Path, lengths, prefix: str, seed: int = 0) -> TokenShard:
    """A shard of ``len(lengths)`` documents with ids ``prefix-<i>``: random ids below 512, each
    document's last token the separator 0."""
    lengths = np.asarray(lengths, dtype=np.int64)
    flat = np.random.default_rng(seed).integers(1, 512, int(lengths.sum())).astype(np.uint16)
    flat[np.cumsum(lengths) - 1] = 0
    ids = [f"{prefix}-{i}" for i in range(len(lengths))]
    tokens.write_encoded(iter([(ids, flat, lengths, 0)]), out, np.uint16, 512, 0, "numpy")
    return TokenShard.open(out)


def random_lengths(num_docs: int, longest: int, seed: int = 0) -> np.ndarray:
    """Document lengths spread evenly over the powers of two up to ``longest`` (log-uniform)."""
    draws = np.random.default_rng(seed).uniform(0, np.log(longest), num_docs)
    return np.maximum(np.exp(draws).astype(np.int64), 1)


def as_format_1(shard: TokenShard, out: Path) -> TokenShard:
    """A copy of ``shard`` as written before ``split.bin`` and the length histogram."""
    shutil.copytree(shard.path, out)
    (out / tokens.SPLIT).unlink()
    meta = json.loads((out / tokens.META).read_text())
    for key in ("shard_format", "length_docs", "length_tokens"):
        del meta[key]
    (out / tokens.META).write_text(json.dumps(meta))
    return TokenShard.open(out)
