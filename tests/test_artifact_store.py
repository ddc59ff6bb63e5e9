"""The artifact store: immutable versions, atomic writes, and provenance lookups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

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
