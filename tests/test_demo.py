"""`make demo`'s program on the ci profile: everything materializes, and a rerun does no work.

The run itself is the session fixture ``demo_run`` (tests/conftest.py), which the curation tests
share; its landing area holds 1 planted code shard and 2 planted web shards.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from phi_assets.common.profiles import CI
from resources import ArtifactStore

# 3 code + 5 web shards x (raw, quality-filtered, filtered corpus), the catalog, generator_model,
# 2 sources x (band groups x hash ranges) dedup bucket partitions, 8 shards' shingle sets, 2 sources x
# (band groups x hash ranges) pairs partitions, 2 dedups, the annotations and the
# classifier, topics, 2 batches x 3 synthetic sets, synthetic_corpus, the tokenizer, 8 tokenized shards,
# 2 batches x 3 tokenized synthetic sets, the proxies, the search and the weights, the training chain
# (4 checkpoints and both kinds of preference pairs), the transferred checkpoint, eval_scores for 5 stages,
# 4 model cards, 8 raw token shards, the data ablations (arms x seeds) and their report, and the safety side
# (safety_sft, safety_pairs, the no-safety SFT and DPO, rai_scores)
BUCKETS = CI.dedup_band_groups * CI.dedup_hash_ranges
ABLATIONS = len(CI.ablation_arms.split(",")) * CI.ablation_seeds
NUM_STEPS = (
    8 * 3 + 1 + 1 + 2 * BUCKETS + 8 + 2 * BUCKETS + 2 + 2 + 1 + 2 * 3 + 1 + 1 + 8 + 2 * 3
    + CI.mixture_proxies + 2 + 6 + 1 + 5 + 4 + 8 + ABLATIONS + 1 + 5
)


def current_versions(home: Path) -> dict[str, str]:
    root = Path(ArtifactStore(root=str(home / "artifacts")).root)
    return {str(p.parent.relative_to(root)): p.read_text() for p in root.glob("*/*/CURRENT")}


def test_demo_materializes_everything(demo_run):
    first = demo_run["first"]
    counts = dict(re.findall(r"^(code|web)\s+\d+\s+\d+\s+(\d+)", first, re.M))
    assert int(counts["code"]) > 50 and int(counts["web"]) > 50
    assert re.search(rf"Steps: {NUM_STEPS} recomputed, 0 unchanged", first)
    assert "generator_model sample" in first and "Fibonacci" in first  # real answers, printed
    assert len(current_versions(demo_run["home"])) == NUM_STEPS
    assert (demo_run["home"] / "dagster").is_dir()  # DAGSTER_HOME inside PHI_HOME


def test_demo_prints_the_classifier_report_and_reconciled_corpus_funnels(demo_run):
    first = demo_run["first"]
    # F1@3 with its bootstrap interval, macro-F1
    f1 = r"[01]\.\d{3} \[[01]\.\d{3}, [01]\.\d{3}\]"
    assert re.search(rf"^code\s+forest\s+\d+\s+\d+\s+{f1}\s+[01]\.\d{{3}}", first, re.M)
    assert re.search(r"^web\s+linear\s+\d+\s+\d+\s+[01]\.\d{3}", first, re.M)
    for source in ("code", "web"):
        line = re.search(rf"^filtered_{source}_corpus: (\d+) quality-filtered = (\d+) duplicates \+ (\d+) "
                         r"contaminated \+ (\d+) below threshold \+ (\d+) kept", first, re.M)
        total, *parts = map(int, line.groups())
        assert total == sum(parts) and total > 20


def test_demo_rerun_recomputes_nothing(demo_run):
    second = demo_run["second"]
    assert re.search(rf"Steps: 0 recomputed, {NUM_STEPS} unchanged", second)
    assert second.count("inputs unchanged; skipping work") == NUM_STEPS
    assert "generator_model sample: 3 requests, 3 from the cache, 0 to generate" in second


SUMMARY_ROW = re.compile(r"^([a-z_]+)\s+(\d+)\s+(\d+)\s+(.*?)\s+(\d+\.\d)$", re.M)


def _summary(output: str) -> dict[str, tuple[int, int, str, float]]:
    """The per-asset table the demo ends with: asset -> (steps, recomputed, rows / tokens, wall s)."""
    table = output[output.index("rows / tokens"):]
    return {m[1]: (int(m[2]), int(m[3]), m[4], float(m[5])) for m in SUMMARY_ROW.finditer(table)}


def test_demo_ends_with_a_per_asset_summary_scores_and_the_ui(demo_run):
    from phi_assets.definitions import defs

    first, second = _summary(demo_run["first"]), _summary(demo_run["second"])
    assets = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert set(first) == assets  # every asset of the graph has its row
    assert sum(steps for steps, *_ in first.values()) == NUM_STEPS
    assert all(steps == recomputed for steps, recomputed, *_ in first.values())
    assert all(recomputed == 0 for _, recomputed, *_ in second.values())
    for name in ("tokenized_filtered_code", "pretrained_checkpoint"):
        size = first[name][2]
        assert re.fullmatch(r"[\d,]+ tokens", size) and int(size.split()[0].replace(",", "")) > 0
    assert re.fullmatch(r"[\d,]+ rows", first["raw_code_shards"][2])
    assert first["pretrained_checkpoint"][3] > 1.0  # training took time; its wall time is the step's own
    tail = demo_run["first"][demo_run["first"].index("rows / tokens"):]
    assert re.search(r"^\s+dpo\s+.*humaneval_pass@1 \d\.\d{3}", tail, re.M)  # the final scores, after it
    assert re.search(r"^Open the UI: make ui", tail, re.M)


@pytest.mark.slow  # the demo's steps, each a `dagster asset materialize` command
def test_cli_mode_reports_a_failed_step_and_goes_on(tmp_path, monkeypatch):
    """``--cli``: each step is a real ``dagster asset materialize`` command; one that fails is reported
    with its step's own error, and the steps after it still run. These two are independent, so they run
    side by side, each on its own CPUs, and each result is read back from its own run."""
    import dagster as dg

    from phi_assets.definitions import build_definitions
    from phi_assets.demo import DemoReport, _execute
    from phi_assets.demo_runs import Step, dependencies, run_plan

    home = tmp_path / "phi"
    (home / "dagster").mkdir(parents=True)
    monkeypatch.setenv("PHI_PROFILE", "ci")
    monkeypatch.setenv("PHI_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    report = DemoReport()
    steps = [Step("dedup_job", "dedup_job"), Step("catalog_job", "raw_catalog")]  # dedup: nothing ingested
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        defs = build_definitions()
        deps = dependencies(defs, steps)
        run_plan(steps, deps, _execute(defs, instance, True), lambda s, r: report.record(s.what, r, instance),
                 workers=2)
        runs = instance.get_runs()
    assert deps == [set(), set()]  # neither reads what the other writes: they ran at once
    assert sorted(r.status.value for r in runs) == ["FAILURE", "SUCCESS"]
    assert len(report.failures) == 1
    expected = r"dedup_job: dedup_(code|web): .*no quality_filtered_\w+ partition is materialized"
    assert re.match(expected, report.failures[0]), report.failures
    assert report.recomputed == ["raw_catalog"] and report.assets["raw_catalog"]["steps"] == 1
