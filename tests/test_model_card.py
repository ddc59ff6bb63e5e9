"""model_card: the lineage reading and rendering on small stores, then the card of every stage on a copy of
what ``make demo``'s program materialized (``demo_run``, ci profile)."""

import json
import os
import shutil
import subprocess
import sys
import uuid

import dagster as dg
import pytest
from huggingface_hub import ModelCard

from phi_assets.common.profiles import load_profile
from phi_assets.common.versioning import stable_hash
from phi_assets.evaluation.assets import eval_scores, eval_stages
from phi_assets.evaluation.card_facts import (
    CARD_STAGES,
    Entry,
    Facts,
    check_recorded,
    read_entries,
    recorded_versions,
    task_name,
)
from phi_assets.evaluation.card_text import CARD, LINEAGE, evaluation_section, lineage_section, recipe_name
from phi_assets.evaluation.model_card import card_stages, model_card
from phi_assets.evaluation.table1 import PHI1_TABLE1
from phi_assets.mixture import search_assets
from resources import ArtifactStore
from tests.support.dagster_runs import step_error

V = {name: name[0] * 32 for name in ("a", "b", "c", "d", "e")}  # fake data versions


def _commit(store: ArtifactStore, asset: str, partition: str | None, version: str, inputs: dict) -> None:
    with store.stage(asset, partition) as staging:
        manifest = {
            "asset": asset,
            "partition": partition,
            "code_version": "code1",
            "inputs": inputs,
            "metadata": {},
        }
        staging.commit(version, manifest)
    store.set_current(asset, partition, version)


# --- fast: no demo ------------------------------------------------------------------------------------


def test_the_partitions_are_the_trained_stages():
    assert card_stages.get_partition_keys() == ["pretrained", "midtrained", "sft", "dpo"]
    assert CARD_STAGES["dpo"] == "dpo_checkpoint" and "reference" not in CARD_STAGES
    mapping = model_card.get_partition_mapping(eval_scores.key)  # the stage's own evaluation
    up = mapping.get_upstream_mapped_partitions_result_for_partitions(
        card_stages.subset_with_partition_keys(["sft"]), card_stages, eval_stages
    )
    assert set(up.partitions_subset.get_partition_keys()) == {"sft"}
    down = mapping.get_downstream_partitions_for_partitions(
        eval_stages.subset_with_partition_keys(["reference"]), eval_stages, card_stages
    )
    assert not set(down.get_partition_keys())  # the reference model gets no card


@pytest.mark.parametrize("name", ["debug", "phi1_pretrain", "midtrain(debug)"])
def test_the_recipe_is_the_one_the_checkpoint_lineage_records(name):
    """The card shows the recipe name the training asset recorded in its lineage, and says "not recorded"
    for a manifest stored before lineages recorded recipes (rather than guessing from the config)."""
    config = {"lr": 0.001, "model": "debug_tiny", "run_id": "0123456789abcdef"}  # a hex-like value
    lineage = {"mixture": V["a"], "recipe": {"name": name, "config": config}}
    manifest = {"inputs": {"mixture": V["a"]}, "metadata": {"lineage": lineage}}
    assert recipe_name(manifest) == name
    assert recipe_name({"inputs": {}, "metadata": {"lineage": {"mixture": V["a"]}}}) == "not recorded"
    assert recipe_name({"inputs": {}, "metadata": {}}) == "not recorded"
    # the recipe is configuration, not an input: only the parent versions count as recorded
    assert recorded_versions(manifest) == {V["a"]}


@pytest.mark.parametrize("where", ["local", "memory"])
def test_every_version_is_checked_against_what_its_consumers_recorded(tmp_path, where):
    """ok: a consumer names the current version; stale: it names an older one; -: nothing downstream
    records versions of it; a known partition without a version is listed, not dropped."""
    root = str(tmp_path / "artifacts") if where == "local" else f"memory://card-{uuid.uuid4().hex}/artifacts"
    store = ArtifactStore(root=root)
    _commit(store, "raw", "s1", V["a"], {})
    _commit(store, "raw", "s2", V["b"], {})  # the version the corpus was built from...
    _commit(store, "raw", "s2", V["c"], {})  # ...then re-ingested: CURRENT moved on
    _commit(store, "notes", None, V["d"], {})
    _commit(store, "corpus", None, V["e"], {"shards": [["s1", V["a"]], ["s2", V["b"]]], "config": {"n": 3}})
    pairs = [("raw", "s1"), ("raw", "s2"), ("raw", "s3"), ("notes", None), ("corpus", None)]
    entries = read_entries(store, pairs)
    assert [e.version for e in entries] == [V["a"], V["c"], None, V["d"], V["e"]]
    assert entries[4].recorded == {V["a"], V["b"]} and entries[4].code_version == "code1"
    check_recorded(store, entries, {"raw": {"corpus"}, "notes": {"corpus"}, "corpus": set()})
    assert [e.status for e in entries] == [
        "ok",
        f"stale: corpus used {V['b'][:12]}",
        "not materialized",
        "-",
        "-",
    ]


def test_task_ids_are_named_once():
    assert task_name("humaneval", "HumanEval/12") == "HumanEval/12"
    assert task_name("mbpp", "123") == "mbpp/123"


def test_the_evaluation_section_shows_the_manifest_scores():
    """pass@k in percent per benchmark, the verdicts, and this stage's row under phi-1's Table 1."""
    scores = {"pass@1": 0.25, "pass@10": 0.5, "problems": 4, "samples": 40, "passed": 10}
    evaluation = {
        "data_version": V["e"],
        "metadata": {
            "scores": {"humaneval": scores},
            "verdicts": {"humaneval": {"passed": 10, "failed": 30}},
            "engine_errors": {"prompt_too_long": 2},
            "eval_set": "set1",
            "model_version": V["a"],
            "num_params": 1_200_000,
            "tokens": 2_000_000,
            "chat": False,
        },
    }
    text = evaluation_section(Facts("dpo", "dpo_checkpoint", {}, [], {}, evaluation, None, None))
    assert "| humaneval | 4 | 40 | 10 | 25.0% | 50.0% | failed 30, passed 10 |" in text
    assert "| **phi-factory dpo** (aaaaaaaa) | 1.2M | 2.0M | **25.0%** (4 problems) | - |" in text
    assert "prompt_too_long 2" in text and f"`eval_scores[dpo]` `{V['e']}` (eval set `set1`" in text
    for name, *_ in PHI1_TABLE1:
        assert f"| {name} |" in text


def _facts(entries: list[Entry]) -> Facts:
    return Facts("sft", "sft_checkpoint", {}, [], {}, {}, None, None, entries, sources=["raw"])


def test_an_asset_with_more_partitions_than_the_limit_gets_one_row():
    entries = [Entry("raw", f"s{i:02d}", f"{i:032x}", "code1", status="ok") for i in range(5)]
    entries.append(Entry("corpus", None, V["e"], "code2", status="-"))
    full = lineage_section(_facts(entries), max_rows=5)
    assert all(f"| raw | s{i:02d} | `{i:032x}` | code1 | ok |" in full for i in range(5))
    assert "from 5 shards (5 raw)" in full and "6 asset partitions of 2 assets" in full
    short = lineage_section(_facts(entries), max_rows=4)
    digest = stable_hash([[e.partition, e.version] for e in entries[:5]], 12)
    assert f"| raw | 5 partitions ({LINEAGE}) | all: `{digest}` | code1 | ok 5 |" in short
    assert "| s00 |" not in short and f"| corpus | - | `{V['e']}` | code2 | - |" in short


# --- on a copy of the demo's home ---------------------------------------------------------------------


def _materialize(demo_run, stage: str, instance: dg.DagsterInstance, run_config: dict | None = None):
    """The code location's ``model_card_job`` in process, as ``make demo`` runs it (the card walks the
    code location's asset graph, which the job holds; resources built for this test's home)."""
    from phi_assets.definitions import build_definitions

    return (
        build_definitions()
        .resolve_job_def("model_card_job")
        .execute_in_process(partition_key=stage, instance=instance, run_config=run_config, raise_on_error=False)
    )


@pytest.fixture
def instance(demo_run):
    """An instance that knows the demo's shard partitions (dynamic partitions live in the instance)."""
    from phi_assets.ingest.assets import PARTITIONS

    out = dg.DagsterInstance.ephemeral()
    with dg.DagsterInstance.from_config(str(demo_run["home"] / "dagster")) as demo:
        for pdef in PARTITIONS.values():
            out.add_dynamic_partitions(pdef.name, demo.get_dynamic_partitions(pdef.name))
    return out


def _card(result) -> tuple[str, dict]:
    assert result.success, step_error(result)
    [event] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    return meta["card"], {**meta, "data_version": event.materialization.tags["dagster/data_version"]}


def _shard_keys(demo_run) -> dict[str, list[str]]:
    from phi_assets.ingest.assets import PARTITIONS

    with dg.DagsterInstance.from_config(str(demo_run["home"] / "dagster")) as demo:
        return {f"raw_{s}_shards": sorted(demo.get_dynamic_partitions(p.name)) for s, p in PARTITIONS.items()}


def _check_hf_card(store: ArtifactStore, stage: str, path: str, card: str, meta: dict) -> None:
    """The Hugging Face card beside MODEL_CARD.md: the same scores in its model-index, the parent checkpoint
    as base model, the mixture among the datasets, the same lineage table, the ablations (not run here)."""
    readme = open(path).read()
    assert meta["hf_card"] == readme and card.split("## Lineage")[1] in readme
    hub = ModelCard.load(path).data
    checkpoint = store.current_manifest(CARD_STAGES[stage], None)
    assert hub.license == "apache-2.0" and hub.model_name == f"phi-factory/{stage}@{checkpoint['data_version']}"
    parent = checkpoint["inputs"].get("parent")
    stages = list(CARD_STAGES)
    base = f"phi-factory/{stages[stages.index(stage) - 1]}@{parent}" if parent else None
    assert hub.base_model == base and (parent is None) == (stage == "pretrained")
    assert f"phi-factory/mixture_weights@{store.current_version('mixture_weights', None)}" in hub.datasets
    pass1 = {(r.dataset_name.lower(), r.metric_type): r.metric_value for r in hub.eval_results}
    for benchmark, s in store.current_manifest("eval_scores", stage)["metadata"]["scores"].items():
        assert pass1[(benchmark, "pass@1")] == s["pass@1"]
    ran = store.current_manifest("ablation_report", None) is not None
    assert ("Not run: `ablation_report`" in readme.split("## Data ablations")[1]) != ran


def test_the_card_of_every_stage(demo_run, home_copy, instance):
    """Each card describes the stage's evaluated checkpoint: its chain and architecture, the mixture it
    trained on, the planted HumanEval task removed by decontamination, pass@1 equal to eval_scores' beside
    every phi-1 row, and the current data version of every raw shard and every asset partition upstream."""
    store = ArtifactStore(root=str(home_copy / "artifacts"))
    shards = _shard_keys(demo_run)
    assert shards["raw_code_shards"] and shards["raw_web_shards"]
    mixture = store.current_manifest("mixture_weights", None)
    for stage, asset in CARD_STAGES.items():
        card, meta = _card(_materialize(demo_run, stage, instance))
        where = store.version_path("model_card", stage, meta["data_version"])
        readme = open(f"{where}/README.md").read()
        assert open(f"{where}/{CARD}").read() == card and meta["data_version"] == stable_hash([card, readme])
        checkpoint = store.current_manifest(asset, None)
        assert meta["checkpoint_version"] == checkpoint["data_version"]
        assert f"`{asset}` data version `{checkpoint['data_version']}`" in card
        # the chain back to pretraining, and the architecture of the export
        chain = ["pretrained_checkpoint", "midtrained_checkpoint", "sft_checkpoint", "dpo_checkpoint"]
        for parent in chain[: chain.index(asset) + 1]:
            assert f"{parent} `{store.current_version(parent, None)[:12]}`" in card
            # the recipe its lineage records (older manifests: none recorded)
            recipe = store.current_manifest(parent, None)["metadata"].get("lineage", {}).get("recipe")
            name = recipe["name"] if recipe else "not recorded"
            assert f"| {parent} | `{store.current_version(parent, None)[:12]}` | {name} |" in card
        for later in chain[chain.index(asset) + 1 :]:
            assert f"| {later} |" not in card
        config = json.loads(
            open(f"{store.version_path(asset, None, checkpoint['data_version'])}/hf/config.json").read()
        )
        assert f"| layers | {config['num_hidden_layers']} |" in card
        assert f"| hidden size | {config['hidden_size']} |" in card
        assert f"| vocabulary | {config['vocab_size']:,} |" in card
        # the mixture table: every source with its weight and epochs
        for row in mixture["metadata"]["table"]:
            assert f"| {row['source']} | {row['category']} |" in card
            assert f"| {row['weight']:.4f} | {row['tokens_seen']:,} | {row['epochs']:.2f} |" in card
        # decontamination: the HumanEval task the demo planted in a code shard was removed
        section = card.split("## Decontamination")[1].split("## Evaluation")[0]
        [decontam] = [line for line in section.splitlines() if line.startswith("| filtered_code_corpus |")]
        assert demo_run["task_id"] in decontam
        # evaluation: the numbers of eval_scores' manifest, and phi-1's Table 1 beside them
        evaluation = store.current_manifest("eval_scores", stage)
        assert meta["eval_version"] == evaluation["data_version"]
        sizes = evaluation["metadata"]["benchmark_sizes"]
        for benchmark, s in evaluation["metadata"]["scores"].items():
            # the ci preset evaluates the first 10 problems, and the card says so
            assert s["problems"] < sizes[benchmark]
            problems = f"{s['problems']} of {sizes[benchmark]} (reduced)"
            row = f"| {benchmark} | {problems} | {s['samples']} | {s['passed']} | {100 * s['pass@1']:.1f}% |"
            assert row in card
        assert f"**phi-factory {stage}** ({checkpoint['data_version'][:8]})" in card
        for name, size, tokens, humaneval, _ in PHI1_TABLE1:
            assert f"| {name} | {size} | {tokens} | {humaneval:.1f}% |" in card
        # lineage: every raw shard partition at its current version, and every row as the store has it
        for raw, keys in shards.items():
            for key in keys:
                assert f"| {raw} | {key} | `{store.current_version(raw, key)}` |" in card
        assert meta["shards"] == {raw: len(keys) for raw, keys in shards.items()}
        rows = json.loads(open(f"{where}/{LINEAGE}").read())
        assert len(rows) == meta["lineage_partitions"]
        for r in rows:
            assert r["data_version"] == store.current_version(r["asset"], r["partition"])
            if r["data_version"] is not None:
                assert f"| {r['asset']} | {r['partition'] or '-'} | `{r['data_version']}` |" in card
        assets = {r["asset"] for r in rows}
        assert {
            "raw_code_shards",
            "raw_web_shards",
            "filtered_code_corpus",
            "tokenizer",
            "mixture_weights",
            "pretrained_checkpoint",
            asset,
            "eval_scores",
        } <= assets
        assert ("preference_pairs" in assets) == ("judged_pairs" in assets) == (stage == "dpo")
        assert [r["partition"] for r in rows if r["asset"] == "eval_scores"] == [stage]
        assert not meta["stale"]  # the demo's versions are one consistent snapshot
        _check_hf_card(store, stage, f"{where}/README.md", card, meta)


def test_dagster_asset_materialize_writes_the_same_card(demo_run, home_copy, instance, tmp_path):
    """Through the CLI the run has the code location's repository; in process (above) it has only its job:
    both walk the same asset graph, so they write the same card (neither copy keeps the demo's cards)."""
    from tests.support.homes import HOME_OVERRIDES, copy_home

    home = tmp_path / "cli" / "phi"
    copy_home(demo_run["home"], home)
    for copy in (home, home_copy):
        shutil.rmtree(copy / "artifacts" / "model_card", ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in HOME_OVERRIDES}
    # Partition sets follow the profile the definitions were imported with (this process: ci, as
    # conftest.py sets unless PHI_PROFILE says otherwise): the CLI imports them under the same profile,
    # so that both walk the same graph, partitions included, over the same home.
    imported = next(p for p in ("local", "ci") if load_profile({"PHI_PROFILE": p}).sizes == search_assets.SIZES)
    env.update(PHI_PROFILE=imported, PHI_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    config = {"execution": {"config": {"in_process": {}}}}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "phi_assets.definitions",
            "--select",
            "model_card",
            "--partition",
            "sft",
            "--config-json",
            json.dumps(config),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and "RUN_SUCCESS" in done.stderr, done.stderr[-3000:]
    store = ArtifactStore(root=str(home / "artifacts"))
    where = store.version_path("model_card", "sft", store.current_version("model_card", "sft"))
    card, _ = _card(_materialize(demo_run, "sft", instance))
    assert open(f"{where}/{CARD}").read() == card


def test_a_rerun_skips_and_a_new_upstream_version_makes_a_new_card(demo_run, home_copy, instance):
    store = ArtifactStore(root=str(home_copy / "artifacts"))
    _, first = _card(_materialize(demo_run, "sft", instance))
    card, again = _card(_materialize(demo_run, "sft", instance))
    assert again["skipped"] is True and again["data_version"] == first["data_version"]

    # a shard re-ingested after training: the card shows the new version and flags it as stale
    key = _shard_keys(demo_run)["raw_web_shards"][0]
    old = store.current_manifest("raw_web_shards", key)
    new = "f" * 32
    _commit(store, "raw_web_shards", key, new, old["inputs"])
    card, changed = _card(_materialize(demo_run, "sft", instance))
    assert changed["skipped"] is False and changed["data_version"] != first["data_version"]
    status = f"stale: quality_filtered_web_shards used {old['data_version'][:12]}"
    assert f"| raw_web_shards | {key} | `{new}` | code1 | {status} |" in card
    assert changed["stale"] == [f"raw_web_shards[{key}]: {status}"]
    assert f"> **Warning**: raw_web_shards[{key}] is {status}." in card


def test_missing_or_outdated_upstream_is_a_failure_naming_it(demo_run, home_copy, instance):
    store = ArtifactStore(root=str(home_copy / "artifacts"))
    os.unlink(f"{store.partition_path('eval_scores', 'midtrained')}/CURRENT")  # a link: the demo's stays
    result = _materialize(demo_run, "midtrained", instance)
    assert not result.success
    assert "model_card: eval_scores[midtrained] has no materialized version" in step_error(result)

    evaluated = store.current_version("dpo_checkpoint", None)
    _commit(store, "dpo_checkpoint", None, "0" * 32, {})  # a new checkpoint, not evaluated yet
    result = _materialize(demo_run, "dpo", instance)
    assert not result.success
    assert (
        f"eval_scores[dpo] evaluated dpo_checkpoint version {evaluated}, but its current version is {'0' * 32}"
        in step_error(result)
    )
