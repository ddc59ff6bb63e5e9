"""A home copied or moved to another path reads its own files, never the original's.

Manifests and the catalog's ``raw_shards`` rows keep artifact locations relative to the artifact
root; readers resolve them against the root the store has now (``ArtifactStore.resolve``). The
first test builds a small home through the real assets (two web shards, their quality filter and
dedup, the catalog), copies it, deletes the original, and goes on at the copy. The second does the
same with the demo's fully materialized ci home (``demo_run``), which it must not change: the copy
hard-links the immutable versions and rewrites nothing in place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from phi_assets.curation import lsh
from phi_assets.curation.dedup_assets import (
    BUCKETS,
    dedup_code,
    dedup_web,
    dedup_web_buckets,
    dedup_web_pairs,
    dedup_web_shingles,
    shard_record,
)
from phi_assets.curation.filter_assets import quality_filtered_web_shards
from phi_assets.ingest.assets import raw_catalog, raw_code_shards, raw_web_shards
from resources import ArtifactStore, build_resources, load_profile
from tests.support.demo_home import ARTICLE, NEAR_COPY
from tests.support.files import landing, write_jsonl
from tests.support.homes import copy_home

WEB_KEYS = ["article-a.jsonl", "article-b.jsonl"]
LESSON = (
    "A list in Python keeps its items in order. You add an item with append and remove one with pop. "
    "Indexing starts at zero, so the first item is at position zero and the last one at minus one. "
    "Slicing returns a new list with the items between two positions, which leaves the original as it was. "
    "Sorting a list changes it in place, while the sorted function returns a new, sorted list instead. "
) * 3


def _use_home(monkeypatch: pytest.MonkeyPatch, home: Path):
    monkeypatch.setenv("PHI_PROFILE", "ci")
    monkeypatch.setenv("PHI_HOME", str(home))
    for var in ("DAGSTER_HOME", "PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    return load_profile()


def _materialize(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """The web shards, their quality filter, dedup and the catalog, on the home at ``home`` (its
    profile and its own Dagster instance). Returns whether each step skipped its work."""
    profile = _use_home(monkeypatch, home)
    resources = build_resources(profile)
    steps: list[tuple[list, dg.AssetsDefinition, str | None]] = [
        *(([raw_web_shards], raw_web_shards, key) for key in WEB_KEYS),
        *(([raw_web_shards, quality_filtered_web_shards], quality_filtered_web_shards, k) for k in WEB_KEYS),
        *(([quality_filtered_web_shards, dedup_web_buckets], dedup_web_buckets, k)
          for k in BUCKETS.get_partition_keys()),
        *(([quality_filtered_web_shards, dedup_web_buckets, dedup_web_shingles], dedup_web_shingles, k)
          for k in WEB_KEYS),
        *(([dedup_web_buckets, dedup_web_shingles, dedup_web_pairs], dedup_web_pairs, k)
          for k in BUCKETS.get_partition_keys()),
        ([quality_filtered_web_shards, dedup_web_pairs, dedup_web], dedup_web, None),
        ([raw_catalog, raw_code_shards, raw_web_shards], raw_catalog, None),
    ]
    skipped = {}
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        instance.add_dynamic_partitions("web_shards", WEB_KEYS)
        for assets, target, key in steps:
            result = dg.materialize(assets, selection=[target], partition_key=key, instance=instance,
                                    resources=resources)
            assert result.success
            (event,) = result.get_asset_materialization_events()
            name = target.key.to_user_string() + (f"[{key}]" if key else "")
            skipped[name] = event.materialization.metadata["skipped"].value
    return skipped


def _catalog(catalog_path: str) -> tuple[int, int, list[str], list[str]]:
    """(documents in raw_documents, sum of num_docs, every file the view read, the stored paths)."""
    with duckdb.connect(catalog_path, read_only=True) as con:
        (num_docs,) = con.execute("SELECT count(*) FROM raw_documents").fetchone()
        (expected,) = con.execute("SELECT sum(num_docs) FROM raw_shards").fetchone()
        files = [f for (f,) in con.execute("SELECT DISTINCT filename FROM raw_documents").fetchall()]
        stored = [p for row in con.execute("SELECT docs_path, rejects_path FROM raw_shards").fetchall()
                  for p in row]
    return num_docs, expected, files, stored


def _dedup_read_back(store: ArtifactStore, source: str, shards: list[str]) -> dict[str, tuple[str, str | None]]:
    """shard -> (its quality-filtered docs.parquet, its removal list in the current dedup or None), as
    ``edu_annotations`` and ``filtered_*_corpus`` read them: the filter's manifest, then dedup's record."""
    asset, found = f"quality_filtered_{source}_shards", {}
    for shard in shards:
        manifest = store.current_manifest(asset, shard)
        if manifest is None:
            continue
        docs = f"{store.version_path(asset, shard, manifest['data_version'])}/docs.parquet"
        found[shard] = (docs, shard_record(store, source, shard, manifest["data_version"])[1])
    return found


@pytest.mark.slow  # builds a home through the ingest and curation assets
def test_a_copied_home_rebuilds_its_catalog_and_reads_only_its_own_files(tmp_path, monkeypatch):
    original, copy = tmp_path / "here" / "phi", tmp_path / "there" / "phi"
    profile = _use_home(monkeypatch, original)
    write_jsonl(landing(profile, "web") / WEB_KEYS[0], [{"text": ARTICLE}, {"text": LESSON}])
    write_jsonl(landing(profile, "web") / WEB_KEYS[1], [{"text": ARTICLE}, {"text": NEAR_COPY}])
    first = _materialize(original, monkeypatch)
    assert not any(first.values()), first
    store = ArtifactStore(root=profile.artifact_root)
    manifest = store.current_manifest("raw_catalog", None)
    for row in manifest["metadata"]["rows"]:  # persisted relative to the artifact root
        assert row["docs_path"] == f"raw_web_shards/{row['shard']}/{row['data_version']}/docs.parquet"

    shutil.copytree(original, copy)
    shutil.rmtree(original)  # whatever still followed a path into the original fails from here on

    again = _materialize(copy, monkeypatch)  # catalog included: rebuilt where the home now lives
    assert all(again.values()), again  # a moved home recomputes nothing
    copied = _use_home(monkeypatch, copy)
    num_docs, expected, files, stored = _catalog(copied.catalog_path)
    assert num_docs == expected == 4
    assert files and all(f.startswith(f"{copy}/artifacts/raw_web_shards/") for f in files), files
    assert stored and not any(os.path.isabs(p) for p in stored), stored

    moved = ArtifactStore(root=copied.artifact_root)
    read = _dedup_read_back(moved, "web", WEB_KEYS)  # the second read-back: filter manifests -> dedup's records
    assert sorted(read) == WEB_KEYS
    assert all(d.startswith(f"{copy}/artifacts/quality_filtered_web_shards/") and Path(d).is_file()
               for d, _ in read.values()), read
    removals = [r for _, r in read.values() if r]
    assert removals and all(r.startswith(f"{copy}/artifacts/dedup_web/") for r in removals), removals
    chosen = lsh.sample_survivors([(k, d, r) for k, (d, r) in read.items()], 10, 0)
    sample = lsh.read_sample(chosen, {k: d for k, (d, _) in read.items()})  # what edu_annotations reads
    kept = sum(lsh.survivor_rows(d, r).height for d, r in read.values())
    assert sample.height == kept >= 1 and all(sample["text"].str.len_chars() > 100)


def _strings(value, key: str = "") -> list[tuple[str, str]]:
    """Every string in a manifest, with the key it is under."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, k)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v, key)]
    return [(key, value)] if isinstance(value, str) else []


# Absolute paths a manifest may hold because nothing reads them back: the directory the evaluated
# engine loaded, shown in eval_scores' metadata.
SHOWN_ONLY = {("eval_scores", "model_path")}




def test_copy_the_ci_home_and_query_raw_documents(demo_run, tmp_path, monkeypatch):
    original = demo_run["home"]
    copy = tmp_path / "elsewhere" / "phi"
    copy_home(original, copy)
    profile = _use_home(monkeypatch, copy)
    with dg.DagsterInstance.from_config(str(copy / "dagster")) as instance:
        result = dg.materialize([raw_catalog, raw_code_shards, raw_web_shards], selection=[raw_catalog],
                                instance=instance, resources=build_resources(profile))
    assert result.success
    (event,) = result.get_asset_materialization_events()
    assert event.materialization.metadata["skipped"].value is True  # same inputs: nothing to redo

    num_docs, expected, files, stored = _catalog(profile.catalog_path)
    assert num_docs == expected and num_docs > 50
    assert all(f.startswith(f"{copy}/artifacts/") for f in files), [f for f in files if str(copy) not in f][:3]
    assert not any(os.path.isabs(p) for p in stored)

    store = ArtifactStore(root=profile.artifact_root)
    for asset in (dedup_code, dedup_web):  # a second read-back through the manifests and records, at the copy
        source = asset.key.to_user_string().removeprefix("dedup_")
        with dg.DagsterInstance.from_config(str(copy / "dagster")) as instance:
            keys = instance.get_dynamic_partitions(f"{source}_shards")
        read = _dedup_read_back(store, source, keys)
        paths = [p for pair in read.values() for p in pair if p]
        assert read and all(p.startswith(f"{copy}/artifacts/") and Path(p).exists() for p in paths)

    # No current manifest names a file of the original's artifacts: the copy cannot follow one back.
    leaks = {}
    for path in (copy / "artifacts").glob("*/*/CURRENT"):
        asset = path.parent.parent.name
        manifest = json.loads((path.parent / path.read_text().strip() / "_manifest.json").read_text())
        named = [(k, v) for k, v in _strings(manifest)
                 if str(original / "artifacts") in v and (asset, k) not in SHOWN_ONLY]
        if named:
            leaks[str(path.parent.relative_to(copy / "artifacts"))] = named[:2]
    assert not leaks, leaks
