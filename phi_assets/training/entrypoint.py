"""The training process: ``python -m phi_assets.training.entrypoint --config FILE``.

Runs standalone, under torchrun or the deepspeed launcher, or launched by a Dagster asset through
Pipes (then rank 0 streams every step's metrics back as Pipes messages, and a last message carries
the summary). The config file (JSON; a local path or an fsspec URI) names everything the run reads
and writes:

    {"stage": "pretrain" | "midtrain" | "sft" | "dpo",
     "train": {TrainConfig fields}  (or "recipe": "debug" with "train" as overrides),
     "tokenizer": "path/to/tokenizer", "out": "path/to/run",
     "init": "path/to/parent/hf"                       (midtrain, sft, dpo: the parent checkpoint)
     "expand": {"width": 2, "layers": 3, "split_noise": 0.5, "seed": 0, "parent_overrides": {}}
                                                       (pretrain from init: start from the parent widened and
                                                        deepened by transfer.expand; "train" names the
                                                        expanded shape in its overrides)
     "sources": {"filtered_code": ["path/to/tokens", ...]}, "weights": {"filtered_code": 0.7, ...}
                                                       (pretrain, midtrain: the mixture)
     "eval_seq_lens": [2048, 4096]                     (validation loss at these lengths, at the end)
     "examples": "path/to/sft.parquet"                 (sft: columns prompt, completion)
     "pairs": "path/to/pairs.parquet", "beta": 0.1     (dpo: prompt, chosen, rejected; the frozen
                                                        reference is "reference", default "init")
     "publish": "s3://.../run"                         (optional: hf/ and metrics.jsonl copied there)
     "ds_config": "path/to/ds_config.json"             (optional, backend deepspeed: keys over the
                                                        derived DeepSpeed config; or --ds-config)}

Inputs given as URIs are staged before training, once per node (``staging.py``: local rank 0 copies
them into ``out/inputs/``, the other ranks wait at a barrier). It writes ``out/metrics.jsonl`` (one
line per step), ``out/checkpoint/`` (atomic, for resume) and, at the end, ``out/hf/`` (config.json,
model.safetensors and the tokenizer files, which transformers and vLLM load) and
``out/summary.json``. Running the same config again resumes from the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from phi_assets.mixture.tokens import TokenShard
from phi_assets.training import staging, trainer

PIPES_ENV = "DAGSTER_PIPES_CONTEXT"
STAGES = ("pretrain", "midtrain", "sft", "dpo")
NEEDS = {
    "pretrain": ("sources", "weights"),
    "midtrain": ("sources", "weights", "init"),
    "sft": ("examples", "init"),
    "dpo": ("pairs", "init"),
}


is_uri = staging.is_uri


def read_text(path: str) -> str:
    if is_uri(path):
        import fsspec

        with fsspec.open(path, "r") as f:
            return f.read()
    return Path(path).read_text()


def load_config(path: str | Path, ds_config: str | None = None) -> dict:
    """The run's config, its ``train`` a ``TrainConfig``; a DeepSpeed config file (``ds_config``, or
    the config's own ``"ds_config"`` key) goes into ``train.ds_config``, so it is recorded with the run
    and checked on resume."""
    raw = json.loads(read_text(str(path)))
    stage = raw.get("stage", "pretrain")
    if stage not in STAGES:
        raise ValueError(f"{path}: stage must be one of {STAGES}, got {stage!r}")
    missing = [k for k in ("tokenizer", "out", *NEEDS[stage]) if k not in raw]
    if missing:
        raise ValueError(f"{path}: stage {stage} needs {', '.join(missing)}")
    if raw.get("expand") and not raw.get("init"):
        raise ValueError(f"{path}: expand needs init, the checkpoint to expand")
    if "recipe" in raw:
        if raw["recipe"] not in trainer.TRAIN_RECIPES:
            raise ValueError(f"{path}: recipe must be one of {sorted(trainer.TRAIN_RECIPES)}")
    train = dict(raw.get("train", {}))
    ds_file = ds_config or raw.get("ds_config")
    if ds_file:
        try:
            overrides = json.loads(read_text(str(ds_file)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"ds_config {ds_file}: not JSON ({exc})") from exc
        if not isinstance(overrides, dict):
            raise ValueError(f"ds_config {ds_file}: must hold a JSON object, got {type(overrides).__name__}")
        train["ds_config"] = {**train.get("ds_config", {}), **overrides}
    if "betas" in train:
        train["betas"] = tuple(train["betas"])
    if "recipe" in raw:
        cfg = replace(trainer.TRAIN_RECIPES[raw["recipe"]](), **train)
    else:
        cfg = trainer.TrainConfig(**train)
    return {**raw, "stage": stage, "train": cfg}


#: The config's keys that name one input each (``sources`` names lists of them).
INPUT_KEYS = ("tokenizer", "init", "reference", "examples", "pairs")


def _with_local_inputs(config: dict, located: dict[str, Path]) -> dict:
    """``config`` reading every input from its local path (staged copies in place of URIs)."""
    local = {k: str(located[config[k]]) for k in INPUT_KEYS if config.get(k)}
    if "sources" in config:
        local["sources"] = {n: [str(located[p]) for p in ps] for n, ps in config["sources"].items()}
    return {**config, **local}


def inputs(config: dict) -> list[str]:
    """Every input path or URI the config names."""
    paths = [config.get(k) for k in INPUT_KEYS]
    paths += [p for shards in config.get("sources", {}).values() for p in shards]
    return [p for p in paths if p]


def publish(out: Path, uri: str) -> None:
    """Copy the export and the metrics to ``uri`` (the asset reads them there on a cluster)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    dest = f"{root.rstrip('/')}/hf"
    if fs.exists(dest):  # a resumed run publishes again: replace, never nest
        fs.rm(dest, recursive=True)
    fs.put(str(out / "hf") + "/", dest + "/", recursive=True)
    for name in ("metrics.jsonl", "summary.json"):
        fs.put_file(str(out / name), f"{root.rstrip('/')}/{name}")


EXPORT_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def export_hf(model, tokenizer_dir: Path, out: Path, dtype: str = "fp32") -> Path:
    """A Hugging Face directory, written beside and renamed into place; weights in ``dtype`` (fp32 or
    bf16), which config.json's ``torch_dtype`` states (transformers and vLLM load them as such)."""
    import torch
    from safetensors.torch import save_file

    from phi_assets.training import model as phi

    if dtype not in EXPORT_TORCH_DTYPES:
        raise ValueError(f"export dtype must be one of {sorted(EXPORT_TORCH_DTYPES)}, got {dtype!r}")
    torch_dtype = EXPORT_TORCH_DTYPES[dtype]
    final, tmp = out / "hf", out / f".hf.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {
        k: v.detach().to("cpu", getattr(torch, torch_dtype)).contiguous()
        for k, v in phi.export_state(model).items()
    }
    save_file(weights, tmp / "model.safetensors")  # from any device, in the dtype config.json states
    config = {**model.cfg.hf_config(), "torch_dtype": torch_dtype}
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copyfile(f, tmp / f.name)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    return final


def _world():
    from phi_assets.training import distributed

    return distributed.World.from_env()


def _load_model(hf: Path, cfg: trainer.TrainConfig, vocab: int):
    from safetensors.torch import load_file

    from phi_assets.training import distributed
    from phi_assets.training import model as phi

    model = phi.load_export(phi.build(cfg.model_config(vocab)), load_file(hf / "model.safetensors"))
    return model.to(distributed.device(_world()))


def _expanded(parent: Path, spec: dict, cfg: trainer.TrainConfig, out: Path, vocab: int, world) -> Path:
    """``expand``: the parent checkpoint expanded (``transfer.expand``) into ``out/expanded/``, written once
    per node by its local rank 0 (atomically; a resumed run finds it; on a run directory the nodes share, the
    first rename wins: the expansion is seeded, so every copy is the same) while the node's other ranks wait;
    the run starts from it. The result must have the shape the run trains (``cfg``'s overrides)."""
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file

    from phi_assets.training import transfer

    target = out / "expanded"
    if world.local_rank == 0 and not (target / "model.safetensors").is_file():
        small = replace(cfg, overrides=spec.get("parent_overrides", {})).model_config(vocab)
        state, big = transfer.expand(
            load_file(parent / "model.safetensors"), small, int(spec["width"]), int(spec["layers"]),
            split_noise=float(spec.get("split_noise", 0.5)), seed=int(spec.get("seed", 0)),
        )
        trained = cfg.model_config(vocab)
        if big != trained:
            raise ValueError(f"expand {spec} gives {big}, but the run trains {trained}")
        tmp = out / f".expanded.{os.getpid()}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(state, tmp / "model.safetensors")
        try:
            os.replace(tmp, target)
        except OSError:  # another node's rank 0 on a shared run directory renamed its copy first: keep it
            if not (target / "model.safetensors").is_file():
                raise
            shutil.rmtree(tmp)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return target


def _frame_rows(path: Path, columns: list[str]) -> list[tuple[str, ...]]:
    import polars as pl

    frame = pl.read_parquet(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return list(frame.select(columns).iter_rows())


@dataclass
class _Stage:
    """What a stage trains on: its loader, its loss (None: next-token), and what the end reports on."""

    make_loader: Callable[[], object]
    loss_fn: Callable | None = None
    sources: dict = field(default_factory=dict)  # pretrain, midtrain: the opened shards
    weights: dict = field(default_factory=dict)
    reference: object = None  # dpo: the frozen reference model
    pairs: int = 0  # dpo: how many pairs


def run(config: dict, pipes=None) -> dict:
    from phi_assets.mixture import tokenizer as tk
    from phi_assets.training import distributed

    cfg: trainer.TrainConfig = config["train"]
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    world = _world()
    cfg.grad_accum(world.world_size)  # a global batch this world cannot split fails before staging
    distributed.init_process_group(world)
    config = _with_local_inputs(config, staging.stage(inputs(config), out, world))
    loaded = tk.load(Path(config["tokenizer"]))
    init = Path(config["init"]) if config.get("init") else None
    if init is not None and config.get("expand"):
        init = _expanded(init, config["expand"], cfg, out, loaded.vocab_size, world)
    summary: dict = {"stage": config["stage"]}
    stage = _prepare(config, cfg, out, loaded, init, world, summary)
    metrics = (out / "metrics.jsonl").open("a") if world.rank == 0 else None
    made: list = []  # the loader the run trained on, to read how far it went

    def make_loader():
        made.append(stage.make_loader())
        return made[-1]

    try:
        model = trainer.train_on(
            cfg,
            make_loader,
            loaded.vocab_size,
            out,
            log=_step_logger(metrics, pipes),
            peak_flops=float(config.get("peak_flops", 0.0)) or trainer.peak_flops(cfg.precision),
            init=init,
            loss_fn=stage.loss_fn,
        )
    finally:
        if metrics is not None:
            metrics.close()
    summary.update(
        steps=cfg.max_steps,
        global_batch_size=cfg.global_batch_size,
        grad_accum=cfg.grad_accum(world.world_size),
        world_size=world.world_size,
        tokens=cfg.max_steps * cfg.tokens_per_step,
        sequences_seen=made[-1].sequences_seen(),  # measured: where the loader stands, all ranks together
        num_params=model.num_params(),
    )
    if world.rank != 0:
        return summary
    return _finish(config, cfg, out, model, stage, summary)


def _prepare(
    config: dict, cfg: trainer.TrainConfig, out: Path, loaded, init: Path | None, world, summary: dict
) -> _Stage:
    """The stage's data (and, for DPO, its reference model and loss); what it knows before training
    goes into ``summary``."""
    if config["stage"] in ("pretrain", "midtrain"):
        return _mixture_stage(config, cfg, out, loaded, init, summary)
    if config["stage"] == "sft":
        return _sft_stage(config, cfg, out, loaded, world, summary)
    return _dpo_stage(config, cfg, out, loaded, world, summary)


def _sft_stage(config: dict, cfg: trainer.TrainConfig, out: Path, loaded, world, summary: dict) -> _Stage:
    from phi_assets.training.sft import SFTLoader, encode_pairs

    examples = encode_pairs(loaded, _frame_rows(Path(config["examples"]), ["prompt", "completion"]))

    def make_loader():
        return SFTLoader(
            examples,
            cfg.seq_len,
            cfg.micro_batch_size,
            loaded.eot_id,
            cfg.seed,
            world.rank,
            world.world_size,
        )

    summary["examples"] = len(examples)
    return _Stage(make_loader)


def _dpo_stage(config: dict, cfg: trainer.TrainConfig, out: Path, loaded, world, summary: dict) -> _Stage:
    """DPO: the pairs, and the frozen reference (``reference``, default the ``init`` checkpoint)."""
    from phi_assets.training.dpo import DPOLoader, dpo_loss, encode_preferences

    pairs = encode_preferences(loaded, _frame_rows(Path(config["pairs"]), ["prompt", "chosen", "rejected"]))
    reference = _load_model(Path(config.get("reference") or config["init"]), cfg, loaded.vocab_size)

    def make_loader():
        return DPOLoader(
            pairs, cfg.seq_len, cfg.micro_batch_size, loaded.eot_id, cfg.seed, world.rank, world.world_size
        )

    summary["pairs"] = len(pairs)
    loss_fn = dpo_loss(reference, float(config.get("beta", 0.1)))
    return _Stage(make_loader, loss_fn, reference=reference, pairs=len(pairs))


def _mixture_stage(
    config: dict, cfg: trainer.TrainConfig, out: Path, loaded, init: Path | None, summary: dict
) -> _Stage:
    """Pretraining and midtraining: the mixture's shards; midtraining (``init``) first measures the
    parent's validation losses, to compare with the result's."""
    sources = {name: [TokenShard.open(Path(p)) for p in paths] for name, paths in config["sources"].items()}
    weights = config["weights"]

    def make_loader():
        return trainer.mixture_loader(cfg, sources, weights)

    if init is not None:
        parent = _load_model(init, cfg, loaded.vocab_size)
        summary["parent_val_loss"] = _val_losses(config, cfg, parent, sources, weights)
        del parent
    return _Stage(make_loader, sources=sources, weights=weights)


def _step_logger(metrics, pipes) -> Callable[[trainer.StepLog], None]:
    """Each step's metrics appended to ``metrics.jsonl`` (rank 0) and, under Pipes, sent as a message."""

    def log(entry: trainer.StepLog) -> None:
        if metrics is None:
            return
        row = asdict(entry)
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        if pipes is not None:
            pipes.report_custom_message({"kind": "step", **row})

    return log


def _finish(config: dict, cfg: trainer.TrainConfig, out: Path, model, stage: _Stage, summary: dict) -> dict:
    """Rank 0 after training: the final evaluations, the export, the summary, and the publication."""
    if hasattr(model, "router_stats"):  # mixture of experts: the experts' load in this process's steps
        summary["router"] = model.router_stats(reset=True)
    if stage.sources:
        summary["val_loss"] = _val_losses(config, cfg, model, stage.sources, stage.weights)
    if config["stage"] == "dpo":
        from phi_assets.training.dpo import preference_accuracy

        summary["preference_accuracy"] = preference_accuracy(
            model, stage.reference, stage.make_loader(), stage.pairs
        )
    summary["hf"] = str(export_hf(model, Path(config["tokenizer"]), out, cfg.export_dtype))
    _write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    if config.get("publish"):
        publish(out, config["publish"])
    return summary


def _val_losses(config: dict, cfg: trainer.TrainConfig, model, sources, weights) -> dict[str, float]:
    """Validation loss at each of ``eval_seq_lens`` (default: the training length), keyed by length."""
    lengths = config.get("eval_seq_lens") or [cfg.seq_len]
    return {str(n): trainer.validation_loss(model, sources, weights, int(n), seed=cfg.seed) for n in lengths}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--ds-config", help="a DeepSpeed config (JSON) whose keys override the derived ones")
    args = ap.parse_args(argv)
    try:
        config = load_config(args.config, args.ds_config)
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from phi_assets.training import distributed

    if PIPES_ENV in os.environ and os.environ.get("RANK", "0") == "0":  # only rank 0 reports
        from dagster_pipes import open_dagster_pipes

        with open_dagster_pipes() as pipes:
            summary = run(config, pipes)
            pipes.report_custom_message({"kind": "summary", **summary})
    else:
        summary = run(config)
        print(json.dumps(summary))  # standalone: the summary on stdout (under Pipes it is a message)
    distributed.teardown()  # on success only: after an error a barrier could wait for a dead rank
    return 0


if __name__ == "__main__":
    sys.exit(main())
