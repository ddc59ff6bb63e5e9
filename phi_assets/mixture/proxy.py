"""Tiny proxy language models for mixture search (RegMix trains many ~1M-parameter models).

A proxy is a Hugging Face ``PhiForCausalLM`` (the architecture the recipe trains, made tiny),
trained from scratch for a fixed number of steps on batches of a ``MixtureLoader``, then
evaluated on fixed validation batches of each source. Everything is seeded and runs on CPU
in a single thread (proxies fan out as parallel steps), so a proxy's losses are reproducible.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from phi_assets.mixture.loader import MixtureLoader


@dataclass(frozen=True)
class ProxyConfig:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 100
    lr: float = 3e-3
    warmup_steps: int = 10
    weight_decay: float = 0.1
    eval_batches: int = 4  # validation batches per source (the same for every proxy)
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "seq_len",
            "batch_size",
            "steps",
            "eval_batches",
            "threads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"proxy {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"proxy hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        if self.warmup_steps < 0 or not self.lr > 0:
            raise ValueError(f"proxy lr must be > 0 and warmup_steps >= 0, got {self.lr}, {self.warmup_steps}")


@dataclass
class ProxyResult:
    train_loss: list[float]  # per step
    val_loss: dict[str, float]  # per source with validation documents
    num_params: int
    tokens_seen: int
    seconds: float
    epochs: dict[str, float] = field(default_factory=dict)


def build_model(cfg: ProxyConfig, vocab_size: int):
    import torch
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(cfg.seed)
    config = PhiConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        max_position_embeddings=cfg.seq_len,
        partial_rotary_factor=0.5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
    )
    return PhiForCausalLM(config)


def _loss(model, input_ids: np.ndarray, labels: np.ndarray):
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=torch.from_numpy(input_ids)).logits  # (batch, seq, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), torch.from_numpy(labels).flatten())


def lr_at(step: int, cfg: ProxyConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate(model, val: Mapping[str, MixtureLoader], num_batches: int) -> dict[str, float]:
    import torch

    model.eval()
    out = {}
    with torch.no_grad():
        for source, loader in val.items():
            loader.reset()  # the same batches for every proxy
            losses = [
                float(_loss(model, b.input_ids, b.labels))
                for b in (loader.next_batch() for _ in range(num_batches))
            ]
            out[source] = float(np.mean(losses))
    model.train()
    return out


def train_proxy(
    train: MixtureLoader,
    val: Mapping[str, MixtureLoader],
    vocab_size: int,
    cfg: ProxyConfig,
    progress: Callable[[int, float], None] | None = None,
) -> ProxyResult:
    import torch

    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    model = build_model(cfg, vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    losses = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = train.next_batch()
        loss = _loss(model, batch.input_ids, batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if progress:
            progress(step, losses[-1])
    return ProxyResult(
        train_loss=losses,
        val_loss=evaluate(model, val, cfg.eval_batches),
        num_params=sum(p.numel() for p in model.parameters()),
        tokens_seen=cfg.steps * cfg.batch_size * cfg.seq_len,
        seconds=time.perf_counter() - start,
        epochs=train.epochs(),
    )
