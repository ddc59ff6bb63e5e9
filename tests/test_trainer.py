"""The trainer on CPU: learning, schedules, checkpoints and exact resume."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import pytest
import torch

from phi_assets.mixture import tokenizer as tk
from phi_assets.mixture.tokens import TokenShard
from phi_assets.training import trainer
from tests.support import training_data


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, list[TokenShard]]:
    paths = training_data.stdlib_shards(tmp_path_factory.mktemp("train"))
    return {name: [TokenShard.open(p) for p in found] for name, found in paths.items()}


WEIGHTS = {"code": 0.7, "web": 0.3}


def _cfg(**kw) -> trainer.TrainConfig:
    base = {
        "seq_len": 32,
        "micro_batch_size": 4,
        "global_batch_size": 8,
        "max_steps": 12,
        "warmup_steps": 2,
        "checkpoint_every": 4,
        "threads": 1,
        "lr": 3e-3,
    }
    return trainer.TrainConfig(**{**base, **kw})


def _sha(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_loss_goes_down_and_every_step_is_logged(shards, tmp_path):
    logs = []
    trainer.train(_cfg(max_steps=30), shards, WEIGHTS, tmp_path, log=logs.append)
    assert [entry.step for entry in logs] == list(range(1, 31))
    assert sum(e.loss for e in logs[-5:]) < sum(e.loss for e in logs[:5])
    assert logs[-1].tokens == 30 * 32 * 4 * 2 and all(e.tokens_per_s > 0 for e in logs)
    assert (tmp_path / trainer.CHECKPOINT / "state.pt").is_file()


@pytest.mark.parametrize("model", ["debug_tiny", "phi3_mini_debug", "phi3_5_moe_debug"])
def test_a_crashed_run_resumes_to_bit_identical_weights(shards, tmp_path, model):
    """Every family resumes exactly: phi-1's dropout, phi-3's blocks, and the mixture of experts' sampled
    routing (sparsemixer draws its experts from the RNG the checkpoint restores)."""
    whole = trainer.train(_cfg(model=model), shards, WEIGHTS, tmp_path / "whole")

    def crash(entry):
        if entry.step == 7:  # after the checkpoint at step 4, before the one at 8
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.train(_cfg(model=model), shards, WEIGHTS, tmp_path / "crashed", log=crash)
    resumed_logs = []
    resumed = trainer.train(_cfg(model=model), shards, WEIGHTS, tmp_path / "crashed", log=resumed_logs.append)
    assert resumed_logs[0].step == 5  # resumed from the step-4 checkpoint
    assert _sha(resumed) == _sha(whole)


def test_resume_refuses_another_config(shards, tmp_path):
    trainer.train(_cfg(max_steps=4), shards, WEIGHTS, tmp_path)
    with pytest.raises(ValueError, match="another training config"):
        trainer.train(_cfg(max_steps=4, lr=1e-2), shards, WEIGHTS, tmp_path)


@pytest.mark.parametrize("schedule", trainer.SCHEDULES)
def test_schedule_warms_up_then_decays_to_the_floor(schedule):
    cfg = trainer.TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule=schedule)
    assert trainer.lr_at(0, cfg) == pytest.approx(0.1) and trainer.lr_at(9, cfg) == pytest.approx(1.0)
    end = 1.0 if schedule == "constant" else 0.1
    assert trainer.lr_at(100, cfg) == pytest.approx(end)


def test_recipes_follow_the_papers():
    """The papers' batches are global (sequences per optimizer step over all GPUs): phi-1 pretrains
    at 1024 x 2048 whether on 1 GPU, 8, or 4 nodes of 8; only the accumulation changes."""
    p = trainer.phi1_pretrain()
    assert (p.lr, p.warmup_steps, p.weight_decay, p.global_batch_size) == (1e-3, 750, 0.1, 1024)
    assert p.tokens_per_step == 1024 * 2048
    assert [p.grad_accum(w) for w in (1, 8, 32)] == [128, 16, 4]  # micro-batch 8 per GPU
    f = trainer.phi1_finetune()
    assert (f.lr, f.warmup_steps, f.weight_decay, f.global_batch_size) == (1e-4, 50, 0.01, 256)
    assert trainer.phi1_5_pretrain().lr == 2e-4 and trainer.phi1_5_pretrain().warmup_steps == 0
    assert trainer.phi1_5_pretrain().global_batch_size == 2048


@pytest.mark.parametrize(
    ("recipe", "model", "tokens"),
    [
        ("phi3_mini_pretrain", "phi3_mini", 3.3e12),  # Phi-3 report
        ("phi3_medium_pretrain", "phi3_medium", 4.8e12),  # Phi-3 report
        ("phi3_5_mini_pretrain", "phi3_5_mini", 3.4e12),  # model card
        ("phi3_5_moe_pretrain", "phi3_5_moe", 4.9e12),  # model card
        ("phi4_mini_pretrain", "phi4_mini", 5e12),  # model card
        ("phi4_pretrain", "phi4", 10e12),  # Phi-4 report section 3
    ],
)
def test_the_phi3_family_recipes_pretrain_on_the_published_tokens_at_4k(recipe, model, tokens):
    """Each recipe trains its named shape on its published token count (within 0.1%) at 4K context with plain
    RoPE (LongRoPE and phi-4's 250K base come in midtraining); phi-4's optimizer is the report's."""
    cfg = trainer.TRAIN_RECIPES[recipe]()
    shape = cfg.model_config(32064)
    assert cfg.model == model and cfg.seq_len == 4096 and shape.max_position_embeddings == 4096
    assert shape.rope_type == "default" and shape.rope_theta == 10_000
    assert cfg.max_steps * cfg.tokens_per_step == pytest.approx(tokens, rel=1e-3)
    if model == "phi4":
        assert (cfg.lr, cfg.weight_decay, cfg.global_batch_size, cfg.schedule) == (3e-4, 0.1, 5760, "linear")
        assert trainer.midtrain(cfg, seq_len_factor=4).model_config(100352).rope_theta == 250_000


def test_a_global_batch_the_world_cannot_split_is_refused():
    with pytest.raises(ValueError, match="global_batch_size 12 must be a multiple of micro_batch_size 8"):
        trainer.TrainConfig(micro_batch_size=8, global_batch_size=12)
    cfg = trainer.TrainConfig(micro_batch_size=4, global_batch_size=8)
    assert cfg.grad_accum(2) == 1
    with pytest.raises(ValueError, match="micro_batch_size 4 x world_size 4"):
        cfg.grad_accum(4)


def test_bf16_autocast_and_activation_checkpointing_train(shards, tmp_path):
    logs = []
    trainer.train(
        _cfg(max_steps=3, precision="bf16", activation_checkpointing=True),
        shards,
        WEIGHTS,
        tmp_path,
        log=logs.append,
    )
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor(e.loss)) for e in logs)


def test_fp16_autocast_trains_with_a_loss_scaler_that_is_checkpointed(shards, tmp_path):
    """fp16 autocast with a dynamic loss scaler: the loss stays finite and falls, and the scaler's
    state (its scale) is saved with the checkpoint and restored on resume."""
    logs = []
    cfg = _cfg(max_steps=8, precision="fp16", checkpoint_every=4)
    trainer.train(cfg, shards, WEIGHTS, tmp_path, log=logs.append)
    assert len(logs) == 8 and all(math.isfinite(e.loss) for e in logs) and logs[-1].loss < logs[0].loss
    state = torch.load(tmp_path / trainer.CHECKPOINT / "state.pt", weights_only=False)
    assert state["scaler"]["scale"] > 0 and state["step"] == 8


def _entry_config(shards, tok_dir: Path, out: Path) -> Path:
    import json

    config = {
        "recipe": "debug",
        "train": {
            "seq_len": 64,
            "micro_batch_size": 8,
            "global_batch_size": 16,
            "max_steps": 40,
            "checkpoint_every": 10,
            "warmup_steps": 4,
            "threads": 1,
        },
        "sources": {n: [str(s.path) for s in found] for n, found in shards.items()},
        "weights": WEIGHTS,
        "tokenizer": str(tok_dir),
        "out": str(out),
    }
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(config))
    return path


def _entry(config: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "phi_assets.training.entrypoint", "--config", str(config)]


@pytest.mark.slow  # two training runs in child processes
def test_sigkilled_run_resumes_to_the_same_exported_weights(shards, tmp_path):
    """A run SIGKILLed mid-way (after its step-10 checkpoint) and started again exports weights
    bit-identical (sha256 of model.safetensors) to an uninterrupted run's; the export loads in
    transformers with the same logits."""
    import signal
    import subprocess
    import time

    import transformers

    root = Path(__file__).resolve().parents[1]
    tok_dir = shards["code"][0].path.parent / "tok"
    whole = subprocess.run(
        _entry(_entry_config(shards, tok_dir, tmp_path / "whole")),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _entry(_entry_config(shards, tok_dir, out)),
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = (out / "metrics.jsonl").read_text().count("\n") if (out / "metrics.jsonl").exists() else 0
        if lines >= 14:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "hf").exists()
    again = subprocess.run(
        _entry(out.parent / "killed.json"), cwd=root, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    digest = [
        hashlib.sha256((d / "hf" / "model.safetensors").read_bytes()).hexdigest()
        for d in (tmp_path / "whole", out)
    ]
    assert digest[0] == digest[1]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(out / "hf")
    ids = torch.tensor([tok.encode("def f(x):\n    return x")])
    from safetensors.torch import load_file

    from phi_assets.training import model as phi

    ours = phi.PhiForCausalLM(trainer.debug().model_config(tok.vocab_size)).eval()
    ours.load_state_dict(load_file(out / "hf" / "model.safetensors"))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-5


@pytest.mark.slow  # DeepSpeed under torchrun
def test_deepspeed_zero2_trains_on_two_cpu_ranks_and_resumes(shards, tmp_path):
    """DeepSpeed for real, on CPU (DS_ACCELERATOR=cpu, gloo): two ranks under torchrun, ZeRO stage 2
    with a user's ds_config.json merged over the derived config; rank 0 logs every step, the loss goes
    down, and DeepSpeed writes its checkpoints. Rolled back to its step-4 checkpoint (as after a lost
    pod), the run resumes there (engine, ZeRO optimizer shards, loader position, RNG) and repeats
    steps 5-8 with the same losses."""
    import json
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ds"
    config = json.loads(_entry_config(shards, shards["code"][0].path.parent / "tok", out).read_text())
    config["train"].update(
        max_steps=8, backend="deepspeed", zero_stage=2, checkpoint_every=4, micro_batch_size=4, lr=3e-3
    )
    config["ds_config"] = str(tmp_path / "ds_config.json")  # a user's file over the derived config
    (tmp_path / "ds_config.json").write_text(
        json.dumps({"zero_optimization": {"reduce_bucket_size": 1_000_000}})
    )
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "phi_assets.training.entrypoint",
        "--config",
        str(path),
    ]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))  # rank 0 only
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["tokens"] == 8 * 64 * 16  # 8 steps of 16 x 64
    assert {p.name for p in (out / "deepspeed").iterdir()} >= {"global_step4", "global_step8", "latest"}
    given = json.loads((out / "deepspeed_config.json").read_text())  # what deepspeed.initialize got
    assert given["zero_optimization"]["reduce_bucket_size"] == 1_000_000  # the file's
    assert given["zero_optimization"]["stage"] == 2 and given["train_batch_size"] == 16  # the config's

    shutil.rmtree(out / "deepspeed" / "global_step8")
    (out / "deepspeed" / "latest").write_text("global_step4")
    again = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][8:]
    assert [r["step"] for r in resumed] == [5, 6, 7, 8]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in rows[4:]], rel=1e-6)


def test_midtraining_raises_the_rope_base_and_reports_both_lengths(shards, tmp_path):
    base = _cfg(max_steps=6)
    model = trainer.train(base, shards, WEIGHTS, tmp_path / "pre")
    mid = trainer.midtrain(base)
    assert mid.seq_len == 64 and mid.lr == pytest.approx(3e-4) and mid.model_config(512).rope_theta == 250_000
    short = trainer.validation_loss(model, shards, WEIGHTS, base.seq_len)
    long = trainer.validation_loss(model, shards, WEIGHTS, mid.seq_len)
    assert all(map(math.isfinite, (short, long))) and short != long


def _pairs(n: int = 60) -> list[tuple[str, str]]:
    return [(f'def add_{i}(x):\n    """Return x plus {i}."""\n', f"    return x + {i}\n") for i in range(n)]


def test_sft_batches_put_the_loss_on_completions_only(shards):
    from phi_assets.training import sft

    loaded = tk.load(shards["code"][0].path.parent / "tok")
    examples = sft.encode_pairs(loaded, _pairs(8))
    batch = sft.SFTLoader(examples, seq_len=48, batch_size=8, pad_id=loaded.eot_id).next_batch()
    for row_ids, row_labels in zip(batch.input_ids, batch.labels, strict=True):
        text_ids = [int(t) for t in row_ids]
        prompt_end = next(
            e.num_prompt for e in examples if list(e.ids[: e.num_prompt]) == text_ids[: e.num_prompt]
        )
        assert (row_labels[: prompt_end - 1] == sft.IGNORE).all()  # label t predicts token t+1
        kept = row_labels[row_labels != sft.IGNORE]
        assert len(kept) and loaded.tokenizer.decode(kept.tolist()).startswith("    return x + ")


def test_sft_from_a_parent_checkpoint_learns_the_completions(shards, tmp_path):
    from safetensors.torch import save_file

    from phi_assets.training import sft

    loaded = tk.load(shards["code"][0].path.parent / "tok")
    parent = trainer.train(_cfg(max_steps=4), shards, WEIGHTS, tmp_path / "pre")
    (tmp_path / "export").mkdir()
    save_file(
        {k: v.contiguous() for k, v in parent.state_dict().items()}, tmp_path / "export" / "model.safetensors"
    )
    examples = sft.encode_pairs(loaded, _pairs())
    cfg = _cfg(max_steps=40, lr=3e-3, global_batch_size=8, micro_batch_size=8)
    logs = []
    model = trainer.train_on(
        cfg,
        lambda: sft.SFTLoader(examples, cfg.seq_len, 8, loaded.eot_id, seed=1),
        loaded.vocab_size,
        tmp_path / "sft",
        log=logs.append,
        init=tmp_path / "export",
    )
    assert sum(e.loss for e in logs[-5:]) < 0.5 * sum(e.loss for e in logs[:5])
    assert not torch.equal(model.lm_head.weight, parent.lm_head.weight)


def test_dpo_prefers_the_chosen_answers_and_leaves_the_reference_frozen(shards, tmp_path):
    import copy

    from safetensors.torch import save_file

    from phi_assets.training import dpo

    loaded = tk.load(shards["code"][0].path.parent / "tok")
    parent = trainer.train(_cfg(max_steps=4), shards, WEIGHTS, tmp_path / "pre")
    (tmp_path / "export").mkdir()
    save_file(
        {k: v.contiguous() for k, v in parent.state_dict().items()}, tmp_path / "export" / "model.safetensors"
    )
    reference = copy.deepcopy(parent)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    triples = [(f"def add_{i}(x):\n", f"    return x + {i}\n", f"    return x - {i}\n") for i in range(40)]
    pairs = dpo.encode_preferences(loaded, triples)
    cfg = _cfg(max_steps=30, lr=1e-3, global_batch_size=4, micro_batch_size=4, dropout=False)
    make = lambda: dpo.DPOLoader(pairs, cfg.seq_len, 4, loaded.eot_id, seed=2)  # noqa: E731
    logs = []
    policy = trainer.train_on(
        cfg,
        make,
        loaded.vocab_size,
        tmp_path / "dpo",
        log=logs.append,
        init=tmp_path / "export",
        loss_fn=dpo.dpo_loss(reference, beta=0.5),
    )
    assert logs[0].loss == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at the start
    assert logs[-1].loss < logs[0].loss
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())
    batch = make().next_batch()
    with torch.no_grad():
        ids, labels = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.labels)
        margin = lambda m: dpo.sequence_logprobs(m(ids), labels).view(2, -1)  # noqa: E731
        assert (
            (margin(policy.eval())[0] - margin(policy)[1]) > (margin(reference)[0] - margin(reference)[1])
        ).all()
