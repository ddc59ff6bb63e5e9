"""Requests, parsing and validation for the three synthetic sets; plain functions, no Dagster.

Every candidate ends as exactly one row: kept, or a failure with a ``reason`` and a ``detail``
(``reconcile`` checks it), so a batch's counts always add up: candidates = kept + failed.

- Textbooks (phi-1.5): one chat request per (topic, audience, format) draw, sampled with the
  draw's seed. Failures: ``llm_error``, ``empty``, ``too_short``, ``repetitive`` (a degenerate
  loop: few distinct word trigrams), ``not_prose``, and ``truncated`` when truncation is refused.
- Exercises (phi-1's CodeExercises), in two stages. One: a one-shot chat (``exercise_example.md``
  shows the format) whose answer is prefilled with a Python code fence and stopped before any
  test; ``n`` samples per draw; ``parse_function`` needs a function with a docstring and a body.
  Two: the same chat with the answer prefilled with that code and ``assert name(``, so the model
  writes tests of this function (small models otherwise ramble on and never test). ``parse_exercise``
  needs one function with a docstring and top-level ``assert`` tests that call it (an answer cut
  off mid-statement by ``max_tokens`` is read up to its last whole top-level statement); the program
  (definitions + tests) then runs in the evaluation sandbox, and only ``passed`` ones are kept.
  Failures: parse reasons (``no_code``, ``syntax_error``, ``no_function``, ``no_docstring``,
  ``no_tests``, ``copies_example``: the example's function name, or difflib ratio >= 0.8 to it)
  and sandbox verdicts (``failed``, ``error``, ``timeout``,
  ``killed``) with the sandbox's detail.
- Web rewrites (phi-4, Nemotron-CC): the prompt depends on the document's quality bucket (its
  educational score): high-quality documents become question-answer pairs, the rest are rewritten
  as an encyclopedia-style textbook section. Failures: as textbooks, plus ``no_qa_pairs`` and
  ``copied_source`` (the "rewrite" repeats the document or the prompt's instructions).
"""

from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from phi_assets.synthetic.templates import Template
from resources.llm import Request, Result

FENCE = "```python\n"
FUNCTION_STOPS = ["```", "\nassert ", "\n# Test", "\n# Example", "\nprint("]
TESTS_PREFILL = "\n\n\nassert "
FAILURE_SCHEMA = {
    "set": pl.String,
    "candidate_id": pl.String,
    "reason": pl.String,
    "detail": pl.String,
    "text": pl.String,
}
BUCKETS = ("high", "medium", "low")
STYLE_OF_BUCKET = {"high": "qa", "medium": "textbook", "low": "textbook"}
_WORD = re.compile(r"\w+")
_QA = re.compile(
    r"(?im)^\s*(?:\*\*)?(?:Q(?:uestion)?\s*\d*)\s*[:.]\**\s*\S.*?\n\s*(?:\*\*)?A(?:nswer)?\s*\d*"
    r"\s*[:.]\**\s*\S"
)


def content_id(prefix: str, text: str) -> str:
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def failure(set_name: str, candidate_id: str, reason: str, detail: str, text: str | None) -> dict[str, Any]:
    return {
        "set": set_name,
        "candidate_id": candidate_id,
        "reason": reason,
        "detail": detail,
        "text": text or "",
    }


def failures_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=FAILURE_SCHEMA)


def reconcile(candidates: int, kept: pl.DataFrame, failed: pl.DataFrame) -> dict[str, Any]:
    reasons = dict(sorted(failed.group_by("reason").len().iter_rows())) if failed.height else {}
    funnel = {"candidates": candidates, "kept": kept.height, "failed": failed.height, "by_reason": reasons}
    if candidates != kept.height + failed.height:
        raise AssertionError(f"counts do not reconcile: {funnel}")
    return funnel


# --- text validation --------------------------------------------------------------------------


@dataclass(frozen=True)
class TextRules:
    min_words: int = 60
    min_distinct_trigrams: float = 0.5  # distinct / total word trigrams; loops score far lower
    min_letter_fraction: float = 0.5  # letters / non-space characters
    drop_truncated: bool = False  # keep text cut by max_tokens (recorded in finish_reason)

    def __post_init__(self) -> None:
        if self.min_words < 1:
            raise ValueError(f"min_words must be >= 1, got {self.min_words}")
        for name in ("min_distinct_trigrams", "min_letter_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def distinct_ratio(words: Sequence[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def check_text(text: str | None, finish_reason: str, rules: TextRules) -> tuple[str, str] | None:
    """The first rule ``text`` fails, as (reason, detail); None when it passes."""
    if not text or not text.strip():
        return "empty", "no text"
    words = _WORD.findall(text.lower())
    if len(words) < rules.min_words:
        return "too_short", f"words={len(words)} < {rules.min_words}"
    ratio = distinct_ratio(words, 3)
    if ratio < rules.min_distinct_trigrams:
        return "repetitive", f"distinct_trigrams={ratio:.2f} < {rules.min_distinct_trigrams}"
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible) / len(visible)
    if letters < rules.min_letter_fraction:
        return "not_prose", f"letter_fraction={letters:.2f} < {rules.min_letter_fraction}"
    if rules.drop_truncated and finish_reason == "length":
        return "truncated", "stopped at max_tokens"
    return None


def _checked(result: Result, rules: TextRules) -> tuple[str | None, int, str, tuple[str, str] | None]:
    """A one-sample result as (text, tokens, finish reason, the first problem or None)."""
    if not result.ok:
        return None, 0, "error", ("llm_error", f"{result.error_kind}: {result.error}")
    if not result.completions:
        return None, 0, "error", check_text(None, "error", rules)
    c = result.completions[0]
    return c.text, c.num_tokens, c.finish_reason, check_text(c.text, c.finish_reason, rules)


# --- textbooks --------------------------------------------------------------------------------


def textbook_requests(
    draws: pl.DataFrame, template: Template, *, max_tokens: int, temperature: float
) -> list[Request]:
    return [
        Request.chat(
            template.render(topic=d["topic"], audience=d["audience"], format=d["format"]),
            max_tokens=max_tokens,
            temperature=temperature,
            seed=d["seed"],
        )
        for d in draws.iter_rows(named=True)
    ]


def textbook_rows(
    draws: pl.DataFrame, results: Sequence[Result], rules: TextRules, model: dict[str, str], template: Template
) -> tuple[pl.DataFrame, pl.DataFrame]:
    kept, failed = [], []
    for d, r in zip(draws.iter_rows(named=True), results, strict=True):
        text, tokens, finish, problem = _checked(r, rules)
        if problem:
            failed.append(failure("textbooks", d["draw_id"], *problem, text))
            continue
        text = text.strip()
        kept.append(
            {
                "id": content_id("tb", text),
                **d,
                "text": text,
                "num_prompt_tokens": r.num_prompt_tokens,
                "num_tokens": tokens,
                "finish_reason": finish,
                **model,
                "prompt_sha256": template.sha256,
            }
        )
    return _frame(kept, TEXTBOOK_SCHEMA), failures_frame(failed)


TEXTBOOK_SCHEMA = {
    "id": pl.String,
    "draw_id": pl.String,
    "topic": pl.String,
    "audience": pl.String,
    "format": pl.String,
    "seed": pl.Int64,
    "text": pl.String,
    "num_prompt_tokens": pl.Int64,
    "num_tokens": pl.Int64,
    "finish_reason": pl.String,
    "model": pl.String,
    "model_version": pl.String,
    "prompt_sha256": pl.String,
}


def _frame(rows: list[dict], schema: dict) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=schema).select(list(schema))


# --- exercises --------------------------------------------------------------------------------


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


def _example_function(example: Template) -> str:
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
    reference = _example_function(example)
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
    reference = _example_function(example)
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


def exercise_rows(
    runnable: list[tuple[dict, Exercise]],
    verdicts: Sequence[Any],
    failed: list[dict],
    model: dict[str, str],
    prompt_sha256: str,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    kept = []
    for (cand, ex), v in zip(runnable, verdicts, strict=True):
        if v.kind != "passed":
            failed.append(failure("exercises", cand["candidate_id"], v.kind, v.detail, ex.runnable()))
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
    return _frame(kept, EXERCISE_SCHEMA), failures_frame(failed)


# --- web rewrites -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Buckets:
    high: float = 3.0  # educational score at or above: "high" (question-answer pairs)
    medium: float = 2.0  # at or above: "medium"; below: "low" (both: textbook rewrite)

    def __post_init__(self) -> None:
        if self.medium > self.high:
            raise ValueError(
                f"bucket thresholds need medium <= high, got medium={self.medium} high={self.high}"
            )

    def of(self, score: float) -> str:
        return "high" if score >= self.high else "medium" if score >= self.medium else "low"


def in_batch(doc_id: str, batch: int, num_batches: int) -> bool:
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:12], 16) % num_batches == batch


def rewrite_requests(
    docs: pl.DataFrame,
    templates: dict[str, Template],
    *,
    max_doc_chars: int,
    max_tokens: int,
    temperature: float,
    seed: int,
) -> list[Request]:
    requests = []
    for d in docs.iter_rows(named=True):
        template = templates[d["style"]]
        prompt = template.render(document=d["source_text"][:max_doc_chars])
        requests.append(Request.chat(prompt, max_tokens=max_tokens, temperature=temperature, seed=seed))
    return requests


def count_qa_pairs(text: str) -> int:
    return len(_QA.findall(text))


def copied_fraction(source: str, rewrite: str, n: int = 8) -> float:
    """Share of the rewrite's word 8-grams that appear verbatim in the source."""
    words = _WORD.findall(rewrite.lower())
    grams = {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
    if not grams:
        return 0.0
    src = _WORD.findall(source.lower())
    return len(grams & {tuple(src[i : i + n]) for i in range(len(src) - n + 1)}) / len(grams)


REWRITE_SCHEMA = {
    "id": pl.String,
    "source_id": pl.String,
    "source_uri": pl.String,
    "source_shard": pl.String,
    "edu_score": pl.Float32,
    "bucket": pl.String,
    "style": pl.String,
    "text": pl.String,
    "num_qa_pairs": pl.Int64,
    "num_prompt_tokens": pl.Int64,
    "num_tokens": pl.Int64,
    "finish_reason": pl.String,
    "model": pl.String,
    "model_version": pl.String,
    "prompt_sha256": pl.String,
}


def rewrite_rows(
    docs: pl.DataFrame,
    results: Sequence[Result],
    rules: TextRules,
    templates: dict[str, Template],
    model: dict[str, str],
    max_copied: float = 0.5,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    kept, failed = [], []
    for d, r in zip(docs.iter_rows(named=True), results, strict=True):
        text, tokens, finish, problem = _checked(r, rules)
        pairs = count_qa_pairs(text or "")
        if not problem and d["style"] == "qa" and pairs == 0:
            problem = ("no_qa_pairs", "no 'Question: ... Answer: ...' pair")
        if not problem:
            copied = copied_fraction(templates[d["style"]].text + "\n" + d["source_text"], text)
            if copied > max_copied:
                problem = ("copied_source", f"copied_8grams={copied:.2f} > {max_copied}")
        if problem:
            failed.append(failure("rewrites", d["source_id"], *problem, text))
            continue
        text = text.strip()
        kept.append(
            {
                "id": content_id("rw", text),
                "source_id": d["source_id"],
                "source_uri": d["source_uri"],
                "source_shard": d["source_shard"],
                "edu_score": d["edu_score"],
                "bucket": d["bucket"],
                "style": d["style"],
                "text": text,
                "num_qa_pairs": pairs,
                "num_prompt_tokens": r.num_prompt_tokens,
                "num_tokens": tokens,
                "finish_reason": finish,
                **model,
                "prompt_sha256": templates[d["style"]].sha256,
            }
        )
    return _frame(kept, REWRITE_SCHEMA), failures_frame(failed)
