"""Data parallelism in one place: plain torch, DDP under torchrun, or DeepSpeed ZeRO-1/2.

``setup(model, optimizer, cfg)`` reads the launcher's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, set by torchrun and the deepspeed launcher), initialises the process group (gloo on
CPU, nccl on CUDA) and returns a ``Runner`` with one interface for the training loop: ``forward``,
``backward``, ``step`` (clipping included) and ``save``. DeepSpeed is imported here only, when
``cfg.backend == "deepspeed"``; on CPU it needs ``DS_ACCELERATOR=cpu``. Its config
(``deepspeed_config``) is derived from the training config, with a user's ``ds_config`` over it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from phi_assets.training.configs import BACKENDS  # noqa: F401  (torch or deepspeed; re-exported)


@dataclass
class World:
    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls) -> World:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )


def device(world: World) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` where CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


class Runner:
    """The plain torch loop (DDP-wrapped when there are several processes)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        grad_clip: float,
        world: World,
        scaler: torch.amp.GradScaler | None = None,
    ):
        self.module, self.optimizer, self.grad_clip, self.world = model, optimizer, grad_clip, world
        self.scaler = scaler  # fp16: losses scaled, gradients unscaled before clipping
        self.model = model
        if world.world_size > 1:
            on_cuda = next(model.parameters()).is_cuda
            moe = getattr(getattr(model, "cfg", None), "num_experts", 0) > 0  # an expert a batch skips
            self.model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[world.local_rank] if on_cuda else None, find_unused_parameters=moe
            )

    def settle(self, input_ids: torch.Tensor) -> None:
        """Make every real step reduce gradients the same way, whichever step a run starts at. DDP
        buckets gradients in parameter order for its first iteration, then rebuilds the buckets in
        the order gradients became ready; so the first step after a resume would sum across ranks in
        another order than the uninterrupted run's same step did, and the weights would drift by
        rounding. One throwaway forward and backward (zero gradients, no optimizer step, every RNG
        state put back) triggers the rebuild before the first real step, in fresh and resumed runs
        alike. A no-op without DDP."""
        if not isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        (self.model(input_ids).float() * 0).sum().backward()
        self.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.model(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip))
        if self.scaler is None:
            self.optimizer.step()
        else:  # skips the step when a gradient overflowed, and adjusts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm


#: DeepSpeed keys the training config owns: a ``ds_config`` may repeat them, not contradict them.
OWNED = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "bf16.enabled",
    "fp16.enabled",
)


def deepspeed_config(
    *,
    micro_batch: int,
    accum: int,
    world_size: int,
    grad_clip: float,
    zero_stage: int,
    precision: str,
    overrides: dict | None = None,
) -> dict:
    """The DeepSpeed config a run uses: the batch shape and precision from the training config, ZeRO
    ``zero_stage`` with DeepSpeed's usual communication settings, and ``overrides`` (a user's
    ``ds_config.json``) merged over it key by key (nested objects merged, not replaced). Overrides
    may set anything (ZeRO stage, ``offload_optimizer``, bucket sizes, ...) except a different batch
    shape or precision than the training config's, which the loader and the schedule follow."""
    config = {
        "train_batch_size": micro_batch * accum * world_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": {
            "stage": zero_stage,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": 500_000_000,
            "allgather_bucket_size": 500_000_000,
        },
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},  # DeepSpeed's own dynamic loss scaler
        "steps_per_print": 10**9,
    }
    foreign = sorted({"optimizer", "scheduler"} & set(overrides or {}))
    if foreign:
        raise ValueError(
            f"ds_config sets {foreign}: the trainer builds AdamW and sets the learning rate of each step "
            "itself (lr, betas, weight_decay, schedule and warmup_steps are training config fields)"
        )
    merged = _merged(config, overrides or {})
    clashes = [
        f"{key} {_lookup(merged, key)!r} (the training config says {_lookup(config, key)!r})"
        for key in OWNED
        if _lookup(merged, key) != _lookup(config, key)
    ]
    if clashes:
        raise ValueError(
            "ds_config contradicts the training config on "
            + "; ".join(clashes)
            + ": set global_batch_size, micro_batch_size and precision in the training config instead"
        )
    return merged


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merged(base[key], value) if both else value
    return out


def _lookup(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config.get(part, {}) if isinstance(config, dict) else {}
    return config


class DeepSpeedRunner(Runner):
    """DeepSpeed's engine: it accumulates, clips and steps (the ZeRO stage of its config)."""

    def __init__(self, model, optimizer, grad_clip: float, world: World, config: dict):
        import deepspeed

        self.config = config
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config
        )
        self.module, self.model, self.grad_clip, self.world = model, self.engine, grad_clip, world

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> float:
        self.engine.step()  # at the accumulation boundary it clips and steps the optimizer
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save(self, directory: Path, client_state: dict) -> None:
        """Collective: each rank writes its ZeRO partition under ``global_stepN``; once every rank is
        done (a barrier), rank 0 points ``latest`` at it with an atomic rename, so a resumed run
        never reads a tag some rank had not finished writing."""
        tag = f"global_step{client_state['step']}"
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)
        if dist.is_initialized():
            dist.barrier()
        if self.world.rank == 0:
            tmp = directory / f".latest.{os.getpid()}.tmp"
            tmp.write_text(tag)
            os.replace(tmp, directory / "latest")
        if dist.is_initialized():
            dist.barrier()

    def load(self, directory: Path) -> dict | None:
        """The ``client_state`` of the latest checkpoint (engine, optimizer and ZeRO shards restored),
        or None where there is none."""
        if not (directory / "latest").is_file():
            return None
        path, client_state = self.engine.load_checkpoint(str(directory))
        if path is None:
            raise ValueError(f"{directory}: DeepSpeed could not load its latest checkpoint")
        return client_state


def setup(
    model,
    optimizer,
    *,
    backend: str,
    zero_stage: int,
    grad_clip: float,
    accum: int,
    micro_batch: int,
    precision: str,
    scaler: torch.amp.GradScaler | None = None,
    ds_config: dict | None = None,
) -> Runner:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    world = World.from_env()
    if backend == "deepspeed":
        import deepspeed

        config = deepspeed_config(
            micro_batch=micro_batch,
            accum=accum,
            world_size=world.world_size,
            grad_clip=grad_clip,
            zero_stage=zero_stage,
            precision=precision,
            overrides=ds_config,
        )
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        return DeepSpeedRunner(model, optimizer, grad_clip, world, config)
    init_process_group(world)
    return Runner(model, optimizer, grad_clip, world, scaler)


def init_process_group(world: World) -> None:
    """Join the process group (nccl on CUDA, gloo on CPU) when there are several processes; a no-op
    when joined already. Its collectives wait up to ``PHI_DIST_TIMEOUT_MIN`` minutes (default 60):
    staging a large input runs before the first barrier."""
    if world.world_size > 1 and not dist.is_initialized():
        from datetime import timedelta

        minutes = float(os.environ.get("PHI_DIST_TIMEOUT_MIN", "60"))
        dist.init_process_group(
            "nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(minutes=minutes)
        )


def teardown() -> None:
    """Leave the process group cleanly (all ranks meet first): a process that exits with gloo's
    threads still running is aborted by the C++ runtime ("terminate called without an active
    exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
