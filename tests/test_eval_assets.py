"""eval_scores on the ci profile: what ``make demo``'s program evaluated (``demo_run``: the four trained
tiny checkpoints and the default engine model, SmolLM2-135M-Instruct, through vLLM on CPU)."""

from pathlib import Path

import duckdb
import pytest

from phi_assets.evaluation import execute, harness
from phi_assets.evaluation.assets import DB, STAGES
from phi_assets.evaluation.table1 import PHI1_TABLE1
from resources import ArtifactStore


@pytest.fixture(scope="module")
def store(demo_run) -> ArtifactStore:
    return ArtifactStore(root=str(demo_run["home"] / "artifacts"))


def _results(store: ArtifactStore, stage: str) -> tuple[dict, list[tuple]]:
    manifest = store.current_manifest("eval_scores", stage)
    assert manifest is not None, f"eval_scores[{stage}] was not materialized by the demo"
    path = Path(store.version_path("eval_scores", stage, manifest["data_version"])) / DB
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute(
            "SELECT benchmark, task_id, sample, completion, passed, verdict, engine_error "
            "FROM results ORDER BY benchmark, task_id, sample"
        ).fetchall()
        scores = dict(((b, m), v) for b, m, v in con.execute("SELECT * FROM scores").fetchall())
    return {**manifest["metadata"], "db_scores": scores}, rows


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_is_scored_from_its_stored_per_sample_results(store, stage):
    """One row per problem (greedy, one sample) of each benchmark; pass@1 in the scores table and the
    metadata is the share of passing rows; the evaluated model is the stage's current version."""
    meta, rows = _results(store, stage)
    assert meta["model_version"] == store.current_version(STAGES[stage], None)
    for benchmark in harness.BENCHMARKS:
        mine = [r for r in rows if r[0] == benchmark]
        problems = meta["scores"][benchmark]["problems"]
        assert problems == 10 and len(mine) == problems  # the ci profile's eval_problems
        assert len({r[1] for r in mine}) == problems
        passed = sum(r[4] for r in mine)
        assert meta["db_scores"][(benchmark, "pass@1")] == pytest.approx(passed / problems)
        assert meta["scores"][benchmark]["pass@1"] == pytest.approx(passed / problems)
        assert all(r[5] in ("passed", "failed", "error", "timeout", "killed") for r in mine)
        assert all((r[5] == "passed") == r[4] for r in mine)
    assert sum(n for counts in meta["verdicts"].values() for n in counts.values()) == len(rows)


def test_stored_verdicts_are_what_the_harness_gives_again(store, mbpp_path):
    """Re-executing the reference model's stored completions reproduces every stored verdict."""
    _, rows = _results(store, "reference")
    for benchmark in harness.BENCHMARKS:
        mine = [r for r in rows if r[0] == benchmark]
        problems = harness.load(benchmark, mbpp_path)
        report = execute.evaluate(problems, [{"task_id": r[1], "completion": r[3]} for r in mine], (1,))
        assert [row["verdict"] for row in report.rows] == [r[5] for r in mine]


def test_the_reference_model_answers_in_chat_and_checkpoints_continue_the_prompt(store):
    reference, ref_rows = _results(store, "reference")
    dpo, dpo_rows = _results(store, "dpo")
    assert reference["chat"] is True and dpo["chat"] is False
    # a chat answer to HumanEval is a whole function, put after the prompt on a line of its own
    answers = [r[3] for r in ref_rows if r[0] == "humaneval" and r[6] is None]
    assert answers and all(a.startswith("\n") for a in answers)
    assert sum("def " in a for a in answers) >= len(answers) // 2
    assert len(dpo_rows) == len(ref_rows)


def test_understanding_is_off_on_ci(store):
    for stage in STAGES:
        meta, _ = _results(store, stage)
        assert "understanding" not in meta


def test_the_table_places_every_stage_beside_phi1(demo_run, store):
    """The demo prints the table of the last stage evaluated: all paper rows and all five stages."""
    first = demo_run["first"]
    assert "eval_scores (greedy pass@1" in first
    for name, *_ in PHI1_TABLE1:
        assert name in first
    for stage in STAGES:
        meta, _ = _results(store, stage)
        he = 100 * meta["scores"]["humaneval"]["pass@1"]
        assert f"phi-factory {stage} ({meta['model_version'][:8]})" in first
        assert f"{he:.1f}% (10 problems)" in first
