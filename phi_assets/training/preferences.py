"""Preference pairs for DPO: rejection sampling and Pivotal Token Search, both verified by execution.

A ``Problem`` is a prompt to complete, the assert lines that judge a completion, and optionally a
reference completion. Every completion is judged the same way: ``prompt + completion`` followed by
the tests runs in the sandbox (``phi_assets.sandbox``), and only ``passed`` counts.

Rejection sampling: the policy samples ``n`` completions per problem; each failing sample is paired
as *rejected* with a passing one as *chosen* (a passing sample, else the reference when it passes).

Pivotal Token Search (phi-4 technical report, section 4.3): for a passing solution ``T`` it estimates
``p(success | prompt + T[:i])`` by sampling continuations from the policy and executing them, and
subdivides ``T`` until each span either changes that probability by less than ``gap`` or is one
token. A single token that moves the probability by at least ``gap`` is pivotal; its pair has the
prompt and the prefix before it as context and single tokens as answers: the pivotal token is
*chosen* when it raises the probability (the *rejected* token is the first token of a sampled
continuation from the same prefix that failed) and *rejected* when it lowers it (the chosen one
then comes from a continuation that passed). DPO on such pairs concentrates the signal on the
tokens that decide success instead of spreading it over whole answers.

The policy is anything with ``sample(prompts, n, seed) -> list[list[str]]``; the assets use the
LLM engine (vLLM) on the checkpoint being post-trained. The search is written against a
probability estimator so that its logic is tested exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from phi_assets.common.benchmarks import read_mbpp

MBPP_TRAIN = range(601, 975)  # MBPP's training split; its test split (11-510) is for evaluation


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str  # what the policy completes
    tests: str  # assert lines run after prompt + completion
    reference: str | None = None  # a completion believed to pass (checked before it is used)

    def program(self, completion: str) -> str:
        return f"{self.prompt}{completion}\n\n\n{self.tests}\n"


def mbpp_problems(path: Path, limit: int, ids: range = MBPP_TRAIN) -> list[Problem]:
    """MBPP training-split tasks, prompted as the phi-1 paper prompts MBPP: the task text and its
    first test in a docstring; the reference is the task's code."""

    def parse(task: dict) -> Problem | None:
        if task["task_id"] not in ids:
            return None
        tests = "\n".join([task.get("test_setup_code", "") or "", *task["test_list"]]).strip()
        prompt = f'"""\n{task["text"].strip()}\n{task["test_list"][0]}\n"""\n'
        return Problem(f"mbpp/{task['task_id']}", prompt, tests, task["code"].replace("\r\n", "\n"))

    return read_mbpp(path, parse)[: max(limit, 0)]


def exercise_problems(rows: Sequence[dict], limit: int) -> list[Problem]:
    """Verified synthetic exercises: the prompt is the program's helpers plus the signature and
    docstring; the reference is the rest of the verified solution."""
    out = []
    for row in rows:
        if len(out) >= limit:
            break
        solution, head = row["solution"], ""
        program = row["text"].removesuffix(f"\n\n\n{row['tests']}\n")  # the row's text is program + tests
        if solution in program:
            head = program[: program.index(solution)]
        reference = solution[len(row["prompt"]) :] if solution.startswith(row["prompt"]) else None
        out.append(Problem(f"exercise/{row['id']}", head + row["prompt"], row["tests"], reference))
    return out


class Policy(Protocol):
    def sample(self, prompts: Sequence[str], n: int, seed: int) -> list[list[str]]: ...


Judge = Callable[[Sequence[str]], list[bool]]  # programs -> passed?


@dataclass
class Estimate:
    p: float
    samples: list[tuple[str, bool]]  # (continuation, passed)


@dataclass
class Pivot:
    index: int  # the token's position in the solution
    p_before: float
    p_after: float


def pivotal_tokens(tokens: Sequence[str], estimate: Callable[[int], float], gap: float) -> list[Pivot]:
    """The phi-4 subdivision: ``estimate(i)`` is p(success | prompt + tokens[:i]), memoised here; a
    span whose ends differ by less than ``gap`` is not searched further."""
    memo: dict[int, float] = {}

    def p(i: int) -> float:
        if i not in memo:
            memo[i] = estimate(i)
        return memo[i]

    pivots: list[Pivot] = []

    def subdivide(lo: int, hi: int) -> None:
        if abs(p(lo) - p(hi)) < gap:
            return
        if hi - lo == 1:
            pivots.append(Pivot(lo, p(lo), p(hi)))
            return
        mid = (lo + hi) // 2
        subdivide(lo, mid)
        subdivide(mid, hi)

    if tokens:
        subdivide(0, len(tokens))
    return pivots


@dataclass
class SearchStats:
    problems: int = 0
    samples: int = 0
    passed_samples: int = 0
    references_passed: int = 0
    references_failed: int = 0
    estimates: int = 0
    pivots: int = 0
    pivots_without_alternative: int = 0
    pairs: dict[str, int] = field(default_factory=lambda: {"rejection": 0, "pivotal": 0})


def _first_token(text: str, tokenize: Callable[[str], list[str]]) -> str | None:
    pieces = tokenize(text) if text else []
    return pieces[0] if pieces else None


def build_pairs(
    problems: Sequence[Problem],
    policy: Policy,
    judge: Judge,
    tokenize: Callable[[str], list[str]],
    *,
    samples: int,
    pts_samples: int,
    gap: float,
    pts_problems: int,
    max_solution_tokens: int,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[list[dict], SearchStats]:
    """Rows (problem_id, kind, prompt, chosen, rejected, p_before, p_after) and counts."""
    stats = SearchStats(problems=len(problems))
    drawn = policy.sample([p.prompt for p in problems], samples, seed)
    refs = [p for p in problems if p.reference is not None]
    verdicts = judge([p.program(c) for p, cs in zip(problems, drawn, strict=True) for c in cs])
    ref_ok = dict(zip([p.id for p in refs], judge([p.program(p.reference) for p in refs]), strict=True))
    stats.samples = len(verdicts)
    stats.passed_samples = sum(verdicts)
    stats.references_passed = sum(ref_ok.values())
    stats.references_failed = len(ref_ok) - stats.references_passed
    rows: list[dict] = []
    solutions: list[tuple[Problem, str]] = []
    for i, (problem, completions) in enumerate(zip(problems, drawn, strict=True)):
        passed = verdicts[i * samples : (i + 1) * samples]
        good = [c for c, ok in zip(completions, passed, strict=True) if ok and c.strip()]
        if ref_ok.get(problem.id):
            good.append(problem.reference)
        if not good:
            continue
        solutions.append((problem, good[0]))
        bad = [c for c, ok in zip(completions, passed, strict=True) if not ok and c.strip()]
        for j, rejected in enumerate(dict.fromkeys(bad)):  # distinct failures, in sample order
            rows.append(_row(problem.id, "rejection", problem.prompt, good[j % len(good)], rejected))
    stats.pairs["rejection"] = len(rows)
    log(f"rejection sampling: {stats.passed_samples}/{stats.samples} samples passed, {len(rows)} pairs")
    for n, (problem, solution) in enumerate(solutions[:pts_problems]):
        tokens = tokenize(solution)[:max_solution_tokens]
        estimates: dict[int, Estimate] = {}

        def estimate(k: int, problem=problem, tokens=tokens, estimates=estimates, n=n) -> float:
            prefix = "".join(tokens[:k])
            conts = policy.sample([problem.prompt + prefix], pts_samples, seed + 1000 * (n + 1) + k)[0]
            ok = judge([problem.program(prefix + c) for c in conts])
            estimates[k] = Estimate(sum(ok) / len(ok), list(zip(conts, ok, strict=True)))
            stats.estimates += 1
            return estimates[k].p

        for pivot in pivotal_tokens(tokens, estimate, gap):
            stats.pivots += 1
            token, before = tokens[pivot.index], estimates[pivot.index]
            raises = pivot.p_after > pivot.p_before
            alternative = next(
                (
                    t
                    for c, ok in before.samples
                    if ok != raises and (t := _first_token(c, tokenize)) is not None and t != token
                ),
                None,
            )
            if alternative is None:
                stats.pivots_without_alternative += 1
                continue
            chosen, rejected = (token, alternative) if raises else (alternative, token)
            context = problem.prompt + "".join(tokens[: pivot.index])
            rows.append(_row(problem.id, "pivotal", context, chosen, rejected, pivot.p_before, pivot.p_after))
            stats.pairs["pivotal"] += 1
        log(
            f"pivotal token search {n + 1}/{min(len(solutions), pts_problems)} ({problem.id}): "
            f"{stats.pivots} pivots so far"
        )
    return rows, stats


def _row(
    problem_id: str,
    kind: str,
    prompt: str,
    chosen: str,
    rejected: str,
    p_before: float | None = None,
    p_after: float | None = None,
) -> dict:
    return {
        "problem_id": problem_id,
        "kind": kind,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "p_before": p_before,
        "p_after": p_after,
    }
