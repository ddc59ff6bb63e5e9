"""What a run is configured with: the Hugging Face export's dtype and a user's DeepSpeed config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from phi_assets.mixture import tokenizer as tk
from phi_assets.training import distributed, entrypoint, trainer
from phi_assets.training import model as phi


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    import textwrap

    root = tmp_path_factory.mktemp("tok")
    tk.save(tk.train_bpe(iter([Path(textwrap.__file__).read_text()]), 300), root / "tok")
    return root / "tok"


@pytest.mark.parametrize(
    "dtype, torch_dtype, tolerance", [("fp32", torch.float32, 1e-5), ("bf16", torch.bfloat16, 0.1)]
)
def test_exports_in_either_dtype_load_in_transformers_with_our_logits(
    tokenizer_dir, tmp_path, dtype, torch_dtype, tolerance
):
    """fp32 and bf16 exports: the weights are stored in that dtype, config.json says so, and
    transformers (dtype auto: what config.json says) gives our model's logits in that dtype."""
    import transformers
    from safetensors import safe_open

    vocab = tk.load(tokenizer_dir).vocab_size
    torch.manual_seed(0)
    ours = phi.PhiForCausalLM(trainer.debug_dpo().model_config(vocab)).eval()
    hf_dir = entrypoint.export_hf(ours, tokenizer_dir, tmp_path, dtype)
    with safe_open(hf_dir / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch_dtype}
    assert json.loads((hf_dir / "config.json").read_text())["torch_dtype"] == str(torch_dtype).removeprefix(
        "torch."
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype="auto").eval()
    assert next(hf.parameters()).dtype == torch_dtype
    ids = torch.randint(0, vocab, (2, 24))
    with torch.no_grad():
        expected = ours.to(torch_dtype)(ids).float()
        assert (hf(ids).logits.float() - expected).abs().max().item() <= tolerance


def test_an_unknown_export_dtype_is_refused(tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="export_dtype must be one of"):
        trainer.TrainConfig(export_dtype="fp8")
    with pytest.raises(ValueError, match="export dtype must be one of"):
        entrypoint.export_hf(None, tokenizer_dir, tmp_path, "int4")


def _ds(**overrides) -> dict:
    return distributed.deepspeed_config(
        micro_batch=4,
        accum=16,
        world_size=8,
        grad_clip=1.0,
        zero_stage=2,
        precision="bf16",
        overrides=overrides,
    )


def test_the_deepspeed_config_follows_the_global_batch_and_takes_overrides():
    plain = _ds()
    assert (plain["train_batch_size"], plain["train_micro_batch_size_per_gpu"]) == (4 * 16 * 8, 4)
    assert plain["gradient_accumulation_steps"] == 16 and plain["bf16"] == {"enabled": True}
    assert plain["zero_optimization"]["stage"] == 2
    offload = _ds(
        zero_optimization={"stage": 1, "offload_optimizer": {"device": "cpu"}, "reduce_bucket_size": 5e7}
    )
    zero = offload["zero_optimization"]
    assert (
        zero["stage"] == 1
        and zero["offload_optimizer"] == {"device": "cpu"}
        and zero["reduce_bucket_size"] == 5e7
    )
    assert zero["overlap_comm"] is True  # merged key by key: the derived keys not overridden stay
    assert _ds(train_batch_size=512)["train_batch_size"] == 512  # repeating an owned value is fine


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"train_batch_size": 256}, "train_batch_size 256"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps 2"),
        ({"fp16": {"enabled": True}}, "fp16.enabled True"),
        ({"optimizer": {"type": "Adam"}}, "['optimizer']"),
    ],
)
def test_a_deepspeed_config_contradicting_the_training_config_is_refused(overrides, named):
    with pytest.raises(ValueError, match="ds_config") as err:
        _ds(**overrides)
    assert named in str(err.value)


def test_a_ds_config_file_is_read_into_the_training_config(tmp_path):
    """``--ds-config FILE`` (or the config's ``ds_config`` key): its keys are recorded in the run's
    TrainConfig, so a resume with another file is refused like any other config change."""
    ds = tmp_path / "ds_config.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    config = {"stage": "pretrain", "tokenizer": "t", "out": "o", "sources": {}, "weights": {}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    assert entrypoint.load_config(path, str(ds))["train"].ds_config == {"zero_optimization": {"stage": 1}}
    path.write_text(json.dumps({**config, "ds_config": str(ds)}))
    assert entrypoint.load_config(path)["train"].ds_config == {"zero_optimization": {"stage": 1}}
    ds.write_text("[1, 2]")
    with pytest.raises(ValueError, match="ds_config .*ds_config.json: must hold a JSON object"):
        entrypoint.load_config(path)
    ds.write_text("{")
    with pytest.raises(ValueError, match="ds_config .*ds_config.json: not JSON"):
        entrypoint.load_config(path)


_HASH_IN_A_CHILD = """
import json, sys
from pathlib import Path
from phi_assets.training import runs

def rss(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field)) * 1024

out = Path(sys.argv[1])
before = rss("VmRSS:")
built = runs.recorded(out, [], 1.0, {})
print(json.dumps({"digest": built.data_version, "grew": rss("VmHWM:") - before}))
"""


@pytest.mark.slow  # hashes 1 GB (a few seconds) in a child process
def test_recording_a_run_hashes_a_1gb_export_in_under_100mb(tmp_path):
    """The asset records a finished run (``runs.recorded``) in a small pod: the weights' sha256 is
    computed as a stream, so a 1 GB ``model.safetensors`` (phi-1's fp32 export is 5.7 GB) raises the
    process's peak memory by less than 100 MB. Measured in a fresh child (VmHWM against VmRSS before)."""
    import hashlib
    import subprocess
    import sys

    hf = tmp_path / "run" / "hf"
    hf.mkdir(parents=True)
    with open(hf / "model.safetensors", "wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse: no disk, but read like any file
    (tmp_path / "run" / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "loss": 1.0, "lr": 1e-3, "tokens_per_s": 1.0, "mfu": 0.0}) + "\n"
    )
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"tokens": 8, "steps": 1, "num_params": 1}))
    done = subprocess.run(
        [sys.executable, "-c", _HASH_IN_A_CHILD, str(tmp_path / "run")],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    zeros, expected = bytes(1 << 22), hashlib.sha256()
    for _ in range(256):
        expected.update(zeros)
    assert result["digest"] == expected.hexdigest()[:32]
    assert result["grew"] < 100 * 2**20, result
