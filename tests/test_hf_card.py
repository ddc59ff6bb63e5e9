"""The Hugging Face card (README.md) of a checkpoint: the evaluated card of ``model_card`` built from fake
manifests of a small store, its data-ablation section, the push-ready folder, and the first card every
training export carries. Fast: no demo, no model."""

import json
import os
import uuid
from pathlib import Path

import dagster as dg
import pytest
from huggingface_hub import ModelCard

from phi_assets.common import hf_card as common
from phi_assets.evaluation import publish
from phi_assets.evaluation.card_facts import Entry, read_facts
from phi_assets.evaluation.hf_card import ablation_section, readme
from phi_assets.training import runs
from resources import ArtifactStore

P, Q, M, T, E = "p" * 32, "a1" * 16, "c" * 32, "d" * 32, "e" * 32  # fake data versions
PE = "f" * 32  # eval_scores[pretrained]
SETTINGS = {"ngram": 13, "use_embeddings": False}  # the decontamination resource's
HF_FILES = {
    "config.json": json.dumps(
        {
            "architectures": ["PhiForCausalLM"],
            "model_type": "phi",
            "num_attention_heads": 4,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "intermediate_size": 256,
            "partial_rotary_factor": 0.5,
            "rope_theta": 10000.0,
            "vocab_size": 512,
            "max_position_embeddings": 256,
        }
    ).encode(),
    "model.safetensors": bytes(range(256)) * 64,
    "tokenizer.json": b'{"model": {"type": "BPE"}}',
    "README.md": b"---\nlicense: apache-2.0\n---\n\nthe export's first card\n",
}
TRAIN = {
    "model": "debug_tiny",
    "seq_len": 128,
    "global_batch_size": 8,
    "micro_batch_size": 4,
    "lr": 1e-3,
    "min_lr_ratio": 0.1,
    "schedule": "cosine",
    "warmup_steps": 2,
    "weight_decay": 0.1,
    "precision": "fp32",
    "overrides": {},
}
SCORES = {
    "humaneval": {"pass@1": 0.125, "pass@10": 0.375, "problems": 8, "samples": 80, "passed": 10},
    "mbpp": {"pass@1": 0.25, "problems": 4, "samples": 4, "passed": 1},
}
ABLATION = {
    "baseline": "raw",
    "metrics": ["humaneval_pass@1", "val_loss"],
    "table_md": "| arm | humaneval_pass@1 |\n|---|---|\n| raw | 0.010 |\n| phi4_mix | 0.030 |\n"
    "| no_synth | 0.015 |",
    "arms": [
        {
            "arm": "no_synth",
            "seeds": 3,
            "metrics": {"humaneval_pass@1": {"mean": 0.015, "lo": 0.01, "hi": 0.02}},
            "vs_baseline": {"humaneval_pass@1": {"mean": 0.005, "lo": -0.002, "hi": 0.012}},
            "verdict": "no_synth: not distinguishable from raw",
        },
        {
            "arm": "phi4_mix",
            "seeds": 3,
            "metrics": {"humaneval_pass@1": {"mean": 0.03, "lo": 0.025, "hi": 0.035}},
            "vs_baseline": {"humaneval_pass@1": {"mean": 0.02, "lo": 0.012, "hi": 0.028}, "val_loss": None},
            "verdict": "phi4_mix beats raw on humaneval_pass@1",
        },
    ],
}


def _commit(
    store: ArtifactStore, asset: str, partition, version: str, inputs: dict, metadata: dict, files=None
):
    with store.stage(asset, partition) as staging:
        for name, data in (files or {}).items():
            (staging.path / name).parent.mkdir(parents=True, exist_ok=True)
            (staging.path / name).write_bytes(data)
        manifest = {"asset": asset, "partition": partition, "code_version": "code1", "inputs": inputs}
        staging.commit(version, {**manifest, "metadata": metadata})
    store.set_current(asset, partition, version)


def _checkpoint_meta(lineage: dict) -> dict:
    return {
        "num_params": 120_000,
        "tokens": 4096,
        "steps": 4,
        "loss": [6.0, 5.0, 4.0, 3.5],
        "summary": {"val_loss": {"128": 3.4}},
        "lineage": lineage,
    }


def _eval(stage: str, model: str, understanding: float | None = None) -> dict:
    meta = {
        "stage": stage,
        "model_version": model,
        "eval_set": "set1",
        "chat": False,
        "num_params": 120_000,
        "tokens": 4096,
        "scores": SCORES,
        "verdicts": {},
        "benchmark_sizes": {"humaneval": 164, "mbpp": 500},
    }
    if understanding is not None:
        meta["understanding"] = {"score": understanding, "judge": "j", "judge_gap": 0.5, "judge_reliable": True}
    return meta


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    """pretrained (P) <- midtrained (Q), both evaluated, the mixture (M) and the tokenizer (T): the manifests
    the card reads, as the assets write them (no lineage walk: ``read_facts``)."""
    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    hf = {f"hf/{n}": b for n, b in HF_FILES.items()}
    mixture = {
        "origin": "search",
        "token_budget": 4096,
        "max_epochs": 4,
        "weights": {"filtered_code": 0.6, "synthetic_textbooks": 0.4},
        "shards": {
            "filtered_code": [{"asset": "filtered_code_corpus", "partition": "s1", "data_version": "1" * 32}],
            "synthetic_textbooks": [{"asset": "synthetic_corpus", "partition": "b0", "data_version": "2" * 32}],
        },
        "table": [
            {
                "source": s,
                "category": "code",
                "unique_tokens": 1000,
                "requested_weight": w,
                "weight": w,
                "tokens_seen": 2000,
                "epochs": 2.0,
            }
            for s, w in (("filtered_code", 0.6), ("synthetic_textbooks", 0.4))
        ],
    }
    _commit(store, "mixture_weights", None, M, {}, mixture)
    _commit(store, "tokenizer", None, T, {}, {"origin": "trained", "vocab_size": 512})
    recipe = {"name": "debug", "config": TRAIN}
    pre = {"mixture": M, "tokenizer": T, "recipe": recipe}
    _commit(
        store,
        "pretrained_checkpoint",
        None,
        P,
        {"mixture": M, "tokenizer": T, "train": TRAIN},
        _checkpoint_meta(pre),
        {**hf, "hf/model.safetensors": b"pretrained weights"},
    )
    mid = {
        "pretrained_checkpoint": P,
        "mixture": M,
        "tokenizer": T,
        "recipe": {**recipe, "name": "midtrain(debug)"},
    }
    inputs = {"parent": P, "mixture": M, "tokenizer": T, "weights": {"filtered_code": 0.7}, "train": TRAIN}
    _commit(store, "midtrained_checkpoint", None, Q, inputs, _checkpoint_meta(mid), hf)
    _commit(store, "eval_scores", "pretrained", PE, {}, _eval("pretrained", P))
    _commit(store, "eval_scores", "midtrained", E, {}, _eval("midtrained", Q, understanding=0.5))
    return store


def _card(store: ArtifactStore, stage: str, tmp_path: Path) -> tuple[ModelCard, str]:
    facts = read_facts(store, stage)
    facts.entries = [Entry("midtrained_checkpoint", None, Q, "code1", status="ok")]
    facts.sources = []
    path = tmp_path / f"{stage}-{uuid.uuid4().hex}" / "README.md"
    path.parent.mkdir()
    path.write_text(readme(facts, SETTINGS))
    return ModelCard.load(path), path.read_text()


# --- the evaluated card -------------------------------------------------------------------------------


def test_the_card_loads_with_licence_base_model_datasets_and_the_eval_scores(store, tmp_path):
    card, text = _card(store, "midtrained", tmp_path)
    data = card.data
    assert data.license == "apache-2.0" and data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation" and {"phi", "phi-factory", "code"} <= set(data.tags)
    assert data.base_model == f"phi-factory/pretrained@{P}"
    assert data.datasets == [
        f"phi-factory/mixture_weights@{M}",
        "phi-factory/filtered_code",
        "phi-factory/synthetic_textbooks",
    ]
    assert data.model_name == f"phi-factory/midtrained@{Q}"
    got = [(r.dataset_type, r.metric_type, r.metric_value) for r in data.eval_results]
    assert got == [
        ("openai/openai_humaneval", "pass@1", SCORES["humaneval"]["pass@1"]),
        ("openai/openai_humaneval", "pass@10", SCORES["humaneval"]["pass@10"]),
        ("google-research-datasets/mbpp", "pass@1", SCORES["mbpp"]["pass@1"]),
        ("phi-factory/understanding", "understanding", 0.5),
    ]
    # the body: what the model is, the recipe of the chain, the lineage table, in that order
    assert text.index("# phi-factory midtrained") < text.index("## Recipe") < text.index("## Lineage")
    assert f"| pretrained_checkpoint | `{P[:12]}` | debug |" in text
    assert f"| midtrained_checkpoint | - | `{Q}` | code1 | ok |" in text


def test_pretraining_has_no_base_model_and_no_understanding_score(store, tmp_path):
    card, _ = _card(store, "pretrained", tmp_path)
    assert card.data.base_model is None
    assert [r.metric_type for r in card.data.eval_results] == ["pass@1", "pass@10", "pass@1"]


@pytest.mark.parametrize("ran", [True, False])
def test_the_ablation_section_shows_the_phi4_mix_verdict_or_says_not_run(store, tmp_path, ran):
    if ran:
        _commit(store, "ablation_report", None, "b" * 32, {}, ABLATION)
    _, text = _card(store, "midtrained", tmp_path)
    section = text.split("## Data ablations")[1].split("## Lineage")[0]
    if ran:
        assert ABLATION["table_md"] in section
        verdict = [line for line in section.splitlines() if line.startswith("**Verdict")]
        assert verdict == [
            "**Verdict for this checkpoint's data recipe (`phi4_mix`, 3 seeds)**: phi4_mix beats raw on "
            "humaneval_pass@1 (vs `raw`: humaneval_pass@1 +0.0200 [+0.0120, +0.0280])"
        ]
        assert "not distinguishable" not in verdict[0]
    else:
        assert section.strip().startswith("Not run: `ablation_report` has no materialized version")


def test_an_ablation_report_without_the_arm_or_its_table_is_named():
    report = {"data_version": "b" * 32, "metadata": {**ABLATION, "arms": ABLATION["arms"][:1]}}
    assert "has no `phi4_mix` arm" in ablation_section(report) and "`no_synth`" in ablation_section(report)
    broken = {"data_version": "b" * 32, "metadata": {"baseline": "raw"}}
    with pytest.raises(dg.Failure, match=r"ablation_report version b+ has no \['table_md', 'arms'\]"):
        ablation_section(broken)


# --- the push-ready folder ----------------------------------------------------------------------------


def _model_card(store: ArtifactStore, stage: str, checkpoint: str, text: str) -> None:
    _commit(
        store,
        "model_card",
        stage,
        "9" * 32,
        {},
        {"checkpoint_version": checkpoint},
        {"README.md": text.encode(), "MODEL_CARD.md": b"# card\n"},
    )


@pytest.mark.parametrize("where", ["local", "memory"])
def test_the_push_ready_folder_holds_the_export_and_the_card(store, tmp_path, where):
    if where == "memory":  # a remote store: the files are copied
        remote = ArtifactStore(root=f"memory://hf-card-{uuid.uuid4().hex}/artifacts")
        remote.fs.put(store.base_path + "/", remote.base_path, recursive=True)
        store = remote
    _, text = _card(store, "midtrained", tmp_path)
    _model_card(store, "midtrained", Q, text)
    out = publish.assemble(store, "midtrained", tmp_path / "out" / "phi-midtrained")
    assert sorted(p.name for p in out.iterdir()) == sorted(HF_FILES)
    for name, data in HF_FILES.items():
        if name != "README.md":  # the evaluated card replaces the export's first one
            assert (out / name).read_bytes() == data, name
    assert (out / "README.md").read_text() == text
    assert ModelCard.load(out / "README.md").data.base_model == f"phi-factory/pretrained@{P}"
    stored = Path(store.version_path("midtrained_checkpoint", None, Q)) / "hf" / "model.safetensors"
    if where == "local":  # hard links into the store: no copy of the weights
        assert os.path.samefile(out / "model.safetensors", stored)
    assert [p.name for p in out.parent.iterdir()] == ["phi-midtrained"]  # no partial folder left


def test_an_existing_folder_is_replaced_only_when_asked(store, tmp_path):
    _model_card(store, "midtrained", Q, "---\nlicense: apache-2.0\n---\n\nfirst\n")
    dest = tmp_path / "out"
    publish.assemble(store, "midtrained", dest)
    with pytest.raises(FileExistsError, match="already exists"):
        publish.assemble(store, "midtrained", dest)
    _model_card_v2 = "---\nlicense: apache-2.0\n---\n\nsecond\n"
    _commit(
        store,
        "model_card",
        "midtrained",
        "8" * 32,
        {},
        {"checkpoint_version": Q},
        {"README.md": _model_card_v2.encode()},
    )
    publish.assemble(store, "midtrained", dest, overwrite=True)
    assert (dest / "README.md").read_text() == _model_card_v2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "out"]


def test_the_cli_builds_the_folder_and_names_what_is_missing(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PHI_ARTIFACT_ROOT", store.root)
    assert publish.main(["sft", str(tmp_path / "sft")]) == 2
    assert "publish: model_card[sft] has no materialized version" in capsys.readouterr().err
    _model_card(store, "midtrained", Q, "---\nlicense: apache-2.0\n---\n\ncard\n")
    assert publish.main(["midtrained", str(tmp_path / "mid")]) == 0
    assert (tmp_path / "mid" / "model.safetensors").read_bytes() == HF_FILES["model.safetensors"]


def test_pushing_replaces_the_local_identifiers_the_hub_refuses(store, tmp_path):
    _, text = _card(store, "midtrained", tmp_path)
    _model_card(store, "midtrained", Q, text)
    out = publish.assemble(store, "midtrained", tmp_path / "out")
    card = publish.for_hub(out, "me/phi-factory-pretrained", [])
    loaded = ModelCard.load(out / "README.md").data
    assert loaded.base_model == "me/phi-factory-pretrained" and loaded.datasets is None
    assert len(loaded.eval_results) == 4 and card.data.license == "apache-2.0"
    # the store's card (hard-linked into the folder) was replaced, not edited
    stored = Path(store.version_path("model_card", "midtrained", "9" * 32)) / "README.md"
    assert stored.read_text() == text


# --- the export's first card --------------------------------------------------------------------------


def test_every_export_carries_a_card_and_keeps_its_data_version(tmp_path):
    """``train_and_record`` writes ``hf/README.md`` before recording the run: it loads with
    ``ModelCard.load`` and the data version stays the weights' digest."""
    out = tmp_path / "run"
    (out / "hf").mkdir(parents=True)
    (out / "hf" / "model.safetensors").write_bytes(HF_FILES["model.safetensors"])
    row = {"step": 1, "loss": 1.0, "lr": 1e-3, "tokens_per_s": 1.0, "mfu": 0.0}
    (out / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    (out / "summary.json").write_text(json.dumps({"tokens": 8, "steps": 1, "num_params": 1}))
    lineage = {
        "pretrained_checkpoint": P,
        "mixture": M,
        "tokenizer": T,
        "recipe": {"name": "x", "config": TRAIN},
    }
    before = runs.recorded(out, [], 1.0, lineage).data_version
    runs.write_export_card(out, "midtrained_checkpoint", lineage)
    assert runs.recorded(out, [], 1.0, lineage).data_version == before
    card = ModelCard.load(out / "hf" / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert card.data.base_model == f"phi-factory/pretrained@{P}"
    assert card.data.datasets == [f"phi-factory/mixture_weights@{M}"]
    assert card.data.eval_results is None  # scores come with the evaluated card
    assert "`midtrain" not in card.text and "**Recipe**: `x`" in card.text and "| lr | 0.001 |" in card.text
    assert common.base_model({"mixture": M}) is None  # pretraining starts from scratch


def test_the_no_safety_control_names_its_own_stage_and_parent():
    """The responsible-AI control's checkpoints are stages of their own (sft_no_safety, dpo_no_safety), and the
    control's DPO names the control's SFT as its base model, not none."""
    assert common.stage_of("sft_checkpoint") == "sft"
    assert common.stage_of("dpo_checkpoint_no_safety") == "dpo_no_safety"
    lineage = {"sft_checkpoint_no_safety": P, "preference_pairs": M, "mix": {"safety": 0}}
    assert common.base_model(lineage) == f"phi-factory/sft_no_safety@{P}"
    assert common.base_model({"sft_checkpoint": P, "safety_pairs": M}) == f"phi-factory/sft@{P}"


# --- the asset ----------------------------------------------------------------------------------------


def test_model_card_writes_the_hf_card_beside_its_card_and_a_new_report_makes_a_new_version(store, monkeypatch):
    """``model_card`` writes README.md next to MODEL_CARD.md and shows it in its metadata; the ablation report
    is among its inputs, so a report that appears later makes a new version instead of a skip. The lineage
    walk (which needs the code location's graph) is replaced by the store reading alone."""
    from phi_assets.evaluation import model_card as asset_module
    from resources import DecontaminationResource

    monkeypatch.setattr(asset_module, "gather", lambda context, store, graph, stage: read_facts(store, stage))
    monkeypatch.setattr(asset_module, "code_location_graph", lambda context: None)
    resources = {"store": store, "decontamination": DecontaminationResource(use_embeddings=False)}

    def run() -> dict:
        result = dg.materialize([asset_module.model_card], partition_key="midtrained", resources=resources)
        [event] = result.get_asset_materialization_events()
        return {k: v.value for k, v in event.materialization.metadata.items()}

    first = run()
    where = Path(
        store.version_path("model_card", "midtrained", store.current_version("model_card", "midtrained"))
    )
    assert (where / "README.md").read_text() == first["hf_card"] and (where / "MODEL_CARD.md").is_file()
    assert ModelCard.load(where / "README.md").data.base_model == f"phi-factory/pretrained@{P}"
    assert "Not run" in first["hf_card"] and run()["skipped"] is True
    _commit(store, "ablation_report", None, "b" * 32, {}, ABLATION)
    again = run()
    assert again["skipped"] is False and "**Verdict for this checkpoint's data recipe" in again["hf_card"]
