"""Exercises (phi-1's CodeExercises): requests, parsing and rows; plain functions, no Dagster.

Two stages. One: a one-shot chat (``exercise_example.md`` shows the format) whose answer is
prefilled with a Python code fence and stopped before any test; ``n`` samples per draw;
``parse_function`` needs a function with a docstring and a body. Two: the same chat with the answer
prefilled with that code and ``assert name(``, so the model writes tests of this function (small
models otherwise ramble on and never test). ``parse_exercise`` needs one function with a docstring
and top-level ``assert`` tests that call it (an answer cut off mid-statement by ``max_tokens`` is
read up to its last whole top-level statement); the program (definitions + tests) then runs in the
evaluation sandbox, and only ``passed`` ones are kept. Failures: parse reasons (``no_code``,
``syntax_error``, ``no_function``, ``no_docstring``, ``no_tests``, ``copies_example``: the
example's function name, or difflib ratio >= 0.8 to it) and sandbox verdicts (``failed``,
``error``, ``timeout``, ``killed``) with the sandbox's detail.

Every candidate ends as exactly one row, kept or a failure (``generate.reconcile`` checks it).
"""

from __future__ import annotations

import ast
import copy
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from phi_assets.synthetic.generate import content_id, failure, failures_frame, typed_frame
from phi_assets.synthetic.templates import Template
from resources.llm import Request, Result

FENCE = "```python\n"
FUNCTION_STOPS = ["```", "\nassert ", "\n# Test", "\n# Example", "\nprint("]
TESTS_PREFILL = "\n\n\nassert "


@dataclass(frozen=True)
class Exercise:
    function: str  # the function's name
    prompt: str  # signature + docstring: what a model is asked to complete
    solution: str  # the whole function (signature, docstring, body)
    program: str  # definitions the function needs (imports, helpers) + the function
    tests: str  # the assert statements, one per line

    @property
    def num_tests(self) -> int:
        return self.tests.count("\n") + 1

    def runnable(self) -> str:
        return f"{self.program}\n\n\n{self.tests}\n"


class NotAnExercise(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def exercise_requests(
    draws: pl.DataFrame, ask: Template, example: Template, *, samples: int, max_tokens: int, temperature: float
) -> list[Request]:
    """A one-shot chat: the example exercise, then this draw's; the answer opens a code fence."""
    shown = ask.render(topic="counting vowels", audience="beginners")
    return [
        Request.chat(
            [
                {"role": "user", "content": shown},
                {"role": "assistant", "content": example.text.strip()},
                {"role": "user", "content": ask.render(topic=d["topic"], audience=d["audience"])},
                {"role": "assistant", "content": FENCE},
            ],
            n=samples,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=d["seed"],
            stop=FUNCTION_STOPS,
        )
        for d in draws.iter_rows(named=True)
    ]


def test_requests(
    stage_one: Sequence[Request], functions: Sequence[tuple[dict, str, str]], *, max_tokens: int
) -> list[Request]:
    """Stage two: the same chat, the answer prefilled with the function and ``assert name(``."""
    out = []
    for cand, name, program in functions:
        first = stage_one[cand["request"]]
        s = first.sampling
        messages = [{"role": r, "content": c} for r, c in first.messages[:-1]]
        messages.append({"role": "assistant", "content": f"{FENCE}{program}{TESTS_PREFILL}{name}("})
        out.append(
            Request.chat(
                messages,
                max_tokens=max_tokens,
                temperature=s.temperature,
                seed=s.seed + cand["sample"],
                stop=["```", "\ndef ", "\nclass "],
            )
        )
    return out


def _calls(node: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name for n in ast.walk(node)
    )


def example_function(example: Template) -> str:
    code = example.text.split(FENCE, 1)[-1].split("```", 1)[0]
    tree = ast.parse(code)
    return next(ast.unparse(n) for n in tree.body if isinstance(n, ast.FunctionDef))


def _complete_prefix(code: str) -> ast.Module | None:
    """The longest run of whole top-level statements that parses (an answer cut by max_tokens)."""
    lines = code.splitlines()
    for end in range(len(lines) - 1, 0, -1):
        if lines[end][:1] not in ("", " ", "\t", ")", "]", "}"):  # a top-level statement starts here
            try:
                return ast.parse("\n".join(lines[:end]))
            except SyntaxError:
                continue
    return None


def _tree(code: str) -> ast.Module:
    code = code.split("```", 1)[0]
    if not code.strip():
        raise NotAnExercise("no_code", "no code in the answer")
    try:
        return ast.parse(code)
    except SyntaxError as e:
        tree = _complete_prefix(code)
        if tree is None:
            raise NotAnExercise("syntax_error", f"line {e.lineno}: {e.msg}") from None
        return tree


def _support(tree: ast.Module) -> list[ast.stmt]:
    kinds = ast.Import | ast.ImportFrom | ast.FunctionDef | ast.ClassDef | ast.Assign | ast.AnnAssign
    return [n for n in tree.body if isinstance(n, kinds)]


def _name(function_source: str) -> str:
    return function_source.split("(", 1)[0].removeprefix("def ").strip()


def parse_function(code: str, example_function: str = "", copy_ratio: float = 0.8) -> tuple[str, str]:
    """Stage one: the first documented function and the definitions it may need, as source."""
    tree = _tree(code)
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if not functions:
        raise NotAnExercise("no_function", "no top-level function")
    documented = [f for f in functions if (ast.get_docstring(f) or "").strip() and len(f.body) > 1]
    if not documented:
        raise NotAnExercise("no_docstring", f"{functions[0].name} has no docstring and body")
    fn = documented[0]
    _check_copy(ast.unparse(fn), example_function, copy_ratio)
    return fn.name, "\n\n".join(ast.unparse(n) for n in _support(tree))


def _check_copy(solution: str, example_function: str, copy_ratio: float) -> None:
    if example_function and _name(solution) == _name(example_function):
        raise NotAnExercise("copies_example", f"{_name(solution)} is the prompt's example function")
    if example_function:
        ratio = difflib.SequenceMatcher(None, solution, example_function, autojunk=False).ratio()
        if ratio >= copy_ratio:
            raise NotAnExercise("copies_example", f"similarity to the prompt's example {ratio:.2f}")


def parse_exercise(code: str, example_function: str = "", copy_ratio: float = 0.8) -> Exercise:
    """Split generated code into function, prompt, helpers and tests, or raise ``NotAnExercise``."""
    tree = _tree(code)
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if not functions:
        raise NotAnExercise("no_function", "no top-level function")
    tests = [n for n in tree.body if isinstance(n, ast.Assert)]
    tested = [f for f in functions if any(_calls(t, f.name) for t in tests)]
    if not tested:
        detail = f"{len(tests)} top-level asserts, none calls {', '.join(f.name for f in functions)}"
        raise NotAnExercise("no_tests", detail)
    fn = tested[0]
    docstring = ast.get_docstring(fn)
    if not docstring or not docstring.strip():
        raise NotAnExercise("no_docstring", f"{fn.name} has no docstring")
    solution = ast.unparse(fn)
    _check_copy(solution, example_function, copy_ratio)
    body = fn.body[1:]  # after the docstring
    head = copy.copy(fn)
    head.body = [fn.body[0]]
    signature = ast.unparse(head)
    support = _support(tree)
    if not body:
        raise NotAnExercise("no_function", f"{fn.name} has a docstring but no body")
    return Exercise(
        function=fn.name,
        prompt=signature,
        solution=solution,
        program="\n\n".join(ast.unparse(n) for n in support),
        tests="\n".join(ast.unparse(t) for t in tests if _calls(t, fn.name)),
    )


def exercise_functions(
    draws: pl.DataFrame, results: Sequence[Result], example: Template, samples: int
) -> tuple[list[tuple[dict, str, str]], list[dict]]:
    """Stage one parsed: (candidate, function name, program) per usable sample, and failures."""
    reference = example_function(example)
    functions, failed = [], []
    for i, (d, r) in enumerate(zip(draws.iter_rows(named=True), results, strict=True)):
        completions = r.completions if r.ok else [None] * samples
        for j, c in enumerate(completions):
            cid = f"{d['draw_id']}-s{j}"
            if c is None:
                failed.append(failure("exercises", cid, "llm_error", f"{r.error_kind}: {r.error}", None))
                continue
            try:
                name, program = parse_function(c.text, reference)
            except NotAnExercise as e:
                failed.append(failure("exercises", cid, e.reason, e.detail, c.text))
                continue
            cand = {
                **d,
                "candidate_id": cid,
                "sample": j,
                "request": i,
                "num_tokens": c.num_tokens,
                "num_prompt_tokens": r.num_prompt_tokens,
            }
            functions.append((cand, name, program))
    return functions, failed


def exercise_candidates(
    functions: Sequence[tuple[dict, str, str]], results: Sequence[Result], example: Template, failed: list[dict]
) -> tuple[list[tuple[dict, Exercise]], list[dict]]:
    """Stage two parsed: each function with its generated tests, ready to run; or a failure."""
    reference = example_function(example)
    runnable = []
    for (cand, name, program), r in zip(functions, results, strict=True):
        if not r.ok:
            failed.append(
                failure("exercises", cand["candidate_id"], "llm_error", f"{r.error_kind}: {r.error}", program)
            )
            continue
        code = f"{program}{TESTS_PREFILL}{name}({r.text}"
        try:
            exercise = parse_exercise(code, reference)
        except NotAnExercise as e:
            failed.append(failure("exercises", cand["candidate_id"], e.reason, e.detail, code))
            continue
        tokens = cand["num_tokens"] + r.num_generated_tokens
        runnable.append(
            (
                {
                    **cand,
                    "num_tokens": tokens,
                    "num_prompt_tokens": cand["num_prompt_tokens"] + r.num_prompt_tokens,
                },
                exercise,
            )
        )
    return runnable, failed


EXERCISE_SCHEMA = {
    "id": pl.String,
    "candidate_id": pl.String,
    "draw_id": pl.String,
    "topic": pl.String,
    "audience": pl.String,
    "sample": pl.Int64,
    "function": pl.String,
    "prompt": pl.String,
    "solution": pl.String,
    "tests": pl.String,
    "num_tests": pl.Int64,
    "text": pl.String,
    "duration_s": pl.Float64,
    "num_prompt_tokens": pl.Int64,
    "num_tokens": pl.Int64,
    "model": pl.String,
    "model_version": pl.String,
    "prompt_sha256": pl.String,
}


NONDETERMINISTIC = "nondeterministic"  # passed once, failed when run again


def exercise_rows(
    runnable: list[tuple[dict, Exercise]],
    verdicts: Sequence[Any],
    failed: list[dict],
    model: dict[str, str],
    prompt_sha256: str,
    again: dict[int, Any] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Kept exercises and failure rows. ``again``: the second run's verdict of each program that passed (by its
    index); one that fails there is ``nondeterministic`` (its tests passed by chance: random numbers, time)."""
    kept = []
    for i, ((cand, ex), v) in enumerate(zip(runnable, verdicts, strict=True)):
        if v.kind != "passed":
            failed.append(failure("exercises", cand["candidate_id"], v.kind, v.detail, ex.runnable()))
            continue
        second = (again or {}).get(i)
        if second is not None and second.kind != "passed":
            detail = f"passed, then {second.kind} when run again: {second.detail}"
            failed.append(failure("exercises", cand["candidate_id"], NONDETERMINISTIC, detail, ex.runnable()))
            continue
        text = f"{ex.program}\n\n\n{ex.tests}\n"
        kept.append(
            {
                "id": content_id("ex", ex.solution),
                "candidate_id": cand["candidate_id"],
                "draw_id": cand["draw_id"],
                "topic": cand["topic"],
                "audience": cand["audience"],
                "sample": cand["sample"],
                "function": ex.function,
                "prompt": ex.prompt,
                "solution": ex.solution,
                "tests": ex.tests,
                "num_tests": ex.num_tests,
                "text": text,
                "duration_s": round(v.duration_s, 3),
                "num_prompt_tokens": cand["num_prompt_tokens"],
                "num_tokens": cand["num_tokens"],
                **model,
                "prompt_sha256": prompt_sha256,
            }
        )
    return typed_frame(kept, EXERCISE_SCHEMA), failures_frame(failed)
