"""An LLM-graded "understanding" score on unconventional coding problems, as in the phi-1 paper's
Table 2.

phi-1's authors worried that HumanEval and MBPP had leaked into training data, so they also wrote
50 problems unlike anything in those benchmarks and had GPT-4 grade each answer for how well it
shows understanding of the task, not only whether it runs. This module does the same with its own
problems (``PROBLEMS``: unusual specifications, not the textbook ones), answered by the model under
evaluation and graded through the LLM engine by a judge model (on ``local``: the default engine
model; on Kubernetes: whatever the engine serves, which should be a strong model).

The judge sees the problem, a reference solution and the answer, and must reply ``Score: N`` with
N from 0 to 10. An answer the judge scores with no readable number is counted as ungraded, never as
zero: graded + ungraded = problems. The score is the mean grade over graded answers, divided by 10.
Each answer is also executed against the problem's tests in the sandbox, so the judge's grade can be
read beside what the code actually does.

The judge is calibrated in the same call: it also grades every reference solution and an empty body
(``pass``). ``judge_gap`` = (mean grade of references - mean grade of empty bodies) / 10; a judge
that cannot tell them apart (gap below ``RELIABLE_GAP``) is flagged, and its score should not be
read as a measurement (a 135M judge gives almost everything 10).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from resources.llm import Request


@dataclass(frozen=True)
class UnconventionalProblem:
    id: str
    prompt: str  # a signature and docstring; the model completes the body
    reference: str  # a correct body
    tests: str  # asserts; the program is prompt + body + tests

    def program(self, completion: str) -> str:
        return f"{self.prompt}{completion}\n\n{self.tests}\n"


def _p(id: str, prompt: str, reference: str, tests: str) -> UnconventionalProblem:
    return UnconventionalProblem(id, prompt.lstrip("\n"), reference.lstrip("\n"), tests.strip())


PROBLEMS: tuple[UnconventionalProblem, ...] = (
    _p(
        "staircase_rotation",
        '''
def rotate_by_index(words: list[str]) -> list[str]:
    """Rotate the i-th word left by i characters (wrapping around its own length); empty words stay."""
''',
        """
    return [w[i % len(w):] + w[:i % len(w)] if w else w for i, w in enumerate(words)]
""",
        """
assert rotate_by_index(["abc", "abc", "abc", ""]) == ["abc", "bca", "cab", ""]
assert rotate_by_index(["xy", "hello"]) == ["xy", "elloh"]
""",
    ),
    _p(
        "prime_position_sum",
        '''
def sum_at_prime_positions(values: list[int]) -> int:
    """Sum the values whose 1-based position in the list is a prime number."""
''',
        """
    def is_prime(n: int) -> bool:
        return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))
    return sum(v for i, v in enumerate(values, start=1) if is_prime(i))
""",
        """
assert sum_at_prime_positions([10, 20, 30, 40, 50]) == 20 + 30 + 50
assert sum_at_prime_positions([7]) == 0
""",
    ),
    _p(
        "vowel_weighted_sort",
        '''
def sort_by_vowel_share(words: list[str]) -> list[str]:
    """Sort words by the share of their letters that are vowels (aeiou, any case), highest first;
    ties keep their original order."""
''',
        """
    def share(w: str) -> float:
        letters = [c for c in w.lower() if c.isalpha()]
        return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0
    return sorted(words, key=share, reverse=True)
""",
        """
assert sort_by_vowel_share(["sky", "idea", "tree", "aoi"]) == ["aoi", "idea", "tree", "sky"]
assert sort_by_vowel_share(["bc", "cd"]) == ["bc", "cd"]
""",
    ),
    _p(
        "run_length_of_runs",
        '''
def longest_run_per_char(text: str) -> dict[str, int]:
    """For each character of text, the length of its longest run of consecutive repeats."""
''',
        """
    best: dict[str, int] = {}
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and text[j] == text[i]:
            j += 1
        best[text[i]] = max(best.get(text[i], 0), j - i)
        i = j
    return best
""",
        """
assert longest_run_per_char("aabbbcaaaa") == {"a": 4, "b": 3, "c": 1}
assert longest_run_per_char("") == {}
""",
    ),
    _p(
        "diagonal_snake",
        '''
def diagonal_order(grid: list[list[int]]) -> list[int]:
    """Read a rectangular grid along its anti-diagonals, top-right to bottom-left on even diagonals
    (counting from 0) and bottom-left to top-right on odd ones."""
''',
        """
    if not grid:
        return []
    rows, cols = len(grid), len(grid[0])
    out = []
    for d in range(rows + cols - 1):
        cells = [(r, d - r) for r in range(rows) if 0 <= d - r < cols]
        if d % 2:
            cells.reverse()
        out.extend(grid[r][c] for r, c in cells)
    return out
""",
        """
assert diagonal_order([[1, 2, 3], [4, 5, 6]]) == [1, 4, 2, 3, 5, 6]
assert diagonal_order([]) == []
""",
    ),
    _p(
        "balanced_split",
        '''
def balanced_split_index(values: list[int]) -> int:
    """The smallest index i such that sum(values[:i]) equals sum(values[i:]), or -1 if none."""
''',
        """
    total, left = sum(values), 0
    for i in range(len(values) + 1):
        if 2 * left == total:
            return i
        if i < len(values):
            left += values[i]
    return -1
""",
        """
assert balanced_split_index([1, 2, 3, 3, 3]) == 3
assert balanced_split_index([1, 1, 1]) == -1
assert balanced_split_index([]) == 0
""",
    ),
    _p(
        "clock_angle",
        '''
def hand_angle(hours: int, minutes: int) -> float:
    """The smaller angle in degrees between the hour and minute hands of an analog clock."""
''',
        """
    angle = abs(30 * (hours % 12) + 0.5 * minutes - 6 * minutes)
    return min(angle, 360 - angle)
""",
        """
assert hand_angle(3, 0) == 90
assert hand_angle(12, 30) == 165
assert hand_angle(9, 45) == 22.5
""",
    ),
    _p(
        "interleave_uneven",
        '''
def interleave_all(lists: list[list[int]]) -> list[int]:
    """Take the first element of each list in turn, then the second, and so on; shorter lists
    simply drop out when exhausted."""
''',
        """
    out = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out
""",
        """
assert interleave_all([[1, 2, 3], [4], [5, 6]]) == [1, 4, 5, 2, 6, 3]
assert interleave_all([]) == []
""",
    ),
    _p(
        "digit_persistence",
        '''
def multiplicative_persistence(n: int) -> int:
    """How many times the digits of n must be multiplied together before a single digit remains."""
''',
        """
    steps = 0
    while n >= 10:
        product = 1
        for d in str(n):
            product *= int(d)
        n, steps = product, steps + 1
    return steps
""",
        """
assert multiplicative_persistence(39) == 3
assert multiplicative_persistence(7) == 0
assert multiplicative_persistence(999) == 4
""",
    ),
    _p(
        "bracket_depth_words",
        '''
def words_at_depth(text: str, depth: int) -> list[str]:
    """The space-separated words that sit at exactly the given parenthesis nesting depth, in order."""
''',
        """
    words, level, current = [], 0, ""
    for ch in text + " ":
        if ch in "() ":
            if current and level == depth:
                words.append(current)
            current = ""
            level += ch == "("
            level -= ch == ")"
        else:
            current += ch
    return words
""",
        """
assert words_at_depth("a (b c (d) e) f", 1) == ["b", "c", "e"]
assert words_at_depth("a (b c (d) e) f", 0) == ["a", "f"]
""",
    ),
    _p(
        "alternating_caps_by_word",
        '''
def caps_every_other_letter(sentence: str) -> str:
    """Upper-case every other letter of each word, starting with the word's first letter; other
    characters are unchanged and do not count."""
''',
        """
    out, index = [], 0
    for ch in sentence:
        if ch == " ":
            index = 0
            out.append(ch)
        elif ch.isalpha():
            out.append(ch.upper() if index % 2 == 0 else ch.lower())
            index += 1
        else:
            out.append(ch)
    return "".join(out)
""",
        """
assert caps_every_other_letter("hello world") == "HeLlO WoRlD"
assert caps_every_other_letter("a-b c") == "A-b C"
""",
    ),
    _p(
        "stock_single_trade",
        '''
def best_single_trade(prices: list[float]) -> tuple[int, int] | None:
    """The (buy day, sell day) with buy before sell that maximises profit, earliest such pair on a
    tie; None when no trade makes a profit."""
''',
        """
    best, pair, low = 0.0, None, 0
    for day, price in enumerate(prices):
        if price < prices[low]:
            low = day
        elif price - prices[low] > best:
            best, pair = price - prices[low], (low, day)
    return pair
""",
        """
assert best_single_trade([7, 1, 5, 3, 6, 4]) == (1, 4)
assert best_single_trade([5, 4, 3]) is None
""",
    ),
)

JUDGE_INSTRUCTION = (
    "You grade a student's Python solution to a programming problem. Compare it with the reference "
    "solution. Give 10 if it is fully correct, 5 if the idea is right but it has a bug, 0 if it "
    "does not address the problem. Reply with one line: Score: N (an integer from 0 to 10)."
)
EMPTY_BODY = "    pass\n"
RELIABLE_GAP = 0.5
_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*(\d{1,2})(?:\s*/\s*10)?", re.IGNORECASE)


def as_humaneval(problems: Sequence[UnconventionalProblem]) -> list:
    """The problems as HumanEval problems: the model under evaluation is asked and answers exactly as
    on HumanEval (``generate.requests`` and ``generate.samples``)."""
    from phi_assets.evaluation.harness import Problem

    return [Problem("humaneval", p.id, p.prompt, p.reference, p.tests, "") for p in problems]


def judge_requests(problems: Sequence[UnconventionalProblem], completions: Sequence[str]) -> list[Request]:
    return [
        Request.chat(
            [
                {"role": "system", "content": JUDGE_INSTRUCTION},
                {
                    "role": "user",
                    "content": f"Problem:\n```python\n{p.prompt}```\n\nReference solution:\n```python\n"
                    f"{p.prompt}{p.reference}```\n\nStudent solution:\n```python\n"
                    f"{p.prompt}{c}\n```",
                },
                {"role": "assistant", "content": "Score:"},
            ],
            max_tokens=8,
            temperature=0.0,
        )
        for p, c in zip(problems, completions, strict=True)
    ]


def parse_grade(text: str | None) -> int | None:
    """The judge's grade from its reply (the assistant turn starts with ``Score:``), or None."""
    if not text:
        return None
    match = _SCORE.search(text) or re.match(r"\s*\**\s*(\d{1,2})\b", text)
    if not match:
        return None
    grade = int(match.group(1))
    return grade if 0 <= grade <= 10 else None


def score(grades: Sequence[int | None]) -> tuple[float | None, int]:
    """(mean grade / 10 over the graded answers, or None when none was; number ungraded)."""
    graded = [g for g in grades if g is not None]
    return (sum(graded) / len(graded) / 10 if graded else None), len(grades) - len(graded)


def calibration(problems: Sequence[UnconventionalProblem]) -> tuple[list[str], list[str]]:
    """The judge's controls: every reference body, and an empty body per problem."""
    return [p.reference for p in problems], [EMPTY_BODY] * len(problems)


def judge_gap(reference_grades: Sequence[int | None], empty_grades: Sequence[int | None]) -> float | None:
    ref, empty = score(reference_grades)[0], score(empty_grades)[0]
    return None if ref is None or empty is None else ref - empty
