"""The GPU check: one command that tells whether a GPU machine trains and serves the Phi model correctly
and how fast, before a long run is started on it.

Seven parts, each recorded on its own (an error in one is written down and the others still run):

1. ``model_parity``: logits of ``PhiForCausalLM`` against transformers' ``PhiForCausalLM`` with the same
   weights, in fp32 and under bf16 autocast, and packed documents (``cu_seqlens``) against the
   documents run one by one.
2. ``phi3_parity``: the same for the phi-3 family (``phi3.Phi3ForCausalLM``, its ``hf_state_dict()`` and
   ``config.json`` loaded by ``AutoModelForCausalLM`` with SDPA): grouped-query attention with a sliding
   window shorter than the sequence, dense (``Phi3ForCausalLM``) and mixture of experts
   (``PhimoeForCausalLM``; under bf16 held to transformers' own bf16 error, ``ROUTED_BF16_RATIO``), and
   LongRoPE past its original context.
3. ``attention_parity`` (CUDA): flash-attn against torch SDPA through ``attention.attend``
   (``PHI_ATTENTION``), outputs and gradients, dense and packed, for multi-head attention, grouped-query
   attention (4 query heads per kv head) and grouped-query attention with a sliding window; without
   flash-attn, torch's own flash SDPA backend (memory-efficient with a window) against its math backend
   (packed: the document mask against each document alone).
4. ``throughput`` (CUDA): tokens/s and MFU of the bf16 training step at the phi-1 shape (1.3B, sequence
   2048): the trainer's runner, AdamW (fused on CUDA) with the trainer's parameter groups, bf16
   autocast; the largest micro-batch that fits, doubling from 1, first without activation checkpointing,
   then with it where that fits a larger batch. Goal: MFU >= 0.55 on one H100.
5. ``throughput_phi3_mini`` (CUDA): the same at phi-3-mini's shape (3.8B, sequence 4096, sliding window
   2047, ``phi3_mini_pretrain``); no goal.
6. ``deepspeed_zero2``: a few steps of ``trainer.train`` with ``backend="deepspeed"``, ZeRO stage 2, as a
   single process, on a small token dataset built from Python's standard library; the loss must fall.
7. ``vllm_greedy``: a small model trained here, exported with ``entrypoint.export_hf``, loaded in vLLM
   (in a child process) and decoded greedily; the fraction of prompts whose first tokens equal our
   model's greedy decoding.

Parts 1 to 3 are here; 4 to 7, which train, are in ``gpu_check_training.py`` beside this file.

Nothing is downloaded: models are built from configs with random weights. Results go to ``--out`` (default
``$OUT/gpu_check.json`` when ``OUT`` is set, else ``benchmarks/.work/gpu_check.json``), rewritten after
every part, and a markdown table is printed at the end. ``--smoke`` runs every part it can at tiny sizes
(on CPU the CUDA parts are recorded as skipped; DeepSpeed on CPU needs ``DS_ACCELERATOR=cpu``, set here
when there is no CUDA).

Run from the repository root:  python benchmarks/gpu_check.py --out results.json  [--smoke] [--parts a,b]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

STARTED = time.perf_counter()  # the run's seconds include the imports
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from gpu_check_training import (  # noqa: E402
    Settings,
    Skipped,
    deepspeed_zero2,
    free_memory,
    package_version,
    throughput,
    throughput_phi3_mini,
    vllm_greedy,
)

from phi_assets.training import attention, phi3  # noqa: E402
from phi_assets.training import model as phi  # noqa: E402
from phi_assets.training.phi3_configs import DEBUG, Phi3Config, with_longrope  # noqa: E402

# A difference passes when its max-abs is at most tolerance x scale, the scale being the largest absolute
# value of the reference (the logits; the attention output, or its gradients).
TOLERANCES = {
    "fp32": 1e-4,  # logits, ours against transformers
    "bf16": 0.05,  # logits under bf16 autocast: other summation orders, bf16 rounding (~0.004 a step)
    "docmask": 1e-4,  # packed documents against the same documents run alone (fp32)
    "attention_out": 0.01,  # bf16 attention outputs, one backend against the other
    "attention_grad": 0.02,  # bf16 gradients of q, k, v
}
# Mixture of experts under bf16: rounding flips sparsemixer's discrete routing (the top-2 choice, and which
# experts fall within 2 x jitter_eps of the best) for a few per cent of tokens, on either side, so the
# max-abs rule cannot hold. Ours passes when its mean-abs logit error against the fp32 reference is at most
# this many times transformers' own bf16 error (about 1x measured; a layout or kernel error is ~100x).
ROUTED_BF16_RATIO = 2.0


@contextlib.contextmanager
def env_value(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# --- 1. model parity --------------------------------------------------------------------------------


def parity_configs(smoke: bool) -> dict[str, tuple[phi.PhiConfig, int, int]]:
    """name -> (config without dropout, batch, sequence length). ``small`` is the shape the earlier
    one-shot check (gpu_model_check.py) measured, for comparison."""
    off = {"embd_pdrop": 0.0, "resid_pdrop": 0.0, "attention_dropout": 0.0}
    if smoke:
        return {"debug_tiny": (replace(phi.debug_tiny(), **off), 2, 96)}
    shape = {"vocab_size": 4096, "hidden_size": 256, "intermediate_size": 1024, "num_layers": 4, "num_heads": 8}
    small = phi.PhiConfig(**shape, rotary_dim=16, **off)
    return {"small": (small, 4, 512), "phi1": (replace(phi.phi1(), **off), 1, 512)}


def hf_model(cfg: phi.PhiConfig):
    """transformers' PhiForCausalLM for ``cfg`` (SDPA attention), from ``hf_config()``."""
    import transformers

    fields = {
        k: v for k, v in cfg.hf_config().items() if k not in ("architectures", "model_type", "torch_dtype")
    }
    return transformers.PhiForCausalLM(transformers.PhiConfig(**fields, attn_implementation="sdpa"))


def docmask_difference(model: phi.PhiForCausalLM, ids: torch.Tensor) -> float:
    """One row holding two documents (``cu_seqlens``, positions restarting) against each run alone."""
    seq = ids.shape[1]
    cut = seq * 3 // 5
    positions = torch.cat([torch.arange(cut), torch.arange(seq - cut)]).to(ids.device)[None]
    cu_seqlens = torch.tensor([0, cut, seq], device=ids.device)
    joint = model(ids, position_ids=positions, cu_seqlens=cu_seqlens)
    return max(max_abs(joint[:, :cut], model(ids[:, :cut])), max_abs(joint[:, cut:], model(ids[:, cut:])))


def logits_parity(ours, hf, vocab_size: int, batch: int, seq: int, device: torch.device) -> dict:
    """Max-abs logit differences of ``ours`` from ``hf`` (same weights, eval) in fp32 and under bf16
    autocast, and of packed documents from the documents run alone; and each side's mean-abs bf16 error
    against the fp32 reference."""
    ids = torch.randint(0, vocab_size, (batch, seq), device=device)
    with torch.no_grad():
        reference = hf(ids).logits
        fp32 = max_abs(ours(ids), reference)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            ours_bf16, hf_bf16 = ours(ids).float(), hf(ids).logits.float()
        docmask = docmask_difference(ours, ids[:1])
    return {
        "batch": batch,
        "seq_len": seq,
        "logit_scale": reference.abs().max().item(),
        "fp32_max_abs": fp32,
        "bf16_max_abs": max_abs(ours_bf16, hf_bf16),
        "docmask_max_abs": docmask,
        "bf16_mean_err": (ours_bf16 - reference).abs().mean().item(),
        "hf_bf16_mean_err": (hf_bf16 - reference).abs().mean().item(),
    }


def parity_report(results: dict[str, dict], device: torch.device, checks: dict, routed: tuple = ()) -> dict:
    """A parity part's result: each config's differences held to ``TOLERANCES`` x its largest logit; for
    the configs named in ``routed`` (mixture of experts) the bf16 rule is ``ROUTED_BF16_RATIO``."""
    keys = ("fp32", "bf16", "docmask")
    tolerances = {k: TOLERANCES[k] for k in keys} | ({"bf16_routed_ratio": ROUTED_BF16_RATIO} if routed else {})
    for name, r in results.items():
        for k in keys:
            if k == "bf16" and name in routed:
                checks[f"{name}.bf16_vs_transformers"] = (
                    r["bf16_mean_err"] <= ROUTED_BF16_RATIO * r["hf_bf16_mean_err"]
                )
            else:
                checks[f"{name}.{k}"] = r[f"{k}_max_abs"] <= TOLERANCES[k] * r["logit_scale"]
    return {
        "configs": results,
        "tolerances": tolerances,
        "attention": attention.backend(device, torch.bfloat16),
        "checks": checks,
    }


def model_parity(s: Settings) -> dict:
    results = {}
    for name, (cfg, batch, seq) in parity_configs(s.smoke).items():
        torch.manual_seed(0)
        with torch.device(s.device):
            ours = phi.PhiForCausalLM(cfg).eval()
            hf = hf_model(cfg).eval()
        hf.load_state_dict(ours.state_dict())
        results[name] = logits_parity(ours, hf, cfg.vocab_size, batch, seq, s.device)
    return parity_report(results, s.device, {})


# --- 1b. phi-3 family parity -----------------------------------------------------------------------

HF_CLASSES = {False: "Phi3ForCausalLM", True: "PhimoeForCausalLM"}  # transformers' classes, by cfg.moe
PERTURB = 0.02  # std of the noise added to every weight: biases off 0, norms off 1, as trained weights are


def phi3_parity_configs(smoke: bool) -> dict[str, tuple[Phi3Config, int, int]]:
    """name -> (config, batch, sequence length): grouped-query attention with a sliding window shorter
    than the sequence, dense and mixture of experts, and LongRoPE past its original context (its long
    factors). The MoE shapes stay within their original context: transformers 5.19's phimoe keeps the
    short factors at every length (``phi3.py``)."""
    longrope = (DEBUG["phi3_5_mini_debug"](), 2, 200)  # 128 -> 256 positions, window 64
    if smoke:  # the debug shapes; 4 query heads on 2 kv heads
        dense = replace(DEBUG["phi3_medium_debug"](), num_kv_heads=2, sliding_window=32)
        moe = replace(DEBUG["phi3_5_moe_debug"](), num_kv_heads=2, sliding_window=32)
        return {"gqa_window": (dense, 2, 96), "moe_gqa_window": (moe, 2, 96), "longrope": longrope}
    shape = {"vocab_size": 4096, "hidden_size": 512, "intermediate_size": 1024, "num_layers": 4}
    dense = Phi3Config(**shape, num_heads=8, num_kv_heads=2, sliding_window=128,
                       max_position_embeddings=512, original_max_position_embeddings=512)  # fmt: skip
    return {
        "gqa_window": (dense, 4, 512),
        "moe_gqa_window": (replace(dense, num_experts=4, intermediate_size=512), 2, 512),
        "longrope": longrope,
        "longrope_gqa_window": (with_longrope(dense, 128, 1024), 2, 512),  # both documents past 128
    }


def phi3_pair(cfg: Phi3Config, path: Path, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, transformers') with the same weights: ours perturbed off its init, ``hf_state_dict()`` and
    ``config.json`` written to ``path`` and loaded by ``AutoModelForCausalLM`` with SDPA attention."""
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ours = phi3.build(cfg)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * PERTURB)
    path.mkdir(parents=True, exist_ok=True)
    save_file(ours.hf_state_dict(), path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(cfg.hf_config()))
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa"
    )
    return ours.to(device).eval(), hf.to(device).eval()


def phi3_parity(s: Settings) -> dict:
    results, checks = {}, {}
    configs = phi3_parity_configs(s.smoke)
    for name, (cfg, batch, seq) in configs.items():
        ours, hf = phi3_pair(cfg, s.work / f"phi3-parity-{name}", s.device)
        results[name] = {
            "architecture": type(hf).__name__,
            "heads": cfg.num_heads,
            "kv_heads": cfg.num_kv_heads,
            "sliding_window": cfg.sliding_window,
            "rope_type": cfg.rope_type,
            "original_context": cfg.original_max_position_embeddings,
            "routed": cfg.moe,
            **logits_parity(ours, hf, cfg.vocab_size, batch, seq, s.device),
        }
        checks[f"{name}.architecture"] = type(hf).__name__ == HF_CLASSES[cfg.moe]
        checks[f"{name}.window_below_seq"] = cfg.sliding_window is not None and cfg.sliding_window < seq
        if name.startswith("longrope"):  # the long factors act
            checks[f"{name}.past_original"] = seq > cfg.original_max_position_embeddings
        del ours, hf
    routed = tuple(name for name, r in results.items() if r["routed"])
    return parity_report(results, s.device, checks, routed)


# --- 2. attention backends --------------------------------------------------------------------------


def attend_with_grads(qkv: tuple[torch.Tensor, ...], grad: torch.Tensor, fn: Callable) -> list[torch.Tensor]:
    """[output, dq, dk, dv] of ``fn(q, k, v)`` for the upstream gradient ``grad``."""
    leaves = [t.detach().clone().requires_grad_() for t in qkv]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach(), *(t.grad for t in leaves)]


def compare(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict:
    """Differences of ``a`` (output, gradients) from the reference ``b``, with the reference's scale."""
    return {
        "out_max_abs": max_abs(a[0], b[0]),
        "out_scale": b[0].float().abs().max().item(),
        "grad_max_abs": max(max_abs(x, y) for x, y in zip(a[1:], b[1:], strict=True)),
        "grad_scale": max(y.float().abs().max().item() for y in b[1:]),
    }


def per_document(q, k, v, cu_seqlens: list[int], window: int | None = None) -> torch.Tensor:
    """Causal attention of each document alone (rows flattened) through ``attention.attend`` (fewer kv
    heads and the window as given), back in (batch, heads, seq, dim)."""
    batch, heads, seq, dim = q.shape
    flat = [t.transpose(0, 1).reshape(t.shape[1], batch * seq, dim)[None] for t in (q, k, v)]
    parts = [
        attention.attend(*(t[:, :, a:b] for t in flat), window=window)
        for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:], strict=False)
    ]
    return torch.cat(parts, dim=2)[0].reshape(heads, batch, seq, dim).transpose(0, 1)


def backend_runs(qkv, grad, bounds: list[int], window: int | None = None) -> tuple[str, dict]:
    """(what is compared, {case: differences}) for the dense and the packed case, with ``window``."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cu_seqlens = torch.tensor(bounds, device=qkv[0].device, dtype=torch.int32)

    def dense(q, k, v):
        return attention.attend(q, k, v, window=window)

    def packed(q, k, v):
        return attention.attend(q, k, v, cu_seqlens=cu_seqlens, window=window)

    if attention.flash_attn_kernels() is not None:
        results = {}
        for case, fn in (("dense", dense), ("packed", packed)):
            runs = {}
            for name in ("flash", "sdpa"):
                with env_value("PHI_ATTENTION", name):
                    runs[name] = attend_with_grads(qkv, grad, fn)
            results[case] = compare(runs["flash"], runs["sdpa"])
        return "flash-attn vs torch SDPA (attention.attend, PHI_ATTENTION)", results
    # torch's flash kernel takes no mask: a window's band mask runs on its memory-efficient kernel
    fast = SDPBackend.FLASH_ATTENTION if window is None else SDPBackend.EFFICIENT_ATTENTION
    with env_value("PHI_ATTENTION", "sdpa"):
        with sdpa_kernel(fast):
            flash = attend_with_grads(qkv, grad, dense)
            documents = attend_with_grads(qkv, grad, lambda q, k, v: per_document(q, k, v, bounds, window))
        with sdpa_kernel(SDPBackend.MATH):
            math_dense = attend_with_grads(qkv, grad, dense)
            math_packed = attend_with_grads(qkv, grad, packed)
    kernel = "flash" if window is None else "memory-efficient"
    pair = f"torch {kernel} SDPA vs math SDPA (no flash-attn; packed: per-document {kernel} vs the mask)"
    return pair, {"dense": compare(flash, math_dense), "packed": compare(documents, math_packed)}


def attention_variants(heads: int, seq: int) -> dict[str, tuple[int, int | None]]:
    """name -> (kv heads, sliding window): multi-head; grouped-query, 4 query heads per kv head (phi-3.5-MoE,
    phi-3-medium, phi-4); the same with a window a quarter of the sequence (phi-3's sliding window)."""
    return {"mha": (heads, None), "gqa": (heads // 4, None), "gqa_window": (heads // 4, seq // 4)}


def attention_parity(s: Settings) -> dict:
    if not s.cuda:
        raise Skipped("no CUDA")
    batch, heads, seq, dim = (2, 4, 256, 64) if s.smoke else (2, 16, 2048, 64)
    bounds = [0, seq // 3, seq, seq + seq // 2, 2 * seq]  # two documents in each row, as the loader packs them
    variants = attention_variants(heads, seq)
    pairs, results = {}, {}
    for variant, (kv_heads, window) in variants.items():
        torch.manual_seed(0)
        shapes = ((batch, heads, seq, dim), (batch, kv_heads, seq, dim), (batch, kv_heads, seq, dim))
        qkv = tuple(torch.randn(shape, device=s.device, dtype=torch.bfloat16) for shape in shapes)
        grad = torch.randn_like(qkv[0])
        pairs[variant], runs = backend_runs(qkv, grad, bounds, window)
        results.update({f"{variant}.{case}": r for case, r in runs.items()})
    keys = ("out", "grad")
    return {
        "pairs": pairs,
        "shape": [batch, heads, seq, dim],
        "variants": {name: {"kv_heads": kv, "window": w} for name, (kv, w) in variants.items()},
        "cu_seqlens": bounds,
        "cases": results,
        "tolerances": {k: TOLERANCES[f"attention_{k}"] for k in keys},
        "checks": {
            f"{case}.{k}": r[f"{k}_max_abs"] <= TOLERANCES[f"attention_{k}"] * r[f"{k}_scale"]
            for case, r in results.items()
            for k in keys
        },
    }


# --- running and reporting --------------------------------------------------------------------------

PARTS: dict[str, Callable[[Settings], dict]] = {
    "model_parity": model_parity,
    "phi3_parity": phi3_parity,
    "attention_parity": attention_parity,
    "throughput": throughput,
    "throughput_phi3_mini": throughput_phi3_mini,
    "deepspeed_zero2": deepspeed_zero2,
    "vllm_greedy": vllm_greedy,
}


def run_part(fn: Callable[[Settings], dict], s: Settings) -> dict:
    """The part's result: status ``ok``, ``skipped`` (with a reason) or ``failed`` (an error, or a check
    that did not hold), and its seconds."""
    start = time.perf_counter()
    try:
        result = {"status": "ok", **fn(s)}
    except Skipped as e:
        result = {"status": "skipped", "reason": str(e)}
    except Exception as e:  # recorded; the other parts still run
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    failed = [name for name, ok in result.get("checks", {}).items() if not ok]
    if failed and result["status"] == "ok":
        result.update(status="failed", error="checks failed: " + ", ".join(failed))
    result["seconds"] = round(time.perf_counter() - start, 1)
    free_memory()
    return result


def environment(s: Settings) -> dict:
    return {
        "smoke": s.smoke,
        "cuda": s.cuda,
        "device": torch.cuda.get_device_name() if s.cuda else "cpu",
        "torch": torch.__version__,
        "cuda_version": torch.version.cuda,
        **{name: package_version(name) for name in ("transformers", "deepspeed", "vllm", "flash-attn")},
        "flash_attn_importable": attention.flash_attn_kernels() is not None,
    }


def parity_cell(name: str, v: dict) -> str:
    """One config of a parity part; a routed one (mixture of experts) adds both sides' bf16 mean error."""
    routed = ""
    if v.get("routed"):
        routed = (
            f" (mean error against fp32: ours {v['bf16_mean_err']:.1e}, theirs {v['hf_bf16_mean_err']:.1e})"
        )
    return (
        f"{name}: fp32 {v['fp32_max_abs']:.1e}, bf16 {v['bf16_max_abs']:.1e}{routed}, "
        f"packed docs {v['docmask_max_abs']:.1e} (logits up to {v['logit_scale']:.2f})"
    )


def summary(name: str, r: dict) -> str:
    """One table cell for a part's result."""
    if r["status"] == "skipped":
        return f"skipped: {r['reason']}"
    if "traceback" in r:
        return r["error"].splitlines()[0][:200]
    prefix = f"{r['error']}; " if r["status"] == "failed" else ""
    if name in ("model_parity", "phi3_parity"):
        body = "; ".join(parity_cell(c, v) for c, v in r["configs"].items())
        return prefix + f"max abs logit difference, {body}"
    if name == "attention_parity":
        cases = "; ".join(
            f"{c}: out {v['out_max_abs']:.1e}, grads {v['grad_max_abs']:.1e}" for c, v in r["cases"].items()
        )
        return prefix + f"{' / '.join(sorted(set(r['pairs'].values())))}: {cases}"
    if name.startswith("throughput"):
        b = r["best"] or {}
        met = "met" if r["goal_met"] else "not met"
        goal = "" if r["goal_mfu"] is None else f" (goal {r['goal_mfu']}: {met})"
        window = f", window {r['sliding_window']}" if r.get("sliding_window") else ""
        return prefix + (
            f"{r['model']} seq {r['seq_len']}{window}, {r['attention']}: micro-batch {b.get('micro_batch')} "
            f"(checkpointing {'on' if b.get('activation_checkpointing') else 'off'}), "
            f"{b.get('tokens_per_s', 0):,} tokens/s, MFU {b.get('mfu', 0):.3f}{goal}"
        )
    if name == "deepspeed_zero2":
        return prefix + (
            f"ZeRO-{r['zero_stage']} {r['precision']}, {r['steps']} steps: "
            f"loss {r['first_loss']:.3f} -> {r['last_loss']:.3f} (first and last 3 steps)"
        )
    return prefix + (
        f"vLLM {r['vllm']} {r['dtype']}: {r['matched']}/{r['prompts']} prompts match on {r['tokens']} tokens"
    )


def table(results: dict) -> str:
    rows = ["| part | status | seconds | result |", "|---|---|---|---|"]
    for name, r in results["parts"].items():
        cell = summary(name, r).replace("|", "\\|")  # a "|" in an error would split the row
        rows.append(f"| {name} | {r['status']} | {r['seconds']} | {cell} |")
    return "\n".join(rows)


def default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return ROOT / "benchmarks" / ".work" / "gpu_check.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default: $OUT/gpu_check.json or benchmarks/.work/gpu_check.json)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a couple of steps: runs on a CPU")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, among {', '.join(PARTS)}")
    p.add_argument("--skip-vllm", action="store_true", help="record the vLLM part as skipped")
    p.add_argument("--max-batch", type=int, default=None, help="largest micro-batch tried (64; smoke 4)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per micro-batch (5; smoke 2)")
    p.add_argument("--greedy-tokens", type=int, default=16)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; choose among {', '.join(PARTS)}")
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's CPU accelerator (gloo)
    out = args.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        s = Settings(
            smoke=args.smoke,
            device=torch.device("cuda" if cuda else "cpu"),
            work=Path(work),
            max_batch=args.max_batch or (4 if args.smoke else 64),
            steps=args.steps or (2 if args.smoke else 5),
            greedy_tokens=args.greedy_tokens,
            vllm=not args.skip_vllm,
        )
        results = {"environment": environment(s), "parts": {}}
        for name in args.parts.split(","):
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            results["parts"][name] = run_part(PARTS[name], s)
            results["seconds"] = round(time.perf_counter() - STARTED, 1)
            out.write_text(json.dumps(results, indent=1))  # a run cut short keeps the parts done
    print(table(results))
    print(f"\nresults: {out} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
