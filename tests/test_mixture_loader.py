"""Data mixture: the loader that packs weighted sources into batches, and the proxy models trained on it.

Everything runs on small real inputs: one byte-level BPE (vocab 512) trained once per module on
Python standard-library source (tests/support/mixture.py), shards written with it, and real torch.
"""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest

from phi_assets.mixture import tokenizer
from phi_assets.mixture.loader import LoaderConfig, MixtureLoader, Source, split_documents
from phi_assets.mixture.proxy import ProxyConfig, lr_at, train_proxy
from phi_assets.mixture.tokens import TokenShard
from tests.support.mixture import (
    assert_same_batches,
    batches,
    paragraphs_of,
    rows_of,
    stdlib_corpus,
    train_tokenizer,
    write,
)
from tests.support.token_shards import as_format_1, numpy_shard


@pytest.fixture(scope="module")
def paragraphs():
    return paragraphs_of(stdlib_corpus())


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return tokenizer.load(train_tokenizer(stdlib_corpus(), tmp_path_factory.mktemp("tokenizer") / "tok"))


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
        assert val[name].counts.sum() >= 1
        if fraction < 1e-9:
            assert val[name].counts.sum() == 1  # at least one when there are two documents
        for k, shard in enumerate(shards):
            t, v = set(train[name].documents(k).tolist()), set(val[name].documents(k).tolist())
            assert not t & v and t | v == set(range(shard.num_docs))
            assert v == set(np.flatnonzero(masks[k]).tolist())
            assert (len(t), len(v)) == (train[name].counts[k], val[name].counts[k])
        lengths = [np.diff(s.offsets) for s in shards]
        val_tokens = sum(int(n[m].sum()) for n, m in zip(lengths, masks, strict=True))
        assert val[name].num_tokens == val_tokens
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


def test_shards_written_before_the_split_index_give_the_same_batches(sources, tmp_path):
    """Format-1 shards (no split.bin) are split by hashing their ids on open: the same documents, the
    same batches and a state either loader resumes from."""
    old = {n: [as_format_1(s, tmp_path / f"{n}{k}") for k, s in enumerate(ss)] for n, ss in sources.items()}
    for split in ("train", "val"):
        cfg = LoaderConfig(seq_len=16, batch_size=4, seed=2, split=split, val_fraction=0.3)
        new_loader, old_loader = MixtureLoader(sources, HALF, cfg), MixtureLoader(old, HALF, cfg)
        assert_same_batches(batches(new_loader, 12), batches(old_loader, 12))
        assert new_loader.state_dict() == old_loader.state_dict()
    assert all(s.computed_split is not None for shards in old.values() for s in shards)
    assert all(s.computed_split is None for shards in sources.values() for s in shards)


def test_a_source_builds_document_arrays_only_for_the_shard_it_reads(tmp_path, monkeypatch):
    """Opening reads no id and allocates far less than one shard's document index; reading builds the
    document list of the shard reached, and of no other."""
    docs = 20_000
    shards = [numpy_shard(tmp_path / f"s{k}", np.full(docs, 3), f"s{k}") for k in range(4)]
    monkeypatch.setattr(TokenShard, "ids", lambda self: pytest.fail(f"{self.path}: ids read (hashed on open)"))
    built: list[int] = []
    documents = Source.documents
    monkeypatch.setattr(Source, "documents", lambda self, k: built.append(k) or documents(self, k))
    tracemalloc.start()
    try:
        loader = MixtureLoader({"s": shards}, {"s": 1.0}, LoaderConfig(seq_len=31, batch_size=4))
        opened = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert built == [] and opened < docs * 8 / 4  # an index is 8 bytes a document
    batches(loader, 10)  # 10 x 4 x 32 tokens: a few hundred documents of the first shard
    assert built == [int(loader.sources["s"]._shard_order(0)[0])]


def test_the_loader_unmaps_a_shard_once_the_batch_that_finishes_it_is_read(tmp_path, monkeypatch):
    """Released after the batch's rows are read (reading them would map the shard back in), each once."""
    shards = [numpy_shard(tmp_path / f"s{k}", np.full(40, 4), f"s{k}") for k in range(3)]
    events: list[str] = []
    monkeypatch.setattr(TokenShard, "release", lambda self: events.append(self.path.name))
    read = Source.read
    monkeypatch.setattr(Source, "read", lambda self, spans: events.append("read") or read(self, spans))
    loader = MixtureLoader({"s": shards}, {"s": 1.0}, LoaderConfig(seq_len=29, batch_size=2, split="all"))
    order = [f"s{k}" for k in loader.sources["s"]._shard_order(0)]
    released: list[str] = []
    for _ in range(7):  # 160 tokens a shard, 60 a batch: the first two shards end inside batches 3 and 6
        events.clear()
        batches(loader, 1)
        assert events[:2] == ["read", "read"]
        released += events[2:]
        assert released == order[: loader.cursors["s"]["shard"]]
    assert released == order[:2]


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
