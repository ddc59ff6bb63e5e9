"""The staged dedup assets in Dagster, on a small home of real Python source (ci profile).

The bucket partitions here follow a layout of 15 band groups x 4 hash ranges (60 partitions), so that a
one-document shard, which has one slice per band (14 LSH bands + the exact-id band), lands in at most 15
of them; the scale presets use the same assets with their own layout.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from phi_assets.curation import assets, lsh
from phi_assets.curation.dedup_assets import buckets_asset, dedup_asset, shard_record
from phi_assets.curation.filter_assets import quality_filtered_asset
from phi_assets.ingest.assets import raw_code_shards
from resources import ArtifactStore, build_resources, load_profile
from tests.support.files import landing, write_jsonl

LAYOUT = lsh.BucketLayout(15, 4)
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


def _all(instance, resources, graph, shards: list[str]) -> dict[str, list[str]]:
    raw, qf, buckets, dedup = graph
    for key in shards:
        _run(instance, resources, [raw], raw, key)
        _run(instance, resources, [raw, qf], qf, key)
    logs = {}
    for key in LAYOUT.keys():
        _, logs[key] = _run(instance, resources, [qf, buckets], buckets, key)
    _run(instance, resources, [qf, buckets, dedup], dedup)
    return logs


def _graph(profile):
    """raw -> quality filter -> buckets -> dedup for code shards, cut for LAYOUT; resources; the store."""
    qf = quality_filtered_asset("code", LAYOUT)
    buckets = buckets_asset("code", qf, LAYOUT)
    graph = (raw_code_shards, qf, buckets, dedup_asset("code", buckets, qf, LAYOUT))
    return graph, build_resources(profile), ArtifactStore(root=profile.artifact_root)


def _computed(logs: dict[str, list[str]]) -> set[str]:
    done = {k for k, messages in logs.items() if any(": computing (code version" in m for m in messages)}
    skipped = {k for k, messages in logs.items() if any("skipping work" in m for m in messages)}
    assert done.isdisjoint(skipped) and done | skipped == set(logs)  # every step logs one or the other
    return done


@pytest.mark.slow  # 120 bucket steps through Dagster
def test_a_new_shard_recomputes_only_the_bucket_partitions_it_touches(home):
    graph, resources, store = _graph(home)
    qf = graph[1]
    with dg.DagsterInstance.from_config(str(Path(home.phi_home) / "dagster")) as instance:
        instance.add_dynamic_partitions("code_shards", ["a.jsonl", "b.jsonl"])
        first = _all(instance, resources, graph, ["a.jsonl", "b.jsonl"])
        assert _computed(first) == set(LAYOUT.keys())
        before = {
            k: shard_record(store, "code", k, store.current_manifest(qf.key.path[-1], k)["data_version"])
            for k in ("a.jsonl", "b.jsonl")
        }
        # one cluster: the original, its exact copy and its near copy; the smallest id survives
        assert sum(record["removed"] for record, _ in before.values()) == 2

        new = STDLIB / "colorsys.py"
        write_jsonl(landing(home, "code") / "c.jsonl", _rows([new]))
        instance.add_dynamic_partitions("code_shards", ["c.jsonl"])
        second = _all(instance, resources, graph, ["c.jsonl"])
        touched = store.current_manifest("quality_filtered_code_shards", "c.jsonl")["metadata"]["bands"][
            "touched"
        ]
        expected = {k for i, k in enumerate(LAYOUT.keys()) if lsh.touches(touched, i)}
        assert 1 <= len(expected) <= 15
        assert _computed(second) == expected  # the other partitions log that they skip

        for key, (record, _) in before.items():  # nothing new to remove there: same removal lists
            version = store.current_manifest("quality_filtered_code_shards", key)["data_version"]
            assert shard_record(store, "code", key, version)[0]["digest"] == record["digest"]


@pytest.mark.slow  # materializes the curation steps up to dedup
def test_a_filtered_corpus_step_reads_only_its_own_removals(home, monkeypatch):
    graph, resources, store = _graph(home)
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
