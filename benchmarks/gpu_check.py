"""The GPU check: one command that tells whether a GPU machine trains and serves the Phi model correctly
and how fast, before a long run is started on it.

Five parts, each recorded on its own (an error in one is written down and the others still run):

1. ``model_parity``: logits of ``PhiForCausalLM`` against transformers' ``PhiForCausalLM`` with the same
   weights, in fp32 and under bf16 autocast, and packed documents (``cu_seqlens``) against the
   documents run one by one.
2. ``attention_parity`` (CUDA): flash-attn against torch SDPA through ``attention.attend``
   (``PHI_ATTENTION``), outputs and gradients, dense and packed; without flash-attn, torch's own flash
   SDPA backend against its math backend (packed: the document mask against per-document flash).
3. ``throughput`` (CUDA): tokens/s and MFU of the bf16 training step at the phi-1 shape (1.3B, sequence
   2048): the trainer's runner, AdamW (fused on CUDA) with the trainer's parameter groups, bf16
   autocast; the largest micro-batch that fits, doubling from 1, first without activation checkpointing,
   then with it where that fits a larger batch. Goal: MFU >= 0.55 on one H100.
4. ``deepspeed_zero2``: a few steps of ``trainer.train`` with ``backend="deepspeed"``, ZeRO stage 2, as a
   single process, on a small token dataset built from Python's standard library; the loss must fall.
5. ``vllm_greedy``: a small model trained here, exported with ``entrypoint.export_hf``, loaded in vLLM
   (in a child process) and decoded greedily; the fraction of prompts whose first tokens equal our
   model's greedy decoding.

Parts 1 and 2 are here; 3 to 5, which train, are in ``gpu_check_training.py`` beside this file.

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
import torch.nn.functional as F  # noqa: E402
from gpu_check_training import (  # noqa: E402
    GOAL_MFU,
    Settings,
    Skipped,
    deepspeed_zero2,
    free_memory,
    package_version,
    throughput,
    vllm_greedy,
)

from phi_assets.training import attention  # noqa: E402
from phi_assets.training import model as phi  # noqa: E402

# A difference passes when its max-abs is at most tolerance x scale, the scale being the largest absolute
# value of the reference (the logits; the attention output, or its gradients).
TOLERANCES = {
    "fp32": 1e-4,  # logits, ours against transformers
    "bf16": 0.05,  # logits under bf16 autocast: other summation orders, bf16 rounding (~0.004 a step)
    "docmask": 1e-4,  # packed documents against the same documents run alone (fp32)
    "attention_out": 0.01,  # bf16 attention outputs, one backend against the other
    "attention_grad": 0.02,  # bf16 gradients of q, k, v
}


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


def logits_parity(cfg: phi.PhiConfig, batch: int, seq: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    with torch.device(device):
        ours = phi.PhiForCausalLM(cfg).eval()
        hf = hf_model(cfg).eval()
    hf.load_state_dict(ours.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    with torch.no_grad():
        reference = hf(ids).logits
        fp32 = max_abs(ours(ids), reference)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = max_abs(ours(ids), hf(ids).logits)
        docmask = docmask_difference(ours, ids[:1])
    return {
        "batch": batch,
        "seq_len": seq,
        "logit_scale": reference.abs().max().item(),
        "fp32_max_abs": fp32,
        "bf16_max_abs": bf16,
        "docmask_max_abs": docmask,
    }


def model_parity(s: Settings) -> dict:
    configs = parity_configs(s.smoke)
    results = {name: logits_parity(cfg, batch, seq, s.device) for name, (cfg, batch, seq) in configs.items()}
    keys = ("fp32", "bf16", "docmask")
    return {
        "configs": results,
        "tolerances": {k: TOLERANCES[k] for k in keys},
        "attention": attention.backend(s.device, torch.bfloat16),
        "checks": {
            f"{name}.{k}": r[f"{k}_max_abs"] <= TOLERANCES[k] * r["logit_scale"]
            for name, r in results.items()
            for k in keys
        },
    }


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


def per_document(q, k, v, cu_seqlens: list[int]) -> torch.Tensor:
    """Causal attention of each document alone (rows flattened), back in (batch, heads, seq, dim)."""
    batch, heads, seq, dim = q.shape
    flat = [t.transpose(0, 1).reshape(heads, batch * seq, dim) for t in (q, k, v)]
    parts = [
        F.scaled_dot_product_attention(*(t[None, :, a:b] for t in flat), is_causal=True)
        for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:], strict=False)
    ]
    return torch.cat(parts, dim=2)[0].reshape(heads, batch, seq, dim).transpose(0, 1)


def backend_runs(qkv, grad, bounds: list[int]) -> tuple[str, dict]:
    """(what is compared, {case: differences}) for the dense and the packed case."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cu_seqlens = torch.tensor(bounds, device=qkv[0].device, dtype=torch.int32)

    def packed(q, k, v):
        return attention.attend(q, k, v, cu_seqlens=cu_seqlens)

    if attention.flash_attn_kernels() is not None:
        results = {}
        for case, fn in (("dense", attention.attend), ("packed", packed)):
            runs = {}
            for name in ("flash", "sdpa"):
                with env_value("PHI_ATTENTION", name):
                    runs[name] = attend_with_grads(qkv, grad, fn)
            results[case] = compare(runs["flash"], runs["sdpa"])
        return "flash-attn vs torch SDPA (attention.attend, PHI_ATTENTION)", results
    with env_value("PHI_ATTENTION", "sdpa"):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = attend_with_grads(qkv, grad, attention.attend)
            documents = attend_with_grads(qkv, grad, lambda q, k, v: per_document(q, k, v, bounds))
        with sdpa_kernel(SDPBackend.MATH):
            math_dense = attend_with_grads(qkv, grad, attention.attend)
            math_packed = attend_with_grads(qkv, grad, packed)
    pair = "torch flash SDPA vs math SDPA (flash-attn not installed; packed: per-document flash vs the mask)"
    return pair, {"dense": compare(flash, math_dense), "packed": compare(documents, math_packed)}


def attention_parity(s: Settings) -> dict:
    if not s.cuda:
        raise Skipped("no CUDA")
    torch.manual_seed(0)
    batch, heads, seq, dim = (2, 4, 256, 64) if s.smoke else (2, 16, 2048, 64)
    qkv = tuple(torch.randn(batch, heads, seq, dim, device=s.device, dtype=torch.bfloat16) for _ in range(3))
    grad = torch.randn_like(qkv[0])
    bounds = [0, seq // 3, seq, seq + seq // 2, 2 * seq]  # two documents in each row, as the loader packs them
    pair, results = backend_runs(qkv, grad, bounds)
    keys = ("out", "grad")
    return {
        "pair": pair,
        "shape": [batch, heads, seq, dim],
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
    "attention_parity": attention_parity,
    "throughput": throughput,
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


def summary(name: str, r: dict) -> str:
    """One table cell for a part's result."""
    if r["status"] == "skipped":
        return f"skipped: {r['reason']}"
    if "traceback" in r:
        return r["error"].splitlines()[0][:200]
    prefix = f"{r['error']}; " if r["status"] == "failed" else ""
    if name == "model_parity":
        body = "; ".join(
            f"{c}: fp32 {v['fp32_max_abs']:.1e}, bf16 {v['bf16_max_abs']:.1e}, "
            f"packed docs {v['docmask_max_abs']:.1e} (logits up to {v['logit_scale']:.2f})"
            for c, v in r["configs"].items()
        )
        return prefix + f"max abs logit difference, {body}"
    if name == "attention_parity":
        cases = "; ".join(
            f"{c}: out {v['out_max_abs']:.1e}, grads {v['grad_max_abs']:.1e}" for c, v in r["cases"].items()
        )
        return prefix + f"{r['pair']}: {cases}"
    if name == "throughput":
        b = r["best"] or {}
        met = "met" if r["goal_met"] else "not met"
        return prefix + (
            f"{r['model']} seq {r['seq_len']}, {r['attention']}: micro-batch {b.get('micro_batch')} "
            f"(checkpointing {'on' if b.get('activation_checkpointing') else 'off'}), "
            f"{b.get('tokens_per_s', 0):,} tokens/s, MFU {b.get('mfu', 0):.3f} (goal {GOAL_MFU}: {met})"
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
