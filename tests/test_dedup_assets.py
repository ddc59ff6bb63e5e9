"""The staged dedup assets in Dagster, on a small home of real Python source (ci profile).

The bucket partitions of the new-shard test follow a layout of 15 band groups x 2 hash ranges (30
partitions), so that a one-document shard, which has one slice per band (14 LSH bands + the exact-id
band), lands in at most 15 of them; the read-back test uses 1 x 2. The scale presets use the same assets
with their own layout.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from phi_assets.curation import assets, lsh
from phi_assets.curation.dedup_assets import (
    buckets_asset,
    dedup_asset,
    pairs_asset,
    shard_record,
    shingles_asset,
)
from phi_assets.curation.filter_assets import quality_filtered_asset
from phi_assets.ingest.assets import raw_code_shards
from resources import ArtifactStore, build_resources, load_profile
from tests.support.files import landing, write_jsonl

LAYOUT = lsh.BucketLayout(15, 2)
SMALL = lsh.BucketLayout(1, 2)
STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "email").glob("_*.py"))


def _rows(paths: list[Path]) -> list[dict]:
    return [{"text": p.read_text(), "uri": f"file://{p}"} for p in paths]


def _edited(text: str) -> str:
    lines = text.splitlines()
    lines[len(lines) // 2] = "# a line changed in this copy"
    return "\n".join(lines)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI_PROFILE", "ci")
    monkeypatch.setenv("PHI_HOME", str(tmp_path / "phi"))
    for var in ("DAGSTER_HOME", "PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG", "PHI_SCALE"):
        monkeypatch.delenv(var, raising=False)
    profile = load_profile()
    rows = _rows(FILES)
    original = rows[0]["text"]
    write_jsonl(landing(profile, "code") / "a.jsonl", rows[: len(rows) // 2])
    write_jsonl(
        landing(profile, "code") / "b.jsonl",
        [
            *rows[len(rows) // 2 :],
            {"text": original, "uri": "copy"},
            {"text": _edited(original), "uri": "near-copy"},
        ],
    )
    (tmp_path / "phi" / "dagster").mkdir(parents=True)
    return profile


def _run(instance, resources, selection, target, key=None) -> tuple[bool, list[str]]:
    result = dg.materialize(
        selection, selection=[target], partition_key=key, instance=instance, resources=resources
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    return event.materialization.metadata["skipped"].value, messages


def _all(instance, resources, graph, shards: list[str], every_shard: list[str] | None = None) -> dict:
    """Ingest and filter ``shards``, then every dedup step (shingle sets for ``every_shard``); each
    step's log messages by stage and partition."""
    (raw, qf, buckets, shingles, pairs, dedup), layout = graph[:6], graph[6]
    for key in shards:
        _run(instance, resources, [raw], raw, key)
        _run(instance, resources, [raw, qf], qf, key)
    logs: dict[str, dict] = {"buckets": {}, "shingles": {}, "pairs": {}}
    for key in layout.keys():
        _, logs["buckets"][key] = _run(instance, resources, [qf, buckets], buckets, key)
    for key in every_shard or shards:
        _, logs["shingles"][key] = _run(instance, resources, [qf, buckets, shingles], shingles, key)
    for key in layout.keys():
        _, logs["pairs"][key] = _run(instance, resources, [buckets, shingles, pairs], pairs, key)
    _run(instance, resources, [qf, pairs, dedup], dedup)
    return logs


def _graph(profile, layout: lsh.BucketLayout = LAYOUT):
    """raw -> quality filter -> buckets -> shingle sets -> pairs -> dedup for code shards, cut for
    ``layout`` (the graph's last item); resources; the store."""
    qf = quality_filtered_asset("code", layout)
    buckets = buckets_asset("code", qf, layout)
    shingles = shingles_asset("code", buckets, qf, layout)
    pairs = pairs_asset("code", buckets, shingles, layout)
    graph = (raw_code_shards, qf, buckets, shingles, pairs, dedup_asset("code", pairs, qf, layout), layout)
    return graph, build_resources(profile), ArtifactStore(root=profile.artifact_root)


def _computed(logs: dict[str, list[str]]) -> set[str]:
    done = {k for k, messages in logs.items() if any(": computing (code version" in m for m in messages)}
    skipped = {k for k, messages in logs.items() if any("skipping work" in m for m in messages)}
    assert done.isdisjoint(skipped) and done | skipped == set(logs)  # every step logs one or the other
    return done


@pytest.mark.slow  # 120 bucket and pairs steps through Dagster
def test_a_new_shard_recomputes_only_the_bucket_partitions_it_touches(home):
    graph, resources, store = _graph(home)
    qf = graph[1]
    with dg.DagsterInstance.from_config(str(Path(home.phi_home) / "dagster")) as instance:
        instance.add_dynamic_partitions("code_shards", ["a.jsonl", "b.jsonl"])
        first = _all(instance, resources, graph, ["a.jsonl", "b.jsonl"])
        assert _computed(first["buckets"]) == _computed(first["pairs"]) == set(LAYOUT.keys())
        assert _computed(first["shingles"]) == {"a.jsonl", "b.jsonl"}
        before = {
            k: shard_record(store, "code", k, store.current_manifest(qf.key.path[-1], k)["data_version"])
            for k in ("a.jsonl", "b.jsonl")
        }
        # one cluster: the original, its exact copy and its near copy; the smallest id survives
        assert sum(record["removed"] for record, _ in before.values()) == 2

        new = STDLIB / "colorsys.py"
        write_jsonl(landing(home, "code") / "c.jsonl", _rows([new]))
        instance.add_dynamic_partitions("code_shards", ["c.jsonl"])
        second = _all(instance, resources, graph, ["c.jsonl"], ["a.jsonl", "b.jsonl", "c.jsonl"])
        touched = store.current_manifest("quality_filtered_code_shards", "c.jsonl")["metadata"]["bands"][
            "touched"
        ]
        expected = {k for i, k in enumerate(LAYOUT.keys()) if lsh.touches(touched, i)}
        assert 1 <= len(expected) <= 15
        assert _computed(second["buckets"]) == expected  # the other partitions log that they skip
        # colorsys.py duplicates nothing: no old shard's candidate rows change, so only the new shard's
        # shingle sets are made, and only the partitions whose buckets changed confirm again
        assert _computed(second["shingles"]) == {"c.jsonl"}
        assert _computed(second["pairs"]) == expected

        for key, (record, _) in before.items():  # nothing new to remove there: same removal lists
            version = store.current_manifest("quality_filtered_code_shards", key)["data_version"]
            assert shard_record(store, "code", key, version)[0]["digest"] == record["digest"]


@pytest.mark.slow  # materializes the curation steps up to dedup
def test_a_filtered_corpus_step_reads_only_its_own_removals(home, monkeypatch):
    graph, resources, store = _graph(home, SMALL)
    with dg.DagsterInstance.from_config(str(Path(home.phi_home) / "dagster")) as instance:
        instance.add_dynamic_partitions("code_shards", ["a.jsonl", "b.jsonl"])
        _all(instance, resources, graph, ["a.jsonl", "b.jsonl"])
    dedup_dir = store.version_path("dedup_code", None, store.current_version("dedup_code", None))
    read: list[str] = []
    real_read, real_cat = pl.read_parquet, store.fs.cat_file
    monkeypatch.setattr(
        pl, "read_parquet", lambda source, *a, **k: read.append(str(source)) or real_read(source, *a, **k)
    )
    monkeypatch.setattr(
        store.fs, "cat_file", lambda path, *a, **k: read.append(str(path)) or real_cat(path, *a, **k)
    )

    shard = store.current_manifest("quality_filtered_code_shards", "b.jsonl")
    rows, digest = assets.dedup_survivors(store, "code", "b.jsonl", shard)
    own = f"{dedup_dir}/{lsh.removal_stem('b.jsonl')}"
    manifest = f"{dedup_dir}/_manifest.json"  # which version is current: counts only, no per-shard lists
    from_dedup = [p for p in read if p.startswith(dedup_dir)]
    assert any(p.startswith(own) for p in from_dedup)
    assert all(p.startswith(own) or p == manifest for p in from_dedup), (
        from_dedup
    )  # no other shard, no global file
    assert "b.jsonl" not in Path(manifest).read_text() and "a.jsonl" not in Path(manifest).read_text()
    record, _ = shard_record(store, "code", "b.jsonl", shard["data_version"])
    assert record["removed"] >= 1 and digest == record["digest"]
    assert rows.height == shard["metadata"]["funnel"]["kept"] - record["removed"]
