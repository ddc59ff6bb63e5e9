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
PARTS = [
    "model_parity",
    "phi3_parity",
    "attention_parity",
    "throughput",
    "throughput_phi3_mini",
    "deepspeed_zero2",
    "vllm_greedy",
]


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
def test_our_phi3_logits_match_transformers_with_gqa_a_window_and_longrope(smoke):
    """Phi3ForCausalLM and PhimoeForCausalLM loaded from our export give our logits: 4 query heads on 2 kv
    heads with a window shorter than the sequence, and LongRoPE past its original context (long factors)."""
    part = smoke[0]["parts"]["phi3_parity"]
    assert part["status"] == "ok", (part.get("error"), part.get("traceback"))
    configs = part["configs"]
    assert list(configs) == ["gqa_window", "moe_gqa_window", "longrope"]
    dense, moe = "Phi3ForCausalLM", "PhimoeForCausalLM"
    assert [c["architecture"] for c in configs.values()] == [dense, moe, dense]
    for name, c in configs.items():
        assert c["fp32_max_abs"] < 1e-5 and c["docmask_max_abs"] < 1e-5, name
        assert 0.1 < c["logit_scale"] < 100, name
        assert c["sliding_window"] < c["seq_len"], name
    for name in ("gqa_window", "moe_gqa_window"):
        assert configs[name]["kv_heads"] * 2 == configs[name]["heads"]
    assert configs["longrope"]["rope_type"] == "longrope"
    assert configs["longrope"]["seq_len"] > configs["longrope"]["original_context"]
    for name in ("gqa_window", "longrope"):  # dense: the max-abs rule
        assert configs[name]["bf16_max_abs"] < 0.02 * configs[name]["logit_scale"], name
    moe = configs["moe_gqa_window"]  # routed: no worse than transformers' own bf16 rounding
    assert moe["bf16_mean_err"] <= 2 * moe["hf_bf16_mean_err"]
    assert part["checks"]["moe_gqa_window.bf16_vs_transformers"] and "moe_gqa_window.bf16" not in part["checks"]
    assert "| phi3_parity | ok |" in smoke[1]


@pytest.mark.slow
def test_the_cuda_parts_say_why_they_did_not_run(smoke):
    assert smoke[0]["environment"]["cuda"] == torch.cuda.is_available()
    for name in ("attention_parity", "throughput", "throughput_phi3_mini"):
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


def test_the_table_describes_the_cuda_parts_results(monkeypatch):
    """The table cells of the parts a CPU cannot run, from results shaped as they record them: attention
    for each variant (multi-head, grouped-query, with a window), throughput with and without an MFU goal."""
    monkeypatch.setattr(sys, "path", [str(SCRIPT.parent), *sys.path])
    import gpu_check

    variants = gpu_check.attention_variants(16, 2048)
    assert variants == {"mha": (16, None), "gqa": (4, None), "gqa_window": (4, 512)}
    diff = {"out_max_abs": 1e-3, "out_scale": 3.0, "grad_max_abs": 2e-3, "grad_scale": 4.0}
    attention = {
        "status": "ok",
        "pairs": dict.fromkeys(variants, "flash-attn vs torch SDPA"),
        "cases": {f"{v}.{c}": diff for v in variants for c in ("dense", "packed")},
    }
    cell = gpu_check.summary("attention_parity", attention)
    assert cell.startswith("flash-attn vs torch SDPA: mha.dense: out 1.0e-03, grads 2.0e-03;")
    assert "gqa_window.packed" in cell
    best = {"micro_batch": 2, "activation_checkpointing": True, "tokens_per_s": 12345, "mfu": 0.41}
    run = {"status": "ok", "model": "phi3_mini", "seq_len": 4096, "sliding_window": 2047, "attention": "flash"}
    phi3_mini = gpu_check.summary(
        "throughput_phi3_mini", {**run, "best": best, "goal_mfu": None, "goal_met": None}
    )
    assert phi3_mini == (
        "phi3_mini seq 4096, window 2047, flash: micro-batch 2 (checkpointing on), 12,345 tokens/s, MFU 0.410"
    )
    phi1 = {**run, "model": "phi1", "seq_len": 2048, "sliding_window": None, "best": best}
    assert gpu_check.summary("throughput", {**phi1, "goal_mfu": 0.55, "goal_met": False}).endswith(
        "MFU 0.410 (goal 0.55: not met)"
    )
