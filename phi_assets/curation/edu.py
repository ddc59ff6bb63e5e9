"""Educational-value annotation (phi-1 section 2.1, FineWeb-Edu): prompts, sampling, score parsing.

A sample of each source's deduplicated documents is sent through the LLM engine with an additive
0-5 rubric: ``prompts/edu_code.md`` ("educational value for a student whose goal is to learn basic
coding concepts", the phi-1 wording) for code, ``prompts/edu_web.md`` (the FineWeb-Edu prompt) for
web text. The prompt files are part of the asset's code version: editing one re-annotates.

The answer is prefilled with ``Educational score:`` so the model's first tokens are the score
(small models rarely follow a format otherwise). ``parse_score`` accepts a whole number 0-5 in
the usual spellings ("3", " 4.0", "**5**", "2/5", "3 points") and nothing else: a fraction of a
point, a number outside 0-5, two different scores, or no number at all are counted per reason
and excluded from training, never guessed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from resources.llm import Request

VERSIONED_FILES = ("prompts/*.md",)  # the rubrics: part of the annotation asset's code version

PROMPTS_DIR = Path(__file__).parent / "prompts"
PREFILL = "Educational score:"
MAX_SCORE = 5
PARSE_STATUSES = ("ok", "empty", "no_score", "not_whole", "out_of_range", "ambiguous")

_NUMBER = r"(\d+(?:[.,]\d+)?)"
_LEADING = re.compile(rf"^[\s*:_`\"'\[(]*{_NUMBER}\s*(%|/\s*\d+|out of\s+\d+)?", re.IGNORECASE)
_LABELLED = re.compile(rf"(?:educational\s+)?score\s*(?:\(0-5\))?\s*[:=]?\s*\**\s*{_NUMBER}\s*"
                       r"(%|/\s*\d+|out of\s+\d+)?", re.IGNORECASE)


@dataclass(frozen=True)
class Prompt:
    source: str
    template: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()

    def render(self, document: str) -> str:
        return self.template.replace("{document}", document)


def load_prompt(source: str, prompts_dir: Path = PROMPTS_DIR) -> Prompt:
    """The rubric prompt of ``source`` ("code" or "web"); it must contain ``{document}``."""
    path = Path(prompts_dir) / f"edu_{source}.md"
    if not path.is_file():
        raise ValueError(f"no annotation prompt for source {source!r}: {path} does not exist")
    template = path.read_text(encoding="utf-8")
    if "{document}" not in template:
        raise ValueError(f"annotation prompt {path} has no {{document}} placeholder")
    return Prompt(source, template)


def excerpt(text: str, max_chars: int) -> str:
    """The start of a document, cut at a line break when one is near the limit."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind("\n", max_chars // 2, max_chars)
    return text[: cut if cut > 0 else max_chars]


def build_request(prompt: Prompt, text: str, *, max_chars: int, max_tokens: int) -> Request:
    messages = [{"role": "user", "content": prompt.render(excerpt(text, max_chars))},
                {"role": "assistant", "content": PREFILL}]
    return Request.chat(messages, max_tokens=max_tokens, temperature=0.0)


@dataclass(frozen=True)
class ParsedScore:
    score: int | None
    status: str  # one of PARSE_STATUSES


def _value(number: str, scale: str | None) -> tuple[int | None, str]:
    value = float(number.replace(",", "."))
    if scale:
        scale = scale.strip().lower()
        if scale == "%" or re.sub(r"^(/|out of)\s*", "", scale) != str(MAX_SCORE):
            return None, "out_of_range"  # "80%", "7/10": another scale; converting would be a guess
    if value != int(value):
        return None, "not_whole"
    if not 0 <= value <= MAX_SCORE:
        return None, "out_of_range"
    return int(value), "ok"


def parse_score(answer: str | None) -> ParsedScore:
    """The 0-5 score in an answer that continues ``PREFILL`` (or restates it), else why not."""
    if answer is None or not answer.strip():
        return ParsedScore(None, "empty")
    lead = _LEADING.match(answer)
    candidates = [lead.groups()] if lead else []
    candidates += [m.groups() for m in _LABELLED.finditer(answer)]
    if not candidates:
        return ParsedScore(None, "no_score")
    parsed = {_value(number, scale) for number, scale in candidates}
    if len(parsed) > 1:  # "3 ... Educational score: 4": which one?
        return ParsedScore(None, "ambiguous")
    score, status = parsed.pop()
    return ParsedScore(score, status)


def sample_documents(docs: pl.DataFrame, n: int, seed: int = 0) -> pl.DataFrame:
    """``n`` documents chosen by a seeded hash of their id: the same for the same corpus and
    seed whatever the shard order, and a document stays chosen when others are added."""
    if n < 1:
        raise ValueError(f"sample size must be >= 1, got {n}")
    rank = [hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).hexdigest() for i in docs["id"]]
    return docs.with_columns(_rank=pl.Series(rank, dtype=pl.String)).sort("_rank", "id").head(n).drop("_rank")
