"""Judge-guided preference pairs (phi-4's technical report, section 4.2): for prompts no program can check.

Execution judges code (``preferences.py``); an explanation of a topic, the answer to a question about a
web page or a user's request has no test to run. For those the policy samples several answers, and an
LLM judge compares two of them at a time. A judge has a position bias (small ones often prefer whichever
answer comes first), so each pair is judged twice, once in each order, and a pair is kept only when both
verdicts name the same answer. A pair whose two verdicts disagree, or where either verdict is a tie or
unreadable, is dropped with its reason counted: compared = kept + ties + disagreed + unparsed.

The judge replies with a verdict (``Verdict: A``, ``B`` or ``tie``; its turn is prefilled with ``Verdict:``, so
the verdict comes first and a reply cut short still has it), a score from 0 to 10 for each answer and a
one-line rationale; a reply without a verdict but with both scores is read by its scores.
Two numbers tell how far the judge can be trusted: the position-swap agreement rate (of the pairs whose
two verdicts both parsed, the share that name the same answer, ties included) and the tie rate (of the
parsed verdicts). The kept pairs carry both verdicts' rationales and the chosen and rejected answers'
mean scores.

Prompts come from three places (``SOURCES``): the synthetic textbooks (an explanation of each topic for
its audience), the questions of the question-answer rewrites of web documents, and a file of user-style
requests (``prompts/requests.txt``, written for this project).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from resources.llm import Request

SOURCES = ("textbooks", "rewrites", "requests")
REQUESTS_FILE = Path(__file__).parent / "prompts" / "requests.txt"
VERDICTS = ("A", "B", "tie")
JUDGE_SYSTEM = (
    "You are a strict teacher comparing two answers to the same request. Judge which answer is more helpful, "
    "correct and clear; length alone is not a merit. Reply in exactly three lines:\n"
    "Verdict: A, B or tie\nScores: A=<0-10> B=<0-10>\nRationale: <one sentence>"
)
PREFILL = "Verdict:"  # the judge's turn starts here, so its first words are the verdict
_VERDICT = re.compile(r"verdict\s*[:=]\s*\**\s*(?:answer\s+)?(a|b|tie)\b", re.IGNORECASE)
_SCORES = re.compile(r"\bA\s*[=:]\s*(\d{1,2})\b.*?\bB\s*[=:]\s*(\d{1,2})\b", re.IGNORECASE | re.DOTALL)
_RATIONALE = re.compile(r"rationale\s*:\s*(.+)", re.IGNORECASE)
_QUESTION = re.compile(r"^\s*(?:\*\*)?Question\s*(?:\d+)?\s*[:.]\s*(?:\*\*)?\s*(.+?)\s*$",
                       re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class OpenPrompt:
    """A request with no executable check: what the policy is asked (``prompt``) and where it came from."""

    id: str
    source: str
    prompt: str

    @property
    def policy_prompt(self) -> str:
        """What the policy completes (SFT's instruction format: the request, a blank line, the answer)."""
        return f"{self.prompt.strip()}\n\n"


def textbook_prompts(rows: Iterable[dict], limit: int) -> list[OpenPrompt]:
    """An explanation of each synthetic textbook's topic for its audience (one per topic and audience)."""
    out, seen = [], set()
    for row in rows:
        key = (row["topic"], row["audience"])
        if len(out) >= limit:
            break
        if key not in seen:
            seen.add(key)
            out.append(OpenPrompt(f"textbook/{row['id']}", "textbooks",
                                  f"Explain {row['topic']} to {row['audience']} in a short paragraph."))
    return out


def rewrite_prompts(rows: Iterable[dict], limit: int) -> list[OpenPrompt]:
    """The questions of the question-answer rewrites (``Question: ...`` lines), each once."""
    out, seen = [], set()
    for row in rows:
        for i, question in enumerate(_QUESTION.findall(row["text"])):
            if len(out) >= limit:
                return out
            if len(question) >= 12 and question.lower() not in seen:
                seen.add(question.lower())
                out.append(OpenPrompt(f"rewrite/{row['id']}/{i}", "rewrites", question))
    return out


def request_prompts(path: Path, limit: int) -> list[OpenPrompt]:
    """User-style requests, one per line (``#`` lines and blank lines are skipped)."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    requests = [line for line in lines if line and not line.startswith("#")]
    return [OpenPrompt(f"request/{i}", "requests", text) for i, text in enumerate(requests[:limit])]


def candidate_pairs(answers: Sequence[str], max_pairs: int) -> list[tuple[int, int]]:
    """Index pairs of distinct non-empty answers (the first of each text), at most ``max_pairs``."""
    first: dict[str, int] = {}
    for i, text in enumerate(answers):
        if text.strip():
            first.setdefault(text.strip(), i)
    return list(combinations(sorted(first.values()), 2))[:max_pairs]


def judge_request(prompt: str, first: str, second: str, max_tokens: int = 64) -> Request:
    """The judge's chat: the request and the two answers, ``first`` shown as A; its reply starts with
    ``PREFILL`` (``parse_verdict`` reads the reply with it)."""
    user = (f"Request:\n{prompt.strip()}\n\nAnswer A:\n{first.strip()}\n\nAnswer B:\n{second.strip()}\n\n"
            "Which answer is better?")
    return Request.chat([{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user},
                         {"role": "assistant", "content": PREFILL}],
                        max_tokens=max_tokens, temperature=0.0, stop=("\n\n",))  # three lines, then done


@dataclass(frozen=True)
class Verdict:
    winner: str | None  # "A", "B", "tie"; None when the reply names none and scores neither
    score_a: int | None
    score_b: int | None
    rationale: str


def parse_verdict(text: str | None, prefilled: bool = False) -> Verdict:
    """The judge's verdict; without a ``Verdict:`` line, the higher of two scores (equal: a tie).
    ``prefilled``: the reply continues ``PREFILL`` (what ``judge_request`` asks for)."""
    text = f"{PREFILL}{text}" if prefilled and text is not None else text or ""
    scores = _SCORES.search(text)
    a, b = (int(scores.group(1)), int(scores.group(2))) if scores else (None, None)
    a, b = (a, b) if a is not None and a <= 10 and b <= 10 else (None, None)
    rationale = _RATIONALE.search(text)
    found = _VERDICT.search(text)
    if found:
        winner = found.group(1).upper() if found.group(1).lower() != "tie" else "tie"
    elif a is not None:
        winner = "A" if a > b else "B" if b > a else "tie"
    else:
        winner = None
    return Verdict(winner, a, b, rationale.group(1).strip() if rationale else text.strip()[:200])


@dataclass(frozen=True)
class Comparison:
    """One pair of one prompt's answers, to be judged as (first, second) and as (second, first)."""

    prompt: OpenPrompt
    first: str
    second: str

    def requests(self, max_tokens: int) -> list[Request]:
        return [judge_request(self.prompt.prompt, self.first, self.second, max_tokens),
                judge_request(self.prompt.prompt, self.second, self.first, max_tokens)]


def comparisons(prompts: Sequence[OpenPrompt], answers: Sequence[Sequence[str]],
                max_pairs: int) -> list[Comparison]:
    """Every prompt's candidate pairs (``candidate_pairs``) as comparisons."""
    out = []
    for prompt, texts in zip(prompts, answers, strict=True):
        out += [Comparison(prompt, texts[i], texts[j]) for i, j in candidate_pairs(texts, max_pairs)]
    return out


@dataclass
class JudgeStats:
    compared: int = 0  # pairs judged (each twice)
    kept: int = 0  # both orders name the same answer
    ties: int = 0  # both orders parsed and agree, on a tie
    disagreed: int = 0  # both parsed, and they name different outcomes (the position bias)
    unparsed: int = 0  # at least one reply named no verdict
    verdicts: dict[str, int] = field(default_factory=lambda: {"A": 0, "B": 0, "tie": 0, "none": 0})
    by_source: dict[str, int] = field(default_factory=dict)  # kept pairs per prompt source

    @property
    def agreement_rate(self) -> float | None:
        """Of the pairs whose two verdicts parsed, the share whose verdicts name the same outcome."""
        both = self.kept + self.ties + self.disagreed
        return (self.kept + self.ties) / both if both else None

    @property
    def tie_rate(self) -> float | None:
        parsed = self.verdicts["A"] + self.verdicts["B"] + self.verdicts["tie"]
        return self.verdicts["tie"] / parsed if parsed else None

    @property
    def first_position_rate(self) -> float | None:
        """Of the non-tie verdicts, the share naming the answer shown first (0.5 for an unbiased judge)."""
        decided = self.verdicts["A"] + self.verdicts["B"]
        return self.verdicts["A"] / decided if decided else None


def _outcome(verdict: Verdict, first_is_a: bool) -> str | None:
    """Which answer of the comparison the verdict names: ``first``, ``second``, ``tie`` or None."""
    if verdict.winner in (None, "tie"):
        return verdict.winner
    return "first" if (verdict.winner == "A") == first_is_a else "second"


OUTCOMES = ("kept", "tie", "disagreed", "unparsed")


def _classify(a: str | None, b: str | None) -> str:
    """A comparison's outcome from what its two orders name (``first``, ``second``, ``tie`` or None)."""
    if a is None or b is None:
        return "unparsed"
    if a != b:
        return "disagreed"
    return "tie" if a == "tie" else "kept"


def resolve(items: Sequence[Comparison], replies: Sequence[str | None],
            prefilled: bool = False) -> tuple[list[dict], JudgeStats]:
    """One row per comparison from the judge's replies (two per comparison: ``first`` shown as A, then as
    B; ``prefilled``: replies to ``judge_request``, which continue ``PREFILL``), with its outcome: ``kept``
    where both orders name the same answer (``winner``), else ``tie``, ``disagreed`` or ``unparsed``; and the
    counts that reconcile them."""
    if len(replies) != 2 * len(items):
        raise ValueError(f"resolve: {len(items)} comparisons need {2 * len(items)} replies, got {len(replies)}")
    rows, stats = [], JudgeStats()
    for i, item in enumerate(items):
        one, two = (parse_verdict(replies[2 * i], prefilled), parse_verdict(replies[2 * i + 1], prefilled))
        stats.compared += 1
        for v in (one, two):
            stats.verdicts[v.winner or "none"] += 1
        a, b = _outcome(one, True), _outcome(two, False)
        outcome = _classify(a, b)
        stats.kept += outcome == "kept"
        stats.ties += outcome == "tie"
        stats.disagreed += outcome == "disagreed"
        stats.unparsed += outcome == "unparsed"
        if outcome == "kept":
            stats.by_source[item.prompt.source] = stats.by_source.get(item.prompt.source, 0) + 1
        rows.append({
            "prompt_id": item.prompt.id, "source": item.prompt.source, "prompt": item.prompt.policy_prompt,
            "first": item.first, "second": item.second, "outcome": outcome,
            "winner": a if outcome == "kept" else None,
            # each answer's scores: in the first order the first answer is A, in the second it is B
            "score_first": _mean([one.score_a, two.score_b]), "score_second": _mean([one.score_b, two.score_a]),
            "rationale_ab": one.rationale, "rationale_ba": two.rationale,
        })
    return rows, stats


def preference_rows(rows: Sequence[dict]) -> list[dict]:
    """The kept comparisons as DPO pairs: (prompt, chosen, rejected) with the judge's scores and rationales."""
    out = []
    for r in rows:
        if r["outcome"] != "kept":
            continue
        first_won = r["winner"] == "first"
        out.append({
            "prompt_id": r["prompt_id"], "source": r["source"], "prompt": r["prompt"],
            "chosen": r["first"] if first_won else r["second"],
            "rejected": r["second"] if first_won else r["first"],
            "score_chosen": r["score_first"] if first_won else r["score_second"],
            "score_rejected": r["score_second"] if first_won else r["score_first"],
            "rationale_ab": r["rationale_ab"], "rationale_ba": r["rationale_ba"],
        })
    return out


def _mean(values: Sequence[int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
