"""Data mixture: the byte-level BPE tokenizer and the packed token shards written with it.

Everything runs on small real inputs: one byte-level BPE (vocab 512) trained once per module on
Python standard-library source (tests/support/mixture.py), shards written with it, real ``tokenizers``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tracemalloc

import numpy as np
import pyarrow.parquet as pq
import pytest

from phi_assets.mixture import tokenizer, tokens
from phi_assets.mixture.tokens import TokenShard
from tests.support.mixture import encode, paragraphs_of, stdlib_corpus, train_tokenizer, write, write_parquet
from tests.support.token_shards import as_format_1, numpy_shard, random_lengths


@pytest.fixture(scope="module")
def corpus():
    return stdlib_corpus()


@pytest.fixture(scope="module")
def paragraphs(corpus):
    return paragraphs_of(corpus)


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory):
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tokenizer") / "tok")


@pytest.fixture(scope="module")
def loaded(tok_dir):
    return tokenizer.load(tok_dir)


# --- tokenizer -----------------------------------------------------------------------------------

TRICKY = [
    "café naïve résumé e\u0301",
    "日本語のテキストと中文",
    "emoji 🎉 👍🏽 👨‍👩‍👧",
    "tab\there\tand\t\tmore",
    "windows\r\nline\r\nends\r\n",
    "   leading spaces",
    "trailing spaces   ",
    "many          spaces     inside",
    "",
    "\n\n\n",
    "nul \x00 byte",
    "before <|endoftext|> after",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|>x",
]


@pytest.mark.parametrize("text", TRICKY)
def test_encoding_round_trips_and_ends_with_one_separator(loaded, text):
    ids = encode(loaded, text)
    assert ids[-1] == loaded.eot_id
    assert loaded.eot_id not in ids[:-1]  # a literal "<|endoftext|>" is text, not a separator
    assert loaded.tokenizer.decode(ids[:-1].tolist()) == text


def test_documents_are_joined_with_one_separator_each(loaded):
    texts = ["first doc", "", "third <|endoftext|> doc"]
    ids, lengths = tokenizer.encode_documents(loaded, texts)
    assert len(lengths) == 3 and int(lengths.sum()) == len(ids)
    ends = np.cumsum(lengths)
    assert np.flatnonzero(ids == loaded.eot_id).tolist() == (ends - 1).tolist()
    starts = ends - lengths
    decoded = [loaded.tokenizer.decode(ids[a : b - 1].tolist()) for a, b in zip(starts, ends, strict=True)]
    assert decoded == texts


def test_saved_directory_loads_with_transformers(tok_dir, loaded):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    assert hf.eos_token_id == loaded.eot_id
    snippet = "def f(x):\n\treturn  x   +1  \r\n\n    # ünïcode   \n\n\n  "
    ids = hf.encode(snippet)
    assert ids == encode(loaded, snippet)[:-1].tolist()  # no bos/eos added, same ids as load()
    assert hf.decode(ids) == snippet


@pytest.mark.parametrize(
    "vocab_size, dtype", [(257, np.uint16), (65_536, np.uint16), (65_537, np.uint32), (200_000, np.uint32)]
)
def test_token_dtype_is_the_smallest_that_holds_every_id(vocab_size, dtype):
    assert tokenizer.token_dtype(vocab_size) == np.dtype(dtype)


def test_trained_vocabulary_has_the_separator_first_and_the_asked_size(loaded):
    assert loaded.eot_id == 0 and loaded.tokenizer.id_to_token(0) == tokenizer.EOT
    assert loaded.vocab_size == 512 and loaded.dtype == np.dtype(np.uint16)


@pytest.mark.parametrize("vocab_size", [0, 1, 256])
def test_too_small_vocabulary_is_refused(vocab_size):
    with pytest.raises(ValueError, match="at least 257"):
        tokenizer.train_bpe(iter(["some text"]), vocab_size)


def test_copy_pretrained_without_tokenizer_json_names_the_directory(tmp_path):
    src = tmp_path / "not-a-tokenizer"
    src.mkdir()
    (src / "vocab.json").write_text("{}")
    with pytest.raises(ValueError, match=re.escape(str(src))):
        tokenizer.copy_pretrained(src, tmp_path / "out")
    with pytest.raises(ValueError, match="tokenizer.json is missing"):
        tokenizer.load(src)


def test_copy_pretrained_copies_a_working_tokenizer(tok_dir, loaded, tmp_path):
    shutil.copytree(tok_dir, tmp_path / "src")
    (tmp_path / "src" / "model.safetensors").write_bytes(b"not a tokenizer file")
    tokenizer.copy_pretrained(tmp_path / "src", tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == sorted(tokenizer.HF_FILES)
    copy = tokenizer.load(tmp_path / "copy")
    text = "x = {'a': [1, 2]}  # ok"
    assert copy.eot_id == loaded.eot_id
    np.testing.assert_array_equal(encode(copy, text), encode(loaded, text))


# --- token shards --------------------------------------------------------------------------------


def test_shard_reconciles_documents_tokens_and_offsets(loaded, paragraphs, tmp_path):
    texts = paragraphs[:199] + ["", "😀 <|endoftext|> end"]
    ids = [f"doc-{i:03d}" for i in range(len(texts))]
    path = write_parquet(tmp_path / "docs.parquet", ids, texts)
    progress = []
    stats = tokens.write_shard(
        tokens.read_documents(path, batch_rows=37),
        loaded,
        tmp_path / "shard",
        "v1",
        progress=lambda n, t: progress.append((n, t)),
    )
    assert [n for n, _ in progress] == [37] * 5 + [16]  # 201 documents, 37 a batch
    shard = TokenShard.open(tmp_path / "shard")
    assert stats == shard.stats
    assert stats.num_docs == len(texts) == shard.num_docs
    assert stats.num_tokens == len(shard.tokens) == shard.offsets[-1] == sum(t for _, t in progress)
    assert stats.num_text_bytes == sum(len(t.encode()) for t in texts)
    assert stats.max_doc_tokens == int(np.diff(shard.offsets).max())
    assert (stats.dtype, stats.eot_id, stats.vocab_size, stats.tokenizer_version) == ("uint16", 0, 512, "v1")
    for i, text in enumerate(texts):
        doc = shard.document(i)
        assert doc[-1] == loaded.eot_id
        assert loaded.tokenizer.decode(doc[:-1].tolist()) == text
    assert shard.ids() == ids
    documents = pq.read_table(tmp_path / "shard" / tokens.DOCUMENTS)
    assert documents.column("num_tokens").to_pylist() == np.diff(shard.offsets).tolist()
    assert sum(documents.column("num_tokens").to_pylist()) == stats.num_tokens
    lengths = np.diff(shard.offsets)
    buckets = [int(n).bit_length() - 1 for n in lengths]
    assert stats.shard_format == tokens.FORMAT and len(stats.length_docs) == max(buckets) + 1
    assert stats.length_docs == [buckets.count(b) for b in range(max(buckets) + 1)]
    assert stats.length_tokens == [int(lengths[np.array(buckets) == b].sum()) for b in range(max(buckets) + 1)]
    index = shard.split_index()  # documents by ascending score, with running token counts
    scores = tokens.split_scores(ids)
    np.testing.assert_array_equal(index.score, np.sort(scores))
    np.testing.assert_array_equal(scores[index.doc], index.score)
    np.testing.assert_array_equal(index.tokens, np.cumsum(lengths[index.doc]))
    for fraction in (0.0, 0.1, 0.5):
        n = index.below(fraction)
        assert sorted(index.doc[:n].tolist()) == np.flatnonzero(scores < fraction).tolist()
        assert index.tokens_of_first(n) == int(lengths[scores < fraction].sum())


def test_split_scores_are_the_blake2b_of_the_id():
    """The stored scores keep the split of shards written before them: blake2b-64 of ``split:<id>``."""
    ids = [f"doc-{i}" for i in range(500)] + ["", "café 😀", "a:b"]
    expected = [
        int.from_bytes(hashlib.blake2b(f"split:{i}".encode(), digest_size=8).digest(), "big") / 2**64
        for i in ids
    ]
    assert tokens.split_scores(ids).tolist() == expected


def test_length_histogram_buckets_by_powers_of_two():
    lengths = np.array([1, 2, 3, 4, 7, 8, 1023, 1024, 2**40])
    assert tokens.length_buckets(lengths).tolist() == [0, 1, 1, 2, 2, 3, 9, 10, 40]
    docs, toks = tokens.length_histogram(np.array([1, 2, 3, 5, 100]))
    assert docs.tolist() == [1, 2, 1, 0, 0, 0, 1] and toks.tolist() == [1, 5, 5, 0, 0, 0, 100]
    assert tokens.add_histograms([1, 2], [0, 1, 1]).tolist() == [1, 3, 1]


def test_shard_files_do_not_depend_on_batching(tmp_path):
    lengths = random_lengths(300, 100)
    flat = np.random.default_rng(1).integers(1, 512, int(lengths.sum())).astype(np.uint16)
    ids = [f"d{i}" for i in range(300)]
    tokens.write_encoded(iter([(ids, flat, lengths, 0)]), tmp_path / "one", np.uint16, 512, 0, "v")
    cut, at = 123, int(lengths[:123].sum())
    two = iter([(ids[:cut], flat[:at], lengths[:cut], 0), (ids[cut:], flat[at:], lengths[cut:], 0)])
    tokens.write_encoded(two, tmp_path / "two", np.uint16, 512, 0, "v")
    for name in (tokens.TOKENS, tokens.OFFSETS, tokens.SPLIT, tokens.META):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted((*tokens.FILES, tokens.SPLIT))


def test_a_batch_that_does_not_add_up_is_refused(tmp_path):
    flat, out = np.array([5, 0, 6, 7, 0], dtype=np.uint16), tmp_path / "s"
    with pytest.raises(ValueError, match=f"token shard {re.escape(str(out))}: .* as many lengths as ids"):
        tokens.write_encoded(iter([(["a", "b"], flat, np.array([2, 2]), 0)]), out, np.uint16, 512, 0, "v")
    with pytest.raises(ValueError, match="of dtype uint32"):
        tokens.write_encoded(iter([(["a", "b"], flat, np.array([2, 3]), 0)]), out, np.uint32, 512, 0, "v")


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_hash_partitions_split_the_ids_disjointly_and_in_order(tmp_path, count):
    ids = [f"doc-{i}" for i in range(300)]
    path = write_parquet(tmp_path / "docs.parquet", ids, [f"text of {i}" for i in ids])
    parts = []
    for k in range(count):
        read = list(tokens.read_documents(path, batch_rows=64, keep=tokens.hash_partition(k, count)))
        part = [i for batch_ids, _ in read for i in batch_ids]
        assert [t for _, texts in read for t in texts] == [f"text of {i}" for i in part]  # rows stay paired
        parts.append(part)
    assert sum(map(len, parts)) == len(ids)
    assert set().union(*map(set, parts)) == set(ids)
    for part in parts:
        assert part == [i for i in ids if i in set(part)]  # file order kept
    if count > 1:
        assert all(parts)  # 300 ids hash into every partition


@pytest.mark.parametrize("index, count", [(3, 3), (-1, 2), (0, 0)])
def test_hash_partition_that_does_not_exist_is_refused(index, count):
    with pytest.raises(ValueError, match="does not exist"):
        tokens.hash_partition(index, count)


@pytest.mark.parametrize("name, cut", [(tokens.TOKENS, 2), (tokens.OFFSETS, 8)])
def test_torn_shard_is_refused(loaded, paragraphs, tmp_path, name, cut):
    write(loaded, tmp_path / "shard", paragraphs[:10], "d")
    path = tmp_path / "shard" / name
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(ValueError, match="torn write"):
        TokenShard.open(tmp_path / "shard")


def test_shard_with_a_missing_file_is_refused(loaded, paragraphs, tmp_path):
    write(loaded, tmp_path / "shard", paragraphs[:3], "d")
    (tmp_path / "shard" / tokens.SPLIT).unlink()
    with pytest.raises(ValueError, match="missing split.bin"):
        TokenShard.open(tmp_path / "shard")
    (tmp_path / "shard" / tokens.META).unlink()
    with pytest.raises(ValueError, match="missing tokens.json"):
        TokenShard.open(tmp_path / "shard")


def test_torn_split_index_or_histogram_is_refused(tmp_path):
    shard = numpy_shard(tmp_path / "shard", [3, 5, 9], "d")
    split = shard.path / tokens.SPLIT
    split.write_bytes(split.read_bytes()[:-8])
    with pytest.raises(ValueError, match="torn write"):
        TokenShard.open(shard.path)
    shard = numpy_shard(tmp_path / "other", [3, 5, 9], "d")
    meta = json.loads((shard.path / tokens.META).read_text())
    (shard.path / tokens.META).write_text(json.dumps({**meta, "length_docs": [0, 1, 1]}))
    with pytest.raises(ValueError, match="torn write"):
        TokenShard.open(shard.path)


def test_a_shard_written_before_the_split_index_opens_and_hashes_its_ids(tmp_path):
    shard = numpy_shard(tmp_path / "new", random_lengths(200, 50), "d")
    old = as_format_1(shard, tmp_path / "old")
    assert old.stats.shard_format == 1 and old.stats.length_docs is None and old.computed_split is None
    index, computed = shard.split_index(), old.split_index()
    for field in ("score", "doc", "tokens"):
        np.testing.assert_array_equal(getattr(index, field), getattr(computed, field))
    assert old.split_index() is computed  # hashed once per opened shard


def _resident_kb(path) -> int:
    """This process's resident memory mapped from ``path`` (Linux: /proc/self/smaps)."""
    total, current = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                current = line.rstrip().endswith(str(path))
            elif current and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_release_unmaps_the_pages_a_shard_has_read(tmp_path):
    shard = numpy_shard(tmp_path / "shard", np.full(100_000, 4), "d")  # 800 KB of tokens
    assert _resident_kb(shard.path / tokens.TOKENS) == 0  # opening maps nothing in
    assert int(shard.tokens.astype(np.int64).sum()) > 0 and int(shard.offsets[-1]) == 400_000
    assert _resident_kb(shard.path / tokens.TOKENS) > 700
    shard.release()
    assert _resident_kb(shard.path / tokens.TOKENS) == _resident_kb(shard.path / tokens.OFFSETS) == 0
    np.testing.assert_array_equal(shard.document(7), shard.tokens[28:32])  # still readable


def test_a_shard_of_a_newer_format_is_refused(tmp_path):
    shard = numpy_shard(tmp_path / "shard", [3, 5], "d")
    meta = json.loads((shard.path / tokens.META).read_text())
    (shard.path / tokens.META).write_text(json.dumps({**meta, "shard_format": tokens.FORMAT + 1}))
    with pytest.raises(ValueError, match=f"format {tokens.FORMAT + 1}, this code reads up to {tokens.FORMAT}"):
        TokenShard.open(shard.path)


@pytest.mark.slow  # tokenizes 8 MB under tracemalloc
def test_writing_a_shard_streams_its_batches(loaded, corpus, tmp_path):
    source = "".join(corpus)
    docs, size, rows = 2000, 4000, 16
    total = {"bytes": 0}

    def generate():
        for first in range(0, docs, rows):
            ids, texts = [], []
            for i in range(first, first + rows):
                start = (i * 7919) % (len(source) - size)
                text = f"# document {i}\n" + source[start : start + size]
                total["bytes"] += len(text.encode())
                ids.append(f"doc-{i}")
                texts.append(text)
            yield ids, texts

    write(loaded, tmp_path / "warm", ["warm up the imports"], "w")  # one-time allocations are not the corpus
    tracemalloc.start()
    try:
        stats = tokens.write_shard(generate(), loaded, tmp_path / "shard", "v")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats.num_docs == docs and stats.num_text_bytes == total["bytes"]
    assert total["bytes"] > docs * size
    assert peak < total["bytes"] / 4


@pytest.mark.parametrize("change", ["text", "id", "none"])
def test_content_hash_follows_the_data(loaded, paragraphs, tmp_path, change):
    texts, ids = paragraphs[:30], [f"d{i}" for i in range(30)]
    other_texts, other_ids = list(texts), list(ids)
    if change == "text":
        other_texts[17] = other_texts[17] + " "
    elif change == "id":
        other_ids[17] = "renamed"
    a = tokens.write_shard(iter([(ids, texts)]), loaded, tmp_path / "a", "v")
    b = tokens.write_shard(iter([(other_ids, other_texts)]), loaded, tmp_path / "b", "v")
    assert (a.content_sha256 == b.content_sha256) == (change == "none")


def test_content_hash_does_not_depend_on_batch_sizes(loaded, paragraphs, tmp_path):
    """The hash is "of the ids and tokens": the same documents written in other batches have it too."""
    texts, ids = paragraphs[:30], [f"d{i}" for i in range(30)]
    one = tokens.write_shard(iter([(ids, texts)]), loaded, tmp_path / "one", "v")
    two = tokens.write_shard(
        iter([(ids[:10], texts[:10]), (ids[10:], texts[10:])]), loaded, tmp_path / "two", "v"
    )
    assert (tmp_path / "one" / tokens.TOKENS).read_bytes() == (tmp_path / "two" / tokens.TOKENS).read_bytes()
    assert TokenShard.open(tmp_path / "one").ids() == TokenShard.open(tmp_path / "two").ids()
    assert one.content_sha256 == two.content_sha256
