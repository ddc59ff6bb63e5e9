"""Training and scoring one ablation model: the same model, recipe and token count for every arm.

The model is a Hugging Face ``PhiForCausalLM`` of the preset's shape (``SHAPES``: ``tiny`` for CPU,
``phi1_small`` for phi-1's 350M ablations), trained from scratch on batches of a ``MixtureLoader`` over
the arm's bases, with the mixture proxies' schedule (linear warmup, cosine to 10%). On a CUDA machine it
runs there in bf16 autocast; on CPU in fp32 with ``threads`` threads, seeded, so a partition's numbers
reproduce. After training it is scored on each held-out benchmark set (``heldout``: loss on solution
tokens) and on the validation split of each base (the same documents for every arm).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phi_assets.ablations.heldout import ScoredSet
from phi_assets.mixture.loader import MixtureLoader
from phi_assets.mixture.proxy import ProxyConfig, build_model, lr_at

# hidden, layers, heads. Heads of at least 32 (vLLM's CPU attention has no kernel for 16, and pass@1 serves
# the model with vLLM). phi-1-small (arXiv:2306.11644 §2.3): 350M parameters, 20 layers, width 1024, 16
# heads of 64, MLP 4096 (the MLP is 4 x width here too), context 2048.
SHAPES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 2),
    "small": (128, 4, 4),
    "phi1_small": (1024, 20, 16),
}


@dataclass
class ArmResult:
    train_loss: list[float]
    bench_loss: dict[str, float]  # held-out set -> mean loss per scored token
    val_loss: dict[str, float]  # base -> validation loss
    num_params: int
    tokens_seen: int
    tokens_by_base: dict[str, int]
    epochs: dict[str, float]
    seconds: float
    device: str
    extra: dict = field(default_factory=dict)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _forward_loss(model, input_ids: np.ndarray, labels: np.ndarray, where: str):
    import torch
    import torch.nn.functional as F

    with torch.autocast(where, dtype=torch.bfloat16, enabled=where == "cuda"):
        logits = model(input_ids=torch.from_numpy(input_ids).to(where)).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), torch.from_numpy(labels).to(where).flatten())


def score_set(model, scored: ScoredSet, where: str, batch_size: int = 16) -> float:
    """Mean loss per scored token of ``scored`` (the model is left in eval mode)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    order = np.argsort([len(x) for x in scored.inputs], kind="stable")  # similar lengths share a batch
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(scored.inputs[i]) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            tgt = np.full((len(rows), width), -100, dtype=np.int64)  # -100: not scored
            for r, i in enumerate(rows):
                n = len(scored.inputs[i])
                ids[r, :n] = scored.inputs[i]
                tgt[r, :n] = np.where(scored.scored[i], scored.targets[i], -100)
            with torch.autocast(where, dtype=torch.bfloat16, enabled=where == "cuda"):
                logits = model(input_ids=torch.from_numpy(ids).to(where)).logits
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(),
                torch.from_numpy(tgt).to(where).flatten(),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(loss)
            count += int((tgt != -100).sum())
    return total / count if count else math.nan


def validation_loss(model, loader: MixtureLoader, num_batches: int, where: str) -> float:
    import torch

    model.eval()
    loader.reset()  # the same batches for every arm
    with torch.no_grad():
        losses = [
            float(_forward_loss(model, b.input_ids, b.labels, where))
            for b in (loader.next_batch() for _ in range(num_batches))
        ]
    return float(np.mean(losses))


def train_arm(
    train: MixtureLoader,
    val: Mapping[str, MixtureLoader],
    bench: Mapping[str, ScoredSet],
    vocab_size: int,
    cfg: ProxyConfig,
    progress: Callable[[int, float], None] | None = None,
    where: str | None = None,
    export: Path | None = None,
) -> ArmResult:
    """Train, then score; ``export``: also save the trained model there in Hugging Face format (float32
    safetensors; pass@1 serves it with vLLM)."""
    import torch

    where = where or device()
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    model = build_model(cfg, vocab_size).to(where)  # seeded by cfg.seed: the same init for every arm
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    losses: list[float] = []
    by_base: dict[str, int] = {}
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = train.next_batch()
        for s in batch.sources:
            by_base[s] = by_base.get(s, 0) + cfg.seq_len
        loss = _forward_loss(model, batch.input_ids, batch.labels, where)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise ValueError(f"the training loss is {losses[-1]} at step {step + 1}: lower the lr")
        if progress:
            progress(step, losses[-1])
    if export is not None:
        model.to("cpu").float().save_pretrained(export, safe_serialization=True)
        model.to(where)
    return ArmResult(
        train_loss=losses,
        bench_loss={name: score_set(model, s, where) for name, s in bench.items()},
        val_loss={name: validation_loss(model, v, cfg.eval_batches, where) for name, v in val.items()},
        num_params=sum(p.numel() for p in model.parameters()),
        tokens_seen=cfg.steps * cfg.batch_size * cfg.seq_len,
        tokens_by_base=dict(sorted(by_base.items())),
        epochs=train.epochs(),
        seconds=time.perf_counter() - start,
        device=where,
    )
