"""The training process: ``python -m phi_assets.training.entrypoint --config FILE``.

Runs standalone, under torchrun, or launched by a Dagster asset through Pipes (then every step's
metrics stream back as Pipes messages, and a last message carries the summary). The
config file (JSON) names everything the run reads and writes:

    {"train": {TrainConfig fields} | "recipe": "debug",  "overrides": {...},
     "sources": {"filtered_code": ["path/to/tokens", ...], ...}, "weights": {"filtered_code": 0.7, ...},
     "tokenizer": "path/to/tokenizer", "out": "path/to/run"}

It writes ``out/metrics.jsonl`` (one line per step), ``out/checkpoint/`` (atomic, for resume) and,
at the end, ``out/hf/``: config.json, model.safetensors and the tokenizer files, which transformers
and vLLM load. Running the same config again resumes from the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

from phi_assets.mixture.tokens import TokenShard
from phi_assets.training import trainer

PIPES_ENV = "DAGSTER_PIPES_CONTEXT"


def load_config(path: str | Path) -> dict:
    raw = json.loads(Path(path).read_text())
    missing = [k for k in ("sources", "weights", "tokenizer", "out") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    if "recipe" in raw:
        if raw["recipe"] not in trainer.TRAIN_RECIPES:
            raise ValueError(f"{path}: recipe must be one of {sorted(trainer.TRAIN_RECIPES)}")
        cfg = replace(trainer.TRAIN_RECIPES[raw["recipe"]](), **raw.get("train", {}))
    else:
        cfg = trainer.TrainConfig(**raw.get("train", {}))
    return {**raw, "train": cfg}


def export_hf(model, tokenizer_dir: Path, out: Path) -> Path:
    """A Hugging Face directory, written beside and renamed into place."""
    from safetensors.torch import save_file

    final, tmp = out / "hf", out / f".hf.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(model.cfg.hf_config(), indent=1))
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copyfile(f, tmp / f.name)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    return final


def run(config: dict, pipes=None) -> dict:
    cfg: trainer.TrainConfig = config["train"]
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    sources = {name: [TokenShard.open(Path(p)) for p in paths] for name, paths in config["sources"].items()}
    rank = int(os.environ.get("RANK", "0"))
    metrics = (out / "metrics.jsonl").open("a") if rank == 0 else None

    def log(entry: trainer.StepLog) -> None:
        if metrics is None:
            return
        row = asdict(entry)
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        if pipes is not None:
            pipes.report_custom_message({"kind": "step", **row})

    try:
        model = trainer.train(
            cfg, sources, config["weights"], out, log=log, peak_flops=float(config.get("peak_flops", 0.0))
        )
    finally:
        if metrics is not None:
            metrics.close()
    summary = {
        "steps": cfg.max_steps,
        "tokens": cfg.max_steps * cfg.tokens_per_step,
        "num_params": model.num_params(),
    }
    if rank == 0:
        summary["hf"] = str(export_hf(model, Path(config["tokenizer"]), out))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    try:
        config = load_config(args.config)
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if PIPES_ENV in os.environ:
        from dagster_pipes import open_dagster_pipes

        with open_dagster_pipes() as pipes:
            summary = run(config, pipes)
            pipes.report_custom_message({"kind": "summary", **summary})
    else:
        summary = run(config)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
