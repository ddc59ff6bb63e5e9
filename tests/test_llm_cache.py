"""The durable LLM request cache: segments with key-index sidecars, looked up without scanning."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from resources import ArtifactStore
from resources.llm import ModelRef, Request, Result
from resources.llm.cache import INDEX_DIR, SCHEMA, RequestCache, _row
from resources.llm.types import Completion, request_key

MODEL = ModelRef(name="tiny", version="tiny-v1")


def pairs(start: int, stop: int) -> list[tuple[Request, Result]]:
    out = []
    for i in range(start, stop):
        request = Request.chat(f"question {i}", max_tokens=8)
        key = request_key(MODEL, request)
        out.append((request, Result(key=key, completions=[Completion(f"answer {i}", 2, "stop")],
                                    num_prompt_tokens=5)))
    return out


def keys(items: list[tuple[Request, Result]]) -> list[str]:
    return [result.key for _, result in items]


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(root=str(tmp_path / "artifacts"))


@pytest.fixture
def memory_store():
    root = f"memory://phi-cache-test-{uuid.uuid4().hex}"
    store = ArtifactStore(root=root)
    yield store
    if store.fs.exists(store.base_path):
        store.fs.rm(store.base_path, recursive=True)


def segments(cache: RequestCache) -> list[str]:
    return sorted(n for n in os.listdir(cache.directory(MODEL)) if n.startswith("seg-"))


def test_round_trip(store):
    cache = RequestCache(store)
    items = pairs(0, 3)
    assert cache.lookup(MODEL, keys(items)) == {}
    assert cache.put(MODEL, items) == 3
    found = cache.lookup(MODEL, [*keys(items), "0" * 64, "not-a-hex-key"])
    assert sorted(found) == sorted(keys(items))
    for _, result in items:
        got = found[result.key]
        assert got.cached and got.text == result.text and got.num_prompt_tokens == 5
        assert got.completions == result.completions
    assert cache.count(MODEL) == 3
    # Another model version is another directory.
    assert RequestCache(store).lookup(ModelRef(name="tiny", version="tiny-v2"), keys(items)) == {}


def test_transient_failures_and_deterministic_failures(store):
    cache = RequestCache(store)
    request = Request.chat("x", max_tokens=4)
    key = request_key(MODEL, request)
    assert cache.put(MODEL, [(request, Result.failed(key, "timeout", "slow"))]) == 0
    assert cache.lookup(MODEL, [key]) == {} and cache.count(MODEL) == 0
    assert cache.put(MODEL, [(request, Result.failed(key, "prompt_too_long", "long"))]) == 1
    got = RequestCache(store).lookup(MODEL, [key])[key]
    assert got.error_kind == "prompt_too_long" and got.error == "long" and got.cached


def test_lookups_across_many_segments(store):
    cache = RequestCache(store)
    batches = [pairs(100 * b, 100 * b + 150 if b == 1 else 100 * b + 40) for b in range(5)]
    for batch in batches:
        cache.put(MODEL, batch)
    assert len(segments(cache)) == 5
    wanted = [k for batch in batches for k in keys(batch)[::7]]
    absent = keys(pairs(1000, 1020))
    text = {r.key: r.text for batch in batches for _, r in batch}
    for reader in (cache, RequestCache(store)):  # the writer's own index, and one loaded from sidecars
        found = reader.lookup(MODEL, wanted + absent)
        assert sorted(found) == sorted(wanted)
        assert all(found[k].key == k and found[k].text == text[k] for k in wanted)
        assert reader.count(MODEL) == sum(len(b) for b in batches)


def test_duplicate_keys_prefer_the_newest_segment(store):
    cache = RequestCache(store)
    [(request, result)] = pairs(0, 1)
    cache.put(MODEL, [(request, result)])
    newer = Result(key=result.key, completions=[Completion("newer", 1, "stop")], num_prompt_tokens=5)
    cache.put(MODEL, [(request, newer)])
    assert cache.count(MODEL) == 2
    assert RequestCache(store).lookup(MODEL, [result.key])[result.key].text == "newer"
    assert cache.lookup(MODEL, [result.key])[result.key].text == "newer"


def test_a_segment_of_the_old_layout_without_index_is_found(store):
    cache = RequestCache(store)
    old, new = pairs(0, 20), pairs(20, 25)
    os.makedirs(cache.directory(MODEL))
    table = pa.Table.from_pylist([_row(MODEL, q, r) for q, r in old], schema=SCHEMA)
    pq.write_table(table, f"{cache.directory(MODEL)}/seg-1000-abcdef01.parquet")  # as the old put did
    cache.put(MODEL, new)
    found = cache.lookup(MODEL, keys(old)[:3] + keys(new)[:2])
    assert sorted(found) == sorted(keys(old)[:3] + keys(new)[:2])
    assert found[keys(old)[0]].text == "answer 0" and found[keys(old)[0]].cached
    assert cache.count(MODEL) == 25
    # Its index was built once and stored beside the others, so the next reader need not build it.
    assert os.path.exists(f"{cache.directory(MODEL)}/{INDEX_DIR}/seg-1000-abcdef01.parquet.keys")
    assert sorted(RequestCache(store).lookup(MODEL, keys(old)[-2:])) == sorted(keys(old)[-2:])


def test_half_written_files_are_ignored(store):
    cache = RequestCache(store)
    items = pairs(0, 4)
    cache.put(MODEL, items)
    directory = cache.directory(MODEL)
    with open(f"{directory}/.tmp-{uuid.uuid4().hex}-seg-9-deadbeef.parquet", "wb") as f:
        f.write(b"PAR1 half a segment")  # a write killed before its rename
    with open(f"{directory}/_seg-9-cafecafe.parquet", "wb") as f:
        f.write(b"not parquet either")
    # A sidecar whose segment never arrived (the writer died between the two puts).
    with open(f"{directory}/{INDEX_DIR}/seg-9-0badf00d.parquet.keys", "wb") as f:
        f.write(b"PHIKEYS1" + b"\x00" * 8)
    reader = RequestCache(store)
    assert sorted(reader.lookup(MODEL, keys(items))) == sorted(keys(items))
    assert reader.count(MODEL) == 4
    # Old readers that scan the directory as a parquet dataset skip the sidecars and temp files.
    assert pads.dataset(directory, format="parquet").count_rows() == 4


def test_a_segment_written_by_another_instance_is_found_on_the_next_lookup(store):
    first, other = RequestCache(store), RequestCache(store)
    early, late = pairs(0, 5), pairs(5, 10)
    first.put(MODEL, early)
    assert sorted(first.lookup(MODEL, keys(early + late))) == sorted(keys(early))
    other.put(MODEL, late)
    assert sorted(first.lookup(MODEL, keys(early + late))) == sorted(keys(early + late))
    assert first.count(MODEL) == 10


def test_object_store_round_trip_and_refresh(memory_store):
    first, other = RequestCache(memory_store), RequestCache(memory_store)
    early, late = pairs(0, 5), pairs(5, 8)
    assert first.lookup(MODEL, keys(early)) == {}
    first.put(MODEL, early)
    assert sorted(other.lookup(MODEL, keys(early))) == sorted(keys(early))
    other.put(MODEL, late)
    found = first.lookup(MODEL, keys(early + late))
    assert sorted(found) == sorted(keys(early + late)) and all(r.cached for r in found.values())
    assert first.count(MODEL) == 8


@pytest.mark.parametrize("fs_class", [LocalFileSystem, MemoryFileSystem])
def test_lookup_reads_only_the_segment_that_holds_the_key(tmp_path, memory_store, monkeypatch, fs_class):
    store = ArtifactStore(root=str(tmp_path / "artifacts")) if fs_class is LocalFileSystem else memory_store
    writer = RequestCache(store)
    batches = [pairs(10 * b, 10 * b + 10) for b in range(4)]
    names = [writer.put_table(MODEL, pa.Table.from_pylist([_row(MODEL, q, r) for q, r in batch], schema=SCHEMA))
             for batch in batches]
    opened: list[str] = []
    real_open = fs_class._open

    def counting_open(self, path, *args, **kwargs):
        opened.append(str(path))
        return real_open(self, path, *args, **kwargs)

    monkeypatch.setattr(fs_class, "_open", counting_open)
    reader = RequestCache(store)
    found = reader.lookup(MODEL, [keys(batches[2])[3], "f" * 64])
    assert list(found) == [keys(batches[2])[3]] and found[keys(batches[2])[3]].text == "answer 23"
    data = [p.rsplit("/", 1)[-1] for p in opened if p.endswith(".parquet")]
    assert data == [names[2]]  # the four sidecars were read, but only one segment
    opened.clear()
    assert reader.lookup(MODEL, keys(pairs(100, 110))) == {}  # absent keys: no segment opened at all
    assert reader.count(MODEL) == 40
    assert not [p for p in opened if p.endswith((".parquet", ".keys"))]  # everything was indexed already


def test_keys_sharing_a_digest_each_get_their_own_row(store):
    """The index keys on 64 bits of the key; the full key decides, so a collision costs only a read."""
    cache = RequestCache(store)
    base = pairs(0, 3)
    twins = ["ab" * 8 + "0" * 48, "ab" * 8 + "1" * 48, "ab" * 8 + "2" * 48]  # one digest, three keys
    rows = [{**_row(MODEL, q, r), "key": twin, "texts": [twin[-1]]} for (q, r), twin in zip(base, twins,
                                                                                              strict=True)]
    cache.put_table(MODEL, pa.Table.from_pylist(rows[:2], schema=SCHEMA))
    cache.put_table(MODEL, pa.Table.from_pylist(rows[2:], schema=SCHEMA))
    found = RequestCache(store).lookup(MODEL, [twins[0], twins[2], "ab" * 8 + "3" * 48])
    assert {k: r.text for k, r in found.items()} == {twins[0]: "0", twins[2]: "2"}


def test_a_cleared_cache_is_noticed(store):
    cache = RequestCache(store)
    items = pairs(0, 3)
    cache.put(MODEL, items)
    assert len(cache.lookup(MODEL, keys(items))) == 3
    for name in segments(cache):
        os.remove(f"{cache.directory(MODEL)}/{name}")
    assert cache.lookup(MODEL, keys(items)) == {} and cache.count(MODEL) == 0
    cache.put(MODEL, items[:1])
    assert list(cache.lookup(MODEL, keys(items))) == keys(items)[:1] and cache.count(MODEL) == 1
