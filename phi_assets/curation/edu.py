"""Educational-value annotation (phi-1 section 2.1, FineWeb-Edu): prompts, requests, label distributions.

A sample of each source's deduplicated documents is sent through the LLM engine with an additive
0-5 rubric: ``prompts/edu_code.md`` ("educational value for a student whose goal is to learn basic
coding concepts", the phi-1 wording) for code, ``prompts/edu_web.md`` (the FineWeb-Edu prompt) for
web text. The prompt files are part of the asset's code version: editing one re-annotates.

The answer is prefilled with ``Educational score: `` and the engine generates ONE token with its
top-20 log-probabilities (``build_request``): the score is read from the model's next-token
distribution rather than parsed from text. The prefill ends with a space because SmolLM2's tokenizer
(the default generator) writes " 3" as two tokens, " " and "3": after the space, the next token is the
digit (about 80% of the next-token mass falls on the six labels). Tokenizers that write " 3" as one
token are handled too: ``label_distribution`` counts every token whose text, stripped, is exactly one
of "0".."5" for that label, summing the probabilities of variants ("3" and " 3").

Per document (``LabelDistribution``): the six label probabilities renormalised over the labels,
``label_mass`` (how much of the next-token mass fell on labels before renormalising), the
``expected_score`` (sum of k * p_k), the ``label`` (argmax) and the ``entropy`` (nats). Status
``ok``; ``no_label`` when none of the six labels is among the top-k tokens (counted, never guessed);
``llm_error`` when the engine failed on the request (counted by reason in the generation stats).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from resources.llm import Request, Result

VERSIONED_FILES = ("prompts/*.md",)  # the rubrics: part of the annotation asset's code version

PROMPTS_DIR = Path(__file__).parent / "prompts"
PREFILL = "Educational score: "  # ends with a space: the next token is the digit (see the module docstring)
MAX_SCORE = 5
LABELS = tuple(str(k) for k in range(MAX_SCORE + 1))  # the label tokens' texts, stripped
TOP_LOGPROBS = 20  # top-k log-probabilities asked for the one generated token
STATUSES = ("ok", "no_label", "llm_error")
SCORE_BINS = 20  # histogram of expected scores: 0.25 wide over 0-5


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


def build_request(prompt: Prompt, text: str, *, max_chars: int, max_tokens: int = 1,
                  logprobs: int = TOP_LOGPROBS) -> Request:
    """The annotation request of one document: the rubric, the answer prefilled with ``PREFILL``, one
    greedy token with its top-``logprobs`` log-probabilities."""
    if logprobs < 1:
        raise ValueError(f"the annotation request reads the score from the top-k log-probabilities: "
                         f"logprobs (AnnotationConfig.top_logprobs) must be >= 1, got {logprobs}")
    messages = [{"role": "user", "content": prompt.render(excerpt(text, max_chars))},
                {"role": "assistant", "content": PREFILL}]
    return Request.chat(messages, max_tokens=max_tokens, temperature=0.0, logprobs=logprobs)


@dataclass(frozen=True)
class LabelDistribution:
    """The annotator's distribution over the labels 0-5 for one document (``probs`` None unless ok)."""

    status: str  # one of STATUSES
    probs: tuple[float, ...] | None = None  # p_0..p_5, renormalised over the labels (sum 1)
    label_mass: float | None = None  # sum of the labels' next-token probabilities, before renormalising

    @property
    def expected_score(self) -> float | None:
        return None if self.probs is None else sum(k * p for k, p in enumerate(self.probs))

    @property
    def label(self) -> int | None:
        """The most likely label (the lower one on a tie)."""
        return None if self.probs is None else max(range(len(self.probs)), key=lambda k: (self.probs[k], -k))

    @property
    def entropy(self) -> float | None:
        """In nats: 0 when one label has all the mass, log(6) ~ 1.79 when all six are equally likely."""
        return None if self.probs is None else -sum(p * math.log(p) for p in self.probs if p > 0)


def label_distribution(top: Mapping[str, float]) -> LabelDistribution:
    """The label distribution in one position's top-k ``{token text: logprob}``: every token whose
    stripped text is a label adds its probability to that label ("3" and " 3" both count for 3)."""
    mass = [0.0] * len(LABELS)
    for token, logprob in top.items():
        label = token.strip()
        if label in LABELS:
            mass[int(label)] += math.exp(logprob)
    total = sum(mass)
    if total <= 0:
        return LabelDistribution("no_label")
    return LabelDistribution("ok", tuple(m / total for m in mass), total)


def read_result(result: Result) -> LabelDistribution:
    """The label distribution of an annotation request's result (``build_request``)."""
    if not result.ok:
        return LabelDistribution("llm_error")
    completion = result.completions[0]
    if completion.logprobs is None:
        raise ValueError(f"annotation result {result.key[:12]} has no log-probabilities: the request must "
                         f"ask for them (edu.build_request sets logprobs={TOP_LOGPROBS}) and the backend "
                         f"return them")
    if not completion.logprobs:  # nothing generated: no position to read
        return LabelDistribution("no_label")
    return label_distribution(completion.logprobs[0])


def summarize(annotations: pl.DataFrame, bins: int = SCORE_BINS) -> dict:
    """Label histogram (argmax, 0..5), means of the expected score, entropy and label mass, and a
    ``bins``-bin histogram of the expected scores over 0-5, over the documents whose status is ok."""
    ok = annotations.filter(pl.col("status") == "ok")

    def mean(column: str) -> float | None:
        return None if ok.is_empty() else round(float(ok[column].mean()), 4)

    counts, _ = np.histogram(ok["expected_score"].to_numpy(), bins=bins, range=(0, MAX_SCORE))
    return {
        "labels": [ok.filter(pl.col("label") == k).height for k in range(MAX_SCORE + 1)],
        "mean_expected_score": mean("expected_score"),
        "mean_entropy": mean("entropy"),
        "mean_label_mass": mean("label_mass"),
        "expected_score_hist": counts.tolist(),
    }


def sample_documents(docs: pl.DataFrame, n: int, seed: int = 0) -> pl.DataFrame:
    """``n`` documents chosen by a seeded hash of their id: the same for the same corpus and
    seed whatever the shard order, and a document stays chosen when others are added."""
    if n < 1:
        raise ValueError(f"sample size must be >= 1, got {n}")
    rank = [hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).hexdigest() for i in docs["id"]]
    return docs.with_columns(_rank=pl.Series(rank, dtype=pl.String)).sort("_rank", "id").head(n).drop("_rank")
