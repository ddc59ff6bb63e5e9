"""Peak memory (RSS) and opening time of the training data loader on one rank, against how many shards
it spans: the split index read from ``split.bin`` (now) against hashing every document id (before).

Data: ``--shards`` (100) token shards of ``--docs`` (100,000) documents each, 10 million in all, written
by ``tokens.write_encoded`` straight from NumPy (no tokenizer): lengths uniform in 2..16 tokens
(separator included), random ids below 512, ids ``s<shard>-<i>``. About 520 MB on disk; built once
(under a minute on 2 CPUs) and cached under ``--cache`` (default ``benchmarks/.work/loader_memory``),
keyed by the parameters.

Cases, for each N in ``--spans`` (10, 30, 100: the first N shards as one source, weight 1, split
``train``, ``val_fraction`` 0.01), each in a fresh child interpreter that reports its own peak RSS
(``VmHWM``): ``TokenShard.open`` of the N shards, a ``MixtureLoader`` as rank 0 of ``--world-size``
(8) over them, then ``--batches`` (20) global batches of ``--batch-size`` (64) x ``--seq-len`` (2048)
(about 15,000 documents a batch: the loader crosses three shards).

- ``index``: the loader as it is: one binary search per shard in its memory-mapped ``split.bin`` on
  open, a shard's document list built when the loader reaches it.
- ``hashing``: the loader before ``split.bin``, reproduced here (``HashingSource``): on open every
  shard's ids read from ``documents.parquet`` and hashed in Python one by one (the formula as it was),
  the scores kept on the shard and every shard's document index (8 bytes a document) built and kept.
- ``format 1``: the compatibility path of shards written before ``split.bin`` (``shard_format`` 1: the
  opened shards' stats marked so): each shard's split index computed from its ids on open and kept
  (24 bytes a document).

Reported per case: seconds to open (``TokenShard.open`` and the loader), seconds to read the batches,
peak RSS, RSS after imports, peak minus that (what the loader holds, the mapped pages it touched
included), and that against ``index``'s, and the file descriptors open at the end (each memory map
holds one). The batches of every case are compared (a digest of the rows of rank 0): the same data.

Run from the repository root:  .venv/bin/python benchmarks/loader_memory.py [--markdown]
[--spans 10,30,100] [--cases index,hashing,format1] [--shards N] [--docs N] [--batches N] [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, without install
from table import format_table  # noqa: E402  (benchmarks/, the script's own folder)

CACHE = ROOT / "benchmarks" / ".work" / "loader_memory"
CASES = ("index", "hashing", "format1")
LABELS = {"index": "index (now)", "hashing": "hashing (before)", "format1": "format 1 (compat)"}


# --- the shards ----------------------------------------------------------------------------------


def build_shards(cache: Path, shards: int, docs: int) -> tuple[Path, dict]:
    """The shards, written once per (shards, docs) (see the module doc)."""
    import numpy as np

    from phi_assets.mixture import tokens

    where = cache / f"shards{shards}-docs{docs}"
    stamp = where / "info.json"
    if not stamp.exists():
        shutil.rmtree(where, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
        t0 = time.perf_counter()
        for k in range(shards):
            rng = np.random.default_rng(k)
            lengths = rng.integers(2, 17, docs)
            flat = rng.integers(1, 512, int(lengths.sum())).astype(np.uint16)
            flat[np.cumsum(lengths) - 1] = 0
            ids = [f"s{k}-{i}" for i in range(docs)]
            tokens.write_encoded(
                iter([(ids, flat, lengths, 0)]), staging / f"{k:04d}", np.uint16, 512, 0, "bench"
            )
        size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        info = {"shards": shards, "docs": docs, "bytes": size, "build_s": round(time.perf_counter() - t0, 1)}
        stamp_tmp = staging / "info.json"
        stamp_tmp.write_text(json.dumps(info))
        staging.rename(where)  # complete or absent: a killed build is never reused
    return where, json.loads(stamp.read_text())


# --- the child: one case, in its own process -----------------------------------------------------


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status: ``VmRSS`` now, ``VmHWM`` its peak. (Not
    ``ru_maxrss``: Linux carries it across exec, so a child started from a bigger parent reports the
    parent's size.)"""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:")) / 1024


def _old_split_scores(ids: list[str]):
    """The split score as the loader computed it before split.bin: one Python int per id."""
    import numpy as np

    return np.array(
        [
            int.from_bytes(hashlib.blake2b(f"split:{i}".encode(), digest_size=8).digest(), "big") / 2**64
            for i in ids
        ],
        dtype=np.float64,
    )


def hashing_source():
    """``Source`` as it was before split.bin: every id hashed on open, every shard's index kept."""
    import numpy as np

    from phi_assets.mixture import loader

    class HashingSource(loader.Source):
        def __init__(self, name, shards, split, val_fraction, seed):
            super().__init__(name, shards, "all", val_fraction, seed)  # the orders' keys; reads no index
            self.split = split
            self.scores = [_old_split_scores(s.ids()) for s in shards]  # kept on each shard before
            masks = [s < val_fraction for s in self.scores]
            if val_fraction > 0 and sum(map(len, masks)) >= 2 and not any(m.any() for m in masks):
                k = min(
                    (k for k in range(len(shards)) if shards[k].num_docs), key=lambda k: self.scores[k].min()
                )
                masks[k][int(self.scores[k].argmin())] = True
            self.docs = [np.flatnonzero(m if split == "val" else ~m) for m in masks]
            self.counts = np.array([len(d) for d in self.docs], dtype=np.int64)
            self.num_tokens = sum(
                int(np.diff(s.offsets)[d].sum()) for s, d in zip(shards, self.docs, strict=True)
            )

        def documents(self, shard):
            return self.docs[shard]

    return HashingSource


def child(args: argparse.Namespace) -> None:
    import dataclasses

    import numpy as np

    from phi_assets.mixture import loader
    from phi_assets.mixture.tokens import TokenShard

    if args.child == "hashing":
        loader.Source = hashing_source()  # MixtureLoader builds its sources with the module's Source
    imported = _status_mb("VmRSS")
    t0 = time.perf_counter()
    shards = [TokenShard.open(p) for p in sorted(Path(args.data).glob("0*"))[: args.span]]
    if args.child == "format1":
        for s in shards:
            s.stats = dataclasses.replace(s.stats, shard_format=1)
    cfg = loader.LoaderConfig(
        seq_len=args.seq_len, batch_size=args.batch_size, rank=0, world_size=args.world_size, val_fraction=0.01
    )
    mixture = loader.MixtureLoader({"s": shards}, {"s": 1.0}, cfg)
    opened = time.perf_counter()
    digest = hashlib.sha256()
    for _ in range(args.batches):
        digest.update(mixture.next_batch().input_ids.tobytes())
    read = time.perf_counter()
    print(
        json.dumps(
            {
                "open_s": opened - t0,
                "read_s": read - opened,
                "imported_mb": imported,
                "peak_mb": _status_mb("VmHWM"),
                "fds": len(os.listdir("/proc/self/fd")),
                "numpy": np.__version__,
                "train_tokens": mixture.num_tokens()["s"],
                "epochs": mixture.epochs()["s"],
                "digest": digest.hexdigest()[:16],
            }
        )
    )


def run_case(case: str, span: int, args: argparse.Namespace, data: Path) -> dict:
    shapes = {"--batches": args.batches, "--batch-size": args.batch_size, "--seq-len": args.seq_len}
    shapes["--world-size"] = args.world_size
    cmd = [sys.executable, __file__, "--child", case, "--data", str(data), "--span", str(span)]
    cmd += [str(x) for flag, value in shapes.items() for x in (flag, value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{case} over {span} shards failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


# --- the report ----------------------------------------------------------------------------------


def rows(results: dict[tuple[str, int], dict], docs: int) -> list[list[str]]:
    out = []
    for (case, span), r in results.items():
        held = r["peak_mb"] - r["imported_mb"]
        base = results.get(("index", span))
        ratio = f"{held / (base['peak_mb'] - base['imported_mb']):.1f}x" if base else "-"
        same = (
            "-" if not base or case == "index" else ("same" if r["digest"] == base["digest"] else "DIFFERENT")
        )
        out.append(
            [
                LABELS[case],
                str(span),
                f"{span * docs:,}",
                f"{r['open_s']:.2f}",
                f"{r['read_s']:.2f}",
                f"{r['peak_mb']:,.0f}",
                f"{r['imported_mb']:,.0f}",
                f"{held:,.1f}",
                ratio,
                str(r["fds"]),
                same,
            ]
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda v: [int(x) for x in v.split(",") if x]  # noqa: E731
    ap.add_argument("--spans", type=ints, default=[10, 30, 100], help="shards per case (comma-separated)")
    ap.add_argument("--cases", type=lambda v: v.split(","), default=list(CASES), help=",".join(CASES))
    ap.add_argument("--shards", type=int, default=100, help="shards written")
    ap.add_argument("--docs", type=int, default=100_000, help="documents per shard")
    ap.add_argument("--batches", type=int, default=20, help="global batches read")
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per global batch")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--world-size", type=int, default=8, help="ranks; the child is rank 0")
    ap.add_argument("--cache", type=Path, default=CACHE, help="where the shards are kept")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--span", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown or max(args.spans) > args.shards:
        raise SystemExit(f"--cases among {CASES} (unknown {unknown}); --spans up to --shards ({args.shards})")
    data, info = build_shards(args.cache, args.shards, args.docs)
    results: dict[tuple[str, int], dict] = {}
    for span in args.spans:
        for case in args.cases:
            results[(case, span)] = r = run_case(case, span, args, data)
            print(
                f"# {case} over {span} shards: peak {r['peak_mb']:,.0f} MiB, open {r['open_s']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"Python {platform.python_version()}, NumPy {r['numpy']}; {os.cpu_count()} CPUs. "
        f"{info['shards']} shards x {info['docs']:,} documents ({info['bytes'] / 1e6:,.0f} MB on disk, "
        f"built in {info['build_s']} s); rank 0 of {args.world_size}, {args.batches} batches of "
        f"{args.batch_size} x {args.seq_len}, split train (val_fraction 0.01)"
    )
    print(
        "peak: the child's VmHWM; held: peak - RSS after imports; x index: held / index's held; "
        "open files: the child's file descriptors at the end\n"
    )
    head = (
        "loader|shards|documents|open s|read s|peak MiB|imports MiB|held MiB|x index|open files|batches".split(
            "|"
        )
    )
    print(format_table(head, rows(results, args.docs), args.markdown))


if __name__ == "__main__":
    main()
