"""benchmarks/gpu_check.py: its ``--smoke`` run on this CPU machine, read back from its JSON, and how a part's
failure is recorded without stopping the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PARTS = ["model_parity", "attention_parity", "throughput", "deepspeed_zero2", "vllm_greedy"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    """(the results JSON, the printed table) of ``gpu_check.py --smoke``; DeepSpeed on its CPU accelerator."""
    out = tmp_path_factory.mktemp("gpu_check") / "results.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow  # starts DeepSpeed and vLLM
def test_every_part_is_recorded_and_printed(smoke):
    results, table = smoke
    assert list(results["parts"]) == PARTS
    for name, part in results["parts"].items():
        assert part["status"] in ("ok", "skipped"), (name, part.get("error"), part.get("traceback"))
        assert f"| {name} | {part['status']} |" in table


@pytest.mark.slow
def test_our_logits_match_transformers_in_fp32_and_bf16(smoke):
    part = smoke[0]["parts"]["model_parity"]
    assert part["status"] == "ok"
    (tiny,) = part["configs"].values()
    assert tiny["fp32_max_abs"] < 1e-5
    assert tiny["bf16_max_abs"] < 0.02  # bf16 autocast on both sides: rounding, not a different model
    assert tiny["docmask_max_abs"] < 1e-5  # packed documents = the documents run one by one
    assert 0.1 < tiny["logit_scale"] < 100  # the differences are measured on real logits


@pytest.mark.slow
def test_the_cuda_parts_say_why_they_did_not_run(smoke):
    assert smoke[0]["environment"]["cuda"] == torch.cuda.is_available()
    for name in ("attention_parity", "throughput"):
        part = smoke[0]["parts"][name]
        if torch.cuda.is_available():
            assert part["status"] == "ok", part.get("error")
        else:
            assert (part["status"], part["reason"]) == ("skipped", "no CUDA")


@pytest.mark.slow
def test_deepspeed_zero2_steps_lower_the_loss(smoke):
    part = smoke[0]["parts"]["deepspeed_zero2"]
    assert part["status"] == "ok", part.get("error")
    assert part["zero_stage"] == 2 and part["steps"] == len(part["losses"]) == 12
    assert part["last_loss"] < part["first_loss"] - 0.2
    assert all(part["checks"].values())  # the DeepSpeed checkpoint was written too


@pytest.mark.slow
def test_vllm_decodes_the_export_greedily_as_our_model_does(smoke):
    """The bf16 export (half the bytes) loads in vLLM, which on a CPU computes in float32 with its
    weights, and decodes greedily as our model does with the same weights."""
    part = smoke[0]["parts"]["vllm_greedy"]
    assert part["status"] == "ok", part.get("error")
    assert (part["export_dtype"], part["dtype"]) == ("bf16", "float32")
    assert part["prompts"] == len(part["vllm_tokens"]) == 8
    assert all(len(tokens) == part["tokens"] == 16 for tokens in part["vllm_tokens"])
    assert part["match_fraction"] >= 0.75  # float32 on both sides, from the same bf16 weights
    assert part["match_fraction"] == part["matched"] / 8
    assert sum(a == b for a, b in zip(part["ours"], part["vllm_tokens"], strict=True)) == part["matched"]


def test_a_failing_part_is_recorded_and_a_failed_check_fails_its_part(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(SCRIPT.parent), *sys.path])  # restored afterwards, with its inserts
    import gpu_check

    settings = gpu_check.Settings(True, torch.device("cpu"), tmp_path, 4, 2, 16, vllm=False)

    def broken(s):
        raise RuntimeError("no such kernel")

    failed = gpu_check.run_part(broken, settings)
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: no such kernel"
    assert "no such kernel" in failed["traceback"]
    short = gpu_check.run_part(lambda s: {"checks": {"loss_fell": False, "finite": True}}, settings)
    assert (short["status"], short["error"]) == ("failed", "checks failed: loss_fell")
    skipped = gpu_check.run_part(gpu_check.vllm_greedy, settings)
    assert (skipped["status"], skipped["reason"]) == ("skipped", "--skip-vllm")
    assert gpu_check.summary("vllm_greedy", skipped) == "skipped: --skip-vllm"
