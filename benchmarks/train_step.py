"""Training-step throughput: our Phi model against transformers' PhiForCausalLM, same weights.

Both sides run the same step (forward, next-token cross-entropy, backward, AdamW) on the same
random batch, side by side in one process, ``--repeats`` rounds alternating the order; the table has
median tokens/s and the ratio (ours / transformers; above 1: ours is faster). On CPU it uses the
``debug_tiny`` shape widened by ``--hidden``; on CUDA (``--device cuda``) bf16 autocast and a named
config (``--model phi1_small``). MFU = flops_per_token x tokens/s / ``--peak-tflops``, with
flops_per_token = 6 N (non-embedding parameters) + 12 x layers x hidden x seq (PaLM, appendix B).

Run from the repository root:  .venv/bin/python benchmarks/train_step.py [--markdown] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import transformers  # noqa: E402
from table import format_table  # noqa: E402

from phi_assets.training import model as phi  # noqa: E402


def _hf(cfg: phi.PhiConfig) -> transformers.PhiForCausalLM:
    fields = {
        k: v for k, v in cfg.hf_config().items() if k not in ("architectures", "model_type", "torch_dtype")
    }
    return transformers.PhiForCausalLM(transformers.PhiConfig(**fields, attn_implementation="sdpa"))


def _step_time(model, forward, batch: torch.Tensor, device: str, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if device == "cuda" else None

    def one() -> None:
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            logits = forward(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    one()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="debug_tiny", choices=sorted(phi.RECIPES))
    ap.add_argument("--hidden", type=int, default=256, help="hidden size of debug_tiny on CPU")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="for MFU (A100 bf16: 312, H100/H200: 989)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    cfg = phi.RECIPES[args.model]()
    if args.model == "debug_tiny":
        cfg = replace(
            cfg,
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_heads=args.hidden // 64,
            rotary_dim=32,
            max_position_embeddings=args.seq,
        )
    cfg = replace(cfg, resid_pdrop=0.0, attention_dropout=0.0, embd_pdrop=0.0)
    torch.manual_seed(0)
    ours = phi.PhiForCausalLM(cfg).to(args.device).train()
    theirs = _hf(cfg).to(args.device).train()
    theirs.load_state_dict(ours.state_dict())
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=args.device)
    times: dict[str, list[float]] = {"ours": [], "transformers": []}
    cases = [("ours", ours, lambda x: ours(x)), ("transformers", theirs, lambda x: theirs(x).logits)]
    for r in range(args.repeats):
        for name, model, forward in cases if r % 2 == 0 else cases[::-1]:
            times[name].append(_step_time(model, forward, batch, args.device, args.steps))
    tokens = args.batch * args.seq
    flops = ours.flops_per_token(args.seq)
    rows = []
    for name in ("ours", "transformers"):
        tps = tokens / statistics.median(times[name])
        mfu = f"{flops * tps / (args.peak_tflops * 1e12):.3f}" if args.peak_tflops else "-"
        ratio = statistics.median(times["transformers"]) / statistics.median(times[name])
        rows.append([name, f"{statistics.median(times[name]) * 1e3:.1f}", f"{tps:,.0f}", f"{ratio:.2f}x", mfu])
    print(
        f"{args.model} ({ours.num_params() / 1e6:.1f}M params), batch {args.batch} x {args.seq}, "
        f"{args.device}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.repeats} rounds x {args.steps} steps"
    )
    print(format_table(["case", "ms/step", "tokens/s", "x transformers", "MFU"], rows, markdown=args.markdown))


if __name__ == "__main__":
    main()
