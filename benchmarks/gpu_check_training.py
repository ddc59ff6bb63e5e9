"""The parts of the GPU check (``gpu_check.py``) that train: throughput and MFU at the phi-1 and the
phi-3-mini shapes, DeepSpeed ZeRO-2 steps, and vLLM's greedy decoding of an exported model against ours;
with the settings and helpers the parts share. ``python benchmarks/gpu_check_training.py REQUEST`` is the
vLLM child process (``run_vllm``)."""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from phi_assets.training import attention, distributed, trainer  # noqa: E402
from phi_assets.training import model as phi  # noqa: E402

GOAL_MFU = 0.55  # the goal for phi-1 (1.3B) on one H100
MIN_GREEDY_MATCH = 0.75  # share of prompts whose first tokens must agree between vLLM and our model
WEIGHTS = {"code": 0.7, "web": 0.3}
PROMPTS = ("def ", "import os\n", "class Template:\n", "    return ", "for i in range(",
           'if __name__ == "__main__":', "# Split the string", "    def __init__(self")  # fmt: skip


class Skipped(Exception):
    """A part that cannot run here; its message is the reason recorded."""


@dataclass(frozen=True)
class Settings:
    smoke: bool
    device: torch.device
    work: Path  # scratch space, removed at the end
    max_batch: int  # throughput: the largest micro-batch tried
    steps: int  # throughput: timed steps per micro-batch (after 2 warm-up steps)
    greedy_tokens: int
    vllm: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@contextlib.contextmanager
def env_defaults(values: dict[str, str]) -> Iterator[None]:
    """Set the variables not already set, and remove them again afterwards."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def package_version(name: str) -> str:
    for dist in (name, f"{name}-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    return "not installed"


# --- 3. throughput and MFU --------------------------------------------------------------------------


def adamw(model: torch.nn.Module, cfg: trainer.TrainConfig, fused: bool) -> torch.optim.AdamW:
    """The trainer's AdamW with its parameter groups (``trainer._optimizer``: no decay on biases, norms,
    embeddings), ``fused`` (one kernel for all parameters, CUDA only)."""
    groups = [
        {"params": g["params"], "weight_decay": g["weight_decay"]}
        for g in trainer._optimizer(model, cfg).param_groups
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)


def timed_steps(runner: distributed.Runner, cfg: trainer.TrainConfig, batch: int, steps: int) -> float:
    """Seconds for ``steps`` optimizer steps of one micro-batch each, after 2 warm-up steps: the trainer's
    step (bf16 autocast, float32 cross-entropy, clipping, AdamW, the loss read back every step)."""
    device = next(runner.module.parameters()).device
    tokens = torch.randint(0, runner.module.cfg.vocab_size, (batch, cfg.seq_len + 1), device=device)
    ids, labels = tokens[:, :-1], tokens[:, 1:]
    warmup = 2
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        for group in runner.optimizer.param_groups:
            group["lr"] = trainer.lr_at(i, cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = runner.forward(ids)
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        runner.backward(loss)
        loss.item()
        runner.step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def trial(runner: distributed.Runner, cfg: trainer.TrainConfig, batch: int, steps: int, flops: float) -> dict:
    """One micro-batch size: tokens/s and MFU, or ``oom``."""
    torch.cuda.reset_peak_memory_stats()
    try:
        seconds = timed_steps(runner, cfg, batch, steps)
    except torch.OutOfMemoryError:
        seconds = None
    runner.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.empty_cache()
    if seconds is None:
        return {"oom": True}
    tokens_per_s = batch * cfg.seq_len * steps / seconds
    return {
        "oom": False,
        "tokens_per_s": round(tokens_per_s),
        "mfu": round(trainer.mfu(flops, tokens_per_s, trainer.peak_flops("bf16"), 1), 4),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
    }


def search_batches(model, runner, cfg: trainer.TrainConfig, s: Settings, flops: float) -> list[dict]:
    """Doubling micro-batches from 1 until one runs out of memory, without activation checkpointing; then,
    with it, from twice the largest that fitted, while that stays within ``max_batch``."""
    trials, largest = [], 0
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        batch = max(1, 2 * largest) if checkpointing else 1
        while batch <= s.max_batch:
            result = {"micro_batch": batch, "activation_checkpointing": checkpointing}
            result.update(trial(runner, cfg, batch, s.steps, flops))
            trials.append(result)
            print(f"  throughput: {result}", file=sys.stderr, flush=True)
            if result["oom"]:
                break
            largest = max(largest, batch)
            batch *= 2
    return trials


def throughput(
    s: Settings,
    recipe: str = "phi1_pretrain",
    smoke_model: str = "debug_tiny",
    goal: float | None = GOAL_MFU,
) -> dict:
    """Tokens/s and MFU of the bf16 training step at the model and sequence length of the training recipe
    ``recipe`` (smoke: ``smoke_model`` at sequence 128); ``goal``: the MFU recorded as met or not (None:
    no goal). phi1_pretrain: phi1, sequence 2048, bf16, the paper's AdamW settings."""
    if not s.cuda:
        raise Skipped("no CUDA")
    cfg = trainer.TRAIN_RECIPES[recipe]()
    if s.smoke:
        cfg = replace(cfg, model=smoke_model, seq_len=128)
    model_cfg = cfg.model_config(phi.RECIPES[cfg.model]().vocab_size)
    torch.manual_seed(0)
    with torch.device(s.device):
        model = phi.build(model_cfg).train()
    runner = distributed.Runner(model, adamw(model, cfg, fused=True), cfg.grad_clip, distributed.World(0, 1, 0))
    flops = model.flops_per_token(cfg.seq_len)
    trials = search_batches(model, runner, cfg, s, flops)
    fitted = [t for t in trials if not t["oom"]]
    best = max(fitted, key=lambda t: t["tokens_per_s"]) if fitted else None
    result = {
        "recipe": recipe,
        "model": cfg.model,
        "params": model.num_params(),
        "seq_len": cfg.seq_len,
        "sliding_window": getattr(model_cfg, "sliding_window", None),
        "flops_per_token": flops,
        "peak_flops": trainer.peak_flops("bf16"),
        "attention": attention.backend(s.device, torch.bfloat16),
        "optimizer": "AdamW fused, trainer param groups; grad_accum 1 (an optimizer step per micro-batch)",
        "trials": trials,
        "best": best,
        "goal_mfu": goal,
        "goal_met": None if goal is None else bool(best and best["mfu"] >= goal),
        "checks": {"a_micro_batch_fits": best is not None},
    }
    del runner, model
    return result


def throughput_phi3_mini(s: Settings) -> dict:
    """``throughput`` at phi-3-mini's shape (``phi3_mini_pretrain``: 3.8B, sequence 4096 with its sliding
    window of 2047, no dropout; smoke: ``phi3_mini_debug``); no MFU goal is set for it."""
    return throughput(s, "phi3_mini_pretrain", smoke_model="phi3_mini_debug", goal=None)


# --- 4. DeepSpeed ZeRO-2 ----------------------------------------------------------------------------


@cache
def dataset(work: Path) -> tuple[dict, Path]:
    """A 512-token BPE and two token sources (code, web) from three standard-library modules."""
    from phi_assets.mixture import tokenizer as tk
    from phi_assets.mixture import tokens

    root = work / "data"
    texts = [Path(os.__file__).parent.joinpath(n).read_text() for n in ("textwrap.py", "string.py", "shlex.py")]
    tk.save(tk.train_bpe(iter(texts), 512), root / "tokenizer")
    loaded = tk.load(root / "tokenizer")
    docs = [p for t in texts for p in t.split("\n\n") if p.strip()]
    sources = {}
    for name, part in (("code", docs[::2]), ("web", docs[1::2])):
        ids = [f"{name}-{i}" for i in range(len(part))]
        tokens.write_shard(iter([(ids, part)]), loaded, root / name, "t")
        sources[name] = [tokens.TokenShard.open(root / name)]
    return sources, root / "tokenizer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deepspeed_zero2(s: Settings) -> dict:
    sources, _ = dataset(s.work)
    cfg = trainer.TrainConfig(
        seq_len=64,
        micro_batch_size=4,
        global_batch_size=8,  # two micro-batches accumulated per step
        max_steps=12 if s.smoke else 30,
        warmup_steps=2,
        lr=3e-3,
        checkpoint_every=10**6,  # one DeepSpeed checkpoint, at the end
        backend="deepspeed",
        zero_stage=2,
        precision="bf16" if s.cuda else "fp32",
        threads=1 if s.smoke else 0,  # a tiny model: more CPU threads only contend
    )
    single = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    logs: list[trainer.StepLog] = []
    with env_defaults(single):
        try:
            trainer.train(cfg, sources, WEIGHTS, s.work / "deepspeed", log=logs.append)
        finally:
            distributed.teardown()
    losses = [e.loss for e in logs]
    first, last = statistics.mean(losses[:3]), statistics.mean(losses[-3:])
    return {
        "model": cfg.model,
        "precision": cfg.precision,
        "zero_stage": cfg.zero_stage,
        "deepspeed": package_version("deepspeed"),
        "steps": len(logs),
        "losses": [round(x, 4) for x in losses],
        "first_loss": first,
        "last_loss": last,
        "checks": {
            "every_step_logged": len(logs) == cfg.max_steps,
            "losses_finite": all(math.isfinite(x) for x in losses),
            "loss_fell": last < first,
            "checkpoint_written": (s.work / "deepspeed" / trainer.DEEPSPEED / "latest").is_file(),
        },
    }


# --- 5. vLLM greedy parity --------------------------------------------------------------------------


def greedy(model: phi.PhiForCausalLM, prompts: list[list[int]], n: int) -> list[list[int]]:
    """Our model's greedy continuation of each prompt, ``n`` tokens, EOS ignored (as vLLM's ``ignore_eos``)."""
    device = next(model.parameters()).device
    answers = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            for _ in range(n):
                ids = torch.cat([ids, model(ids)[:, -1].float().argmax(-1, keepdim=True)], dim=1)
            answers.append(ids[0, len(prompt) :].tolist())
    return answers


def matching_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def run_vllm(request: dict, work: Path, timeout_s: float) -> dict:
    """``vllm_child`` in a child process (its own session, killed as a group afterwards), with the engine
    environment the project uses (``VLLMSettings.child_env``)."""
    from resources.llm.vllm_backend import VLLMSettings

    (work / "vllm-request.json").write_text(json.dumps(request))
    env = VLLMSettings(cpu_kvcache_gib=1, max_model_len=request["max_model_len"]).child_env()
    command = [sys.executable, __file__, str(work / "vllm-request.json")]
    with open(work / "vllm.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = "timeout"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if code != 0:
        tail = (work / "vllm.log").read_text()[-3000:]
        raise RuntimeError(f"the vLLM process ended with {code}:\n{tail}")
    return json.loads(Path(request["out"]).read_text())


def vllm_child(request_path: str) -> None:
    """In the child (``python gpu_check_training.py REQUEST``): load the export in vLLM, decode every
    prompt greedily and write the token ids; with the project's engine settings (in-process engine core
    on CPU, no chunked prefill there: ``resources/llm/vllm_backend.py``)."""
    from vllm.platforms import current_platform

    from resources.llm.vllm_backend import VLLMSettings, _scheduler_args

    request = json.loads(Path(request_path).read_text())
    on_cpu = current_platform.is_cpu()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if VLLMSettings().in_process_core(on_cpu) else "1"
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=request["model"],
        dtype=request["dtype"],
        max_model_len=request["max_model_len"],
        enforce_eager=True,
        seed=0,
        gpu_memory_utilization=0.5,
        **_scheduler_args(on_cpu, request["max_model_len"]),
    )
    params = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], ignore_eos=True)
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=p) for p in request["prompts"]], params, use_tqdm=False
    )
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    Path(request["out"]).write_text(json.dumps({"vllm": vllm.__version__, "tokens": tokens}))
    sys.stdout.flush()
    os._exit(0)  # no engine shutdown: the parent kills the session


def vllm_greedy(s: Settings) -> dict:
    if not s.vllm:
        raise Skipped("--skip-vllm")
    if importlib.util.find_spec("vllm") is None:
        raise Skipped("vllm is not installed")
    from phi_assets.mixture import tokenizer as tk
    from phi_assets.training import entrypoint

    sources, tokenizer_dir = dataset(s.work)
    cfg = trainer.TrainConfig(
        seq_len=64,
        micro_batch_size=8,
        max_steps=40 if s.smoke else 200,
        warmup_steps=5,
        lr=3e-3,
        dropout=False,
        checkpoint_every=10**6,
        threads=1 if s.smoke else 0,
        precision="bf16" if s.cuda else "fp32",
        export_dtype="bf16",  # the half-size export; vLLM serves it in bf16 on a GPU, upcast on a CPU
    )
    model = trainer.train(cfg, sources, WEIGHTS, s.work / "vllm-train").eval()
    dtype = cfg.export_dtype
    hf_dir = entrypoint.export_hf(model, tokenizer_dir, s.work / "vllm-export", dtype=dtype)
    encoder = tk.load(tokenizer_dir).tokenizer
    prompts = [encoder.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    reference = copy.deepcopy(model).to(torch.bfloat16)  # the exported weights
    if not s.cuda:
        reference = reference.to(torch.float32)  # as vLLM on a CPU computes with them
    ours = greedy(reference, prompts, s.greedy_tokens)
    request = {
        "model": str(hf_dir),
        "dtype": "bfloat16" if s.cuda else "float32",
        "max_model_len": model.cfg.max_position_embeddings,
        "max_tokens": s.greedy_tokens,
        "prompts": prompts,
        "out": str(s.work / "vllm-tokens.json"),
    }
    del model, reference
    free_memory()
    answer = run_vllm(request, s.work, timeout_s=300 if s.smoke else 420)
    theirs = answer["tokens"]
    matched = [a == b for a, b in zip(ours, theirs, strict=True)]
    prefixes = [matching_prefix(a, b) for a, b in zip(ours, theirs, strict=True)]
    fraction = sum(matched) / len(prompts)
    return {
        "vllm": answer["vllm"],
        "dtype": request["dtype"],
        "export_dtype": dtype,
        "train_steps": cfg.max_steps,
        "prompts": len(prompts),
        "tokens": s.greedy_tokens,
        "matched": sum(matched),
        "match_fraction": fraction,
        "matching_prefix_lengths": prefixes,
        "ours": ours,
        "vllm_tokens": theirs,
        "checks": {"greedy_match": fraction >= MIN_GREEDY_MATCH},
    }


if __name__ == "__main__":
    vllm_child(sys.argv[1])
