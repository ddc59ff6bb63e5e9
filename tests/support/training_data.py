"""A small, real training setup for the multi-process training tests: a BPE tokenizer and two token
shards from the standard library's sources, finetuning rows and preference triples as parquet, a
parent checkpoint exported in Hugging Face format, and entrypoint configs over them."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = {"code": 0.7, "web": 0.3}
#: The shape the tests train at: 8 sequences per optimizer step whatever the world size (micro-batch 2:
#: 4 accumulation steps on 1 rank, 2 on 2, 1 on 4).
SHAPE = {
    "model": "debug_tiny",
    "seq_len": 32,
    "micro_batch_size": 2,
    "global_batch_size": 8,
    "warmup_steps": 1,
    "threads": 1,
    "dropout": False,
}


@dataclass(frozen=True)
class TrainingData:
    tokenizer: Path
    shards: dict[str, list[Path]]
    examples: Path  # prompt, completion
    pairs: Path  # prompt, chosen, rejected
    init: Path  # a parent checkpoint's Hugging Face export
    rows: int  # finetuning examples (and preference pairs) written

    def config(self, stage: str, out: Path | str, train: dict, **paths: str) -> dict:
        """An entrypoint config for ``stage`` over this data (``paths`` replaces any input, e.g. by a URI)."""
        inputs: dict = {"tokenizer": str(self.tokenizer)}
        if stage == "pretrain":
            inputs["sources"] = {n: [str(p) for p in ps] for n, ps in self.shards.items()}
            inputs["weights"] = WEIGHTS
        elif stage == "sft":
            inputs |= {"init": str(self.init), "examples": str(self.examples)}
        else:
            inputs |= {"init": str(self.init), "pairs": str(self.pairs)}
        return {"stage": stage, "train": {**SHAPE, **train}, "out": str(out), **inputs, **paths}


def stdlib_shards(root: Path) -> dict[str, list[Path]]:
    """A 512-token BPE tokenizer (``root/tok``) and two one-shard sources, ``code`` and ``web``
    (``root/code``, ``root/web``), of paragraphs from three standard-library modules."""
    from phi_assets.mixture import tokenizer as tk
    from phi_assets.mixture import tokens

    texts = [Path(os.__file__).parent.joinpath(n).read_text() for n in ("textwrap.py", "string.py", "shlex.py")]
    tk.save(tk.train_bpe(iter(texts), 512), root / "tok")
    loaded = tk.load(root / "tok")
    docs = [p for t in texts for p in t.split("\n\n") if p.strip()]
    shards = {}
    for name, part in (("code", docs[::2]), ("web", docs[1::2])):
        ids = [f"{name}-{i}" for i in range(len(part))]
        tokens.write_shard(iter([(ids, part)]), loaded, root / name, "t")
        shards[name] = [root / name]
    return shards


def make(root: Path) -> TrainingData:
    import polars as pl
    import torch

    from phi_assets.mixture import tokenizer as tk
    from phi_assets.training import entrypoint, trainer
    from phi_assets.training import model as phi

    shards = stdlib_shards(root)
    loaded = tk.load(root / "tok")
    rows = 37  # not a multiple of the global batch: the last step runs into the next epoch
    prompts = [f'def add_{i}(x):\n    """Return x plus {i}."""\n' for i in range(rows)]
    pl.DataFrame(
        {"prompt": prompts, "completion": [f"    return x + {i}\n" for i in range(rows)]}
    ).write_parquet(root / "examples.parquet")
    pl.DataFrame(
        {
            "prompt": prompts,
            "chosen": [f"    return x + {i}\n" for i in range(rows)],
            "rejected": [f"    return x - {i}\n" for i in range(rows)],
        }
    ).write_parquet(root / "pairs.parquet")
    torch.manual_seed(0)
    parent = phi.PhiForCausalLM(trainer.TrainConfig(**SHAPE).model_config(loaded.vocab_size))
    (root / "parent").mkdir()
    init = entrypoint.export_hf(parent, root / "tok", root / "parent")
    return TrainingData(root / "tok", shards, root / "examples.parquet", root / "pairs.parquet", init, rows)


def write(config: dict, path: Path) -> Path:
    path.write_text(json.dumps(config))
    return path


def torchrun(nproc: int, port: int, *args: str, nnodes: int = 1, node_rank: int = 0) -> list[str]:
    """A torchrun command line on this machine (gloo on CPU); ``nnodes`` > 1 simulates several nodes
    meeting at a static rendezvous on loopback, ``node_rank`` being this one."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", f"--node_rank={node_rank}",
        "--master_addr=127.0.0.1", f"--master_port={port}",
        *args,
    ]  # fmt: skip


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
