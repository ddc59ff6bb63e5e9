"""scan_landing identifies landing objects from their listing (name, size, ETag or mtime) and never
reads one: a 1 GB object is listed like a small one; the state holds the latest listing only."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from phi_assets.ingest.shards import listing_identity
from sensors.landing import scan_landing

ROW = json.dumps({"text": "import this\n"}) + "\n"


class CountingFileSystem(LocalFileSystem):
    """The local filesystem under ``counting://``, recording every object it opens or reads."""

    protocol = ("counting",)
    reads: list[str] = []  # shared by the instances fsspec caches; reset by the ``reads`` fixture

    def _open(self, path, *args, **kwargs):
        type(self).reads.append(f"open {path}")
        return super()._open(path, *args, **kwargs)

    def cat_file(self, path, *args, **kwargs):
        type(self).reads.append(f"cat_file {path}")
        return super().cat_file(path, *args, **kwargs)


fsspec.register_implementation("counting", CountingFileSystem, clobber=True)


def spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every body read of a ``counting://`` object from now on, and every Python-level ``open`` of a
    path under a ``counting`` directory (a tick reading through pathlib or ``open`` would show here)."""
    CountingFileSystem.reads = []
    real_open = io.open

    def spying_open(file, *args, **kwargs):
        if isinstance(file, str | os.PathLike) and "counting" in Path(file).parts:
            CountingFileSystem.reads.append(f"builtin open {file}")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spying_open)
    monkeypatch.setattr("io.open", spying_open)
    return CountingFileSystem.reads


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return spy_reads(monkeypatch)


@pytest.fixture
def area(tmp_path: Path) -> Path:
    path = tmp_path / "counting" / "code"
    path.mkdir(parents=True)
    return path


def uri(path: Path) -> str:
    return f"counting://{path}"


def test_a_1gb_object_is_a_new_shard_and_no_body_is_read(area, reads):
    with open(area / "big.jsonl", "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB listed, no disk used
    (area / "small.jsonl").write_text(ROW)
    reads.clear()
    new, state = scan_landing(uri(area), {})
    assert [s.name for s in new] == ["big.jsonl", "small.jsonl"]
    assert new[0].uri == f"counting://{area}/big.jsonl"
    assert fsspec.filesystem("counting").info(str(area / "big.jsonl"))["size"] == 1 << 30
    assert set(state["seen"]) == {"big.jsonl", "small.jsonl"}
    assert scan_landing(uri(area), state)[0] == []
    assert reads == []


def test_the_counting_filesystem_sees_a_body_read(area, reads):
    """The spy the no-read assertions rely on does count reads."""
    (area / "a.jsonl").write_text(ROW)
    reads.clear()
    fs = fsspec.filesystem("counting")
    fs.cat_file(str(area / "a.jsonl"))
    with open(area / "a.jsonl") as f:
        f.read()
    assert {r.split()[0] for r in reads} == {"cat_file", "open", "builtin"}


def test_a_directory_shard_is_identified_by_its_files_listing(area, reads):
    shard = area / "repo-000"
    (shard / "pkg").mkdir(parents=True)
    (shard / "pkg" / "a.py").write_text("x = 1\n")
    (shard / "b.py").write_text("y = 2\n")
    reads.clear()
    new, state = scan_landing(uri(area), {})
    assert [s.name for s in new] == ["repo-000"]
    assert scan_landing(uri(area), state)[0] == []
    assert reads == []
    (shard / "pkg" / "c.py").write_text("z = 3\n")  # a file added one level down
    reads.clear()
    (again,) = scan_landing(uri(area), state)[0]
    assert again.name == "repo-000" and again.identity != new[0].identity
    assert reads == []


def test_identity_follows_size_mtime_and_name_not_key_order(area):
    fs = fsspec.filesystem("counting")
    path = area / "s.jsonl"
    path.write_text(ROW)
    entry = fs.info(str(path))
    first = listing_identity(fs, entry)
    assert listing_identity(fs, dict(reversed(list(entry.items())))) == first
    assert listing_identity(fs, {**entry, "size": entry["size"] + 1}) != first
    assert listing_identity(fs, {**entry, "mtime": entry["mtime"] + 1}) != first
    assert listing_identity(fs, {**entry, "name": f"{area}/t.jsonl"}) != first
    assert listing_identity(fs, {**entry, "name": entry["name"] + "/"}) == first


def test_an_object_store_etag_identifies_whatever_its_timestamps():
    """s3fs listings: ``ETag`` (quoted) names the stored bytes; LastModified alone does not count."""
    entry = {"name": "phi/landing/web/cc.jsonl", "type": "file", "size": 10, "ETag": '"abc"',
             "LastModified": "2026-01-01T00:00:00Z", "StorageClass": "STANDARD"}
    first = listing_identity(None, entry)
    assert listing_identity(None, {**entry, "LastModified": "2026-02-01T00:00:00Z"}) == first
    assert listing_identity(None, {**entry, "ETag": "abc"}) == first
    assert listing_identity(None, {**entry, "ETag": '"abd"'}) != first
    gcs = {"name": "b/web/cc.jsonl", "type": "file", "size": 10, "updated": "2026-01-01", "generation": "17"}
    assert listing_identity(None, {**gcs, "updated": "2026-02-01"}) == listing_identity(None, gcs)
    no_version = {"name": "b/web/cc.jsonl", "type": "file", "size": 10, "LastModified": "2026-01-01"}
    assert listing_identity(None, {**no_version, "LastModified": "2026-02-01"}) != listing_identity(
        None, no_version)


def test_max_new_reports_the_rest_on_later_ticks(area, reads):
    for i in range(5):
        (area / f"s-{i}.jsonl").write_text(ROW)
    reads.clear()
    state: dict = {}
    reported = []
    for _ in range(4):
        new, state = scan_landing(uri(area), state, max_new=2)
        reported.append([s.name for s in new])
    assert reported == [["s-0.jsonl", "s-1.jsonl"], ["s-2.jsonl", "s-3.jsonl"], ["s-4.jsonl"], []]
    assert reads == []


def test_a_changed_object_is_reported_after_a_truncated_tick(area):
    for i in range(3):
        (area / f"s-{i}.jsonl").write_text(ROW)
    _, state = scan_landing(uri(area), {})
    (area / "s-2.jsonl").write_text(ROW + ROW)
    (area / "a.jsonl").write_text(ROW)  # first by name: fills the tick
    new, state = scan_landing(uri(area), state, max_new=1)
    assert [s.name for s in new] == ["a.jsonl"]
    assert [s.name for s in scan_landing(uri(area), state, max_new=1)[0]] == ["s-2.jsonl"]


def test_the_state_holds_the_latest_listing_only(area):
    """Files come and go over many ticks: the state is bounded by what the landing area holds now."""
    state: dict = {}
    for tick in range(60):
        (area / f"s-{tick:03}.jsonl").write_text(ROW)
        if tick >= 3:
            (area / f"s-{tick - 3:03}.jsonl").unlink()
        new, state = scan_landing(uri(area), state)
        assert [s.name for s in new] == [f"s-{tick:03}.jsonl"]
        assert sorted(state["seen"]) == sorted(p.name for p in area.iterdir())
    assert len(state["seen"]) == 3 and len(json.dumps(state)) < 300


def test_a_cursor_of_the_hashing_sensor_is_read_as_seen(area, reads):
    """Upgrading from the cursor that recorded (size, mtime, type, content hash) per file: the files it
    recorded unchanged are not new again; changed or unknown ones are."""
    for name in ("kept.jsonl", "changed.jsonl", "unknown.jsonl"):
        (area / name).write_text(ROW)
    fs = fsspec.filesystem("counting")
    legacy = {"files": {}, "hashes": {}}
    for name in ("kept.jsonl", "changed.jsonl"):
        info = fs.info(str(area / name))
        legacy["files"][name] = [info["size"], str(info["mtime"]), info["type"], "0" * 32]
    legacy = json.loads(json.dumps(legacy))  # as the cursor comes back
    (area / "changed.jsonl").write_text(ROW + ROW)
    reads.clear()
    new, state = scan_landing(uri(area), legacy)
    assert [s.name for s in new] == ["changed.jsonl", "unknown.jsonl"]
    assert set(state) == {"seen"} and sorted(state["seen"]) == ["changed.jsonl", "kept.jsonl", "unknown.jsonl"]
    assert reads == []


def test_a_missing_landing_area_gives_nothing(tmp_path):
    assert scan_landing(uri(tmp_path / "counting" / "none"), {"seen": {"x": "y"}}) == ([], {"seen": {}})
