"""The artifact store: immutable versions, atomic writes, provenance lookups, and locations
relative to the root that survive moving it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem

from resources.artifact_store import ArtifactStore, safe_segment

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import sys, time
    from resources.artifact_store import ArtifactStore
    store = ArtifactStore(root=sys.argv[1])
    with store.stage("raw_code_shards", "big.jsonl") as staging:
        with open(staging.path / "docs.parquet", "wb") as f:
            for i in range(10_000):
                f.write(b"x" * 65536)
                f.flush()
                if i == 3:
                    print("writing", flush=True)
                time.sleep(0.01)
        staging.commit("v1", {})
    print("committed", flush=True)
""")


def test_writer_killed_mid_write_leaves_nothing_visible(tmp_path):
    root = tmp_path / "artifacts"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    store = ArtifactStore(root=str(root))
    assert store.list_versions("raw_code_shards", "big.jsonl") == []
    assert store.current_version("raw_code_shards", "big.jsonl") is None
    assert not (Path(store.partition_path("raw_code_shards", "big.jsonl")) / "v1").exists()
    debris = list(Path(store.partition_path("raw_code_shards", "big.jsonl")).iterdir())
    assert debris and all(p.name.startswith(".staging-") for p in debris)  # hidden, never read
    assert store.collect_garbage("raw_code_shards", "big.jsonl", older_than_s=0) == len(debris)


def test_write_bytes_killed_before_rename_keeps_the_old_file(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    target = f"{tmp_path}/a/CURRENT"
    store.write_bytes(target, b"old")
    code = textwrap.dedent(f"""
        import os
        os.replace = lambda *a: os.kill(os.getpid(), 9)  # die exactly between write and rename
        from resources.artifact_store import ArtifactStore
        ArtifactStore(root={str(tmp_path)!r}).write_bytes({target!r}, b"new" * 1000)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert done.returncode == -signal.SIGKILL
    assert Path(target).read_bytes() == b"old"


@pytest.mark.parametrize("root", ["local", "memory://phi-test"])
def test_commit_is_immutable_and_readable(tmp_path, root):
    store = ArtifactStore(root=str(tmp_path / "store") if root == "local" else f"{root}/{time.time_ns()}")
    with store.stage("asset", None) as staging:
        (staging.path / "data.bin").write_bytes(b"payload")
        staging.commit("abc123", {"metadata": {"n": 1}})
    store.set_current("asset", None, "abc123")
    store.record_provenance("asset", None, "key1", "abc123")
    assert store.list_versions("asset", None) == ["abc123"]
    assert store.current_manifest("asset", None)["files"] == {"data.bin": 7}
    assert store.lookup_provenance("asset", None, "key1") == "abc123"
    assert store.lookup_provenance("asset", None, "other") is None
    with store.stage("asset", None) as staging:  # same version again: the first one stays
        (staging.path / "data.bin").write_bytes(b"different")
        staging.commit("abc123", {})
    path = store.version_path("asset", None, "abc123") + "/data.bin"
    assert store.fs.cat_file(path) == b"payload"


def test_failed_build_leaves_no_version(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    with pytest.raises(RuntimeError), store.stage("asset", "p") as staging:
        (staging.path / "half.bin").write_bytes(b"..")
        raise RuntimeError("reader blew up")
    assert store.list_versions("asset", "p") == []
    assert list(Path(store.partition_path("asset", "p")).iterdir()) == []


def test_partition_keys_become_safe_distinct_path_segments():
    assert safe_segment("stack-000.jsonl") == "stack-000.jsonl"
    a, b = safe_segment("embedded:stdlib-00"), safe_segment("embedded_stdlib-00")
    assert a != b and "/" not in safe_segment("a/b") and not safe_segment("..").startswith(".")


class BucketFileSystem(MemoryFileSystem):
    """An in-memory object store addressed like S3: ``phitest-bucket://bucket/prefix/key`` (no root
    marker, so paths start at the bucket), to check URIs built against a bucket root."""

    protocol = ("phitest-bucket",)
    root_marker = ""
    store: dict = {}  # fsspec keeps a memory filesystem's files on the class: its own, not memory://'s
    pseudo_dirs: list = [""]

    @classmethod
    def _strip_protocol(cls, path):
        return AbstractFileSystem._strip_protocol.__func__(cls, path)


fsspec.register_implementation("phitest-bucket", BucketFileSystem, clobber=True)


def _root(tmp_path: Path, kind: str) -> str:
    if kind == "local":
        return str(tmp_path / "artifacts")
    return f"{kind}://bucket/prefix-{time.time_ns()}"  # a fresh prefix: both stores are process-wide


@pytest.mark.parametrize("kind", ["local", "memory", "phitest-bucket"])
def test_relative_and_resolve_round_trip(tmp_path, kind):
    store = ArtifactStore(root=_root(tmp_path, kind))
    path = f"{store.version_path('tokenize_code', 'shard-3', 'v1')}/tokens/tokens.bin"
    rel = "tokenize_code/shard-3/v1/tokens/tokens.bin"
    assert store.relative(path) == rel and store.relative(store.uri(path)) == rel
    assert store.resolve(rel) == store.uri(path)
    assert store.relative(store.resolve(rel)) == rel
    if kind == "local":
        assert store.resolve(rel) == f"{tmp_path}/artifacts/{rel}"
    else:  # the bucket and prefix of the root, under the root's own scheme
        prefix = store.root.split("://", 1)[1]
        assert store.resolve(rel).startswith(f"{kind}://") and store.resolve(rel).endswith(f"{prefix}/{rel}")
    if kind == "phitest-bucket":
        assert store.resolve(rel) == f"{store.root}/{rel}"


def test_resolve_passes_absolute_locations_through_and_relative_refuses_outside(tmp_path):
    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    old = f"{tmp_path}/artifacts/raw_code_shards/a/v1/docs.parquet"  # a manifest from before
    assert store.resolve(old) == old
    assert store.resolve("s3://elsewhere/x.parquet") == "s3://elsewhere/x.parquet"
    with pytest.raises(ValueError, match="outside"):
        store.resolve("../landing/code/x.jsonl")
    with pytest.raises(ValueError, match="not under the artifact root"):
        store.relative(f"{tmp_path}/landing/code/x.jsonl")
    with pytest.raises(ValueError, match="not under the artifact root"):
        store.relative(f"{tmp_path}/artifacts-old/raw_code_shards/a/v1/docs.parquet")  # a prefix, not a parent
    spelled = f"{tmp_path}/artifacts/raw_code_shards/../raw_code_shards/a/v1/x"
    assert store.relative(spelled) == "raw_code_shards/a/v1/x"


def _commit_with_location(store: ArtifactStore) -> str:
    with store.stage("tokenize_code", "shard-3") as staging:
        (staging.path / "tokens").mkdir()
        (staging.path / "tokens" / "tokens.bin").write_bytes(b"\x01\x02")
        where = store.version_path("tokenize_code", "shard-3", "v1")
        staging.commit("v1", {"metadata": {"tokens": store.relative(f"{where}/tokens/tokens.bin")}})
    store.set_current("tokenize_code", "shard-3", "v1")
    return "tokenize_code/shard-3/v1/tokens/tokens.bin"


@pytest.mark.parametrize("how", ["move", "copytree"])
def test_a_manifest_reads_back_after_its_root_moves(tmp_path, how):
    first = ArtifactStore(root=str(tmp_path / "a" / "artifacts"))
    rel = _commit_with_location(first)
    assert first.current_manifest("tokenize_code", "shard-3")["metadata"]["tokens"] == rel
    if how == "move":
        shutil.move(tmp_path / "a", tmp_path / "b")
    else:
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        shutil.rmtree(tmp_path / "a")  # a copy that still read the original would fail now
    moved = ArtifactStore(root=str(tmp_path / "b" / "artifacts"))
    located = moved.resolve(moved.current_manifest("tokenize_code", "shard-3")["metadata"]["tokens"])
    assert located == f"{tmp_path}/b/artifacts/{rel}"
    assert Path(located).read_bytes() == b"\x01\x02"


def test_a_manifest_reads_back_after_its_bucket_prefix_is_copied():
    first = ArtifactStore(root=_root(Path(), "memory"))
    rel = _commit_with_location(first)
    fs = first.fs
    moved = ArtifactStore(root=_root(Path(), "memory"))
    for path in fs.find(first.base_path):  # what `aws s3 sync` to another prefix does
        fs.pipe_file(moved.base_path + path[len(first.base_path):], fs.cat_file(path))
    fs.rm(first.base_path, recursive=True)
    manifest = moved.current_manifest("tokenize_code", "shard-3")
    located = moved.resolve(manifest["metadata"]["tokens"])
    assert located == moved.fs.unstrip_protocol(f"{moved.base_path}/{rel}")
    with fsspec.open(located, "rb") as f:
        assert f.read() == b"\x01\x02"
