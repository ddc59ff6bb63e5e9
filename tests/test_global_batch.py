"""Global batch accounting: a recipe's batch is sequences per optimizer step over all ranks, so the
steps an asset derives from its budget (tokens for pretraining, epochs for SFT and DPO) train that
budget whatever the world size. Measured, not computed: ``sequences_seen`` is where the run's own
loader stands at the end (every rank walks the global order), under torchrun with 1, 2 and 4 CPU
processes (gloo)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from phi_assets.training import entrypoint, post_training, runs, trainer
from tests.support import training_data
from tests.support.processes import free_port

TOKEN_BUDGET = 1000  # pretraining: not a multiple of a step's 8 x 32 tokens
SFT_EPOCHS, DPO_EPOCHS = 2.0, 1.0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> training_data.TrainingData:
    return training_data.make(tmp_path_factory.mktemp("global-batch"))


def _configs(data: training_data.TrainingData, out: Path) -> list[Path]:
    cfg = trainer.TrainConfig(**training_data.SHAPE)
    pretrain = {"max_steps": runs.steps_for(TOKEN_BUDGET, cfg), "checkpoint_every": 100}
    sft = {
        "max_steps": post_training.with_epochs(cfg, SFT_EPOCHS, data.rows, {}).max_steps,
        "checkpoint_every": 100,
    }
    dpo = {
        "max_steps": post_training.with_epochs(cfg, DPO_EPOCHS, data.rows, {}).max_steps,
        "checkpoint_every": 100,
    }
    return [
        training_data.write(data.config(stage, out / stage, train), out / f"{stage}.json")
        for stage, train in (("pretrain", pretrain), ("sft", sft), ("dpo", dpo))
    ]


@pytest.mark.slow  # torchrun with up to 4 processes
@pytest.mark.parametrize("world", [1, 2, 4])
def test_tokens_and_epochs_seen_equal_the_budget_at_every_world_size(data, tmp_path, world):
    configs = [str(p) for p in _configs(data, tmp_path)]
    if world == 1:  # in this process: no process group
        pretrain, sft, dpo = (entrypoint.run(entrypoint.load_config(c)) for c in configs)
    else:
        command = training_data.torchrun(world, free_port(), "-m", "tests.support.run_stages", *configs)
        done = subprocess.run(
            command,
            cwd=training_data.ROOT,
            env=training_data.child_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        pretrain, sft, dpo = json.loads(done.stdout.strip().splitlines()[-1])
    step = 8 * 32  # tokens per optimizer step: the global batch of 8 sequences of 32
    for summary in (pretrain, sft, dpo):
        assert summary["world_size"] == world and summary["global_batch_size"] == 8
        assert summary["grad_accum"] == 8 // (2 * world)  # micro-batch 2 per rank
        assert summary["sequences_seen"] == 8 * summary["steps"]  # what the loaders consumed
    assert pretrain["tokens"] == pretrain["sequences_seen"] * 32 == 4 * step
    assert 0 <= pretrain["tokens"] - TOKEN_BUDGET < step  # the budget, within one global step
    assert 0 <= sft["sequences_seen"] - SFT_EPOCHS * data.rows < 8  # epochs, within one global batch
    assert 0 <= dpo["sequences_seen"] - DPO_EPOCHS * data.rows < 8
    rows = [json.loads(line) for line in (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [step * (i + 1) for i in range(4)]  # rank 0 logs global tokens
