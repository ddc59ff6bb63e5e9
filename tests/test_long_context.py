"""Midtraining's long-document mix from the token shards' length histograms: the same shares as the
per-document lengths give, reading a shard's lengths only where the histogram cannot answer."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from phi_assets.mixture import tokens
from phi_assets.training.long_context import LongTokens, long_context_weights, source_long_tokens
from tests.support.token_shards import as_format_1, numpy_shard, random_lengths

POWERS = [0, 1, 2, 64, 128, 1024, 4096]
BETWEEN = [3, 100, 1000, 1500, 3000, 4999, 10**6]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three shards: lengths spread over 1..5,000 tokens, the same, and only short documents (< 64)."""
    root = tmp_path_factory.mktemp("long")
    return [
        numpy_shard(root / "spread", random_lengths(600, 5000, seed=1), "a"),
        numpy_shard(root / "spread2", random_lengths(400, 5000, seed=2), "b"),
        numpy_shard(root / "short", random_lengths(300, 63, seed=3), "c"),
    ]


def from_metadata(shards, min_tokens):
    """``source_long_tokens`` over the shards' stats, recording which shards' lengths were read."""
    read: list[str] = []

    def lengths(shard):
        def stream():
            read.append(shard.path.name)
            yield from tokens.document_lengths(shard.path / tokens.DOCUMENTS, rows=100)

        return stream

    return source_long_tokens([(s.stats, lengths(s)) for s in shards], min_tokens), read


def from_lengths(shards, min_tokens) -> LongTokens:
    lengths = np.concatenate(
        [pq.read_table(s.path / tokens.DOCUMENTS)["num_tokens"].to_numpy() for s in shards]
    )
    return LongTokens(int(lengths.sum()), int(lengths[lengths >= min_tokens].sum()))


@pytest.mark.parametrize("min_tokens", POWERS + BETWEEN)
def test_long_share_from_the_histograms_equals_the_share_from_the_lengths(shards, min_tokens):
    """Exact at any ``min_tokens``: a power of two from the histograms alone; otherwise the lengths of
    the shards with documents in min_tokens' bucket are read, and those of no other shard."""
    got, read = from_metadata(shards, min_tokens)
    expected = from_lengths(shards, min_tokens)
    assert got == expected and got.share == pytest.approx(expected.share, abs=0)
    bucket = max(min_tokens, 1).bit_length() - 1
    straddled = [
        s.path.name
        for s in shards
        if min_tokens not in POWERS
        and bucket < len(s.stats.length_docs)
        and s.stats.length_docs[bucket]
        and s.stats.max_doc_tokens >= min_tokens
    ]
    assert read == straddled
    if min_tokens in (100, 1000):
        assert read == ["spread", "spread2"]  # the short shard is never read


@pytest.mark.parametrize("min_tokens", [1, 64, 1000, 6000])
def test_shards_without_a_histogram_stream_their_lengths_for_the_same_share(shards, tmp_path, min_tokens):
    old = [as_format_1(s, tmp_path / s.path.name) for s in shards]
    got, read = from_metadata(old, min_tokens)
    assert got == from_lengths(shards, min_tokens)
    assert read == [s.path.name for s in old if 1 < min_tokens <= s.stats.max_doc_tokens]


def test_negative_min_tokens_is_refused(shards):
    with pytest.raises(ValueError, match="min_tokens must be >= 0, got -1"):
        from_metadata(shards, -1)


def test_long_context_weights_move_long_mix_onto_long_documents():
    long = {"a": LongTokens(1110, 1100), "b": LongTokens(30, 0)}
    mixed, share = long_context_weights(long, {"a": 0.5, "b": 0.5}, long_mix=0.3)
    assert share == pytest.approx({"a": 1100 / 1110, "b": 0.0})
    assert sum(mixed.values()) == pytest.approx(1.0)
    assert mixed["b"] == pytest.approx(0.7 * 0.5)
    assert mixed["a"] == pytest.approx(0.7 * 0.5 + 0.3)


def test_long_context_weights_keep_normalised_weights_without_long_documents():
    long = {"a": LongTokens(30, 0), "b": LongTokens(30, 0), "c": LongTokens()}
    mixed, share = long_context_weights(long, {"a": 2.0, "b": 6.0}, long_mix=0.3)
    assert mixed == pytest.approx({"a": 0.25, "b": 0.75, "c": 0.0})
    assert share == {"a": 0.0, "b": 0.0, "c": 0.0}
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="long_mix"):
            long_context_weights(long, {"a": 1.0, "b": 1.0}, long_mix=bad)


def test_midtraining_reads_the_shards_metadata_from_the_store(shards, tmp_path):
    """``midtrained_checkpoint``'s reader: each shard's tokens.json from the store, its
    documents.parquet only where needed; a format-1 shard is logged."""
    import shutil

    from phi_assets.mixture.token_assets import SUBDIR
    from phi_assets.training import pretraining
    from resources import ArtifactStore

    store = ArtifactStore(root=str(tmp_path / "store"))
    manifests = []
    for k, shard in enumerate(shards):
        manifest = {"asset": "tokenized_x", "partition": f"p{k}", "data_version": f"v{k}"}
        dest = tmp_path / "store" / "tokenized_x" / f"p{k}" / f"v{k}" / SUBDIR
        if k == 2:
            as_format_1(shard, dest)
        else:
            shutil.copytree(shard.path, dest)
        manifests.append(manifest)
    logged: list[str] = []
    for min_tokens in (4096, 3000, 50):
        got = pretraining._long_tokens(store, manifests, min_tokens, logged.append)
        assert got == from_lengths(shards, min_tokens)
    assert len(logged) == 3 and all(m.startswith("tokenized_x[p2]: no length histogram") for m in logged)
