"""Midtraining's long-document mix (phi-4), from the token shards' metadata.

phi-4 upsampled documents over 8K tokens into 30% of its midtraining tokens. ``long_context_weights``
keeps ``1 - long_mix`` of the pretraining weights (recall) and spreads ``long_mix`` over the sources in
proportion to their weight times their share of tokens in documents of at least ``min_tokens`` (the
new context length). That share comes from each shard's ``tokens.json``: its histogram of document
lengths (``tokens.length_histogram``: per power-of-two bucket ``[2**b, 2**(b+1))``, the documents and
their tokens), so a source costs O(shards) reads and memory, never an array per document:

- ``min_tokens`` a power of two (a bucket boundary; the default new length, twice a power of two, is
  one) or at most 1: the buckets from ``min_tokens`` up, exactly, from the histograms alone;
- any other ``min_tokens``: the buckets above its own, from the histograms, plus the documents of
  its bucket that are at least ``min_tokens`` long, counted exactly by streaming the lengths
  (``documents.parquet``'s ``num_tokens``, a row group at a time) of the shards that have documents
  in that bucket; a shard with none there, or whose longest document is below ``min_tokens``, is
  not read;
- a shard written before the histogram (format 1): its lengths are streamed the same way, one shard
  at a time (bounded memory, the same result); re-materializing its ``tokenized_<source>`` partition
  writes the histogram and skips the read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from phi_assets.mixture.tokens import ShardStats

Lengths = Callable[[], Iterable[np.ndarray]]  # a shard's document lengths, streamed in chunks


@dataclass(frozen=True)
class LongTokens:
    """A source's tokens (separators included) and those in documents of at least ``min_tokens``."""

    tokens: int = 0
    long: int = 0

    def __add__(self, other: LongTokens) -> LongTokens:
        return LongTokens(self.tokens + other.tokens, self.long + other.long)

    @property
    def share(self) -> float:
        return self.long / self.tokens if self.tokens else 0.0


def _streamed(lengths: Lengths, low: int, high: float) -> int:
    """Tokens in the documents of length in ``[low, high)``, streamed."""
    total = 0
    for chunk in lengths():
        chunk = np.asarray(chunk, dtype=np.int64)
        total += int(chunk[(chunk >= low) & (chunk < high)].sum())
    return total


def shard_long_tokens(stats: ShardStats, lengths: Lengths, min_tokens: int) -> LongTokens:
    """One shard's ``LongTokens``: from its histogram, reading ``lengths`` only for the bucket that
    ``min_tokens`` splits, or for a shard without a histogram (see the module doc)."""
    if min_tokens <= 1:
        return LongTokens(stats.num_tokens, stats.num_tokens)
    if min_tokens > stats.max_doc_tokens:
        return LongTokens(stats.num_tokens, 0)
    if stats.length_docs is None or stats.length_tokens is None:
        return LongTokens(stats.num_tokens, _streamed(lengths, min_tokens, math.inf))
    bucket = min_tokens.bit_length() - 1  # min_tokens is in [2**bucket, 2**(bucket + 1))
    if min_tokens == 1 << bucket:
        return LongTokens(stats.num_tokens, sum(stats.length_tokens[bucket:]))
    long = sum(stats.length_tokens[bucket + 1 :])
    if bucket < len(stats.length_docs) and stats.length_docs[bucket]:
        long += _streamed(lengths, min_tokens, 1 << (bucket + 1))
    return LongTokens(stats.num_tokens, long)


def source_long_tokens(shards: Iterable[tuple[ShardStats, Lengths]], min_tokens: int) -> LongTokens:
    """A source's ``LongTokens`` over its shards, one shard at a time."""
    if min_tokens < 0:
        raise ValueError(f"min_tokens must be >= 0, got {min_tokens}")
    return sum((shard_long_tokens(stats, lengths, min_tokens) for stats, lengths in shards), LongTokens())


def long_context_weights(
    long: Mapping[str, LongTokens], weights: Mapping[str, float], long_mix: float = 0.3
) -> tuple[dict[str, float], dict[str, float]]:
    """phi-4's midtraining mix over the sources of ``long`` (each source's ``LongTokens`` at the new
    context length): ``1 - long_mix`` of the pretraining weights (recall) plus ``long_mix`` spread in
    proportion to weight times long-token share. Returns (weights, each source's long-token share).
    With no long document anywhere the pretraining weights are kept."""
    if not 0 <= long_mix <= 1:
        raise ValueError(f"long_mix must be in [0, 1], got {long_mix}")
    share = {name: counts.share for name, counts in long.items()}
    base = sum(weights.get(n, 0.0) for n in long) or 1.0
    longs = {n: weights.get(n, 0.0) * share[n] for n in long}
    norm = sum(longs.values())
    if norm == 0:
        return {n: weights.get(n, 0.0) / base for n in long}, share
    mixed = {n: (1 - long_mix) * weights.get(n, 0.0) / base + long_mix * longs[n] / norm for n in long}
    return mixed, share
