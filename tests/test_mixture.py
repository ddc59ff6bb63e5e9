"""Data mixture: the BPE tokenizer, packed token shards, mixture weights, the loader, search and proxies.

Everything runs on small real inputs: one byte-level BPE (vocab 512) trained once per module on
Python standard-library source, shards written with it, real ``tokenizers`` and real torch.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from phi_assets.mixture import search, tokenizer, tokens
from phi_assets.mixture import weights as mix
from phi_assets.mixture.loader import LoaderConfig, MixtureLoader, split_documents
from phi_assets.mixture.proxy import ProxyConfig, lr_at, train_proxy
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


@pytest.fixture(scope="module")
def corpus():
    """About 300 KB of real text: standard-library modules, in a fixed order."""
    return [(STDLIB / name).read_text(encoding="utf-8") for name in CORPUS_FILES]


@pytest.fixture(scope="module")
def paragraphs(corpus):
    """Documents: the non-blank paragraphs of the corpus, in order (about a thousand)."""
    return [p for text in corpus for p in text.split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer") / "tok"
    tokenizer.save(tokenizer.train_bpe(iter(corpus), 512), out)
    return out


@pytest.fixture(scope="module")
def loaded(tok_dir):
    return tokenizer.load(tok_dir)


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


@pytest.fixture(scope="module")
def sources(loaded, paragraphs, tmp_path_factory):
    """Two tiny sources: ``a`` in two shards (20 documents), ``b`` in one (6 documents)."""
    root = tmp_path_factory.mktemp("sources")
    return {
        "a": [
            write(loaded, root / "a0", paragraphs[0:12], "a0"),
            write(loaded, root / "a1", paragraphs[12:20], "a1"),
        ],
        "b": [write(loaded, root / "b0", paragraphs[20:26], "b0")],
    }


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
    (tmp_path / "shard" / tokens.META).unlink()
    with pytest.raises(ValueError, match="missing tokens.json"):
        TokenShard.open(tmp_path / "shard")


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


# --- weights -------------------------------------------------------------------------------------

TOKENS = {
    "filtered_code": 1000,
    "filtered_web": 500,
    "synthetic_textbooks": 300,
    "synthetic_exercises": 100,
    "rewritten_web": 0,
}
# phi-4 shares of the present categories, over .20 + .15 + .40 = .75; synthetic split 3:1 by tokens
DEFAULT = {
    "filtered_code": 0.20 / 0.75,
    "filtered_web": 0.15 / 0.75,
    "synthetic_textbooks": 0.40 * 3 / 4 / 0.75,
    "synthetic_exercises": 0.40 * 1 / 4 / 0.75,
    "rewritten_web": 0.0,
}


def test_default_weights_renormalise_the_phi4_table_over_present_sources():
    got = mix.default_weights(TOKENS)
    assert got == pytest.approx(DEFAULT)
    assert got == pytest.approx(
        {
            "filtered_code": 4 / 15,
            "filtered_web": 1 / 5,
            "synthetic_textbooks": 2 / 5,
            "synthetic_exercises": 2 / 15,
            "rewritten_web": 0.0,
        }
    )
    assert list(got) == list(TOKENS) and sum(got.values()) == pytest.approx(1)


def test_default_weights_need_tokens_and_a_weighted_category():
    with pytest.raises(ValueError, match="no source has any tokens"):
        mix.default_weights({"filtered_code": 0})
    with pytest.raises(ValueError, match="has a weight in the table"):
        mix.default_weights({"my_source": 10})


def test_epochs_are_weight_times_budget_over_tokens():
    got = mix.epochs(DEFAULT, TOKENS, 10_000)
    assert got == pytest.approx(
        {
            "filtered_code": (4 / 15) * 10_000 / 1000,
            "filtered_web": (1 / 5) * 10_000 / 500,
            "synthetic_textbooks": (2 / 5) * 10_000 / 300,
            "synthetic_exercises": (2 / 15) * 10_000 / 100,
            "rewritten_web": 0.0,
        }
    )


CAP_CASES = [
    # textbooks and exercises over 16 epochs: they keep 16 * tokens / budget, code and web share the
    # remaining .68 as 4:3
    pytest.param(
        DEFAULT,
        TOKENS,
        20_000,
        {
            "filtered_code": 0.68 * 4 / 7,
            "filtered_web": 0.68 * 3 / 7,
            "synthetic_textbooks": 16 * 300 / 20_000,
            "synthetic_exercises": 16 * 100 / 20_000,
            "rewritten_web": 0.0,
        },
        id="two-capped",
    ),
    # x is capped at .16; its excess pushes y (15 epochs) past the cap at .32; z takes the rest
    pytest.param(
        {"x": 0.5, "y": 0.3, "z": 0.2},
        {"x": 100, "y": 200, "z": 10_000},
        10_000,
        {"x": 0.16, "y": 0.32, "z": 0.52},
        id="cascade",
    ),
    # nothing over the cap: unchanged
    pytest.param(DEFAULT, TOKENS, 10_000, DEFAULT, id="under-the-cap"),
]


@pytest.mark.parametrize("weights, counts, budget, expected", CAP_CASES)
def test_cap_epochs_moves_the_excess_to_the_uncapped_sources(weights, counts, budget, expected):
    got = mix.cap_epochs(weights, counts, budget, 16)
    assert got == pytest.approx(expected)
    assert sum(got.values()) == pytest.approx(1)
    before, after = mix.epochs(weights, counts, budget), mix.epochs(got, counts, budget)
    assert max(after.values()) <= 16 + 1e-9
    for s in weights:
        if before[s] > 16:
            assert after[s] == pytest.approx(16)
    free = [s for s in weights if weights[s] > 0 and after[s] < 16 - 1e-9]
    for s in free:
        for t in free:
            assert got[s] * weights[t] == pytest.approx(got[t] * weights[s])  # proportions kept


def test_cap_epochs_says_when_the_budget_cannot_be_met():
    with pytest.raises(ValueError, match="a budget of 32,000 tokens needs at least 2,000 unique tokens"):
        mix.cap_epochs(DEFAULT, TOKENS, 32_000, 16)  # the sources hold 1,900: 16 epochs give 30,400
    exactly = mix.cap_epochs(DEFAULT, TOKENS, 30_400, 16)  # every source at the cap
    assert mix.epochs(exactly, TOKENS, 30_400) == pytest.approx(
        {
            "filtered_code": 16,
            "filtered_web": 16,
            "synthetic_textbooks": 16,
            "synthetic_exercises": 16,
            "rewritten_web": 0,
        }
    )


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"nope": 1.0, "filtered_code": 1.0}, "unknown sources \\['nope'\\]"),
        ({"filtered_code": -0.1, "filtered_web": 1.0}, "must be >= 0"),
        ({"filtered_code": math.nan, "filtered_web": 1.0}, "must be >= 0"),
        ({"rewritten_web": 0.5, "filtered_code": 0.5}, "\\['rewritten_web'\\] have weight but no tokens"),
        ({"filtered_code": 0.0, "filtered_web": 0.0}, "sum to 0"),
        ({}, "sum to 0"),
    ],
)
def test_normalise_refuses_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        mix.normalise(weights, TOKENS)


def test_normalise_fills_missing_sources_with_zero():
    got = mix.normalise({"filtered_code": 3, "filtered_web": 1}, TOKENS)
    assert got == {
        "filtered_code": 0.75,
        "filtered_web": 0.25,
        "synthetic_textbooks": 0.0,
        "synthetic_exercises": 0.0,
        "rewritten_web": 0.0,
    }


def test_table_accounts_for_each_source():
    requested = {"filtered_code": 0.5, "filtered_web": 0.5}
    got = mix.table(requested, DEFAULT, TOKENS, 10_000)
    assert got.columns == [
        "source",
        "category",
        "requested_weight",
        "weight",
        "unique_tokens",
        "tokens_seen",
        "epochs",
    ]
    assert got["source"].to_list() == list(DEFAULT)
    assert got["category"].to_list() == [mix.CATEGORY[s] for s in DEFAULT]
    assert got["requested_weight"].to_list() == [0.5, 0.5, 0.0, 0.0, 0.0]
    assert got["unique_tokens"].to_list() == list(TOKENS.values())
    assert got["tokens_seen"].to_list() == [2667, 2000, 4000, 1333, 0]  # round(weight * 10,000)
    assert got["epochs"].to_list() == pytest.approx(list(mix.epochs(DEFAULT, TOKENS, 10_000).values()))


# --- loader --------------------------------------------------------------------------------------

HALF = {"a": 0.5, "b": 0.5}


def test_same_configuration_gives_the_same_batches_and_a_new_seed_others(sources):
    cfg = LoaderConfig(seq_len=16, batch_size=4, seed=1)
    first = batches(MixtureLoader(sources, HALF, cfg), 20)
    assert_same_batches(first, batches(MixtureLoader(sources, HALF, cfg), 20))
    other = batches(MixtureLoader(sources, HALF, LoaderConfig(seq_len=16, batch_size=4, seed=2)), 20)
    assert not all(np.array_equal(x.input_ids, y.input_ids) for x, y in zip(first, other, strict=True))


def test_resume_from_a_saved_state_continues_exactly(sources):
    cfg = LoaderConfig(seq_len=16, batch_size=4, seed=3)
    loader = MixtureLoader(sources, HALF, cfg)
    batches(loader, 4)
    state = json.loads(json.dumps(loader.state_dict()))  # as a checkpoint stores it
    at_save = loader.epochs()
    rest = batches(loader, 16)
    at_end = loader.epochs()
    assert any(math.floor(at_end[s]) > math.floor(at_save[s]) for s in at_end)  # an epoch boundary is crossed
    assert max(at_end.values()) > 1

    resumed = MixtureLoader(sources, HALF, cfg)
    resumed.load_state_dict(state)
    assert resumed.step == 4 and resumed.epochs() == at_save
    assert_same_batches(rest, batches(resumed, 16))
    assert resumed.epochs() == at_end


def test_reset_starts_over(sources):
    loader = MixtureLoader(sources, HALF, LoaderConfig(seq_len=16, batch_size=4))
    first = batches(loader, 10)
    loader.reset()
    assert_same_batches(first, batches(loader, 10))


@pytest.mark.parametrize(
    "weights, cfg",
    [
        ({"a": 0.25, "b": 0.75}, LoaderConfig(seq_len=16, batch_size=4)),
        (HALF, LoaderConfig(seq_len=32, batch_size=4)),
        (HALF, LoaderConfig(seq_len=16, batch_size=8)),
        (HALF, LoaderConfig(seq_len=16, batch_size=4, seed=1)),
        (HALF, LoaderConfig(seq_len=16, batch_size=4, split="val")),
    ],
)
def test_state_of_another_configuration_is_refused(sources, weights, cfg):
    saved = MixtureLoader(sources, HALF, LoaderConfig(seq_len=16, batch_size=4))
    batches(saved, 2)
    with pytest.raises(ValueError, match="resume needs the same"):
        MixtureLoader(sources, weights, cfg).load_state_dict(saved.state_dict())


@pytest.fixture(scope="module")
def single_documents(loaded, paragraphs, tmp_path_factory):
    """Sources of one document each."""
    root = tmp_path_factory.mktemp("single")
    return {
        "x": [write(loaded, root / "x", [paragraphs[30]], "x")],
        "y": [write(loaded, root / "y", [paragraphs[31]], "y")],
    }


def test_rows_pack_a_source_as_consecutive_tokens(single_documents):
    seq_len = 24
    loader = MixtureLoader(
        single_documents, {"x": 0.6, "y": 0.4}, LoaderConfig(seq_len=seq_len, batch_size=4, split="all")
    )
    got = batches(loader, 15)
    for batch in got:
        np.testing.assert_array_equal(batch.labels[:, :-1], batch.input_ids[:, 1:])
        assert batch.input_ids.shape == batch.labels.shape == (4, seq_len) and batch.input_ids.dtype == np.int64
    for name in ("x", "y"):
        rows = [row for b in got for row, s in zip(rows_of(b), b.sources, strict=True) if s == name]
        assert rows
        doc = np.asarray(single_documents[name][0].document(0), dtype=np.int64)
        stream = np.tile(doc, len(rows) * (seq_len + 1) // len(doc) + 1)  # the document, over and over
        for j, row in enumerate(rows):
            np.testing.assert_array_equal(row, stream[j * (seq_len + 1) : (j + 1) * (seq_len + 1)])


def epoch_source(loaded, paragraphs, tmp_path, per_batch):
    """One source in two shards whose token count is a multiple of ``per_batch``."""
    first, second = paragraphs[40:55], paragraphs[55:65]
    used = int(tokenizer.encode_documents(loaded, first + second)[1].sum())
    second += [""] * (-used % per_batch)  # empty documents (just a separator) make the total divide
    shards = [write(loaded, tmp_path / "s0", first, "s0"), write(loaded, tmp_path / "s1", second, "s1")]
    assert sum(s.stats.num_tokens for s in shards) % per_batch == 0
    return shards


def split_at_separators(stream, eot_id):
    return [tuple(d) for d in np.split(stream, np.flatnonzero(stream == eot_id) + 1)[:-1]]


def test_one_epoch_reads_every_document_exactly_once(loaded, paragraphs, tmp_path):
    seq_len, batch_size = 15, 4
    per_batch = (seq_len + 1) * batch_size
    shards = epoch_source(loaded, paragraphs, tmp_path, per_batch)
    total = sum(s.stats.num_tokens for s in shards)
    cfg = LoaderConfig(seq_len=seq_len, batch_size=batch_size, split="all")
    loader = MixtureLoader({"s": shards}, {"s": 1.0}, cfg)
    stream = np.concatenate([rows_of(b).ravel() for b in batches(loader, total // per_batch)])
    expected = np.concatenate([s.tokens for s in shards]).astype(np.int64)
    np.testing.assert_array_equal(np.sort(stream), np.sort(expected))
    # the stream is whole documents, each once, in a shuffled order
    read = split_at_separators(stream, loaded.eot_id)
    docs = [tuple(s.document(i).tolist()) for s in shards for i in range(s.num_docs)]
    assert sorted(read) == sorted(docs) and read != docs
    assert loader.epochs() == {"s": 1.0}


def test_each_epoch_has_its_own_document_order(loaded, paragraphs, tmp_path):
    seq_len, batch_size = 15, 4
    per_batch = (seq_len + 1) * batch_size
    shards = epoch_source(loaded, paragraphs, tmp_path, per_batch)
    total = sum(s.stats.num_tokens for s in shards)
    cfg = LoaderConfig(seq_len=seq_len, batch_size=batch_size, split="all")
    loader = MixtureLoader({"s": shards}, {"s": 1.0}, cfg)
    epoch = [
        split_at_separators(
            np.concatenate([rows_of(b).ravel() for b in batches(loader, total // per_batch)]), 0
        )
        for _ in range(2)
    ]
    assert sorted(epoch[0]) == sorted(epoch[1])
    assert epoch[0] != epoch[1]
    assert loader.epochs() == {"s": 2.0}


def test_rows_follow_the_weights(sources):
    loader = MixtureLoader(sources, {"a": 0.8, "b": 0.2}, LoaderConfig(seq_len=4, batch_size=50))
    picked = [s for b in batches(loader, 40) for s in b.sources]
    share = picked.count("a") / len(picked)
    assert len(picked) == 2000
    assert abs(share - 0.8) < 4 * math.sqrt(0.8 * 0.2 / 2000)


def test_zero_weight_source_is_never_read(sources):
    loader = MixtureLoader(sources, {"a": 1.0, "b": 0.0}, LoaderConfig(seq_len=8, batch_size=8))
    assert loader.names == ["a"]
    assert {s for b in batches(loader, 10) for s in b.sources} == {"a"}


def test_document_boundaries_restart_positions_after_each_separator(sources, loaded):
    seq_len, size = 64, 6
    loader = MixtureLoader(
        sources, HALF, LoaderConfig(seq_len=seq_len, batch_size=size, document_boundaries=True)
    )
    interior = 0
    for batch in batches(loader, 8):
        pos, ids = batch.position_ids, batch.input_ids
        assert pos.shape == ids.shape
        assert (pos[:, 0] == 0).all()
        after_eot = ids[:, :-1] == loaded.eot_id
        np.testing.assert_array_equal(pos[:, 1:], np.where(after_eot, 0, pos[:, :-1] + 1))
        interior += int(after_eot.sum())
        cu = batch.cu_seqlens
        assert cu[0] == 0 and cu[-1] == size * seq_len and (np.diff(cu) > 0).all()
        np.testing.assert_array_equal(cu[:-1], np.flatnonzero(pos.ravel() == 0))  # one segment per document
    assert interior > 0  # some rows hold more than one document
    plain = MixtureLoader(sources, HALF, LoaderConfig(seq_len=seq_len, batch_size=size)).next_batch()
    assert plain.position_ids is None and plain.cu_seqlens is None


def test_ranks_read_their_rows_of_the_global_batch(sources):
    cfg = {"seq_len": 16, "batch_size": 8, "seed": 5}
    whole = batches(MixtureLoader(sources, HALF, LoaderConfig(**cfg)), 6)
    ranks = [
        batches(MixtureLoader(sources, HALF, LoaderConfig(**cfg, rank=r, world_size=2)), 6) for r in range(2)
    ]
    for w, r0, r1 in zip(whole, *ranks, strict=True):
        assert r0.input_ids.shape == (4, 16)
        np.testing.assert_array_equal(np.concatenate([r0.input_ids, r1.input_ids]), w.input_ids)
        np.testing.assert_array_equal(np.concatenate([r0.labels, r1.labels]), w.labels)
        assert r0.sources + r1.sources == w.sources


def test_split_masks_are_stable_and_independent_of_sharding():
    ids = [f"doc-{i}" for i in range(200)]
    whole = split_documents([ids], 0.2)
    assert all(np.array_equal(x, y) for x, y in zip(whole, split_documents([ids], 0.2), strict=True))
    resharded = split_documents([ids[:70], ids[70:150], ids[150:]], 0.2)
    np.testing.assert_array_equal(np.concatenate(resharded), whole[0])
    assert 0 < whole[0].sum() < 200
    assert not split_documents([ids], 0.0)[0].any()


@pytest.mark.parametrize("fraction", [0.3, 1e-12])
def test_train_and_val_splits_partition_the_documents(sources, fraction):
    cfg = {"seq_len": 8, "batch_size": 2, "val_fraction": fraction}
    train = MixtureLoader(sources, HALF, LoaderConfig(**cfg, split="train")).sources
    val = MixtureLoader(sources, HALF, LoaderConfig(**cfg, split="val")).sources
    for name, shards in sources.items():
        masks = split_documents([s.ids() for s in shards], fraction)
        assert sum(len(d) for d in val[name].docs) >= 1
        if fraction < 1e-9:
            assert sum(len(d) for d in val[name].docs) == 1  # at least one when there are two documents
        for k, shard in enumerate(shards):
            t, v = set(train[name].docs[k].tolist()), set(val[name].docs[k].tolist())
            assert not t & v and t | v == set(range(shard.num_docs))
            assert v == set(np.flatnonzero(masks[k]).tolist())
        assert train[name].num_tokens + val[name].num_tokens == sum(s.stats.num_tokens for s in shards)


def test_val_loader_reads_only_validation_documents(sources):
    val = MixtureLoader(
        {"b": sources["b"]}, {"b": 1.0}, LoaderConfig(seq_len=8, batch_size=2, split="val", val_fraction=1e-12)
    )
    shard = sources["b"][0]
    (doc,) = np.flatnonzero(split_documents([shard.ids()], 1e-12)[0])
    tokens_of_doc = np.asarray(shard.document(int(doc)), dtype=np.int64)
    stream = np.concatenate([rows_of(b).ravel() for b in batches(val, 10)])
    np.testing.assert_array_equal(
        stream, np.tile(tokens_of_doc, len(stream) // len(tokens_of_doc) + 1)[: len(stream)]
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seq_len": 0, "batch_size": 4}, "seq_len and batch_size"),
        ({"seq_len": 8, "batch_size": 0}, "seq_len and batch_size"),
        ({"seq_len": 8, "batch_size": 4, "split": "test"}, "split must be one of"),
        ({"seq_len": 8, "batch_size": 4, "val_fraction": 1.0}, "val_fraction"),
        ({"seq_len": 8, "batch_size": 4, "val_fraction": -0.1}, "val_fraction"),
        ({"seq_len": 8, "batch_size": 5, "world_size": 2}, "divisible by world_size"),
        ({"seq_len": 8, "batch_size": 4, "rank": 2, "world_size": 2}, "0 <= rank < world_size"),
    ],
)
def test_loader_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoaderConfig(**kwargs)


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"a": 0.5, "c": 0.5}, "unknown: \\['c'\\]"),
        ({"a": 0.5, "b": 0.4}, "must sum to 1"),
        ({"a": 0.0}, "sum to 1"),
    ],
)
def test_loader_refuses_bad_weights(sources, weights, message):
    with pytest.raises(ValueError, match=message):
        MixtureLoader(sources, weights, LoaderConfig(seq_len=8, batch_size=2))


# --- search --------------------------------------------------------------------------------------

PRIOR = {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}


def test_priors_are_uniform_or_token_shares():
    counts = {"a": 300, "b": 100, "c": 0}
    assert search.prior_of(counts, "uniform") == pytest.approx({"a": 0.5, "b": 0.5})
    assert search.prior_of(counts, "tokens") == pytest.approx({"a": 0.75, "b": 0.25})
    with pytest.raises(ValueError, match="prior must be one of"):
        search.prior_of(counts, "flat")
    with pytest.raises(ValueError, match="no source has training tokens"):
        search.prior_of({"a": 0}, "uniform")


def test_sampled_mixtures_are_seeded_distributions():
    mixtures = [search.sample_mixture(PRIOR, i, seed=7) for i in range(8)]
    assert mixtures == [search.sample_mixture(PRIOR, i, seed=7) for i in range(8)]
    for m in mixtures:
        assert sorted(m) == ["a", "b", "c"]
        assert sum(m.values()) == pytest.approx(1) and min(m.values()) >= 0
    assert len({tuple(m.values()) for m in mixtures}) == 8
    assert search.sample_mixture(PRIOR, 0, seed=8) != mixtures[0]


def linear_loss(m):
    return 3 - 1.0 * m["a"] + 0.5 * m["b"] + 0.0 * m["c"]


@pytest.fixture(scope="module")
def fitted():
    mixtures = [search.sample_mixture(PRIOR, i, seed=0) for i in range(12)]
    return mixtures, search.fit(mixtures, [linear_loss(m) for m in mixtures])


def test_fit_recovers_a_linear_loss(fitted):
    mixtures, model = fitted
    assert model.sources == ["a", "b", "c"]
    assert model.spearman > 0.9
    assert model.mae < 0.01
    x = np.array([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    np.testing.assert_allclose(model.predict(x), [3 - 0.2 + 0.15, 3 - 0.9 + 0.025], atol=0.01)


def test_propose_favours_the_source_that_lowers_the_loss(fitted):
    _, model = fitted
    plenty = {"a": 10**9, "b": 10**9, "c": 10**9}
    got, predicted = search.propose(model, PRIOR, plenty, 10**6, 16, num_candidates=400, top_k=10, seed=0)
    assert sorted(got) == ["a", "b", "c"] and sum(got.values()) == pytest.approx(1)
    assert got["a"] == max(got.values()) and got["b"] == min(got.values())
    assert predicted == pytest.approx(linear_loss(got), abs=0.01)


def test_propose_respects_the_epoch_cap(fitted):
    _, model = fitted
    scarce = {"a": 1000, "b": 10**9, "c": 10**9}  # a holds 16 epochs at weight 16 * 1000 / 10**6 = .016
    got, _ = search.propose(model, PRIOR, scarce, 10**6, 16, num_candidates=400, top_k=10, seed=0)
    assert sum(got.values()) == pytest.approx(1)
    assert got["a"] <= 0.016 + 1e-9
    assert mix.epochs(got, scarce, 10**6)["a"] <= 16 + 1e-6
    assert got["c"] > got["b"]  # with a capped, c (no effect) beats b (raises the loss)


def test_propose_refuses_other_sources(fitted):
    _, model = fitted
    with pytest.raises(ValueError, match="the proxies covered"):
        search.propose(
            model, {"a": 0.5, "b": 0.5}, {"a": 10, "b": 10}, 10, 16, num_candidates=4, top_k=1, seed=0
        )


def test_fit_needs_three_mixtures_and_known_regressor():
    mixtures = [search.sample_mixture(PRIOR, i, seed=0) for i in range(3)]
    with pytest.raises(ValueError, match="at least 3 finished proxies, got 2"):
        search.fit(mixtures[:2], [1.0, 2.0])
    with pytest.raises(ValueError, match="regressor must be one of"):
        search.fit(mixtures, [1.0, 2.0, 3.0], kind="forest")


def test_target_loss_averages_the_target_sources():
    val = {"a": 1.0, "b": 2.0, "c": 6.0}
    assert search.target_loss(val, ["a", "b"]) == pytest.approx(1.5)
    assert search.target_loss(val, []) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="\\['d'\\] have no validation loss"):
        search.target_loss(val, ["a", "d"])
    with pytest.raises(ValueError, match="no validation loss"):
        search.target_loss({}, [])


# --- proxy ---------------------------------------------------------------------------------------

TINY = ProxyConfig(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    seq_len=32,
    batch_size=4,
    steps=30,
    lr=3e-3,
    warmup_steps=5,
    eval_batches=2,
)


def run_proxy(sources, vocab_size):
    train = MixtureLoader(sources, HALF, LoaderConfig(seq_len=TINY.seq_len, batch_size=TINY.batch_size))
    val = {
        s: MixtureLoader(
            {s: sources[s]}, {s: 1.0}, LoaderConfig(seq_len=TINY.seq_len, batch_size=4, split="val")
        )
        for s in sources
    }
    return train_proxy(train, val, vocab_size, TINY)


def test_proxy_learns_and_is_reproducible(sources, loaded):
    first = run_proxy(sources, loaded.vocab_size)
    assert len(first.train_loss) == TINY.steps
    assert np.mean(first.train_loss[-5:]) < np.mean(first.train_loss[:5])
    assert sorted(first.val_loss) == ["a", "b"] and all(math.isfinite(v) for v in first.val_loss.values())
    assert first.tokens_seen == 30 * 4 * 32 and first.num_params > 0
    assert sorted(first.epochs) == ["a", "b"] and all(e > 0 for e in first.epochs.values())
    second = run_proxy(sources, loaded.vocab_size)
    assert second.train_loss == first.train_loss
    assert second.val_loss == first.val_loss


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    cfg = ProxyConfig(lr=1.0, steps=110, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 30, "num_heads": 4}, "must be divisible by num_heads"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"warmup_steps": -1}, "warmup_steps >= 0"),
    ],
)
def test_proxy_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProxyConfig(**kwargs)
