"""The curation assets end to end on the ci profile, with the real LLM, encoder and decontaminator.

Planted in landing shards before ``make demo``'s program runs (``demo_run`` in conftest, what it plants in
tests/support/demo_home.py): an English article in two web files (an exact copy across shards) plus a
near-copy, and a HumanEval task inside an otherwise ordinary code file. Each test checks one property of
what the run produced.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from phi_assets.curation import edu
from phi_assets.curation.classifier import EduClassifier
from resources import ArtifactStore

SHARDS = {
    "code": ["embedded:stdlib-00", "embedded:stdlib-01", "planted.jsonl"],
    "web": [
        "article-a.jsonl",
        "article-b.jsonl",
        "embedded:pkgdocs-00",
        "embedded:pkgdocs-01",
        "embedded:pydoc-topics",
    ],
}


@pytest.fixture(scope="module")
def run(demo_run):
    """What the demo (tests/conftest.py ``demo_run``) materialized, read back from the store and
    the Dagster instance it used."""
    home = demo_run["home"]
    store = ArtifactStore(root=str(home / "artifacts"))
    out = {"store": store, "task_id": demo_run["task_id"], "meta": {}, "checks": {}}
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        for source, keys in SHARDS.items():
            for asset in (f"quality_filtered_{source}_shards", f"filtered_{source}_corpus"):
                for key in keys:
                    out["meta"][f"{asset}[{key}]"] = _metadata(instance, asset, key)
            check = dg.AssetCheckKey(dg.AssetKey(f"filtered_{source}_corpus"), "decontaminated")
            out["checks"][source] = instance.event_log_storage.get_asset_check_execution_history(
                check, limit=100
            )
        for asset in ("dedup_code", "dedup_web", "edu_annotations", "edu_classifier"):
            out["meta"][asset] = _metadata(instance, asset)
    return out


def _metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict:
    event = (
        instance.get_latest_materialization_event(dg.AssetKey(asset))
        if partition is None
        else next(
            e
            for e in instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
            if e.partition_key == partition
        )
    )
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_filter_funnels_reconcile_with_the_raw_shards(run):
    for source, keys in SHARDS.items():
        for key in keys:
            meta = run["meta"][f"quality_filtered_{source}_shards[{key}]"]
            assert meta["num_in"] == meta["num_kept"] + sum(meta["dropped_by_rule"].values())
            raw = run["store"].current_manifest(f"raw_{source}_shards", key)["metadata"]["stats"]["num_written"]
            assert meta["num_in"] == raw and meta["num_kept"] > 0


def test_dedup_clusters_the_planted_copies_and_is_queryable(run):
    meta = run["meta"]["dedup_web"]
    assert meta["num_exact_removed"] + meta["num_near_removed"] >= 2
    assert meta["num_docs"] == meta["num_kept"] + meta["num_exact_removed"] + meta["num_near_removed"]
    with duckdb.connect(meta["cluster_db"], read_only=True) as con:
        rows = con.execute(
            "SELECT cluster_id, shard, is_survivor, text FROM cluster_texts "
            "WHERE text LIKE 'Plants make their own food%' ORDER BY shard, row"
        ).fetchall()
    assert len(rows) == 3 and len({r[0] for r in rows}) == 1  # one cluster: the copy and the near copy
    assert sum(r[2] for r in rows) == 1  # one survivor


def test_annotations_are_parsed_from_real_engine_output(run):
    manifest = run["store"].current_manifest("edu_annotations", None)
    where = run["store"].version_path("edu_annotations", None, manifest["data_version"])
    frame = pl.read_parquet(f"{where}/annotations.parquet")
    assert set(frame["source"]) == {"code", "web"} and frame["answer"].null_count() == 0
    for answer, score, status in frame.select("answer", "score", "status").iter_rows():
        assert edu.parse_score(answer) == edu.ParsedScore(score, status)  # stored = parsed, never guessed
    meta = run["meta"]["edu_annotations"]
    assert meta["num_parsed"] + meta["num_unparseable"] == len(frame) and meta["num_parsed"] >= 16
    assert meta["llm_requests_code"] == frame.filter(pl.col("source") == "code").height


def test_classifier_reports_f1_and_scores_with_the_stored_model(run):
    meta = run["meta"]["edu_classifier"]
    for source in ("code", "web"):
        for head in ("forest", "linear"):
            assert 0.0 <= meta[f"{source}_{head}_f1_at_3"] <= 1.0
            assert 0.0 <= meta[f"{source}_{head}_macro_f1"] <= 1.0
    assert "label \\ predicted" in meta["confusion_matrices"]
    manifest = run["store"].current_manifest("edu_classifier", None)
    model = EduClassifier.load(
        Path(run["store"].version_path("edu_classifier", None, manifest["data_version"])) / "code"
    )
    assert model.report == manifest["metadata"]["reports"]["code"]


def test_filtered_corpora_reconcile_and_pass_the_decontamination_check(run):
    for source, keys in SHARDS.items():
        for key in keys:
            funnel = run["meta"][f"filtered_{source}_corpus[{key}]"]["funnel"]
            assert funnel["in"] == (
                funnel["dedup_removed"] + funnel["contaminated"] + funnel["below_threshold"] + funnel["kept"]
            )
    assert run["meta"]["filtered_web_corpus[article-b.jsonl]"]["funnel"]["dedup_removed"] >= 1


def test_planted_benchmark_task_is_removed_and_listed(run):
    meta = run["meta"]["filtered_code_corpus[planted.jsonl]"]
    assert meta["funnel"]["contaminated"] == 1 and meta["funnel"]["kept"] == 0
    assert run["task_id"] in meta["contaminated"]
    manifest = run["store"].current_manifest("filtered_code_corpus", "planted.jsonl")
    where = run["store"].version_path("filtered_code_corpus", "planted.jsonl", manifest["data_version"])
    listed = pl.read_parquet(f"{where}/contaminated.parquet")
    assert listed["task_id"].to_list() == [run["task_id"]]
    assert [r["task_id"] for r in manifest["metadata"]["contaminated"]] == [run["task_id"]]


def test_decontamination_check_ran_and_passed_on_every_shard(run):
    for source, records in run["checks"].items():
        assert len(records) >= len(SHARDS[source])  # one evaluation per materialized shard (twice: rerun)
        for record in records:
            evaluation = record.event.dagster_event.event_specific_data
            assert record.status.value == "SUCCEEDED" and evaluation.passed, source
