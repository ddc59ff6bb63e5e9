"""Training-step throughput: our Phi model against transformers' PhiForCausalLM, same weights.

Both sides run the same step (forward, next-token cross-entropy, backward, AdamW) on the same
random batch, side by side in one process, one step each in turn (``--repeats`` x ``--steps`` pairs, the
order alternating), so that load from other processes falls on both alike; the table has median tokens/s,
the ratio of the medians (ours / transformers; above 1: ours is faster) and the ratio of the fastest steps
(the least disturbed by other load). Dropout is off unless ``--dropout``. On CPU it uses the
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
from collections.abc import Callable
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


def _stepper(model, forward, batch: torch.Tensor, device: str) -> Callable[[], float]:
    """One training step per call; returns its seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if device == "cuda" else None

    def one() -> float:
        start = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            logits = forward(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    one()  # warm-up
    return one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="debug_tiny", choices=sorted(phi.RECIPES))
    ap.add_argument("--hidden", type=int, default=256, help="hidden size of debug_tiny on CPU")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dropout", action="store_true", help="keep the recipe's dropout (the trainer's default)")
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
    if not args.dropout:
        cfg = replace(cfg, resid_pdrop=0.0, attention_dropout=0.0, embd_pdrop=0.0)
    torch.manual_seed(0)
    ours = phi.PhiForCausalLM(cfg).to(args.device).train()
    theirs = _hf(cfg).to(args.device).train()
    theirs.load_state_dict(ours.state_dict())
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=args.device)
    cases = {
        "ours": _stepper(ours, lambda x: ours(x), batch, args.device),
        "transformers": _stepper(theirs, lambda x: theirs(x).logits, batch, args.device),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(args.repeats * args.steps):
        for name in list(cases) if i % 2 == 0 else list(cases)[::-1]:
            times[name].append(cases[name]())
    tokens = args.batch * args.seq
    flops = ours.flops_per_token(args.seq)
    rows = []
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in ("ours", "transformers"):
        tps = tokens / median[name]
        mfu = f"{flops * tps / (args.peak_tflops * 1e12):.3f}" if args.peak_tflops else "-"
        best = min(times["transformers"]) / min(times[name])
        ratio = median["transformers"] / median[name]
        rows.append([name, f"{median[name] * 1e3:.1f}", f"{tps:,.0f}", f"{ratio:.2f}x", f"{best:.2f}x", mfu])
    print(
        f"{args.model} ({ours.num_params() / 1e6:.1f}M params), batch {args.batch} x {args.seq}, "
        f"{args.device}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.repeats * args.steps} steps each, alternating{', dropout' if args.dropout else ''}"
    )
    print(
        format_table(
            ["case", "ms/step", "tokens/s", "x transformers", "fastest steps", "MFU"],
            rows,
            markdown=args.markdown,
        )
    )


if __name__ == "__main__":
    main()
