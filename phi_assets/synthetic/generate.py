"""Requests, parsing and validation for the synthetic text sets; plain functions, no Dagster.

Every candidate ends as exactly one row: kept, or a failure with a ``reason`` and a ``detail``
(``reconcile`` checks it), so a batch's counts always add up: candidates = kept + failed.

- Textbooks (phi-1.5): one chat request per (topic, audience, format) draw, sampled with the
  draw's seed. Failures: ``llm_error``, ``empty``, ``too_short``, ``repetitive`` (a degenerate
  loop: few distinct word trigrams), ``not_prose``, and ``truncated`` when truncation is refused.
- Exercises (phi-1's CodeExercises): parsed and checked in ``exercises.py``, which builds its rows
  with the helpers here.
- Web rewrites (phi-4, Nemotron-CC): the prompt depends on the document's quality bucket (its
  educational score): high-quality documents become question-answer pairs, the rest are rewritten
  as an encyclopedia-style textbook section. Failures: as textbooks, plus ``no_qa_pairs`` and
  ``copied_source`` (the "rewrite" repeats the document or the prompt's instructions).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from phi_assets.synthetic.templates import Template
from resources.llm import Request, Result

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
    return typed_frame(kept, TEXTBOOK_SCHEMA), failures_frame(failed)


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


def typed_frame(rows: list[dict], schema: dict) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=schema).select(list(schema))


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
    return typed_frame(kept, REWRITE_SCHEMA), failures_frame(failed)
