"""Input staging: a run's URI inputs copied once per node into its run directory, before training.

Every input the entrypoint's config names as a URI (``s3://``, ``gs://``, ...: the tokenizer, the
parent checkpoint, the token shards, the finetuning rows) is read from local disk during training.
``stage(paths, out, world)`` makes the copies: on each node the process of local rank 0 copies every
input not yet there into ``out/inputs/<hash of the URI>``, and the node's other ranks wait for it at
a barrier. A copy is written to a hidden directory of its own and renamed into place, so

- a reader never sees a half-copied input (a killed stager leaves only a hidden partial, removed by
  the next one);
- stagers that race (several nodes sharing the run directory on a ReadWriteMany volume) all end
  with the same complete copy: the first rename wins, the others discard theirs;
- a retried pod, or a resumed run, finds its inputs staged and copies nothing.

Each stager appends what it did to ``out/inputs/staging.jsonl`` (node, rank, copied, reused, seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

INPUTS = "inputs"
LOG = "staging.jsonl"


def is_uri(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def local_path(path: str, out: Path) -> Path:
    """Where the run reads ``path``: itself when local, its staged copy when a URI."""
    if not is_uri(path):
        return Path(str(path).removeprefix("file://"))
    return out / INPUTS / hashlib.sha256(path.encode()).hexdigest()[:16]


def copy_in(uri: str, dest: Path) -> bool:
    """Copy ``uri`` (a file or a directory) to ``dest`` atomically; False when ``dest`` was already
    there (staged before, or by a stager that won the race)."""
    if dest.exists():
        return False
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    partial = dest.with_name(
        f".{dest.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    )
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if not fs.exists(root):
        raise FileNotFoundError(f"input {uri} does not exist")
    if fs.isdir(root):
        fs.get(root.rstrip("/") + "/", str(partial), recursive=True)
    else:
        fs.get_file(root, str(partial))
    try:
        os.rename(partial, dest)
    except OSError:  # another stager renamed its complete copy into place first
        if not dest.exists():
            raise
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        return False
    return True


def stage(paths: Iterable[str], out: Path, world) -> dict[str, Path]:
    """Every input's local path, the URIs among them staged once per node (``world``: this process's
    ``distributed.World``). Collective when ``world.world_size > 1``: call it on every rank."""
    uris = sorted({p for p in paths if is_uri(p)})
    if uris and world.local_rank == 0:
        _stage_here(uris, out, world)
    if world.world_size > 1:
        import torch.distributed as dist

        dist.barrier()  # the node's other ranks wait for its stager (all nodes meet: one collective)
    located = {p: local_path(p, out) for p in paths}
    missing = [p for p in uris if not located[p].exists()]
    if missing:
        raise FileNotFoundError(f"inputs {missing} were not staged into {out / INPUTS}")
    return located


def _stage_here(uris: list[str], out: Path, world) -> None:
    started = time.perf_counter()
    copied, reused = [], []
    for uri in uris:
        (copied if copy_in(uri, local_path(uri, out)) else reused).append(uri)
    entry = {
        "node": os.environ.get("GROUP_RANK", socket.gethostname()),
        "rank": world.rank,
        "copied": copied,
        "reused": reused,
        "seconds": round(time.perf_counter() - started, 3),
    }
    with open(out / INPUTS / LOG, "a") as f:  # one short line per stager: O_APPEND keeps lines whole
        f.write(json.dumps(entry) + "\n")
