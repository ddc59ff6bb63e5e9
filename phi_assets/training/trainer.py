"""The training loop: AdamW, warmup then decay, autocast, clipping, accumulation, exact resume.

``train(cfg, sources, weights, out_dir)`` trains a ``PhiForCausalLM`` on a ``MixtureLoader`` and
writes a checkpoint every ``checkpoint_every`` steps. A checkpoint holds the model, the optimizer,
the step, every RNG state (python, numpy, torch, cuda) and the loader's state, written into a
hidden directory and renamed into place, so a run killed at any moment (SIGKILL included) resumes
from its last checkpoint and, on CPU, ends with bit-identical weights.

Batches are stated globally: ``global_batch_size`` sequences per optimizer step over all ranks, of
which each rank runs ``micro_batch_size`` per forward pass; gradient accumulation is what is left,
``global_batch_size / (micro_batch_size x world_size)`` (``grad_accum``), so a recipe trains the
same tokens per step, the same steps and the same schedule on 1 GPU, 8, or 4 nodes of 8.

Recipes (``TrainConfig`` and the named functions ``phi1_pretrain()``, ``phi1_finetune()``,
``phi1_5_pretrain()``, ``debug()``...) are in ``configs.py``, which imports no torch; this module
re-exports them.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from phi_assets.mixture.loader import LoaderConfig, MixtureLoader
from phi_assets.mixture.tokens import TokenShard
from phi_assets.training import distributed
from phi_assets.training import model as phi
from phi_assets.training.configs import (  # the recipes live there (no torch); re-exported for callers
    EXPORT_DTYPES,  # noqa: F401
    PRECISIONS,  # noqa: F401
    SCHEDULES,  # noqa: F401
    TRAIN_RECIPES,  # noqa: F401
    TrainConfig,  # noqa: F401
    debug,  # noqa: F401
    debug_dpo,  # noqa: F401
    debug_finetune,  # noqa: F401
    midtrain,  # noqa: F401
    phi1_5_pretrain,  # noqa: F401
    phi1_finetune,  # noqa: F401
    phi1_pretrain,  # noqa: F401
    phi_dpo,  # noqa: F401
)

CHECKPOINT = "checkpoint"
DEEPSPEED = "deepspeed"  # the DeepSpeed engine's checkpoint directory


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine or linear decay to ``lr * min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min((step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """No weight decay on biases, LayerNorms and embeddings (GPT-3 practice); frozen weights left out."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:  # phi-3.5-MoE's LM-head bias (phi3.py)
            continue
        (decay if p.ndim >= 2 and "embed" not in name else plain).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


@dataclass
class StepLog:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    tokens_per_s: float
    mfu: float


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out: Path, model, opt, step: int, loader: MixtureLoader, cfg: TrainConfig, scaler=None
) -> Path:
    """Atomically: written beside, fsynced, then renamed over the previous checkpoint."""
    final, tmp = out / CHECKPOINT, out / f".{CHECKPOINT}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "rng": _rng_state(),
            "scaler": scaler.state_dict() if scaler is not None else None,
        },
        tmp / "state.pt",
    )
    (tmp / "loader.json").write_text(json.dumps(loader.state_dict()))
    (tmp / "config.json").write_text(json.dumps(asdict(cfg)))
    for f in tmp.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    old = out / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _check_config(path: Path, saved: dict, cfg: TrainConfig) -> None:
    if json.loads(json.dumps(saved)) != json.loads(json.dumps(asdict(cfg))):
        raise ValueError(f"{path} was written with another training config; resume needs the same one")


def _load_checkpoint(out: Path, model, opt, loader: MixtureLoader, cfg: TrainConfig, scaler=None) -> int:
    path = out / CHECKPOINT
    if not path.is_dir() and (out / f".{CHECKPOINT}.old").is_dir():  # killed between the two renames
        os.rename(out / f".{CHECKPOINT}.old", path)
    if not path.is_dir():
        return 0
    _check_config(path, json.loads((path / "config.json").read_text()), cfg)
    state = torch.load(path / "state.pt", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    loader.load_state_dict(json.loads((path / "loader.json").read_text()))
    _set_rng_state(state["rng"])
    return int(state["step"])


def mixture_loader(
    cfg: TrainConfig, sources: Mapping[str, list[TokenShard]], weights: Mapping[str, float]
) -> MixtureLoader:
    """The pretraining loader: this rank's rows of each global batch of the mixture."""
    world = distributed.World.from_env()
    return MixtureLoader(
        sources,
        weights,
        LoaderConfig(
            seq_len=cfg.seq_len,
            batch_size=cfg.micro_batch_size * world.world_size,
            seed=cfg.seed,
            split="train",
            document_boundaries=cfg.document_boundaries,
            rank=world.rank,
            world_size=world.world_size,
        ),
    )


def train(
    cfg: TrainConfig,
    sources: Mapping[str, list[TokenShard]],
    weights: Mapping[str, float],
    out: Path,
    log: Callable[[StepLog], None] | None = None,
    peak_flops: float = 0.0,
) -> phi.PhiForCausalLM:
    """Pretrain on the mixture (see ``train_on``)."""
    vocab = next(iter(next(iter(sources.values())))).stats.vocab_size
    return train_on(cfg, lambda: mixture_loader(cfg, sources, weights), vocab, out, log, peak_flops)


@dataclass
class _Run:
    """What a training run holds between steps."""

    model: phi.PhiForCausalLM
    opt: torch.optim.AdamW
    loader: object
    runner: distributed.Runner
    world: distributed.World
    device: torch.device
    scaler: torch.amp.GradScaler | None
    step: int
    deepspeed: bool  # the DeepSpeed engine accumulates, scales and checkpoints itself
    accum: int  # micro-batches per optimizer step on this rank (the global batch over the world)


def train_on(
    cfg: TrainConfig,
    make_loader: Callable[[], object],
    vocab: int,
    out: Path,
    log: Callable[[StepLog], None] | None = None,
    peak_flops: float = 0.0,
    init: Path | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> phi.PhiForCausalLM:
    """Train (or resume) into ``out`` on the batches of ``make_loader()`` (a MixtureLoader or an
    SFTLoader); ``init`` starts from an exported model (a parent checkpoint). Under torchrun or the
    deepspeed launcher every rank reads its rows of each global batch; rank 0 logs and checkpoints.
    ``loss_fn(logits, input_ids, labels)`` replaces the next-token loss (DPO)."""
    run = _start(cfg, make_loader, vocab, out, init)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    autocast_dtype = None if run.deepspeed else dtype  # DeepSpeed keeps bf16 weights itself
    flops = run.model.flops_per_token(cfg.seq_len)
    run.model.train()
    while run.step < cfg.max_steps:
        start = time.perf_counter()
        for group in run.runner.optimizer.param_groups:
            group["lr"] = lr_at(run.step, cfg)
        total, norm = _optimizer_step(cfg, run, autocast_dtype, loss_fn)
        run.step += 1
        step, world = run.step, run.world
        seconds = time.perf_counter() - start
        tps = cfg.tokens_per_step / seconds  # all ranks together
        if log and world.rank == 0:
            log(
                StepLog(
                    step,
                    total,
                    lr_at(step - 1, cfg),
                    norm,
                    step * cfg.tokens_per_step,
                    tps,
                    mfu(flops, tps, peak_flops, world.world_size),
                )
            )
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            _checkpoint(out, cfg, run)
    return run.model


def _start(
    cfg: TrainConfig, make_loader: Callable[[], object], vocab: int, out: Path, init: Path | None
) -> _Run:
    """Seed, build the model (from ``init``), the optimizer and the loader, and restore the last
    checkpoint in ``out`` if there is one."""
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    world = distributed.World.from_env()
    accum = cfg.grad_accum(world.world_size)  # before anything is built: a clear error first
    device = distributed.device(world)
    model = phi.build(cfg.model_config(vocab))
    if init is not None:
        from safetensors.torch import load_file

        phi.load_export(model, load_file(init / "model.safetensors"))
    model.to(device)
    model.gradient_checkpointing = cfg.activation_checkpointing
    opt = _optimizer(model, cfg)
    loader = make_loader()
    deepspeed = cfg.backend == "deepspeed"
    # fp16 scales the loss so small gradients survive, skipping steps whose gradients overflowed
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" and not deepspeed else None
    step = 0 if deepspeed else _load_checkpoint(out, model, opt, loader, cfg, scaler)
    runner = distributed.setup(
        model,
        opt,
        backend=cfg.backend,
        zero_stage=cfg.zero_stage,
        grad_clip=cfg.grad_clip,
        accum=accum,
        micro_batch=cfg.micro_batch_size,
        precision=cfg.precision,
        scaler=scaler,
        ds_config=cfg.ds_config,
    )
    runner.settle(torch.zeros((cfg.micro_batch_size, cfg.seq_len), dtype=torch.long, device=device))
    if hasattr(model, "router_stats"):
        model.router_stats(reset=True)  # the experts' load counts real batches only
    if deepspeed:
        if world.rank == 0:  # what DeepSpeed was given: the derived config with the user's ds_config over it
            _write_json(out / "deepspeed_config.json", runner.config)
        state = runner.load(out / DEEPSPEED)  # the engine's own checkpoint: ZeRO shards, optimizer, step
        if state is not None:
            _check_config(out / DEEPSPEED, state["config"], cfg)
            loader.load_state_dict(state["loader"])
            _set_rng_state(state["rng"])
            step = int(state["step"])
    return _Run(model, opt, loader, runner, world, device, scaler, step, deepspeed, accum)


def _optimizer_step(cfg: TrainConfig, run: _Run, autocast_dtype, loss_fn) -> tuple[float, float]:
    """One optimizer step over ``run.accum`` micro-batches: (mean loss, gradient norm)."""
    runner, device, deepspeed = run.runner, run.device, run.deepspeed
    total = 0.0
    for _ in range(run.accum):
        batch = run.loader.next_batch()
        ids = torch.from_numpy(batch.input_ids).to(device, non_blocking=True)
        labels = torch.from_numpy(batch.labels).to(device, non_blocking=True)
        kwargs = {}
        if batch.position_ids is not None:
            kwargs = {
                "position_ids": torch.from_numpy(batch.position_ids).to(device),
                "cu_seqlens": torch.from_numpy(batch.cu_seqlens).to(device),
            }
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = runner.forward(ids, **kwargs)
            if loss_fn is None:  # next-token loss; labels of -100 (prompts, padding) are ignored
                loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
            else:
                loss = loss_fn(logits, ids, labels)
            aux = getattr(run.model, "aux_loss", None)  # mixture of experts: the load-balancing loss
            if aux is not None and run.model.cfg.router_aux_loss_coef:
                loss = loss + run.model.cfg.router_aux_loss_coef * aux.float()
        runner.backward(loss if deepspeed else loss / run.accum)  # DeepSpeed divides by itself
        total += loss.item() / run.accum
        if deepspeed:
            norm = runner.step()  # steps the optimizer at the accumulation boundary only
    if not deepspeed:
        norm = runner.step()
    return total, norm


def _checkpoint(out: Path, cfg: TrainConfig, run: _Run) -> None:
    if run.deepspeed:  # collective: every rank writes its ZeRO shard
        run.runner.save(
            out / DEEPSPEED,
            {"step": run.step, "loader": run.loader.state_dict(), "rng": _rng_state(), "config": asdict(cfg)},
        )
    elif run.world.rank == 0:
        save_checkpoint(out, run.model, run.opt, run.step, run.loader, cfg, run.scaler)


# Dense peak FLOP/s per device for bf16 matmuls (vendor data sheets; fp32 uses TF32 peaks off).
PEAK_BF16 = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "A10G": 125e12, "L4": 121e12}


def peak_flops(precision: str) -> float:
    """This rank's device peak for ``precision`` (0 where unknown: the CPU, an unlisted GPU)."""
    if not torch.cuda.is_available() or precision not in ("bf16", "fp16"):
        return 0.0
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), 0.0)


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float, devices: int) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the devices' peak (0 when unknown)."""
    if not peak_flops:
        return 0.0
    return flops_per_token * tokens_per_s / (peak_flops * devices)


def validation_loss(
    model: phi.PhiForCausalLM,
    sources: Mapping[str, list[TokenShard]],
    weights: Mapping[str, float],
    seq_len: int,
    batches: int = 4,
    batch_size: int = 8,
    seed: int = 0,
) -> float:
    """Mean loss on fixed batches of the held-out documents at ``seq_len`` (midtraining reports it at
    the old and the new context length). Sources without held-out tokens are left out."""
    from phi_assets.mixture.loader import Source

    config = LoaderConfig(seq_len=seq_len, batch_size=batch_size, seed=seed, split="val")
    held_out = {
        name: w
        for name, w in weights.items()
        if w > 0
        and name in sources
        and Source(name, list(sources[name]), "val", config.val_fraction, seed).num_tokens > 0
    }
    if not held_out:
        raise ValueError("no source has held-out documents to compute a validation loss on")
    total = sum(held_out.values())
    loader = MixtureLoader(
        {n: sources[n] for n in held_out}, {n: w / total for n, w in held_out.items()}, config
    )
    device = next(model.parameters()).device
    model.eval()
    losses = []
    with torch.no_grad():
        for _ in range(batches):
            b = loader.next_batch()
            logits = model(torch.from_numpy(b.input_ids).to(device))
            labels = torch.from_numpy(b.labels).to(device)
            losses.append(float(F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())))
    model.train()
    return float(np.mean(losses))
