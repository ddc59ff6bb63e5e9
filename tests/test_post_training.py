"""Post-training without a GPU: the SFT and DPO loaders across ranks, MFU and the
entrypoint's config, inputs and publishing. (Preference pairs: tests/test_preference_pairs.py.)"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from phi_assets.training import dpo, entrypoint, sft, trainer

# --- SFT and DPO loaders ------------------------------------------------------------------------------------

PAD = 0


def _examples(count: int = 7) -> list[sft.Example]:
    """Example k: a prompt of (k % 3) + 2 tokens 100k+1.., a completion of (k % 4) + 2 tokens 100k+50..
    (some longer than the window)."""
    out = []
    for k in range(count):
        prompt = [100 * k + 1 + j for j in range(k % 3 + 2)]
        completion = [100 * k + 50 + j for j in range(k % 4 + 2)]
        out.append(sft.Example(np.array(prompt + completion, dtype=np.int64), len(prompt)))
    return out


def _owner(row: np.ndarray) -> int:
    return int(row[0]) // 100


def test_sft_ranks_split_the_single_process_batches(tmp_path):
    examples, seq_len = _examples(7), 6
    whole = sft.SFTLoader(examples, seq_len, batch_size=4, pad_id=PAD, seed=3)
    ranks = [sft.SFTLoader(examples, seq_len, 2, PAD, seed=3, rank=r, world_size=2) for r in (0, 1)]
    seen = []
    for _ in range(5):  # 20 rows over 7 examples: two epoch boundaries
        expected = whole.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert np.array_equal(np.concatenate([b.input_ids for b in parts]), expected.input_ids)
        assert np.array_equal(np.concatenate([b.labels for b in parts]), expected.labels)
        assert all(b.input_ids.shape == (2, seq_len) and b.sources == ["sft", "sft"] for b in parts)
        seen += [_owner(r) for r in expected.input_ids]
    assert sorted(seen[:7]) == list(range(7)) and sorted(seen[7:14]) == list(range(7))  # each epoch: all once
    assert ranks[0].state_dict() == whole.state_dict() == {"epoch": 2, "position": 6, "num_examples": 7}
    with pytest.raises(ValueError, match="rank"):
        sft.SFTLoader(examples, seq_len, 2, PAD, rank=2, world_size=2)


def test_sft_labels_are_ignored_on_prompts_and_padding():
    examples, seq_len = _examples(7), 6
    by_owner = {_owner(e.ids): e for e in examples}
    batch = sft.SFTLoader(examples, seq_len, 7, PAD, seed=1).next_batch()
    for ids, labels in zip(batch.input_ids, batch.labels, strict=True):
        e = by_owner[_owner(ids)]
        full = list(e.ids[: seq_len + 1]) + [PAD] * (seq_len + 1 - len(e.ids))
        assert list(ids) == full[:seq_len]
        n = min(len(e.ids), seq_len + 1)
        want = [int(e.ids[t + 1]) if e.num_prompt <= t + 1 < n else sft.IGNORE for t in range(seq_len)]
        assert list(labels) == want
        assert (labels[: e.num_prompt - 1] == sft.IGNORE).all() and (labels != sft.IGNORE).any()


def test_sft_drops_examples_whose_prompt_fills_the_window_and_resumes_exactly():
    examples = _examples(6) + [sft.Example(np.arange(900, 912, dtype=np.int64), 8)]  # prompt of 8 > seq_len
    loader = sft.SFTLoader(examples, 6, 3, PAD, seed=5)
    assert len(loader.examples) == 6
    for _ in range(3):
        assert 9 not in {_owner(r) for r in loader.next_batch().input_ids}
    state = loader.state_dict()
    resumed = sft.SFTLoader(examples, 6, 3, PAD, seed=5)
    resumed.load_state_dict(state)
    for _ in range(3):
        assert np.array_equal(resumed.next_batch().input_ids, loader.next_batch().input_ids)
    with pytest.raises(ValueError, match="other examples"):
        sft.SFTLoader(examples[:5], 6, 3, PAD, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="raise seq_len"):
        sft.SFTLoader(examples[-1:], 6, 3, PAD)


EOT = 99


def _pair(k: int, chosen: int = 2, rejected: int = 3) -> tuple[sft.Example, sft.Example]:
    """Pair k as ``encode_preferences`` makes it: the prompt 100k+1.. (3 tokens), then chosen tokens
    100k+50.. or rejected tokens 100k+70.., then the end-of-text token."""
    prompt = [100 * k + 1 + j for j in range(3)]
    c = prompt + [100 * k + 50 + j for j in range(chosen)] + [EOT]
    r = prompt + [100 * k + 70 + j for j in range(rejected)] + [EOT]
    return sft.Example(np.array(c, dtype=np.int64), 3), sft.Example(np.array(r, dtype=np.int64), 3)


def _assert_aligned(batch, rows: int) -> list[int]:
    chosen, rejected = batch.input_ids[:rows], batch.input_ids[rows:]
    assert len(rejected) == rows
    for c, r in zip(chosen, rejected, strict=True):
        assert np.array_equal(c[:3], r[:3])  # the same prompt
        k = _owner(c)
        assert 100 * k + 50 in c and 100 * k + 70 in r
    return [_owner(c) for c in chosen]


def test_dpo_ranks_keep_pairs_aligned():
    pairs = [_pair(k) for k in range(5)]
    whole = dpo.DPOLoader(pairs, 6, 4, PAD, seed=2)
    ranks = [dpo.DPOLoader(pairs, 6, 2, PAD, seed=2, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(4):
        expected = _assert_aligned(whole.next_batch(), 4)
        got = [k for loader in ranks for k in _assert_aligned(loader.next_batch(), 2)]
        assert got == expected
    assert ranks[1].state_dict() == whole.state_dict()


def test_dpo_pairs_stay_aligned_when_one_side_has_an_empty_completion():
    pairs = [_pair(0, chosen=0), _pair(1, rejected=0)] + [_pair(k) for k in range(2, 6)]
    loader = dpo.DPOLoader(pairs, 6, 4, PAD, seed=0)
    for _ in range(2):
        _assert_aligned(loader.next_batch(), 4)


class _Prefers(torch.nn.Module):
    """A real (tiny) causal LM: the same logits at every position, a bonus on the ``liked`` tokens."""

    def __init__(self, vocab: int, liked: list[int]):
        super().__init__()
        bias = torch.zeros(vocab)
        bias[liked] = 4.0
        self.bias = torch.nn.Parameter(bias)

    def forward(self, ids):
        return self.bias.expand(*ids.shape, -1)


def test_preference_accuracy_counts_pairs_whose_reward_prefers_the_chosen_answer():
    """The model likes the chosen tokens of pairs 0-2 and the rejected tokens of pairs 3-5."""
    pairs = [_pair(k, chosen=2, rejected=2) for k in range(6)]
    liked = [100 * k + 50 + j for k in range(3) for j in range(2)] + [
        100 * k + 70 + j for k in range(3, 6) for j in range(2)
    ]
    model, reference = _Prefers(600, liked), _Prefers(600, [])
    loader = dpo.DPOLoader(pairs, 6, 2, PAD, seed=4)
    assert dpo.preference_accuracy(model, reference, loader, 6) == pytest.approx(0.5)
    against = _Prefers(600, [100 * k + 70 + j for k in range(6) for j in range(2)])
    assert dpo.preference_accuracy(against, reference, dpo.DPOLoader(pairs, 6, 2, PAD, seed=4), 6) == 0.0
    everyone = _Prefers(600, [100 * k + 50 + j for k in range(6) for j in range(2)])
    assert dpo.preference_accuracy(everyone, reference, dpo.DPOLoader(pairs, 6, 4, PAD, seed=4), 3) == 1.0


# --- trainer helpers ----------------------------------------------------------------------------------------


def test_mfu_and_peak_flops():
    assert trainer.mfu(6e9, 2000.0, 1e14, 4) == pytest.approx(6e9 * 2000.0 / (1e14 * 4))
    assert trainer.mfu(6e9, 2000.0, 1e14, 1) == pytest.approx(4 * trainer.mfu(6e9, 2000.0, 1e14, 4))
    assert trainer.mfu(6e9, 2000.0, 0.0, 1) == 0.0
    assert trainer.peak_flops("fp32") == 0.0
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        want = next((v for k, v in trainer.PEAK_BF16.items() if k in name), 0.0)
        assert trainer.peak_flops("bf16") == want
    else:
        assert trainer.peak_flops("bf16") == 0.0


def test_validation_loss_needs_a_source_with_held_out_documents():
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="held-out"):
        trainer.validation_loss(model, {"code": []}, {"code": 0.0, "web": 1.0}, seq_len=16)


# --- entrypoint ---------------------------------------------------------------------------------------------

# What each stage needs beyond tokenizer and out (the entrypoint's documented config format).
STAGE_KEYS = {
    "pretrain": ("sources", "weights"),
    "midtrain": ("sources", "weights", "init"),
    "sft": ("examples", "init"),
    "dpo": ("pairs", "init"),
}


def _write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / f"config-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(config))
    return path


def _full(stage: str) -> dict:
    return {"stage": stage, "tokenizer": "tok", "out": "run", **{k: "x" for k in STAGE_KEYS[stage]}}


@pytest.mark.parametrize(("stage", "key"), [(s, k) for s, keys in STAGE_KEYS.items() for k in keys])
def test_load_config_names_the_missing_key_of_a_stage(tmp_path, stage, key):
    config = _full(stage)
    del config[key]
    with pytest.raises(ValueError, match=rf"stage {stage} needs {key}\b"):
        entrypoint.load_config(_write_config(tmp_path, config))


@pytest.mark.parametrize("stage", list(STAGE_KEYS))
def test_load_config_accepts_a_complete_stage_config(tmp_path, stage):
    loaded = entrypoint.load_config(_write_config(tmp_path, _full(stage)))
    assert loaded["stage"] == stage and isinstance(loaded["train"], trainer.TrainConfig)
    for key in ("tokenizer", "out"):
        config = _full(stage)
        del config[key]
        with pytest.raises(ValueError, match=key):
            entrypoint.load_config(_write_config(tmp_path, config))


def test_load_config_defaults_to_pretraining_and_rejects_unknown_stages(tmp_path):
    config = _full("pretrain")
    del config["stage"]
    assert entrypoint.load_config(_write_config(tmp_path, config))["stage"] == "pretrain"
    with pytest.raises(ValueError, match="stage must be one of") as err:
        entrypoint.load_config(_write_config(tmp_path, {**config, "stage": "rlhf"}))
    assert all(s in str(err.value) for s in STAGE_KEYS) and "rlhf" in str(err.value)
    with pytest.raises(ValueError, match="recipe must be one of"):
        entrypoint.load_config(_write_config(tmp_path, {**config, "recipe": "nope"}))


def test_load_config_turns_betas_into_a_tuple(tmp_path):
    config = {**_full("sft"), "train": {"betas": [0.8, 0.95], "max_steps": 3}}
    cfg = entrypoint.load_config(_write_config(tmp_path, config))["train"]
    assert cfg.betas == (0.8, 0.95) and cfg.max_steps == 3


def test_load_config_turns_betas_into_a_tuple_with_a_recipe(tmp_path):
    config = {**_full("sft"), "recipe": "debug_finetune", "train": {"betas": [0.8, 0.95]}}
    cfg = entrypoint.load_config(_write_config(tmp_path, config))["train"]
    assert cfg.betas == (0.8, 0.95) and cfg.lr == trainer.debug_finetune().lr


def test_load_config_reads_a_uri():
    fs = fsspec.filesystem("memory")
    root = f"/cfg-{uuid.uuid4().hex}"
    fs.pipe(f"{root}/run.json", json.dumps({**_full("dpo"), "recipe": "debug_dpo"}).encode())
    try:
        loaded = entrypoint.load_config(f"memory://{root}/run.json")
        assert loaded["stage"] == "dpo" and loaded["train"] == trainer.debug_dpo()
    finally:
        fs.rm(root, recursive=True)


def test_is_uri():
    assert entrypoint.is_uri("s3://bucket/run") and entrypoint.is_uri("memory://x/y")
    assert not entrypoint.is_uri("file:///tmp/run") and not entrypoint.is_uri("/tmp/run")
    assert not entrypoint.is_uri("relative/path")


@pytest.fixture
def memory_root():
    fs = fsspec.filesystem("memory")
    root = f"/phi-test-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _run_dir(tmp_path: Path, version: str) -> Path:
    out = tmp_path / "run"
    (out / "hf").mkdir(parents=True, exist_ok=True)
    (out / "hf" / "config.json").write_text(json.dumps({"version": version}))
    (out / "hf" / "model.safetensors").write_bytes(version.encode() * 8)
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "version": version}) + "\n")
    (out / "summary.json").write_text(json.dumps({"version": version}))
    return out


def test_publish_copies_the_export_and_the_metrics(tmp_path, memory_root):
    fs, root = memory_root
    out = _run_dir(tmp_path, "one")
    entrypoint.publish(out, f"memory://{root}/run")
    published = sorted(p.removeprefix(f"{root}/run/") for p in fs.find(f"{root}/run"))
    assert published == ["hf/config.json", "hf/model.safetensors", "metrics.jsonl", "summary.json"]
    for name in published:
        assert fs.cat_file(f"{root}/run/{name}") == (out / name).read_bytes()


def test_publishing_again_replaces_the_export(tmp_path, memory_root):
    fs, root = memory_root
    entrypoint.publish(_run_dir(tmp_path, "one"), f"memory://{root}/run")
    out = _run_dir(tmp_path, "two")
    entrypoint.publish(out, f"memory://{root}/run")
    assert not fs.exists(f"{root}/run/hf/hf")
    for name in ("hf/config.json", "hf/model.safetensors", "metrics.jsonl", "summary.json"):
        assert fs.cat_file(f"{root}/run/{name}") == (out / name).read_bytes()
