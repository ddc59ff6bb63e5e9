"""Raw shard assets end to end in Dagster: metadata, checks, skip-if-unchanged, the catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from phi_assets.ingest import assets as ingest_assets
from phi_assets.ingest.assets import raw_catalog, raw_code_shards, raw_web_shards
from tests.support.dagster_runs import materialize_shard
from tests.support.files import landing

ROOT = Path(__file__).resolve().parents[1]


def materialization(result, node: str) -> dg.AssetMaterialization:
    (event,) = result.asset_materializations_for_node(node)
    return event


def data_version(event: dg.AssetMaterialization) -> str:
    return event.tags["dagster/data_version"]


def test_embedded_code_shard_materializes_with_metadata_and_passing_check(instance, resources, store):
    result = materialize_shard(raw_code_shards, "embedded:stdlib-00", instance, resources)
    assert result.success
    meta = materialization(result, "raw_code_shards").metadata
    read, written, rejected = (meta[k].value for k in ("num_read", "dagster/row_count", "num_rejected"))
    assert read == written + rejected and written > 20
    assert sum(meta["reject_reasons"].value.values()) == rejected
    assert meta["preview"].value.records and "data:image/png;base64," in meta["length_histogram"].value
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.blocking
    docs = pq.read_table(f"{meta['artifact'].value}/docs.parquet")
    assert docs.num_rows == written and set(docs["source"].to_pylist()) == {"code"}
    assert docs["license"][0].as_py() == "PSF-2.0" and json.loads(docs["meta"][0].as_py())["path"]


def test_unchanged_inputs_and_code_skip_work_and_keep_the_data_version(instance, resources, monkeypatch):
    first = materialize_shard(raw_web_shards, "embedded:pydoc-topics", instance, resources)
    second = materialize_shard(raw_web_shards, "embedded:pydoc-topics", instance, resources)
    a, b = materialization(first, "raw_web_shards"), materialization(second, "raw_web_shards")
    assert a.metadata["skipped"].value is False and b.metadata["skipped"].value is True
    assert data_version(a) == data_version(b)
    logs = [e.message for e in instance.all_logs(second.run_id) if e.message]
    assert any("inputs unchanged; skipping work" in m for m in logs)
    # a new code version recomputes (same content, so the same data version)
    monkeypatch.setattr(ingest_assets, "INGEST_CODE_VERSION", "changed-code")
    third = materialization(materialize_shard(raw_web_shards, "embedded:pydoc-topics", instance,
                                              resources), "raw_web_shards")
    assert third.metadata["skipped"].value is False and data_version(third) == data_version(a)


def test_changed_shard_content_gives_a_new_data_version(profile, instance, resources, store):
    path = landing(profile, "web") / "crawl.jsonl"
    path.write_text(json.dumps({"text": "A page about lists.", "url": "https://e.org/1"}) + "\n")
    first = materialization(materialize_shard(raw_web_shards, "crawl.jsonl", instance, resources),
                            "raw_web_shards")
    with path.open("a") as f:
        f.write(json.dumps({"text": "A page about dicts.", "url": "https://e.org/2"}) + "\n")
    second = materialization(materialize_shard(raw_web_shards, "crawl.jsonl", instance, resources),
                             "raw_web_shards")
    assert data_version(first) != data_version(second)
    assert second.metadata["dagster/row_count"].value == 2
    assert store.list_versions("raw_web_shards", "crawl.jsonl") == sorted(
        [data_version(first), data_version(second)])  # old versions stay, immutable


@pytest.mark.slow  # ingests two embedded shards and builds the catalog
def test_catalog_answers_sql_about_all_shards(profile, instance, resources):
    code = materialize_shard(raw_code_shards, "embedded:stdlib-01", instance, resources)
    web = materialize_shard(raw_web_shards, "embedded:pkgdocs-00", instance, resources)
    result = dg.materialize([raw_catalog, raw_code_shards, raw_web_shards], selection=[raw_catalog],
                            instance=instance, resources=resources)
    assert result.success
    with duckdb.connect(profile.catalog_path, read_only=True) as con:
        rows = dict(con.execute("SELECT source, num_docs FROM raw_shards").fetchall())
        (num_docs,) = con.execute("SELECT count(*) FROM raw_documents").fetchone()
        sources = con.execute("SELECT source, num_shards, est_tokens FROM raw_sources").fetchall()
    assert rows["code"] == materialization(code, "raw_code_shards").metadata["dagster/row_count"].value
    assert rows["web"] == materialization(web, "raw_web_shards").metadata["dagster/row_count"].value
    assert num_docs == rows["code"] + rows["web"]
    assert [(s, n) for s, n, _ in sources] == [("code", 1), ("web", 1)] and all(t > 0 for *_, t in sources)


@pytest.mark.slow  # `dagster asset materialize` in a child process
def test_cli_materializes_one_partition_on_the_ci_profile(phi_home, tmp_path):
    env = {**os.environ, "PHI_PROFILE": "ci", "PHI_HOME": str(phi_home),
           "DAGSTER_HOME": str(tmp_path / "dagster")}
    os.makedirs(env["DAGSTER_HOME"])
    register = ("import dagster as dg; dg.DagsterInstance.get()"
                ".add_dynamic_partitions('code_shards', ['embedded:stdlib-00'])")
    subprocess.run([sys.executable, "-c", register], env=env, check=True, cwd=ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "phi_assets.definitions",
         "--select", "raw_code_shards", "--partition", "embedded:stdlib-00"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RUN_SUCCESS" in done.stderr
    from resources import ArtifactStore

    store = ArtifactStore(root=f"{phi_home}/artifacts")
    manifest = store.current_manifest("raw_code_shards", "embedded:stdlib-00")
    assert manifest["metadata"]["stats"]["num_written"] > 0
    assert manifest["metadata"]["expectations"]["success"] is True
