"""Preference pairs without a GPU: rejection sampling and Pivotal Token Search over a scripted policy,
judged by the real sandbox, and the problems they are built from (MBPP's training split, exercises)."""

from __future__ import annotations

import json
import math
import re

from phi_assets import sandbox
from phi_assets.training import preferences
from phi_assets.training.preferences import Problem

# --- helpers ----------------------------------------------------------------------------------------------


def judge(programs) -> list[bool]:
    """The judge the preference asset uses: the real sandbox, only ``passed`` counts."""
    return [v.passed for v in sandbox.run_programs(programs, sandbox.Limits(timeout_s=5.0, cpu_s=5))]


def tokenize(text: str) -> list[str]:
    """Whitespace-preserving pieces: runs of whitespace, words, single punctuation characters."""
    return re.findall(r"\s+|\w+|[^\w\s]", text)


class ScriptedPolicy:
    """A stand-in for the policy with predetermined completions: ``script(prompt, n)`` gives the ``n``
    completions of one prompt. The real policy (vLLM on a trained checkpoint) is exercised by the
    integration tests of the training assets; here the completions must be known in advance so that the
    pairs built from them can be predicted."""

    def __init__(self, script):
        self.script = script
        self.calls: list[tuple[list[str], int, int]] = []

    def sample(self, prompts, n, seed):
        self.calls.append((list(prompts), n, seed))
        out = [self.script(p, n) for p in prompts]
        assert all(len(c) == n for c in out)
        return out


ADD = Problem("t/add", "def add(a, b):\n", "assert add(2, 3) == 5\nassert add(-1, 1) == 0")


def _pts_kwargs(**kw) -> dict:
    base = {"samples": 4, "pts_samples": 4, "gap": 0.4, "pts_problems": 1, "max_solution_tokens": 64}
    return {**base, **kw}


# --- pivotal_tokens ---------------------------------------------------------------------------------------


class Counted:
    """An estimator from a known success-probability function, recording every index it is asked for."""

    def __init__(self, p):
        self.p, self.calls = p, []

    def __call__(self, i: int) -> float:
        self.calls.append(i)
        return self.p(i)


def test_pivotal_tokens_finds_each_jump_of_a_step_function():
    est = Counted(lambda i: 0.0 if i < 3 else 0.5 if i < 7 else 1.0)
    pivots = preferences.pivotal_tokens(list("abcdefghij"), est, gap=0.3)
    assert [(v.index, v.p_before, v.p_after) for v in pivots] == [(2, 0.0, 0.5), (6, 0.5, 1.0)]
    assert len(est.calls) == len(set(est.calls))  # memoised: no index estimated twice
    assert all(0 <= i <= 10 for i in est.calls)


def test_pivotal_tokens_ignores_jumps_smaller_than_the_gap():
    p = lambda i: 0.0 if i < 3 else 0.2 if i < 7 else 0.6  # noqa: E731  jumps of 0.2 and 0.4
    pivots = preferences.pivotal_tokens(list("abcdefghij"), Counted(p), gap=0.3)
    assert [(v.index, v.p_before, v.p_after) for v in pivots] == [(6, 0.2, 0.6)]


def test_pivotal_tokens_a_jump_of_exactly_the_gap_counts():
    p = lambda i: 0.0 if i < 4 else 0.5  # noqa: E731
    assert [v.index for v in preferences.pivotal_tokens(list("abcdef"), Counted(p), gap=0.5)] == [3]
    assert preferences.pivotal_tokens(list("abcdef"), Counted(p), gap=0.51) == []


def test_pivotal_tokens_finds_a_falling_probability():
    est = Counted(lambda i: 1.0 if i <= 4 else 0.2)
    pivots = preferences.pivotal_tokens(list("abcdefghij"), est, gap=0.5)
    assert [(v.index, v.p_before, v.p_after) for v in pivots] == [(4, 1.0, 0.2)]
    assert pivots[0].p_after < pivots[0].p_before


def test_pivotal_tokens_stops_when_the_ends_agree():
    """Only the two ends are estimated when they are within ``gap`` of each other (the search does not look
    inside such a span, even at an excursion in the middle)."""
    est = Counted(lambda i: 1.0 if 3 <= i < 6 else 0.1)
    assert preferences.pivotal_tokens(list("abcdefghij"), est, gap=0.3) == []
    assert sorted(est.calls) == [0, 10]
    none = Counted(lambda i: 0.5)
    assert preferences.pivotal_tokens([], none, gap=0.3) == [] and none.calls == []


def test_pivotal_tokens_needs_few_estimates_on_a_long_solution():
    est = Counted(lambda i: 0.0 if i < 100 else 1.0)
    pivots = preferences.pivotal_tokens([f"t{i}" for i in range(256)], est, gap=0.5)
    assert [(v.index, v.p_before, v.p_after) for v in pivots] == [(99, 0.0, 1.0)]
    assert len(est.calls) <= 2 * math.log2(256) + 4
    assert len(est.calls) == len(set(est.calls))


# --- build_pairs: rejection sampling ------------------------------------------------------------------------


def test_the_tokenize_helper_reassembles_its_text():
    for text in ("    return a + b\n", "    return (a + b)\n", "+ b + 1\n", "def f(x):\n\treturn x\n"):
        pieces = tokenize(text)
        assert "".join(pieces) == text and len(pieces) > 1


def test_rejection_pairs_pair_each_distinct_failure_with_a_verified_answer():
    """Completions are scripted (see ``ScriptedPolicy``); the judge is the real sandbox."""
    good_ref = Problem("t/1", "def add(a, b):\n", "assert add(2, 3) == 5", reference="    return a + b\n")
    bad_ref = Problem("t/2", "def mul(a, b):\n", "assert mul(2, 3) == 6", reference="    return a + b\n")
    ref_only = Problem("t/3", "def sub(a, b):\n", "assert sub(5, 3) == 2", reference="    return a - b\n")
    completions = {
        good_ref.prompt: [
            "    return a + b\n",  # passes
            "    return a - b\n",  # fails
            "    return b + a\n",  # passes
            "    return a - b\n",  # fails again: the same rejected answer is paired once
            "    return a * b\n",  # fails
        ],
        bad_ref.prompt: ["    return a - b\n"] * 5,  # all fail, and so does the reference
        ref_only.prompt: [
            "    return b - a\n",
            "    return a + b\n",
            "    pass\n",
            "    return 0\n",
            "    x\n",
        ],
    }
    policy = ScriptedPolicy(lambda prompt, n: completions[prompt][:n])
    problems = [good_ref, bad_ref, ref_only]
    rows, stats = preferences.build_pairs(
        problems, policy, judge, tokenize, **_pts_kwargs(samples=5, pts_problems=0), seed=7
    )
    assert policy.calls == [([p.prompt for p in problems], 5, 7)]  # no search: one draw
    assert (stats.problems, stats.samples, stats.passed_samples) == (3, 15, 2)
    assert (stats.references_passed, stats.references_failed) == (2, 1)
    assert all(r["kind"] == "rejection" for r in rows) and stats.pairs == {"rejection": len(rows), "pivotal": 0}

    by_problem = {p.id: [r for r in rows if r["problem_id"] == p.id] for p in problems}
    assert [r["rejected"] for r in by_problem["t/1"]] == ["    return a - b\n", "    return a * b\n"]
    assert by_problem["t/2"] == []  # no passing answer at all: the failing reference is never chosen
    assert [r["rejected"] for r in by_problem["t/3"]] == completions[ref_only.prompt]
    assert {r["chosen"] for r in by_problem["t/3"]} == {ref_only.reference}  # the verified reference
    assert all(r["p_before"] is None and r["p_after"] is None for r in rows)

    problem = {p.id: p for p in problems}
    for r in rows:
        assert r["prompt"] == problem[r["problem_id"]].prompt
    verdicts = judge(
        [problem[r["problem_id"]].program(r[side]) for r in rows for side in ("chosen", "rejected")]
    )
    assert verdicts == [True, False] * len(rows)


# --- build_pairs: Pivotal Token Search ----------------------------------------------------------------------


def _prefix(problem: Problem, prompt: str) -> str:
    assert prompt.startswith(problem.prompt)
    return prompt[len(problem.prompt) :]


def test_pts_makes_a_pair_at_the_token_that_raises_success():
    """Scripted policy (see ``ScriptedPolicy``), real sandbox. From any prefix of ``return a + b`` that
    already holds the ``+`` every continuation finishes the line correctly; before it, half the
    continuations write ``-`` instead. So p jumps from 0.5 to 1 at the ``+`` token (index 5)."""
    solution = "    return a + b\n"
    tokens = tokenize(solution)
    assert tokens[5] == "+"

    def script(prompt, n):
        prefix = _prefix(ADD, prompt)
        rest = solution[len(prefix) :]
        if "+" in prefix:
            return [rest] * n
        return [rest if i % 2 == 0 else rest.replace("+", "-") for i in range(n)]

    policy = ScriptedPolicy(script)
    rows, stats = preferences.build_pairs([ADD], policy, judge, tokenize, **_pts_kwargs())
    pivotal = [r for r in rows if r["kind"] == "pivotal"]
    assert len(pivotal) == 1 and stats.pairs["pivotal"] == 1 and stats.pivots == 1
    row = pivotal[0]
    assert row["prompt"] == ADD.prompt + "".join(tokens[:5]) == ADD.prompt + "    return a "
    assert (row["chosen"], row["rejected"]) == ("+", "-")
    assert (row["p_before"], row["p_after"]) == (0.5, 1.0)
    assert stats.passed_samples == 2 and stats.pairs["rejection"] == 1  # the initial draw: 2 of 4 pass
    searched = policy.calls[1:]
    assert stats.estimates == len(searched) < len(tokens) + 1
    assert all(n == 4 and len(prompts) == 1 for prompts, n, _ in searched)
    assert len({seed for _, _, seed in searched}) == len(searched)  # each prefix sampled with its own seed
    assert judge([ADD.program(_prefix(ADD, row["prompt"]) + row["chosen"] + " b\n")]) == [True]


def test_pts_makes_a_pair_at_the_token_that_lowers_success():
    """Scripted policy (see ``ScriptedPolicy``), real sandbox. The passing solution is ``return (a + b)``;
    after its ``(`` (index 3) half the continuations forget the ``)`` (a SyntaxError), before it they all
    pass. The search is cut at ``max_solution_tokens`` = 9, before the ``)``, so p falls from 1 to 0.5 at
    the ``(``, which becomes the rejected token; the chosen one is the first token of a passing
    continuation from the same prefix that differs from it."""
    paren, plain = "    return (a + b)\n", "    return a + b\n"
    tokens = tokenize(paren)
    assert tokens[3] == "(" and tokens[9] == ")"

    def script(prompt, n):
        prefix = _prefix(ADD, prompt)
        if "(" in prefix:
            rest = paren[len(prefix) :]
            return [rest if i % 2 == 0 else rest.replace(")", "") for i in range(n)]
        return [paren[len(prefix) :]] + [plain[len(prefix) :]] * (n - 1)

    rows, stats = preferences.build_pairs(
        [ADD], ScriptedPolicy(script), judge, tokenize, **_pts_kwargs(max_solution_tokens=9)
    )
    assert stats.passed_samples == 4 and stats.pairs["rejection"] == 0
    pivotal = [r for r in rows if r["kind"] == "pivotal"]
    assert len(pivotal) == 1
    row = pivotal[0]
    assert row["prompt"] == ADD.prompt + "    return "
    assert (row["chosen"], row["rejected"]) == ("a", "(")
    assert (row["p_before"], row["p_after"]) == (1.0, 0.5)


def test_pts_counts_a_pivot_without_an_alternative_token():
    """Scripted policy (see ``ScriptedPolicy``), real sandbox. The failing continuations from before the
    ``+`` also start with ``+`` (``+ b + 1``), so no single-token alternative exists: the pivot is counted,
    no pivotal pair is made."""
    solution = "    return a + b\n"

    def script(prompt, n):
        prefix = _prefix(ADD, prompt)
        rest = solution[len(prefix) :]
        if "+" in prefix:
            return [rest] * n
        return [rest if i % 2 == 0 else rest.replace("b\n", "b + 1\n") for i in range(n)]

    rows, stats = preferences.build_pairs([ADD], ScriptedPolicy(script), judge, tokenize, **_pts_kwargs())
    assert (stats.pivots, stats.pivots_without_alternative, stats.pairs["pivotal"]) == (1, 1, 0)
    assert [r["kind"] for r in rows] == ["rejection"]


# --- problems -----------------------------------------------------------------------------------------------


def test_mbpp_problems_come_from_the_training_split_only(mbpp_path):
    tasks = [json.loads(line) for line in mbpp_path.read_text().splitlines() if line.strip()]
    problems = preferences.mbpp_problems(mbpp_path, 10_000)
    ids = [int(p.id.removeprefix("mbpp/")) for p in problems]
    assert set(ids) == {t["task_id"] for t in tasks if 601 <= t["task_id"] <= 974}
    assert not set(ids) & set(range(11, 511))
    by_id = {t["task_id"]: t for t in tasks}
    for p, i in zip(problems, ids, strict=True):
        task = by_id[i]
        assert task["text"].strip() in p.prompt and task["test_list"][0] in p.prompt
        assert p.prompt.startswith('"""') and p.prompt.endswith('"""\n')
        assert all(t.strip() in p.tests for t in task["test_list"])
        assert "\r\n" not in p.reference
    assert len(preferences.mbpp_problems(mbpp_path, 5)) == 5
    evaluation = preferences.mbpp_problems(mbpp_path, 3, ids=range(11, 511))
    assert [p.id for p in evaluation] == ["mbpp/11", "mbpp/12", "mbpp/13"]


def test_mbpp_references_pass_in_the_sandbox(mbpp_path):
    problems = preferences.mbpp_problems(mbpp_path, 20)
    verdicts = sandbox.run_programs([p.program(p.reference) for p in problems])
    failed = [(p.id, v.kind, v.detail) for p, v in zip(problems, verdicts, strict=True) if not v.passed]
    assert len(problems) == 20 and failed == [], f"{20 - len(failed)}/20 passed; failures: {failed}"


def test_a_limit_of_zero_gives_no_problems(mbpp_path):
    assert preferences.mbpp_problems(mbpp_path, 0) == []
    assert preferences.exercise_problems([_exercise_row()], 0) == []


def _exercise_row() -> dict:
    """Shaped like a synthetic_exercises row: text = program + tests, program = helpers + solution."""
    helpers = "import math\n\n\ndef _square(x):\n    return x * x\n\n\n"
    prompt = 'def circle_area(r):\n    """The area of a circle of radius r."""\n'
    solution = prompt + "    return math.pi * _square(r)\n"
    tests = "assert abs(circle_area(1) - math.pi) < 1e-9\nassert circle_area(0) == 0"
    program = helpers + solution
    return {
        "id": "ex-1",
        "prompt": prompt,
        "solution": solution,
        "tests": tests,
        "text": f"{program}\n\n\n{tests}\n",
    }


def test_exercise_problems_keep_the_helpers_in_the_prompt():
    row = _exercise_row()
    other = {**row, "id": "ex-2", "prompt": "def other():\n"}  # a solution that does not extend its prompt
    problems = preferences.exercise_problems([row, other], 10)
    p = problems[0]
    assert p.id == "exercise/ex-1" and p.tests == row["tests"]
    assert p.prompt.startswith("import math\n") and "def _square(x):" in p.prompt
    assert p.prompt.endswith(row["prompt"])
    assert p.program(p.reference) == row["text"]
    bare = Problem("bare", row["prompt"], row["tests"])  # the same exercise without its helpers fails
    assert judge([p.program(p.reference), bare.program(p.reference)]) == [True, False]
    assert problems[1].reference is None
    assert len(preferences.exercise_problems([row, other], 1)) == 1
