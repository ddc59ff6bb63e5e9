"""The synthetic assets on the ci profile, with real generation (SmolLM2 through vLLM), the real
sandbox and the real decontaminator: what ``make demo``'s program produced (``demo_run``), plus
reruns on a copy of its home."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from phi_assets.synthetic import generate
from phi_assets.synthetic.batches import BATCHES, FAILED, KEPT, SETS
from phi_assets.synthetic.exercises import NONDETERMINISTIC
from resources import ArtifactStore


@pytest.fixture(scope="module")
def store(demo_run) -> ArtifactStore:
    return ArtifactStore(root=str(demo_run["home"] / "artifacts"))


def _frames(store: ArtifactStore, asset: str, key: str) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    manifest = store.current_manifest(asset, key)
    where = store.version_path(asset, key, manifest["data_version"])
    return manifest, pl.read_parquet(f"{where}/{KEPT}"), pl.read_parquet(f"{where}/{FAILED}")


def test_every_batch_reconciles_and_passed_its_decontamination_check(store, demo_run):
    keys = BATCHES.get_partition_keys()
    assert keys == ["batch-000", "batch-001"]
    with dg.DagsterInstance.from_config(str(demo_run["home"] / "dagster")) as instance:
        for asset in SETS.values():
            for key in keys:
                manifest, kept, failed = _frames(store, asset, key)
                funnel = manifest["metadata"]["funnel"]
                assert funnel["candidates"] == kept.height + failed.height > 0, (asset, key)
                assert funnel["by_reason"] == dict(sorted(failed.group_by("reason").len().iter_rows()))
                assert (failed["reason"] != "").all() and (failed["detail"] != "").all()
                assert manifest["metadata"]["recheck_flagged"] == 0
            check = dg.AssetCheckKey(dg.AssetKey(asset), "decontaminated")
            records = instance.event_log_storage.get_asset_check_execution_history(check, limit=100)
            assert len(records) >= len(keys)
            assert all(r.event.dagster_event.event_specific_data.passed for r in records)


def test_textbooks_keep_their_prompt_fields_model_version_and_token_counts(store):
    generator = store.current_version("generator_model", None)
    rows = pl.concat([_frames(store, "synthetic_textbooks", k)[1] for k in BATCHES.get_partition_keys()])
    assert rows.height >= 1, "SmolLM2 wrote no valid textbook section at all"
    assert set(rows.columns) == set(generate.TEXTBOOK_SCHEMA)
    assert (rows["model_version"] == generator).all() and (rows["num_tokens"] > 0).all()
    assert (rows["num_prompt_tokens"] > 0).all() and rows["draw_id"].n_unique() == rows.height
    for row in rows.iter_rows(named=True):
        assert generate.check_text(row["text"], row["finish_reason"], generate.TextRules()) is None


def test_exercises_were_executed_and_only_verified_ones_kept(store):
    """Every parsed sample ran in the sandbox (verdict counts add up); re-running the kept
    programs passes and re-running a failed one does not."""
    from phi_assets import sandbox

    total_runs, kept_all, failed_all = 0, [], []
    for key in BATCHES.get_partition_keys():
        manifest, kept, failed = _frames(store, "synthetic_exercises", key)
        verdicts = manifest["metadata"]["verdicts"]
        parse_failures = failed.filter(
            ~pl.col("reason").is_in(list(sandbox.VERDICTS) + ["contaminated", NONDETERMINISTIC])
        ).height
        # a program that passed once and failed when run again is dropped as nondeterministic
        flaky = failed.filter(pl.col("reason") == NONDETERMINISTIC).height
        assert flaky == manifest["metadata"]["nondeterministic"]
        assert sum(verdicts.values()) == manifest["metadata"]["funnel"]["candidates"] - parse_failures
        total_runs += sum(verdicts.values())
        kept_all.append(kept)
        failed_all.append(failed)
    kept, failed = pl.concat(kept_all), pl.concat(failed_all)
    assert total_runs >= 1, "no generated exercise even parsed; nothing was executed"
    programs = [f"{r['text']}" for r in kept.iter_rows(named=True)]
    ran = failed.filter(pl.col("reason") == "failed").head(1)["text"].to_list()
    verdicts = sandbox.run_programs(programs + ran, sandbox.Limits(timeout_s=5))
    assert [v.kind for v in verdicts[: len(programs)]] == ["passed"] * len(programs)
    assert all(v.kind == "failed" for v in verdicts[len(programs) :])
    for row in kept.iter_rows(named=True):
        assert row["prompt"].startswith(f"def {row['function']}(") and row["num_tests"] >= 1


def test_rewrites_keep_the_source_document_id(store):
    web_ids = set()
    for key in (
        "article-a.jsonl",
        "article-b.jsonl",
        "embedded:pkgdocs-00",
        "embedded:pkgdocs-01",
        "embedded:pydoc-topics",
    ):
        manifest = store.current_manifest("filtered_web_corpus", key)
        where = store.version_path("filtered_web_corpus", key, manifest["data_version"])
        web_ids |= set(pl.read_parquet(f"{where}/scores.parquet")["id"])
    seen = 0
    for key in BATCHES.get_partition_keys():
        manifest, kept, failed = _frames(store, "rewritten_web", key)
        seen += kept.height + failed.height
        assert set(kept["source_id"]) <= web_ids and set(failed["candidate_id"]) <= web_ids
        for row in kept.iter_rows(named=True):
            assert row["style"] == generate.STYLE_OF_BUCKET[row["bucket"]]
            assert generate.Buckets().of(row["edu_score"]) == row["bucket"]
    assert seen >= 2


def test_synthetic_corpus_dedups_each_set_and_reports_diversity(store, demo_run):
    manifest = store.current_manifest("synthetic_corpus", None)
    where = Path(store.version_path("synthetic_corpus", None, manifest["data_version"]))
    summary = manifest["metadata"]["summary"]
    for name, asset in SETS.items():
        docs = pl.read_parquet(where / f"{name}.parquet")
        batches = [_frames(store, asset, k)[1] for k in BATCHES.get_partition_keys()]
        assert summary[name]["generated_kept"] == sum(b.height for b in batches)
        assert (
            docs.height
            == summary[name]["documents"]
            == summary[name]["generated_kept"] - summary[name]["duplicates_removed"]
        )
        assert docs["id"].n_unique() == docs.height
        assert 0 <= manifest["metadata"]["diversity"][name]["distinct_3grams"] <= 1
    coverage = manifest["metadata"]["coverage"]["textbooks"]
    assert coverage["audience"]["of"] == 4 and coverage["format"]["of"] == 4
    assert "synthetic_corpus (diversity and coverage" in demo_run["first"]


def _materialize_textbooks(run_config: dict | None = None) -> dict:
    from phi_assets.synthetic.textbook_assets import synthetic_textbooks
    from resources import build_resources, load_profile

    result = dg.materialize(
        [synthetic_textbooks],
        partition_key="batch-000",
        run_config=run_config,
        resources=build_resources(load_profile()),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()} | {
        "data_version": event.materialization.tags["dagster/data_version"]
    }


def test_forced_rerun_is_all_cache_hits_and_a_larger_batch_pays_only_for_the_new_draws(home_copy):
    """With the provenance record gone the asset really recomputes: every request comes from the
    request cache and the data version is identical. Then a batch with two more draws extends the
    first (draws are a prefix): only the two new ones are generated."""
    store = ArtifactStore(root=str(home_copy / "artifacts"))
    before = store.current_version("synthetic_textbooks", "batch-000")
    shutil.rmtree(Path(store.partition_path("synthetic_textbooks", "batch-000")) / "_provenance")
    again = _materialize_textbooks()
    assert again["skipped"] is False
    assert again["llm_cache_hits"] == again["llm_requests"] == 3 and again["llm_tokens_per_s"] == 0
    assert again["data_version"] == before

    more = _materialize_textbooks({"ops": {"synthetic_textbooks": {"config": {"draws_per_batch": 5}}}})
    assert more["llm_requests"] == 5 and more["llm_cache_hits"] == 3
    assert more["num_candidates"] == 5 and more["data_version"] != before


def test_decontamination_gate_removes_a_benchmark_solution_as_a_failure_row(mbpp_path):
    from phi_assets.common.benchmarks import load_humaneval
    from phi_assets.synthetic.batches import decontaminate
    from resources.curation import DecontaminationResource, EncoderResource

    task = load_humaneval()[0]
    scanner = DecontaminationResource(mbpp_path=str(mbpp_path)).get(EncoderResource())
    kept = pl.DataFrame(
        {
            "id": ["a", "b"],
            "candidate_id": ["c-a", "c-b"],
            "text": [task.prompt + task.solution, "def add(a, b):\n    return a + b\n"],
        }
    )
    clean, removed, info = decontaminate(kept, scanner, is_code=True, set_name="exercises", desc=None)
    assert clean["id"].to_list() == ["b"] and info["recheck_flagged"] == 0
    assert [r["reason"] for r in removed] == ["contaminated"] and removed[0]["candidate_id"] == "c-a"
    assert task.task_id in removed[0]["detail"]
