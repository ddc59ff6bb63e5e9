"""Input staging (``phi_assets.training.staging``): URI inputs copied once per node, atomically and
idempotently, before training. The multi-node run against an S3 server is in
tests/test_object_store_training.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pytest

from phi_assets.training import entrypoint, staging
from phi_assets.training.distributed import World

ONE = World(rank=0, world_size=1, local_rank=0)


@pytest.fixture
def memory_root():
    fs = fsspec.filesystem("memory")
    root = f"/phi-test-{uuid.uuid4().hex}"
    fs.pipe(
        {f"{root}/tok/vocab.json": b'{"a": 1}', f"{root}/tok/sub/merges.txt": b"a b", f"{root}/f.bin": b"F"}
    )
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "inputs" / staging.LOG).read_text().splitlines()]


def test_uris_are_copied_once_and_a_second_stager_reuses_them(tmp_path, memory_root):
    fs, root = memory_root
    out = tmp_path / "run"
    tok, single, local = f"memory://{root}/tok", f"memory://{root}/f.bin", str(tmp_path / "local")
    located = staging.stage([tok, single, local], out, ONE)
    assert located[local] == tmp_path / "local"  # local paths are read in place
    assert (located[tok] / "vocab.json").read_bytes() == b'{"a": 1}'
    assert (located[tok] / "sub" / "merges.txt").read_bytes() == b"a b"
    assert located[single].read_bytes() == b"F" and located[single].parent == out / "inputs"
    assert sorted(p.name for p in (out / "inputs").iterdir()) == sorted(
        [located[tok].name, located[single].name, staging.LOG]
    )  # no partials left
    fs.rm(root, recursive=True)  # a retried pod: the store is not read again
    assert staging.stage([tok, single], out, ONE) == {tok: located[tok], single: located[single]}
    first, second = _log(out)
    assert sorted(first["copied"]) == sorted([tok, single]) and first["reused"] == []
    assert second["copied"] == [] and sorted(second["reused"]) == sorted([tok, single])


def _stage_in_a_process(uri: str, dest: str, barrier, results) -> None:
    barrier.wait()
    results.put(staging.copy_in(uri, Path(dest)))


def test_racing_stagers_end_with_one_complete_copy(tmp_path, memory_root):
    """Stagers of several nodes sharing the run directory (four processes here, each with its own copy
    of the store): every copy is renamed into place whole, the first rename wins, the others discard
    theirs, and no partial is left behind."""
    import multiprocessing

    _, root = memory_root
    dest = tmp_path / "inputs" / "tok"
    fork = multiprocessing.get_context("fork")
    barrier, results = fork.Barrier(4), fork.Queue()
    procs = [
        fork.Process(target=_stage_in_a_process, args=(f"memory://{root}/tok", str(dest), barrier, results))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    copied = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert copied.count(True) == 1 and len(copied) == 4
    assert sorted(p.name for p in (tmp_path / "inputs").iterdir()) == ["tok"]
    assert (dest / "sub" / "merges.txt").read_bytes() == b"a b"


def test_only_local_rank_0_copies(tmp_path, memory_root):
    """A rank other than its node's stager copies nothing: with no stager before it, it finds its
    input missing and says which."""
    _, root = memory_root
    uri = f"memory://{root}/f.bin"
    with pytest.raises(FileNotFoundError, match="were not staged"):
        staging.stage([uri], tmp_path / "run", World(rank=1, world_size=1, local_rank=1))
    assert not (tmp_path / "run" / "inputs").exists()


def test_a_missing_input_is_named(tmp_path, memory_root):
    _, root = memory_root
    with pytest.raises(FileNotFoundError, match=f"memory://{root}/nope"):
        staging.stage([f"memory://{root}/nope"], tmp_path / "run", ONE)


def test_a_killed_stagers_partial_is_never_read(tmp_path, memory_root):
    _, root = memory_root
    uri = f"memory://{root}/tok"
    dest = staging.local_path(uri, tmp_path / "run")
    partial = dest.with_name(f".{dest.name}.host.1.partial")  # what a SIGKILLed stager leaves
    (partial / "sub").mkdir(parents=True)
    (partial / "vocab.json").write_text("{")
    located = staging.stage([uri], tmp_path / "run", ONE)
    assert (located[uri] / "vocab.json").read_bytes() == b'{"a": 1}'


def test_config_inputs_lists_every_input_the_stages_read():
    config = {
        "tokenizer": "s3://b/tok",
        "init": "s3://b/hf",
        "pairs": "s3://b/pairs.parquet",
        "sources": {"code": ["s3://b/c0", "s3://b/c1"], "web": ["/data/w0"]},
    }
    assert sorted(entrypoint.inputs(config)) == sorted(
        ["s3://b/tok", "s3://b/hf", "s3://b/pairs.parquet", "s3://b/c0", "s3://b/c1", "/data/w0"]
    )
