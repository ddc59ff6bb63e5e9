"""Data ablations: arms, the statistics of the report, the curated views of the raw tokens, the held-out
benchmark sets, a contamination canary the metric must see, and what the ci graph materialized."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from phi_assets.ablations import arms, heldout, stats
from phi_assets.ablations import train as ablation_train
from phi_assets.ablations.assets import build_report, canary_shard, metrics_of
from phi_assets.evaluation import harness
from phi_assets.mixture import loader
from phi_assets.mixture import tokenizer as tk
from phi_assets.mixture.proxy import ProxyConfig
from tests.support.token_shards import numpy_shard
from tests.support.training_data import stdlib_shards

# --- arms -----------------------------------------------------------------------------------------------


def test_the_arm_list_must_hold_the_baseline_and_known_arms_only() -> None:
    assert arms.parse_arms("edu>=3, raw") == ["raw", "edu>=3"]  # the baseline first
    with pytest.raises(ValueError, match="baseline 'raw'"):
        arms.parse_arms("edu>=3,edu>=4")
    with pytest.raises(ValueError, match="'edu>=9' is not one of"):
        arms.parse_arms("raw,edu>=9")
    with pytest.raises(ValueError, match="unknown bases"):
        arms.Arm("x", {"the_stack": 1.0})
    assert arms.CANARY not in arms.parse_arms("raw,heuristics+dedup,edu>=2,edu>=3")
    textbooks = arms.arm("edu>=3+textbooks+exercises")
    assert textbooks.min_edu == 3.0 and math.isclose(sum(textbooks.shares.values()), 1.0)
    assert textbooks.shares["curated_code"] == pytest.approx(0.8)


# --- statistics -----------------------------------------------------------------------------------------


def test_interval_is_students_t_over_the_seeds() -> None:
    got = stats.interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2 degrees of freedom) x sd 1 / sqrt(3)
    assert got["mean"] == 2.0 and got["n"] == 3
    assert got["lo"] == pytest.approx(2.0 - half, abs=1e-5) and got["hi"] == pytest.approx(2.0 + half, abs=1e-5)
    assert stats.interval([5.0]) == {"mean": 5.0, "lo": 5.0, "hi": 5.0, "n": 1}


def test_paired_differences_use_the_seeds_both_arms_have() -> None:
    diff = stats.paired({0: 1.0, 1: 2.0, 2: 3.5}, {0: 1.5, 1: 2.5, 3: 9.0})
    assert diff["seeds"] == 2 and diff["mean"] == pytest.approx(-0.5) and diff["hi"] == pytest.approx(-0.5)
    assert stats.verdict("raw", diff).startswith("beats raw beyond noise (-0.5000 [-0.5000, -0.5000] over 2")
    assert stats.verdict("raw", diff, lower_is_better=False).startswith("worse than raw")  # pass@1: higher wins
    noisy = stats.paired({0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0})
    assert stats.verdict("raw", noisy).startswith("not distinguishable from raw")
    worse = stats.paired({0: 3.0, 1: 3.1, 2: 3.05}, {0: 2.0, 1: 2.05, 2: 2.0})
    assert stats.verdict("raw", worse).startswith("worse than raw beyond noise")
    assert stats.verdict("raw", stats.paired({0: 1.0}, {0: 2.0})).startswith("cannot tell with one seed")
    assert stats.paired({0: 1.0}, {1: 1.0}) is None
    line = stats.verdict_line("edu>=3", "raw", {"humaneval_loss": diff, "humaneval_pass@1": diff})
    assert line.startswith("edu>=3: humaneval_loss beats raw") and "humaneval_pass@1 worse than raw" in line


def _records(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for arm, shift in (("raw", 0.0), ("edu>=3", -0.3), ("edu>=3+textbooks", -0.01)):
        for s in range(3):
            out.append(
                {
                    "arm": arm,
                    "seed": s,
                    "pass_at_1": {"humaneval": {"pass@1": 0.1 * s, "problems": 10}},
                    "bench_loss": {"humaneval": 5 + shift + rng.normal(0, 0.02), "mbpp": 5.5 + rng.normal()},
                    "val_loss": {"raw_code": 4 + rng.normal(0, 0.1)},
                }
            )
    return out


def test_the_report_is_recomputed_from_the_partitions_numbers() -> None:
    from scipy import stats as st

    records = _records()
    report = build_report(records)
    assert [a["arm"] for a in report["arms"]][0] == "raw"
    assert report["primary"] == ["humaneval_loss", "mbpp_loss", "humaneval_pass@1"]
    for row in report["arms"]:
        mine = [r for r in records if r["arm"] == row["arm"]]
        for metric in report["metrics"]:
            values = np.array([metrics_of(r)[metric] for r in sorted(mine, key=lambda r: r["seed"])])
            half = st.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
            assert row["metrics"][metric]["mean"] == pytest.approx(values.mean())
            assert row["metrics"][metric]["hi"] - row["metrics"][metric]["mean"] == pytest.approx(half)
            if row["arm"] != "raw":
                base = np.array(
                    [
                        metrics_of(r)[metric]
                        for r in sorted(records, key=lambda r: r["seed"])
                        if r["arm"] == "raw"
                    ]
                )
                d = values - base
                assert row["vs_baseline"][metric]["mean"] == pytest.approx(d.mean())
                assert row["vs_baseline"][metric]["lo"] == pytest.approx(
                    d.mean() - st.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
                )
    verdicts = {a["arm"]: a["verdict"] for a in report["arms"]}
    assert verdicts["edu>=3"].startswith("edu>=3: humaneval_loss beats raw beyond noise (")
    with pytest.raises(ValueError, match="baseline arm 'raw'"):
        build_report([r for r in records if r["arm"] != "raw"])


# --- curated views of the raw tokens ----------------------------------------------------------------------


def test_a_view_reads_only_the_documents_its_filter_keeps(tmp_path: Path) -> None:
    lengths = np.arange(5, 205)
    shard = numpy_shard(tmp_path / "s", lengths, "d")
    keep = np.arange(len(lengths)) % 3 == 0
    whole = loader.Source("raw", [shard], "train", 0.1, 0)
    view = loader.Source("raw", [shard], "train", 0.1, 0, keep=lambda k: keep)
    train_docs = whole.documents(0)
    assert np.array_equal(view.documents(0), train_docs[keep[train_docs]])
    assert view.num_tokens == int(lengths[view.documents(0)].sum()) < whole.num_tokens
    # the split is decided by id before the view: a view's validation documents are the whole's
    val_view = loader.Source("raw", [shard], "val", 0.1, 0, keep=lambda k: keep).documents(0)
    assert set(val_view) <= set(loader.Source("raw", [shard], "val", 0.1, 0).documents(0))
    batches = loader.MixtureLoader(
        {"raw": [shard]},
        {"raw": 1.0},
        loader.LoaderConfig(seq_len=16, batch_size=4, split="all"),
        {"raw": lambda k: keep},
    )
    kept_tokens = set(np.concatenate([shard.document(i) for i in np.flatnonzero(keep)]).tolist())
    for _ in range(5):
        assert set(batches.next_batch().input_ids.ravel().tolist()) <= kept_tokens | {0}
    with pytest.raises(ValueError, match="has \\(3,\\) entries, the shard 200 documents"):
        loader.Source("raw", [shard], "all", 0.1, 0, keep=lambda k: np.ones(3, bool))


# --- held-out benchmark sets -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stdlib(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, tk.Loaded]:
    root = tmp_path_factory.mktemp("stdlib")
    shards = stdlib_shards(root)
    return shards, tk.load(root / "tok")


def test_only_the_solution_tokens_are_scored(stdlib) -> None:
    _, loaded = stdlib
    problems = harness.load_humaneval()[:20]
    scored = heldout.encode("humaneval", problems, loaded, seq_len=4096)
    for p, inputs, targets, mask in zip(problems, scored.inputs, scored.targets, scored.scored, strict=True):
        solution = loaded.tokenizer.encode(p.reference).ids + [loaded.eot_id]
        assert targets[mask].tolist() == solution  # exactly the solution (and its end), nothing of the prompt
        assert inputs[: (~mask).sum() + 1].tolist() == loaded.tokenizer.encode(p.prompt).ids
    short = heldout.encode("humaneval", problems, loaded, seq_len=64)
    assert all(len(x) <= 64 for x in short.inputs) and all(m.any() for m in short.scored)


@pytest.mark.slow
def test_a_contamination_canary_shows_a_much_lower_benchmark_loss(stdlib, tmp_path: Path) -> None:
    """Slow tier: trains two small models. Half of the canary arm's tokens are the HumanEval reference
    solutions; at equal tokens its loss on those solutions must fall far below the arm without them, or
    the metric could not see an effect of the data."""
    from phi_assets.mixture.tokens import TokenShard

    shards, loaded = stdlib
    problems = harness.load_humaneval()
    bench = {"humaneval": heldout.encode("humaneval", problems, loaded, 128)}
    code = [TokenShard.open(p) for p in shards["code"]]
    canary = canary_shard(problems, loaded, "t", tmp_path / "canary")
    cfg = ProxyConfig(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        seq_len=128,
        batch_size=8,
        steps=160,
        lr=3e-3,
        warmup_steps=5,
        seed=0,
    )
    split = loader.LoaderConfig(seq_len=128, batch_size=8, split="all")
    losses, seen = {}, {}
    for name, weights in (("raw", {"raw_code": 1.0}), (arms.CANARY, arms.arm(arms.CANARY).shares)):
        sources = {"raw_code": code, "benchmark_solutions": [canary]}
        train = loader.MixtureLoader({b: sources[b] for b in weights}, weights, split)
        result = ablation_train.train_arm(train, {}, bench, loaded.vocab_size, cfg, where="cpu")
        losses[name], seen[name] = result.bench_loss["humaneval"], result.tokens_seen
    assert seen["raw"] == seen[arms.CANARY] == 160 * 8 * 128  # equal tokens
    # seeded on CPU: about 3.6 against 4.5 nats per solution token; a 15% drop at the least
    assert losses[arms.CANARY] < 0.85 * losses["raw"], losses


# --- what the ci graph materialized ------------------------------------------------------------------------


def _store(home: Path):
    from resources import load_profile
    from resources.artifact_store import ArtifactStore

    return ArtifactStore(root=load_profile({"PHI_PROFILE": "ci", "PHI_HOME": str(home)}).artifact_root)


def test_the_arms_saw_equal_tokens_and_the_report_comes_from_them(demo_run) -> None:
    from phi_assets.ablations.assets import ABLATIONS
    from phi_assets.common.store import file_uri

    home = demo_run["home"]
    store = _store(home)
    records = []
    for key in ABLATIONS.get_partition_keys():
        manifest = store.current_manifest("data_ablations", str(key))
        assert manifest is not None, key
        records.append(json.loads(Path(file_uri(store, manifest, "result.json")).read_text()))
    seen = {r["tokens_seen"] for r in records}
    assert len(seen) == 1, seen  # every arm and seed: the same number of training tokens
    for r in records:
        assert sum(r["tokens_by_base"].values()) == r["tokens_seen"]
        assert set(r["tokens_by_base"]) <= set(r["weights"])
    report = json.loads(
        Path(file_uri(store, store.current_manifest("ablation_report", None), "report.json")).read_text()
    )
    again = build_report(records)
    for mine, theirs in zip(again["arms"], report["arms"], strict=True):
        assert mine["arm"] == theirs["arm"] and mine["metrics"].keys() == theirs["metrics"].keys()
        for metric, interval in mine["metrics"].items():
            assert interval == pytest.approx(theirs["metrics"][metric])
            diff = mine["vs_baseline"].get(metric)
            assert diff == (None if diff is None else pytest.approx(theirs["vs_baseline"][metric]))
    assert "ablation_report (loss on the benchmarks' reference solutions" in demo_run["first"]
    # the raw source: nothing filtered but exact copies and contamination (the planted HumanEval file)
    funnel = store.current_manifest("tokenized_raw_code", "planted.jsonl")["metadata"]["funnel"]
    assert funnel == {"read": 1, "kept": 0, "exact_duplicate": 0, "contaminated": 1}


def test_pass_at_1_serves_the_ablation_model_and_runs_its_programs(home_copy, demo_run) -> None:
    """Where a preset scores pass@1 (GPU presets), each ablation model is exported in Hugging Face format,
    served by vLLM (on CPU here) and its completions run in the sandbox, as eval_scores scores a checkpoint.
    A 10-step model scores 0, so this proves the path and the accounting, not a score."""
    import dagster as dg

    from phi_assets.ablations.assets import data_ablations
    from phi_assets.ingest.assets import PARTITIONS
    from resources import build_resources, load_profile

    instance = dg.DagsterInstance.ephemeral()
    with dg.DagsterInstance.from_config(str(demo_run["home"] / "dagster")) as demo:
        for pdef in PARTITIONS.values():
            instance.add_dynamic_partitions(pdef.name, demo.get_dynamic_partitions(pdef.name))
    config = {"pass_at_1": "on", "steps": 10, "eval_problems": 3}
    result = dg.materialize(
        [data_ablations],
        partition_key="raw|0",
        instance=instance,
        resources=build_resources(load_profile()),
        run_config={"ops": {"data_ablations": {"config": config}}},
    )
    assert result.success
    store = _store(home_copy)
    manifest = store.current_manifest("data_ablations", "raw|0")
    record = manifest["metadata"]
    assert {b: v["problems"] for b, v in record["pass_at_1"].items()} == {"humaneval": 3, "mbpp": 3}
    assert all(0 <= v["pass@1"] <= 1 for v in record["pass_at_1"].values())
    from phi_assets.common.store import file_uri

    hf = Path(file_uri(store, manifest, "hf"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf.iterdir()}
    assert "humaneval_pass@1" in metrics_of(record)
    shown = result.asset_materializations_for_node("data_ablations")[0].metadata
    assert {k for k in shown if k.endswith("_pass@1")} == {"humaneval_pass@1", "mbpp_pass@1"}
