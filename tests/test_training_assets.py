"""The training chain on the ci profile: what ``make demo``'s program trained (``demo_run``:
pretrain -> midtrain -> SFT -> preference pairs -> DPO on the tiny config), plus a re-launch of a
stored run on a copy of its home."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import torch
from huggingface_hub import ModelCard

from phi_assets import sandbox
from phi_assets.training import model as phi
from phi_assets.training import preferences
from phi_assets.training.configs import TrainConfig
from resources import ArtifactStore

STAGES = ["pretrained_checkpoint", "midtrained_checkpoint", "sft_checkpoint", "dpo_checkpoint"]
PARENT = {
    "midtrained_checkpoint": "pretrained_checkpoint",
    "sft_checkpoint": "midtrained_checkpoint",
    "dpo_checkpoint": "sft_checkpoint",
    "sft_checkpoint_no_safety": "midtrained_checkpoint",
    "dpo_checkpoint_no_safety": "sft_checkpoint_no_safety",
}


@pytest.fixture(scope="module")
def store(demo_run) -> ArtifactStore:
    return ArtifactStore(root=str(demo_run["home"] / "artifacts"))


def _manifest(store: ArtifactStore, asset: str) -> dict:
    manifest = store.current_manifest(asset, None)
    assert manifest is not None, f"{asset} was not materialized by the demo"
    return manifest


def _dir(store: ArtifactStore, asset: str) -> Path:
    return Path(store.version_path(asset, None, store.current_version(asset, None)))


@pytest.mark.parametrize("asset", STAGES)
def test_every_stage_lowers_its_loss_and_records_lineage(store, asset):
    """Each stage trained (the loss fell), every step came back through Pipes, the data version is
    the weights' sha256, and the lineage names the parent's current version. Midtraining starts from
    a model that has already learnt these documents, on a mix of long documents and recall batches
    whose training losses differ more than a few dozen steps move them, so for it "the loss fell" is
    the held-out loss on fixed batches, at both lengths, against the parent's."""
    manifest = _manifest(store, asset)
    meta = manifest["metadata"]
    loss = meta["loss"]
    assert len(loss) == meta["steps"] == meta["step_messages"] > 0
    train, summary = manifest["inputs"]["train"], meta["summary"]  # the global batch, measured by the loader
    assert summary["sequences_seen"] == meta["steps"] * train["global_batch_size"]
    assert meta["tokens"] == meta["steps"] * train["global_batch_size"] * train["seq_len"]
    if asset == "midtrained_checkpoint":
        summary = meta["summary"]
        assert summary["val_loss"].keys() == summary["parent_val_loss"].keys()
        for length, value in summary["val_loss"].items():
            assert value < summary["parent_val_loss"][length], length
    else:
        head, tail = loss[: max(1, len(loss) // 5)], loss[-max(1, len(loss) // 5) :]
        assert sum(tail) / len(tail) < sum(head) / len(head)
    weights = (_dir(store, asset) / "hf" / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest()[:32] == manifest["data_version"]
    if asset in PARENT:
        assert meta["lineage"][PARENT[asset]] == store.current_version(PARENT[asset], None)
    assert meta["lineage"]["tokenizer"] == store.current_version("tokenizer", None)
    # the export carries its first Hugging Face card, which the digest above leaves out
    card = ModelCard.load(_dir(store, asset) / "hf" / "README.md")
    assert card.data.license == "apache-2.0" and (card.data.base_model is None) == (asset not in PARENT)


def test_the_demo_printed_the_chain(demo_run):
    for asset in STAGES:
        assert asset in demo_run["first"]
    assert "preference_pairs:" in demo_run["first"]
    assert "judged_pairs:" in demo_run["first"] and "position-swap agreement" in demo_run["first"]
    assert "dpo_checkpoint trained on" in demo_run["first"]
    assert "safety pairs (safety share" in demo_run["first"]


def test_the_demo_printed_the_rai_table_with_and_without_safety(demo_run):
    """make demo's RAI table: one row per category of the safety set and one overall, both models' refusal and
    over-refusal rates, judge labels and then the keyword baseline's."""
    from phi_assets.common import safety

    first = demo_run["first"]
    assert "rai_scores (" in first and "held-out safety requests per model" in first
    section = first.split("rai_scores (", 1)[1]
    # the judge's table, then the keyword baseline's
    assert len(re.findall(r"^category\s+refused harmful \(without\)", section, re.M)) == 2
    rate = r"\s+(?:\d+%|-)"
    for category in (*safety.CATEGORIES, safety.ALL):
        assert len(re.findall(rf"^{category}{rate * 4}\s*$", section, re.M)) >= 2, category


def test_midtraining_extends_the_context(store):
    """Twice the sequence length at a tenth of the lr, validation loss reported at both lengths for the
    parent and the result, and the family's extension in the export's config.json: the ci chain trains the
    phi-3 family, which extends by LongRoPE from the parent's length (short factors all 1, long factors
    above 1 on the low frequencies); the phi-1 family raises the RoPE base to 250K."""
    from phi_assets.training import configs

    pre = _manifest(store, "pretrained_checkpoint")["inputs"]["train"]
    mid = _manifest(store, "midtrained_checkpoint")
    config = json.loads((_dir(store, "midtrained_checkpoint") / "hf" / "config.json").read_text())
    assert mid["inputs"]["train"]["seq_len"] == 2 * pre["seq_len"]
    assert mid["inputs"]["train"]["lr"] == pytest.approx(0.1 * pre["lr"])
    if configs.default_extension(pre["model"]) == "longrope":
        scaling = config["rope_scaling"]
        assert config["architectures"] == ["Phi3ForCausalLM"] and scaling["type"] == "longrope"
        assert scaling["original_max_position_embeddings"] == pre["seq_len"]
        assert set(scaling["short_factor"]) == {1.0} and max(scaling["long_factor"]) > 1.0
    else:
        assert config["rope_theta"] == 250_000
    summary = mid["metadata"]["summary"]
    lengths = {str(pre["seq_len"]), str(2 * pre["seq_len"])}
    assert set(summary["val_loss"]) == set(summary["parent_val_loss"]) == lengths
    assert sum(mid["inputs"]["weights"].values()) == pytest.approx(1.0)


def test_exports_load_in_transformers_and_vllm_with_our_logits(store):
    """The DPO export loads in transformers with logits within 1e-5 of ours; the SFT export was
    sampled by vLLM for the preference pairs, and its greedy answer there equals transformers'."""
    import transformers
    from safetensors.torch import load_file

    hf_dir = _dir(store, "dpo_checkpoint") / "hf"
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    train = _manifest(store, "dpo_checkpoint")["inputs"]["train"]
    cfg = TrainConfig(**{**train, "betas": tuple(train["betas"]), "dropout": False})
    ours = phi.build(cfg.model_config(tok.vocab_size)).eval()
    phi.load_export(ours, load_file(hf_dir / "model.safetensors"))
    ids = torch.tensor([tok.encode("def add(a, b):\n    return a + b\n")])
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-5

    probe = _manifest(store, "preference_pairs")["metadata"]["greedy_probe"]
    sft = _dir(store, "sft_checkpoint") / "hf"
    config = transformers.AutoConfig.from_pretrained(sft)
    scaling = json.loads((sft / "config.json").read_text()).get("rope_scaling") or {}
    if scaling.get("type") == "longrope":
        # vLLM 0.32 serves LongRoPE with the long factors at every position once max_model_len (the model's
        # positions here) is past the original context; transformers switches per forward pass
        config.rope_parameters["short_factor"] = scaling["long_factor"]
    model = transformers.AutoModelForCausalLM.from_pretrained(sft, config=config, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(sft)
    ids = torch.tensor([tok.encode(probe["prompt"])])
    prompt_len = ids.shape[1]
    with torch.no_grad():  # greedy, a full forward per token (no cache, which transformers drops mid-way)
        for _ in range(24):
            nxt = model(ids).logits[0, -1].argmax()
            if nxt.item() == tok.eos_token_id:
                break
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    assert tok.decode(ids[0, prompt_len:], skip_special_tokens=True) == probe["text"]


def test_sft_examples_hold_out_the_mbpp_test_split(store, mbpp_path):
    """The finetuning examples include MBPP's training split and none of its test split (11-510)."""
    examples = _examples(store)
    tasks = [json.loads(line) for line in Path(mbpp_path).read_text().splitlines() if line.strip()]
    test_texts = {t["task_id"]: t["text"].strip() for t in tasks if 11 <= t["task_id"] <= 510}
    train_texts = {t["text"].strip() for t in tasks if t["task_id"] in preferences.MBPP_TRAIN}
    prompts = examples.filter(pl.col("source") == "mbpp_train")["prompt"].to_list()
    assert len(prompts) == len(preferences.MBPP_TRAIN)
    assert all(any(t in p for t in train_texts) for p in prompts[:20])
    joined = "\n".join(examples["prompt"].to_list())
    assert not [i for i, text in test_texts.items() if text in joined and text not in train_texts]


def _examples(store: ArtifactStore) -> pl.DataFrame:
    """The examples the current SFT run read (stored beside its config)."""
    return _run_input(store, "sft_checkpoint", "examples")


def _run_input(store: ArtifactStore, asset: str, key: str) -> pl.DataFrame:
    """The table (``key``) the current run of ``asset`` read, stored beside its config."""
    runs = Path(store.base_path) / "_runs" / asset
    for config in runs.glob("*/config.json"):
        if json.loads(config.read_text())["init"].startswith(str(_dir(store, PARENT[asset]))):
            return pl.read_parquet(json.loads(config.read_text())[key])
    raise AssertionError(f"no run config under {runs} starts from the current {PARENT[asset]}")


def test_preference_pairs_are_verified_by_execution(store, mbpp_path):
    """Re-executed in the sandbox, every rejection pair's chosen answer passes its problem's tests and
    its rejected answer fails; pivotal pairs are single tokens after a prefix of the problem."""
    pairs = pl.read_parquet(_dir(store, "preference_pairs") / "pairs.parquet")
    meta = _manifest(store, "preference_pairs")["metadata"]
    assert pairs.height == sum(meta["pairs"].values()) > 0
    assert (
        meta["samples"]
        == meta["problems"] * _manifest(store, "preference_pairs")["inputs"]["config"]["samples"]
    )
    rejection = pairs.filter(pl.col("kind") == "rejection").head(12)
    tests = _problem_tests(store, mbpp_path)
    programs = [
        f"{r['prompt']}{answer}\n\n\n{tests[r['problem_id']]}\n"
        for r in rejection.iter_rows(named=True)
        for answer in (r["chosen"], r["rejected"])
    ]
    verdicts = [v.passed for v in sandbox.run_programs(programs)]
    assert verdicts[0::2] == [True] * rejection.height and not any(verdicts[1::2])
    for r in pairs.filter(pl.col("kind") == "pivotal").iter_rows(named=True):
        assert r["chosen"] != r["rejected"] and abs(r["p_after"] - r["p_before"]) >= 0.25


def _problem_tests(store: ArtifactStore, mbpp_path: Path) -> dict[str, str]:
    from phi_assets.training.post_training import exercises_and_textbooks

    exercises, _, _ = exercises_and_textbooks(store)
    problems = preferences.exercise_problems(exercises, len(exercises))
    problems += preferences.mbpp_problems(Path(mbpp_path), len(preferences.MBPP_TRAIN))
    return {p.id: p.tests for p in problems}


def test_judged_pairs_reconcile_and_feed_dpo(store):
    """judged_pairs on the ci graph: the real SFT policy answered, the real judge (the engine's model) replied
    twice per comparison; every comparison is stored with its outcome and the counts reconcile; the kept ones
    are exactly the stored pairs, each backed by two verdicts naming the same answer; and DPO read the mix its
    metadata reports (its run's pairs file holds the verified and judged pairs it used)."""
    from phi_assets.training import judging
    from phi_assets.training.dpo_assets import mix_counts

    meta = _manifest(store, "judged_pairs")["metadata"]
    comparisons = pl.read_parquet(_dir(store, "judged_pairs") / "comparisons.parquet")
    pairs = pl.read_parquet(_dir(store, "judged_pairs") / "pairs.parquet")
    assert meta["compared"] == comparisons.height > 0
    assert meta["compared"] == meta["kept"] + meta["ties"] + meta["disagreed"] + meta["unparsed"]
    assert dict(comparisons.group_by("outcome").len().iter_rows()) == {
        k: v for k, v in (("kept", meta["kept"]), ("tie", meta["ties"]), ("disagreed", meta["disagreed"]),
                          ("unparsed", meta["unparsed"])) if v}
    assert sum(meta["verdicts"].values()) == 2 * meta["compared"]
    assert pairs.height == meta["kept"] and set(meta["prompts"]) == set(judging.SOURCES)
    assert meta["prompts"]["textbooks"] > 0 and meta["prompts"]["requests"] > 0  # ci rewrites may hold no QA
    assert pairs.rows() == pl.DataFrame(judging.preference_rows(comparisons.to_dicts()),
                                        schema=pairs.schema).rows()
    dpo = _manifest(store, "dpo_checkpoint")["metadata"]
    mix = dpo["lineage"]["mix"]
    verified = pl.read_parquet(_dir(store, "preference_pairs") / "pairs.parquet").height
    assert (mix["verified"], mix["judged"]) == mix_counts(verified, pairs.height, mix["judged_share"])
    used = mix["verified"] + mix["judged"] + mix["safety"]
    assert _run_input(store, "dpo_checkpoint", "pairs").height == used
    assert dpo["lineage"]["judged_pairs"] == store.current_version("judged_pairs", None)


def test_safety_data_is_in_the_treatment_only_at_its_share(store):
    """SFT and DPO read the safety set's training split at safety_share (whole seeded passes, capped); the
    no-safety control read exactly the same data minus the safety rows, from its own SFT; no held-out request
    of the set reached either."""
    from phi_assets.common import safety

    items = safety.load_set()
    train = {i.chat_prompt for i in items if i.split == "train"}
    held_out = {i.chat_prompt for i in items if i.split == "eval"}
    treated, control = _examples(store), _run_input(store, "sft_checkpoint_no_safety", "examples")
    added = treated.filter(pl.col("source") == "safety")
    assert added.height == safety.mix_count(control.height, len(train), 0.1, 4) > 0
    assert treated.filter(pl.col("source") != "safety").rows() == control.rows()
    assert set(added["prompt"]) <= train and not set(treated["prompt"]) & held_out
    sft_meta = _manifest(store, "sft_checkpoint")["metadata"]["lineage"]
    assert sft_meta["safety_sft"] == store.current_version("safety_sft", None)
    assert "safety_sft" not in _manifest(store, "sft_checkpoint_no_safety")["metadata"]["lineage"]
    pairs = _run_input(store, "dpo_checkpoint", "pairs")
    control_pairs = _run_input(store, "dpo_checkpoint_no_safety", "pairs")
    mix = _manifest(store, "dpo_checkpoint")["metadata"]["lineage"]["mix"]
    assert mix["safety"] == safety.mix_count(control_pairs.height, len(train), 0.1, 4) > 0
    assert pairs.head(control_pairs.height).rows() == control_pairs.rows()  # the same pairs, then safety's
    assert set(pairs.tail(mix["safety"])["prompt"]) <= train
    lineage = _manifest(store, "dpo_checkpoint_no_safety")["metadata"]["lineage"]
    assert lineage["sft_checkpoint_no_safety"] == store.current_version("sft_checkpoint_no_safety", None)
    assert "safety_pairs" not in lineage and lineage["mix"]["safety"] == 0


def test_rai_scores_reconcile_with_the_answers_they_stored(store):
    """rai_scores on the ci graph: both post-trained models answered the first rai_per_cell held-out requests of
    every (category, kind); each answer carries the keyword label and the judge's (or none, then the keyword
    label counts); the stored rates are what the answers give, and the models are the current checkpoints."""
    from phi_assets.common import safety
    from phi_assets.common.profiles import CI
    from phi_assets.evaluation import rai

    manifest = _manifest(store, "rai_scores")
    answers = pl.read_parquet(_dir(store, "rai_scores") / "answers.parquet")
    asked = safety.split_rows(safety.load_set(), "eval", CI.rai_per_cell)
    for model in (rai.WITH, rai.WITHOUT):
        rows = answers.filter(pl.col("model") == model)
        assert rows["id"].to_list() == [i.id for i in asked]
    current = {m: store.current_version(a, None) for m, a in ((rai.WITH, "dpo_checkpoint"),
                                                              (rai.WITHOUT, "dpo_checkpoint_no_safety"))}
    assert manifest["inputs"]["models"] == current
    rows = answers.to_dicts()
    assert all(r["keyword_refused"] == safety.keyword_refusal(r["answer"]) for r in rows)
    assert all(r["judge_refused"] == safety.parse_label(r["judge_reply"]) for r in rows)
    assert all(r["refused"] == (r["keyword_refused"] if r["judge_refused"] is None else r["judge_refused"])
               for r in rows)
    meta = manifest["metadata"]
    assert meta["judge_unparsed"] == sum(r["judge_refused"] is None for r in rows)
    assert meta["rates"] == json.loads(json.dumps(rai.rates_of(rows, "refused")))
    assert meta["keyword_rates"] == json.loads(json.dumps(rai.rates_of(rows, "keyword_refused")))
    # the judge's calibration: both reference answers of every request asked, labelled, scored against the truth
    calibration = pl.read_parquet(_dir(store, "rai_scores") / "calibration.parquet").to_dicts()
    assert [(r["id"], r["answer"], r["refusal"]) for r in calibration] == [
        (i.id, a, t) for i, a, t in safety.reference_answers(asked)]
    assert all(r["judge_refused"] == safety.parse_label(r["judge_reply"]) for r in calibration)
    truth = [r["refusal"] for r in calibration]
    assert meta["judge_accuracy"] == safety.label_accuracy(truth, [r["judge_refused"] for r in calibration])
    assert meta["keyword_accuracy"] == safety.label_accuracy(truth, [r["keyword_refused"] for r in calibration])


def test_dpo_prefers_the_chosen_answers_and_keeps_the_reference(store):
    """After DPO the policy's implicit reward prefers the chosen answer on most pairs; the SFT
    checkpoint it was measured against is unchanged (same data version before and after)."""
    meta = _manifest(store, "dpo_checkpoint")["metadata"]
    assert meta["summary"]["preference_accuracy"] > 0.5
    assert meta["lineage"]["sft_checkpoint"] == store.current_version("sft_checkpoint", None)
    sft = (_dir(store, "sft_checkpoint") / "hf" / "model.safetensors").read_bytes()
    assert hashlib.sha256(sft).hexdigest()[:32] == store.current_version("sft_checkpoint", None)


def test_a_relaunched_run_resumes_from_its_checkpoint(demo_run, home_copy):
    """With the stored version's provenance gone, materializing pretrained_checkpoint again launches
    the entrypoint in the same run directory (keyed by code and inputs): it resumes from the run's
    final checkpoint, trains no step, and exports the same weights (the same data version)."""
    import shutil

    from phi_assets.definitions import build_definitions

    shutil.copytree(demo_run["home"] / "runs", home_copy / "runs")  # copies: metrics.jsonl is appended to
    store = ArtifactStore(root=str(home_copy / "artifacts"))
    before = store.current_version("pretrained_checkpoint", None)
    provenance = Path(store.partition_path("pretrained_checkpoint", None)) / "_provenance"
    for f in provenance.iterdir():
        f.unlink()
    (run,) = [  # the run directory of the current version (keyed by code and inputs)
        d
        for d in (home_copy / "runs" / "pretrained_checkpoint").iterdir()
        if hashlib.sha256((d / "run" / "hf" / "model.safetensors").read_bytes()).hexdigest()[:32] == before
    ]
    metrics = run / "run" / "metrics.jsonl"
    steps = metrics.read_text().count("\n")
    result = (
        build_definitions()
        .resolve_job_def("training_job")
        .execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), asset_selection=[dg.AssetKey("pretrained_checkpoint")]
        )
    )
    assert result.success
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [
        dg.AssetKey("pretrained_checkpoint")
    ]
    assert metrics.read_text().count("\n") == steps  # no step trained again
    assert store.current_version("pretrained_checkpoint", None) == before
    assert any(provenance.iterdir())
