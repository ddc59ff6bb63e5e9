"""Heuristic quality filters: keep or drop whole documents by rules from the web- and code-data papers.

Web text (``source="web"``) goes through four rule families, in this order:

1. ``gopher_quality``: the Gopher quality rules (Rae et al. 2021, appendix A.1.1).
2. ``gopher_repetition``: the Gopher repetition rules (same appendix, table A1).
3. ``c4``: the C4 rules (Raffel et al. 2020, section 2.2), at document level.
4. ``fineweb``: FineWeb's own rules (Penedo et al. 2024, section 3.3).

Code (``source="code"``) goes through the Codex / The Stack / StarCoder / codeparrot file rules.

Definitions and defaults follow datatrove's implementations (``gopher_quality_filter.py``,
``gopher_repetition_filter.py``, ``c4_filters.py``, ``fineweb_quality_filter.py``); docs/filters.md
lists every rule with its threshold and source, and where this module departs from datatrove.

Filters never modify text: :func:`filter_documents` returns every input row with ``drop_reason``
(null when kept, else the name of the first failing rule in :func:`rule_names` order) and
``drop_detail`` (the measured value against the threshold). Words are a regex split, not spaCy:
runs of word characters (joined across ``.``/``'`` inside a word, like ``3.14`` or ``don't``), URLs,
``..`` runs, and every other non-space character as its own token, which is close to the spaCy
tokens datatrove counts (punctuation tokens included in the word count of the ratio rules).

Features are polars expressions over the whole frame (one regex pass each); only the n-gram
repetition rules use numpy, on 64-bit hashes of the tokens. A family only looks at the documents
that passed the families before it, since only the first failing rule is reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

SOURCES = ("web", "code")
FAMILIES = ("gopher_quality", "gopher_repetition", "c4", "fineweb")

# ---------------------------------------------------------------------------------------------
# Character sets and patterns
# ---------------------------------------------------------------------------------------------

# datatrove's TERMINAL_PUNCTUATION (FineWeb's "line ends in punctuation" set, Apache-2.0).
TERMINAL_PUNCTUATION = (
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965"
    "\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da\u1803\u1809\u1944"
    "\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u203c"
    "\u203d\u2047\u2048\u2049\u2e2e\u2e3c\u2e53\u2e54\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877"
    "\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e"
    "\uff1f\uff61\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86"
    "\U00010f87\U00010f88\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0\U000110c1"
    "\U00011141\U00011142\U00011143\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238"
    "\U00011239\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9"
    "\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0\U000115d1\U000115d2"
    "\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7\U00011641\U00011642\U0001173c\U0001173d"
    "\U0001173e\U00011944\U00011946\U00011a42\U00011a43\U00011a9b\U00011a9c\U00011c41\U00011c42"
    "\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38"
    "\U00016b44\U00016e98\U0001bc9f\U0001da88"
)
# datatrove's PUNCTUATION: a Gopher "word" must have one character outside this set and
# TERMINAL_PUNCTUATION. All ASCII punctuation, C0/C1 controls except tab and newline, and these:
_EXTRA_PUNCTUATION = (
    "\u00ab\u00b4\u00bb\u2013\u2014\u2019\u201c\u201d\u201e\u2026\u2236\u2501\u25ba\u3001\u3002\u3008"
    "\u3009\u300a\u300b\u300c\u300d\u3010\u3011\uff01\uff05\uff08\uff09\uff0c\uff0e\uff11\uff1a\uff1b"
    "\uff1f\uff5e"
)
_ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
PUNCTUATION = (
    _ASCII_PUNCTUATION
    + "".join(map(chr, [*range(0, 9), 11, 12, *range(13, 32), *range(127, 160)]))
    + _EXTRA_PUNCTUATION
)


def _char_class(chars: str, negate: bool = False) -> str:
    body = "".join(f"\\x{{{ord(c):x}}}" for c in sorted(set(chars)))
    return f"[{'^' if negate else ''}{body}]"


# Tokens: a URL, a word (word characters joined by . ' ’ inside it), a run of dots, or any other
# single non-space character. Mirrors the spaCy tokens datatrove counts closely enough that the
# word-count, ratio and n-gram rules agree (see benchmarks/README.md for the measured agreement).
TOKEN_PATTERN = (
    r"\]\(https?://[^\s/)]*"  # spaCy splits a markdown link target at "/" and "-" (not a URL token)
    r"|https?://[^\s<>\"'()\[\]{}]*[^\s<>\"'()\[\]{}.,;:!?]"
    r"|\w+(?:[.'\u2019]\w+)*"
    r"|\.\.+|-{2,}|~{2,}"  # runs spaCy keeps whole (ellipses, rules drawn with - or ~)
    r"|[^\w\s]"
)
_WORD_CHAR = _char_class(PUNCTUATION + TERMINAL_PUNCTUATION, negate=True)  # token is a "word"
# Python's str.splitlines() boundaries (Gopher and C4 count lines like datatrove does).
_LINE_BREAK = r"\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]"
_INLINE_SPACE = r"[^\S\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]"
_TERMINAL_AT_END = _char_class(TERMINAL_PUNCTUATION) + r"\z"
# C4 (TFDS c4_utils / datatrove c4_filters.py): Wikipedia citation markers removed before the
# end-of-line check, the end marks, and the policy phrases that remove a line.
_C4_CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
C4_POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
# One sentence break inside a C4 line: a sentence-ending "." (after two word characters, a digit
# or a symbol, so not "e.g.", "U.S." or an initial), "!" or "?", closing quotes/brackets, then
# space; or a "." between a lower- and an upper-case letter, which spaCy's tokenizer splits off.
# It stands in for the spaCy sentencizer datatrove runs on every kept line (same count on 99% of
# the kept lines of the benchmark corpus).
_C4_SENTENCE_BREAK = (
    r"(?:\w\w|\d|[^\w\s.])\.[\"'\u201d\u2019)\]]*\s+"
    r"|[!?]+[\"'\u201d\u2019)\]]*\s+"
    r"|\p{Ll}\.\p{Lu}"
)

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")

# Code: StarCoder2's encoded-data patterns (base64, hex byte lists, \u escapes).
# ASCII mode ((?-u)): the same matches on these ASCII classes, and a DFA-friendly word boundary
# (Unicode \b made this one regex 10x slower).
_ENCODED_DATA = (
    r"(?-u:[a-zA-Z0-9+/\n=]{64,}"
    r"|(?:\b(?:0x|\\x)?[0-9a-fA-F]{2}(?:,|\b\s*)){8,}"
    r"|(?:\\u[0-9a-fA-F]{4}){8,})"
)
# A data line: only literals (numbers, one-line strings, True/False/None/null), brackets and
# separators, optionally after a `name =` / `"key":` and before a trailing comment.
_LITERAL = (
    r"(?:[-+]?(?:0[xXoObB][0-9a-fA-F_]+|\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)[jJlLuUfF]*"
    r"|[bBrRuUfF]{0,2}\"(?:[^\"\\\n]|\\.)*\"|[bBrRuUfF]{0,2}'(?:[^'\\\n]|\\.)*'"
    r"|True|False|None|true|false|null|nil)"
)
_KEY = r"(?:[A-Za-z_][\w.]*|\"[^\"\n]*\"|'[^'\n]*')"
_DATA_LINE = (
    rf"(?m)^[ \t]*(?:{_KEY}[ \t]*[=:][ \t]*)?[\[\](){{}}, \t]*{_LITERAL}"
    rf"(?:[ \t]*[,:;]?[ \t]*[\[\](){{}}]*[ \t]*[,;]?[ \t]*{_LITERAL})*"
    r"[\[\](){}, \t;:]*(?:(?:#|//).*)?\r?$"
)
DATA_EXTENSIONS = (
    ".json", ".jsonl", ".ndjson", ".geojson", ".csv", ".tsv", ".yaml", ".yml", ".xml", ".svg",
    ".toml", ".ini", ".cfg", ".conf", ".lock", ".txt", ".dat", ".log", ".map", ".min.js", ".min.css",
)
# codeparrot's three keywords (first 5 lines), plus the usual generator banners ("# Generated by
# the protocol buffer compiler.  DO NOT EDIT!", Go's "Code generated ... DO NOT EDIT.",
# "@generated"); "generated by" alone also hits prose such as "tables generated by pgen".
AUTOGENERATED_MARKERS = (
    "auto-generated",
    "autogenerated",
    "automatically generated",
    "generated automatically",
    "do not edit",
    "@generated",
    "# generated by",
    "// generated by",
    "code generated by",
    "file is generated",
    "file was generated",
)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def _fail(cls: str, name: str, why: str, value: Any) -> ValueError:
    return ValueError(f"{cls}.{name} {why}, got {value!r}")


def _check_number(cls: str, name: str, value: Any, *, low: float, high: float | None = None,
                  integer: bool = False, optional: bool = True) -> None:
    if value is None:
        if not optional:
            raise _fail(cls, name, "must not be None", value)
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value != value:
        raise _fail(cls, name, f"must be {'an integer' if integer else 'a number'}", value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise _fail(cls, name, f"must be {bound}", value)


def _check_bools(obj: object) -> None:
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.type in ("bool", bool) and not isinstance(value, bool):
            raise _fail(type(obj).__name__, f.name, "must be True or False", value)


def _check_strings(cls: str, name: str, value: Any, *, allow_empty: bool) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise _fail(cls, name, "must be a tuple of non-empty strings", value)
    if not value and not allow_empty:
        raise _fail(cls, name, "must not be empty", value)


def _check_ngrams(cls: str, name: str, value: Any) -> None:
    ok = isinstance(value, tuple) and all(
        isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], int) and not isinstance(p[0], bool)
        and p[0] >= 2 and isinstance(p[1], (int, float)) and not isinstance(p[1], bool) and 0 <= p[1] <= 1
        for p in value)
    if not ok:
        raise _fail(cls, name, "must be a tuple of (n >= 2, fraction in [0, 1]) pairs", value)
    ns = [p[0] for p in value]
    if ns != sorted(set(ns)):
        raise _fail(cls, name, "must list each n once, in increasing order", value)


@dataclass(frozen=True)
class WebFilterConfig:
    """Thresholds of the web rules; defaults are the papers' (and datatrove's) values.

    A family is switched off with its flag; a single numeric rule with ``None``.
    """

    gopher_quality: bool = True
    gopher_repetition: bool = True
    c4: bool = True
    fineweb: bool = True
    # Gopher quality (Rae et al. 2021, appendix A.1.1).
    gopher_min_words: int | None = 50
    gopher_max_words: int | None = 100_000
    gopher_min_mean_word_length: float | None = 3
    gopher_max_mean_word_length: float | None = 10
    gopher_max_symbol_word_ratio: float | None = 0.1  # for "#" and for ellipses, each
    gopher_max_bullet_lines_ratio: float | None = 0.9
    gopher_max_ellipsis_lines_ratio: float | None = 0.3
    gopher_min_alpha_words_ratio: float | None = 0.8
    # What a "word" is for the alphabetic-word ratio: "whitespace" (whitespace-separated words, as
    # the Gopher paper states the rule) or "tokens" (datatrove: punctuation tokens count as words,
    # which drops most markdown/reStructuredText documentation). See docs/filters.md.
    gopher_alpha_words: str = "whitespace"
    gopher_min_stop_words: int | None = 2
    gopher_stop_words: tuple[str, ...] = STOP_WORDS
    # Gopher repetition (Rae et al. 2021, table A1).
    rep_max_dup_para_frac: float | None = 0.3
    rep_max_dup_para_char_frac: float | None = 0.2
    rep_max_dup_line_frac: float | None = 0.3
    rep_max_dup_line_char_frac: float | None = 0.2
    rep_top_ngram_max_char_frac: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    rep_dup_ngram_max_char_frac: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    # C4 (Raffel et al. 2020, section 2.2; line rules applied as in TFDS c4_utils / datatrove).
    c4_min_sentences: int | None = 5
    c4_min_words_per_line: int | None = 3
    c4_max_word_length: int | None = 1000
    c4_remove_citations: bool = True
    c4_drop_no_terminal_punct_lines: bool = True
    c4_drop_javascript_lines: bool = True
    c4_drop_policy_lines: bool = True
    c4_lorem_ipsum: bool = True
    c4_curly_bracket: bool = True
    # FineWeb (Penedo et al. 2024, section 3: custom heuristic filters; appendix).
    fineweb_min_line_punct_ratio: float | None = 0.12
    fineweb_line_punct_exclude_zero: bool = False
    fineweb_short_line_length: int = 30
    fineweb_max_short_line_ratio: float | None = 0.67
    fineweb_max_char_dup_ratio: float | None = 0.01
    fineweb_max_new_line_ratio: float | None = 0.3

    def __post_init__(self) -> None:
        cls = type(self).__name__
        _check_bools(self)
        for name in ("gopher_min_words", "gopher_max_words", "gopher_min_stop_words", "c4_min_sentences",
                     "c4_min_words_per_line"):
            _check_number(cls, name, getattr(self, name), low=0, integer=True)
        _check_number(cls, "c4_max_word_length", self.c4_max_word_length, low=1, integer=True)
        if self.gopher_alpha_words not in ("whitespace", "tokens"):
            raise _fail(cls, "gopher_alpha_words", "must be 'whitespace' or 'tokens'", self.gopher_alpha_words)
        _check_number(cls, "fineweb_short_line_length", self.fineweb_short_line_length, low=0,
                      integer=True, optional=False)
        for name in ("gopher_min_mean_word_length", "gopher_max_mean_word_length",
                     "gopher_max_symbol_word_ratio", "fineweb_max_new_line_ratio"):
            _check_number(cls, name, getattr(self, name), low=0)
        for name in ("gopher_max_bullet_lines_ratio", "gopher_max_ellipsis_lines_ratio",
                     "gopher_min_alpha_words_ratio", "rep_max_dup_para_frac", "rep_max_dup_para_char_frac",
                     "rep_max_dup_line_frac", "rep_max_dup_line_char_frac", "fineweb_min_line_punct_ratio",
                     "fineweb_max_short_line_ratio", "fineweb_max_char_dup_ratio"):
            _check_number(cls, name, getattr(self, name), low=0, high=1)
        for low, high in (("gopher_min_words", "gopher_max_words"),
                          ("gopher_min_mean_word_length", "gopher_max_mean_word_length")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise _fail(cls, low, f"must be <= {high} ({hi})", lo)
        _check_strings(cls, "gopher_stop_words", self.gopher_stop_words, allow_empty=False)
        _check_ngrams(cls, "rep_top_ngram_max_char_frac", self.rep_top_ngram_max_char_frac)
        _check_ngrams(cls, "rep_dup_ngram_max_char_frac", self.rep_dup_ngram_max_char_frac)


@dataclass(frozen=True)
class CodeFilterConfig:
    """Thresholds of the code rules (Codex, The Stack, StarCoder/StarCoder2, codeparrot).

    A numeric rule is switched off with ``None``, a list rule with an empty tuple.
    """

    # Data formats are not code (StarCoder section 3 handles them apart; phi-1 keeps only Python).
    data_extensions: tuple[str, ...] = DATA_EXTENSIONS  # matched case-insensitively on the uri
    # codeparrot's is_autogenerated: markers in the first 5 lines (Codex 3.1: "likely auto-generated").
    autogenerated_markers: tuple[str, ...] = AUTOGENERATED_MARKERS  # case-insensitive substrings
    autogenerated_scan_lines: int = 5
    # Codex section 3.1, The Stack / bigcode-dataset basic filter, codeparrot.
    max_line_length: int | None = 1000
    max_avg_line_length: float | None = 100
    min_alphanum_fraction: float | None = 0.25
    # StarCoder2's encoded-data filter: one run longer than 1024 characters, or runs over half the file.
    encoded_max_match_length: int | None = 1024
    encoded_max_fraction: float | None = 0.5
    # Project heuristics (no paper gives a number): see docs/filters.md.
    max_data_line_fraction: float | None = 0.5
    min_code_lines: int | None = 5
    comment_prefixes: tuple[str, ...] = ("#", "//")

    def __post_init__(self) -> None:
        cls = type(self).__name__
        _check_strings(cls, "data_extensions", self.data_extensions, allow_empty=True)
        bad = [e for e in self.data_extensions if not e.startswith(".")]
        if bad:
            raise _fail(cls, "data_extensions", "must be extensions starting with '.'", bad)
        _check_strings(cls, "autogenerated_markers", self.autogenerated_markers, allow_empty=True)
        _check_strings(cls, "comment_prefixes", self.comment_prefixes, allow_empty=True)
        _check_number(cls, "autogenerated_scan_lines", self.autogenerated_scan_lines, low=1, integer=True,
                      optional=False)
        _check_number(cls, "max_line_length", self.max_line_length, low=1, integer=True)
        _check_number(cls, "max_avg_line_length", self.max_avg_line_length, low=0)
        _check_number(cls, "encoded_max_match_length", self.encoded_max_match_length, low=1, integer=True)
        _check_number(cls, "min_code_lines", self.min_code_lines, low=0, integer=True)
        for name in ("min_alphanum_fraction", "encoded_max_fraction", "max_data_line_fraction"):
            _check_number(cls, name, getattr(self, name), low=0, high=1)


# ---------------------------------------------------------------------------------------------
# Rules: (name, fails, detail) over a stage's feature columns
# ---------------------------------------------------------------------------------------------

Check = tuple[str, pl.Expr, pl.Expr]


def _c(name: str) -> pl.Expr:
    return pl.col(name)


def _ratio(num: str, den: str) -> pl.Expr:
    return pl.when(_c(den) > 0).then(_c(num) / _c(den)).otherwise(0.0)


def _num(expr: pl.Expr) -> pl.Expr:
    """A float feature rounded for drop_detail."""
    return expr.cast(pl.Float64).round(4)


def _above(name: str, value: pl.Expr, limit: float | None, label: str, integer: bool = False) -> Check | None:
    if limit is None:
        return None
    return name, value > limit, pl.format(f"{label}={{}} > {limit:g}", value if integer else _num(value))


def _below(name: str, value: pl.Expr, limit: float | None, label: str, integer: bool = False) -> Check | None:
    if limit is None:
        return None
    return name, value < limit, pl.format(f"{label}={{}} < {limit:g}", value if integer else _num(value))


def _between(name: str, value: pl.Expr, low: float | None, high: float | None, label: str,
             integer: bool = False) -> Check | None:
    shown = value if integer else _num(value)
    if low is None and high is None:
        return None
    if low is None:
        return _above(name, value, high, label, integer)
    if high is None:
        return _below(name, value, low, label, integer)
    return (name, (value < low) | (value > high),
            pl.when(value < low).then(pl.format(f"{label}={{}} < {low:g}", shown))
            .otherwise(pl.format(f"{label}={{}} > {high:g}", shown)))


def _gopher_quality_checks(cfg: WebFilterConfig) -> list[Check | None]:
    sym = cfg.gopher_max_symbol_word_ratio
    return [
        _between("gopher_word_count", _c("g_words"), cfg.gopher_min_words, cfg.gopher_max_words, "words",
                 integer=True),
        _between("gopher_mean_word_length", _ratio("g_word_chars", "g_words"), cfg.gopher_min_mean_word_length,
                 cfg.gopher_max_mean_word_length, "mean_word_length"),
        _above("gopher_hash_ratio", _ratio("g_hashes", "g_tokens"), sym, "hashes/words"),
        _above("gopher_ellipsis_ratio", _ratio("g_ellipses", "g_tokens"), sym, "ellipses/words"),
        _above("gopher_bullet_lines_ratio", _ratio("g_bullet_lines", "g_lines"),
               cfg.gopher_max_bullet_lines_ratio, "bullet_lines/lines"),
        _above("gopher_ellipsis_lines_ratio", _ratio("g_ellipsis_lines", "g_lines"),
               cfg.gopher_max_ellipsis_lines_ratio, "ellipsis_lines/lines"),
        _below("gopher_alpha_words_ratio", _ratio("g_alpha", "g_alpha_of"), cfg.gopher_min_alpha_words_ratio,
               "alpha_words/words"),
        None if cfg.gopher_min_stop_words is None else (
            "gopher_stop_words", _c("g_stop") < cfg.gopher_min_stop_words,
            pl.format(f"distinct_stop_words={{}} < {cfg.gopher_min_stop_words}", _c("g_stop"))),
    ]


def _repetition_checks(cfg: WebFilterConfig) -> list[Check | None]:
    out: list[Check | None] = [
        ("gopher_rep_empty", _c("r_empty"), pl.lit("no non-whitespace character")),
        _above("gopher_rep_dup_para_frac", _ratio("r_dup_paras", "r_paras"), cfg.rep_max_dup_para_frac,
               "dup_paragraphs/paragraphs"),
        _above("gopher_rep_dup_para_char_frac", _ratio("r_dup_para_chars", "r_chars"),
               cfg.rep_max_dup_para_char_frac, "dup_paragraph_chars/chars"),
        _above("gopher_rep_dup_line_frac", _ratio("r_dup_lines", "r_lines"), cfg.rep_max_dup_line_frac,
               "dup_lines/lines"),
        _above("gopher_rep_dup_line_char_frac", _ratio("r_dup_line_chars", "r_chars"),
               cfg.rep_max_dup_line_char_frac, "dup_line_chars/chars"),
    ]
    for n, frac in cfg.rep_top_ngram_max_char_frac:
        out.append(_above(f"gopher_rep_top_{n}gram", _ratio(f"r_top{n}", "r_chars"), frac,
                          f"top_{n}gram_chars/chars"))
    for n, frac in cfg.rep_dup_ngram_max_char_frac:
        out.append(_above(f"gopher_rep_dup_{n}gram", _ratio(f"r_dup{n}", "r_chars"), frac,
                          f"dup_{n}gram_chars/chars"))
    return out


def _c4_checks(cfg: WebFilterConfig) -> list[Check | None]:
    out: list[Check | None] = []
    if cfg.c4_lorem_ipsum:
        out.append(("c4_lorem_ipsum", _c("c4_lorem_line") > 0,
                    pl.format("'lorem ipsum' on kept line {}", _c("c4_lorem_line"))))
    if cfg.c4_curly_bracket:
        out.append(("c4_curly_bracket", _c("c4_curly_line") > 0,
                    pl.format("curly bracket on kept line {}", _c("c4_curly_line"))))
    if cfg.c4_min_sentences is not None:
        out.append(("c4_min_sentences", _c("c4_sentences") < cfg.c4_min_sentences,
                    pl.format(f"sentences={{}} < {cfg.c4_min_sentences} after the line rules "
                              "(kept {} of {} lines)", _c("c4_sentences"), _c("c4_kept"), _c("c4_lines"))))
    return out


def _fineweb_checks(cfg: WebFilterConfig) -> list[Check | None]:
    punct = _ratio("f_punct", "f_lines")
    punct_check = None
    if cfg.fineweb_min_line_punct_ratio is not None:
        fails = punct < cfg.fineweb_min_line_punct_ratio
        if cfg.fineweb_line_punct_exclude_zero:
            fails = fails & (punct > 0)
        punct_check = ("fineweb_line_punct_ratio", fails,
                       pl.format(f"punct_lines/lines={{}} < {cfg.fineweb_min_line_punct_ratio:g}", _num(punct)))
    return [
        ("fineweb_empty", _c("f_lines") == 0, pl.lit("no non-blank line")),
        punct_check,
        _above("fineweb_short_line_ratio", _ratio("f_short", "f_lines"), cfg.fineweb_max_short_line_ratio,
               f"lines_<={cfg.fineweb_short_line_length}_chars/lines"),
        _above("fineweb_char_dup_ratio", _ratio("f_dup_chars", "f_chars"), cfg.fineweb_max_char_dup_ratio,
               "dup_line_chars/chars"),
        _above("fineweb_new_line_ratio", _ratio("f_newlines", "f_tokens"), cfg.fineweb_max_new_line_ratio,
               "newlines/words"),
    ]


def _code_checks(cfg: CodeFilterConfig) -> list[Check | None]:
    out: list[Check | None] = [("code_empty", _c("k_empty"), pl.lit("no non-whitespace character"))]
    if cfg.data_extensions:
        out.append(("code_data_extension", _c("k_data_ext").is_not_null(),
                    pl.format("data file extension {}", _c("k_data_ext"))))
    if cfg.autogenerated_markers:
        out.append(("code_autogenerated", _c("k_generated").is_not_null(),
                    pl.format(f"'{{}}' in the first {cfg.autogenerated_scan_lines} lines", _c("k_generated"))))
    out += [
        _above("code_max_line_length", _c("k_max_line"), cfg.max_line_length, "max_line_length", integer=True),
        _above("code_avg_line_length", _ratio("k_line_chars", "k_lines"), cfg.max_avg_line_length,
               "avg_line_length"),
        _below("code_alphanum_fraction", _ratio("k_alnum", "k_chars"), cfg.min_alphanum_fraction,
               "alphanumeric/chars"),
    ]
    if cfg.encoded_max_match_length is not None:
        out.append(_above("code_encoded_data", _c("k_enc_max"), cfg.encoded_max_match_length,
                          "longest_encoded_run", integer=True))
    if cfg.encoded_max_fraction is not None:
        out.append(_above("code_encoded_data", _ratio("k_enc_sum", "k_chars"), cfg.encoded_max_fraction,
                          "encoded_chars/chars"))
    out += [
        _below("code_min_code_lines", _c("k_code_lines"), cfg.min_code_lines, "code_lines", integer=True),
        _above("code_data_lines", _ratio("k_data_lines", "k_code_lines"), cfg.max_data_line_fraction,
               "literal_lines/code_lines"),
    ]
    return out


def _names(checks: Sequence[Check | None]) -> list[str]:
    return list(dict.fromkeys(c[0] for c in checks if c is not None))


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


def _with_tokens(work: pl.DataFrame) -> pl.DataFrame:
    if "_tokens" in work.columns:
        return work
    return work.with_columns(pl.col("text").str.extract_all(TOKEN_PATTERN).alias("_tokens"))


def _n_tokens(work: pl.DataFrame) -> pl.Expr:
    if "_tokens" in work.columns:
        return pl.col("_tokens").list.len()
    return pl.col("text").str.count_matches(TOKEN_PATTERN)


def _gopher_quality_features(work: pl.DataFrame, cfg: WebFilterConfig) -> pl.DataFrame:
    work = _with_tokens(work)
    text, tok = pl.col("text"), pl.col("_tokens")
    el = pl.element()
    is_word = el.str.contains(_WORD_CHAR)
    n_breaks = text.str.count_matches(_LINE_BREAK)
    ends_with_break = text.str.contains(f"(?:{_LINE_BREAK})\\z")
    return work.with_columns(
        g_tokens=tok.list.len(),
        g_words=tok.list.agg(is_word.sum()),
        g_word_chars=tok.list.agg(el.filter(is_word).str.len_chars().sum()),
        **_alpha_words(text, tok, cfg),
        g_stop=tok.list.set_intersection(pl.lit(list(cfg.gopher_stop_words), dtype=pl.List(pl.String)))
        .list.len(),
        g_hashes=text.str.count_matches("#", literal=True),
        g_ellipses=text.str.count_matches(r"\.\.\.|\u2026"),
        g_lines=pl.when(text.str.len_bytes() == 0).then(0)
        .otherwise(n_breaks + 1 - ends_with_break.cast(pl.UInt32)),
        g_bullet_lines=text.str.count_matches(f"(?:\\A|{_LINE_BREAK}){_INLINE_SPACE}*[\u2022-]"),
        g_ellipsis_lines=text.str.count_matches(f"(?:\\.\\.\\.|\u2026){_INLINE_SPACE}*(?:{_LINE_BREAK}|\\z)"),
    )


def _alpha_words(text: pl.Expr, tok: pl.Expr, cfg: WebFilterConfig) -> dict[str, pl.Expr]:
    """Words with a letter, and the words they are counted among."""
    words = text.str.extract_all(r"\S+") if cfg.gopher_alpha_words == "whitespace" else tok
    return {"g_alpha": words.list.agg(pl.element().str.contains(r"\p{L}").sum()),
            "g_alpha_of": words.list.len()}


def _dup_count_and_chars(items: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """Gopher's find_duplicates over the non-empty items: count, repeats, repeated characters."""
    el = pl.element()
    nonempty = el != ""
    dup = ~el.is_first_distinct() & nonempty
    return (items.list.agg(nonempty.sum()), items.list.agg(dup.sum()),
            items.list.agg(el.filter(dup).str.len_chars().sum()))


_MIX = np.uint64(0x9E3779B97F4A7C15)
_SALT = np.uint64(0xD6E8FEB86659FD93)


def _greedy_dup_chars(pos: np.ndarray, gid: np.ndarray, win: np.ndarray, n: int) -> int:
    """datatrove's find_all_duplicate for one document, visiting only the positions that matter.

    The reference walks every position: at an n-gram already added it counts the n-gram's
    characters and jumps n positions (the skipped ones are not added), else it adds it and steps
    one. ``pos`` (increasing) must hold every position of each n-gram occurring more than once;
    n-grams occurring once are never counted, so leaving out their positions changes nothing.
    ``gid`` are the n-gram ids at ``pos`` and ``win`` their characters.
    """
    added: set[int] = set()
    total, nxt = 0, 0
    for c, g, w in zip(pos.tolist(), gid.tolist(), win.tolist(), strict=True):
        if c < nxt:  # jumped over: not added
            continue
        if g in added:
            total += w
            nxt = c + n
        else:
            added.add(g)
            nxt = c + 1
    return total


def _ngram_features(work: pl.DataFrame, cfg: WebFilterConfig, failed: np.ndarray) -> dict[str, np.ndarray]:
    """Top n-gram and duplicate n-gram character counts per document (numpy over token hashes).

    An n-gram is a 64-bit polynomial hash of its token hashes, salted with its document number so
    one pass over the concatenated tokens of all documents counts each document separately.
    Work shrinks with n: an (n+1)-gram can only repeat where the n-gram repeats, so each level
    only hashes the positions whose n-gram occurs more than once. ``failed`` marks documents
    already failing an earlier rule (updated here); they are not looked at any more.
    """
    import pandas as pd  # pd.factorize: n-gram ids in order of first occurrence, in one hash pass

    top = dict(cfg.rep_top_ngram_max_char_frac)
    dup = dict(cfg.rep_dup_ngram_max_char_frac)
    wanted = sorted(top.keys() | dup.keys())
    if not wanted:
        return {}
    ndocs = work.height
    tokens = work.get_column("_tokens")
    lens = tokens.list.len().to_numpy().astype(np.int64)
    flat = tokens.explode(empty_as_null=False)
    h = flat.hash(seed=0x51F).to_numpy()
    total = len(h)
    cum = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(flat.str.len_chars().to_numpy(), out=cum[1:])
    ends = np.cumsum(lens)
    doc_start = ends - lens
    doc = np.repeat(np.arange(ndocs, dtype=np.int64), lens)
    remaining = ends[doc] - np.arange(total, dtype=np.int64)  # tokens from here to the document's end
    with np.errstate(over="ignore"):
        salt = (doc.astype(np.uint64) + np.uint64(1)) * _SALT
    chars = np.maximum(work.get_column("r_chars").to_numpy().astype(np.float64), 1.0)
    last_top = max(top, default=0)
    later_dup_limit = {n: min(f for m, f in dup.items() if m >= n) for n in dup}
    safe = np.zeros(ndocs, dtype=bool)  # every later duplicate-n-gram rule is known to pass
    out: dict[str, np.ndarray] = {}
    grams = h.copy()
    with np.errstate(over="ignore"):
        for k in range(1, wanted[0]):
            grams[: total - k] = grams[: total - k] * _MIX + h[k:]
    live = np.flatnonzero(remaining >= wanted[0])  # positions whose n-gram may repeat
    for n in range(wanted[0], wanted[-1] + 1):
        if n > wanted[0]:
            live = live[remaining[live] >= n]
            with np.errstate(over="ignore"):
                grams[live] = grams[live] * _MIX + h[live + n - 1]
        skip = failed | safe if n > last_top else failed
        live = live[~skip[doc[live]]]
        codes, _ = pd.factorize(grams[live] ^ salt[live])
        counts = np.bincount(codes)
        if codes.size:
            running = np.maximum.accumulate(codes)
            first = np.r_[True, codes[1:] > running[:-1]]  # ids are numbered in order of appearance
        else:
            first = np.zeros(0, dtype=bool)
        first_at = live[first]  # position of each id's first occurrence
        if n in top:
            # Counter.most_common(1): the highest count, ties to the n-gram seen first; with no
            # repeat at all that is the document's first n-gram (count 1)
            val = np.zeros(ndocs)
            has = lens >= n
            val[has] = cum[doc_start[has] + n] - cum[doc_start[has]] + n - 1
            udoc = doc[first_at]
            if udoc.size:
                seg = np.flatnonzero(np.r_[True, udoc[1:] != udoc[:-1]])
                best = np.zeros(ndocs, dtype=np.int64)
                best[udoc[seg]] = np.maximum.reduceat(counts, seg)
                hit = np.flatnonzero((counts == best[udoc]) & (counts > 1))
                hit = hit[np.r_[True, udoc[hit][1:] != udoc[hit][:-1]]] if hit.size else hit
                at = first_at[hit]
                val[udoc[hit]] = counts[hit] * (cum[at + n] - cum[at] + n - 1)  # joined with spaces
            out[f"r_top{n}"] = val
            failed |= val / chars > top[n]
        if n in dup:
            # Upper bound first: the counted n-grams are disjoint windows starting at repeats, so
            # they lie inside the union of the repeats' windows; exact walk only above the limit.
            rep = live[~first]
            val = np.zeros(ndocs)
            if rep.size:
                block = np.flatnonzero(np.r_[True, np.diff(rep) >= n])
                block_end = rep[np.r_[block[1:] - 1, rep.size - 1]] + n
                np.add.at(val, doc[rep[block]], cum[block_end] - cum[rep[block]])
            safe |= val / chars <= later_dup_limit[n]
            exact = np.flatnonzero((val / chars > dup[n]) & ~failed)
            if exact.size:
                ldoc = doc[live]
                bounds = np.searchsorted(ldoc, np.stack([exact, exact + 1]))
                for d, lo, hi in zip(exact.tolist(), bounds[0].tolist(), bounds[1].tolist(), strict=True):
                    p = live[lo:hi]
                    val[d] = _greedy_dup_chars(p, codes[lo:hi], cum[p + n] - cum[p], n)
            out[f"r_dup{n}"] = val
            failed |= val / chars > dup[n]
        live = live[counts[codes] > 1]
    return out


def _gopher_repetition_features(work: pl.DataFrame, cfg: WebFilterConfig) -> pl.DataFrame:
    work = _with_tokens(work)
    text = pl.col("text")
    # re.split(r"\n{2,}", text.strip()) and re.split("\n+", text), without a regex split: the
    # pieces of a plain split minus the empty ones (paragraph runs of 3+ newlines folded first).
    paras = text.str.strip_chars().str.replace_all(r"\n{3,}", "\n\n").str.split("\n\n")
    lines = text.str.split("\n")
    n_paras, dup_paras, dup_para_chars = _dup_count_and_chars(paras)
    n_lines, dup_lines, dup_line_chars = _dup_count_and_chars(lines)
    starts_nl = text.str.starts_with("\n").cast(pl.UInt32)
    ends_nl = text.str.ends_with("\n").cast(pl.UInt32)
    work = work.with_columns(
        r_chars=text.str.len_chars(),
        r_empty=~text.str.contains(r"\S"),
        r_paras=pl.max_horizontal(n_paras, pl.lit(1, pl.UInt32)),  # "" splits into [""]
        r_dup_paras=dup_paras,
        r_dup_para_chars=dup_para_chars,
        # re.split("\n+", text) has an empty first (last) line when text starts (ends) with "\n"
        r_lines=pl.max_horizontal(n_lines + starts_nl + ends_nl, pl.lit(1, pl.UInt32)),
        r_dup_lines=dup_lines + starts_nl * ends_nl,
        r_dup_line_chars=dup_line_chars,
    )
    # Documents failing a rule before the n-grams are not looked at by the n-gram code.
    early = [c for c in _repetition_checks(cfg)[:5] if c is not None]
    failed = work.select(pl.any_horizontal([c[1] for c in early]) if early else pl.lit(False)).to_series()
    feats = _ngram_features(work, cfg, failed.to_numpy().copy())
    return work.with_columns(pl.Series(k, v) for k, v in feats.items())


def _c4_features(work: pl.DataFrame, cfg: WebFilterConfig) -> pl.DataFrame:
    """C4's line loop (TFDS c4_utils.clean_page, datatrove C4QualityFilter) as line-level columns.

    A line survives if it has no over-long word, ends in terminal punctuation (after removing
    citation markers) and has enough words; among survivors "lorem ipsum" or "{" drops the
    page, "javascript" and policy phrases drop the line; the kept lines' sentences are counted.
    """
    split = work.select(pl.col("text").str.replace_all(_LINE_BREAK, "\n").str.split("\n").alias("raw"))
    lines = (split.with_columns(d=pl.int_range(pl.len(), dtype=pl.UInt32)).explode("raw")
             .with_columns(ln=pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).over("d")))
    s = pl.col("raw").str.strip_chars()
    line = pl.col("line")
    conds = [pl.lit(True)]
    if cfg.c4_max_word_length is not None:
        m = cfg.c4_max_word_length  # only lines longer than m can hold such a word: test those alone
        long_lines = pl.when(s.str.len_chars() > m).then(s).otherwise(pl.lit(""))
        conds.append(~long_lines.str.contains(f"[^\\s]{{{m + 1}}}"))
    if cfg.c4_drop_no_terminal_punct_lines:
        conds.append(line.str.contains(r"[.?!\"']\z") & ~line.str.ends_with("..."))
    k = cfg.c4_min_words_per_line
    if k is not None and k > 0:  # "at least k words" as one regex search, not a count
        conds.append(s.str.contains(r"\S" if k == 1 else rf"\S(?:\s+\S+){{{k - 2}}}\s+\S"))
    survivors = (lines.with_columns(line=s.str.replace_all(_C4_CITATION, "") if cfg.c4_remove_citations else s)
                 .filter(pl.all_horizontal(conds)))

    def has(*phrases: str) -> pl.Expr:
        return line.str.contains_any(list(phrases), ascii_case_insensitive=True)

    false = pl.lit(False)
    lorem = has("lorem ipsum") if cfg.c4_lorem_ipsum else false
    js = has("javascript") if cfg.c4_drop_javascript_lines else false
    curly = ~lorem & ~js & line.str.contains("{", literal=True) if cfg.c4_curly_bracket else false
    policy = has(*C4_POLICY_SUBSTRINGS) if cfg.c4_drop_policy_lines else false
    kept = ~lorem & ~js & ~curly & ~policy
    agg = survivors.group_by("d").agg(
        lorem=pl.col("ln").filter(lorem).min(),
        curly=pl.col("ln").filter(curly).min(),
        sentences=(line.filter(kept).str.count_matches(_C4_SENTENCE_BREAK) + 1).sum(),
        kept=kept.sum(),
    )
    out = {name: np.zeros(work.height, dtype=np.int64) for name in ("lorem", "curly", "sentences", "kept")}
    d = agg.get_column("d").to_numpy()
    for name, arr in out.items():
        arr[d] = agg.get_column(name).fill_null(0).to_numpy()
    return work.with_columns(
        c4_lorem_line=out["lorem"], c4_curly_line=out["curly"], c4_sentences=out["sentences"],
        c4_kept=out["kept"], c4_lines=split.get_column("raw").list.len(),
    )


def _fineweb_features(work: pl.DataFrame, cfg: WebFilterConfig) -> pl.DataFrame:
    text = pl.col("text")
    lines = (work.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("d"),
                         text.str.split("\n").alias("line"))
             .explode("line"))
    line = pl.col("line")
    nonblank = line.str.contains(r"\S")
    dup = nonblank & ~pl.struct("d", "line").is_first_distinct()
    agg = lines.group_by("d", maintain_order=True).agg(
        f_lines=nonblank.sum(),
        f_punct=(nonblank & line.str.contains(_TERMINAL_AT_END)).sum(),
        f_short=(nonblank & (line.str.len_chars() <= cfg.fineweb_short_line_length)).sum(),
        f_dup_chars=line.filter(dup).str.len_chars().sum(),
    )
    newlines = text.str.count_matches("\n", literal=True)
    return work.hstack(agg.drop("d").get_columns()).with_columns(
        f_chars=text.str.len_chars() - newlines,
        f_newlines=newlines,
        f_tokens=_n_tokens(work),
    )


def _code_features(work: pl.DataFrame, cfg: CodeFilterConfig) -> pl.DataFrame:
    text = pl.col("text")
    breaks = text.str.count_matches("\n", literal=True)
    exprs: dict[str, pl.Expr] = {
        "k_empty": ~text.str.contains(r"\S"),
        "k_chars": text.str.len_chars(),
        # line lengths as codeparrot / The Stack measure them (str.splitlines, no line ends)
        "k_lines": pl.when(text.str.len_bytes() == 0).then(0)
        .otherwise(breaks + 1 - text.str.ends_with("\n").cast(pl.UInt32)),
        "k_line_chars": text.str.len_chars() - breaks - text.str.count_matches("\r", literal=True),
        "k_max_line": text.str.split("\n").list.agg(pl.element().str.strip_suffix("\r").str.len_chars().max())
        .fill_null(0),
    }
    if cfg.data_extensions:
        alts = "|".join(re.escape(e.lower()) for e in sorted(cfg.data_extensions, key=len, reverse=True))
        # a record inside a container file (uri "shard.jsonl#L7") has no file name of its own
        uri = pl.col("uri").fill_null("").str.to_lowercase()
        own = uri.str.replace(r"\?.*\z", "")
        path = pl.when(uri.str.contains("#", literal=True)).then(pl.lit("")).otherwise(own)
        exprs["k_data_ext"] = path.str.extract(f"({alts})\\z", 1)
    if cfg.autogenerated_markers:
        head = text.str.extract(f"\\A((?:[^\\n]*\\n){{0,{cfg.autogenerated_scan_lines - 1}}}[^\\n]*)", 1)
        alts = "|".join(re.escape(m.lower()) for m in cfg.autogenerated_markers)
        exprs["k_generated"] = head.str.to_lowercase().str.extract(f"({alts})", 1)
    encoded = text.str.extract_all(_ENCODED_DATA).list.eval(pl.element().str.len_chars())
    exprs["k_enc_max"] = encoded.list.max().fill_null(0)
    exprs["k_enc_sum"] = encoded.list.sum()
    nonblank = text.str.count_matches(r"(?m)^[ \t]*\S")
    if cfg.comment_prefixes:
        alts = "|".join(re.escape(p) for p in cfg.comment_prefixes)
        exprs["k_code_lines"] = nonblank - text.str.count_matches(f"(?m)^[ \\t]*(?:{alts})")
    else:
        exprs["k_code_lines"] = nonblank
    exprs["k_data_lines"] = text.str.count_matches(_DATA_LINE)
    work = work.with_columns(**exprs)
    return work.with_columns(k_alnum=_alnum_counts(work.get_column("text")))


_ASCII_ALNUM = np.zeros(256, dtype=np.uint8)
_ASCII_ALNUM[np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", np.uint8)] = 1


def _alnum_counts(texts: pl.Series) -> np.ndarray:
    """Alphanumeric characters per text (Python's str.isalnum, as codeparrot counts them).

    A regex matching every character costs one match per character; instead count ASCII
    letters and digits with a byte lookup over the UTF-8 buffer, and run the regex only on the
    texts that have non-ASCII characters, counting only those.
    """
    arr = texts.cast(pl.Binary).rechunk().to_arrow().cast(pa.large_binary())
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8)[: offsets[-1]] if data_buf else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    out = np.zeros(len(arr), dtype=np.int64)
    nonempty = ends > starts
    if nonempty.any():  # reduceat over consecutive non-empty segments
        out[nonempty] = np.add.reduceat(_ASCII_ALNUM[data], starts[nonempty], dtype=np.int64)
    non_ascii = texts.str.len_bytes().to_numpy() > texts.str.len_chars().to_numpy()
    if non_ascii.any():
        out[non_ascii] += texts.filter(pl.Series(non_ascii)).str.count_matches(
            r"[\p{L}\p{N}&&[^\x00-\x7F]]").to_numpy()
    return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

Stage = tuple[Callable[[pl.DataFrame, Any], pl.DataFrame], Callable[[Any], list[Check | None]]]


def _stages(source: str, config: WebFilterConfig | CodeFilterConfig) -> list[Stage]:
    if source == "code":
        return [(_code_features, _code_checks)]
    assert isinstance(config, WebFilterConfig)
    table: dict[str, Stage] = {
        "gopher_quality": (_gopher_quality_features, _gopher_quality_checks),
        "gopher_repetition": (_gopher_repetition_features, _repetition_checks),
        "c4": (_c4_features, _c4_checks),
        "fineweb": (_fineweb_features, _fineweb_checks),
    }
    return [table[f] for f in FAMILIES if getattr(config, f)]


AnyConfig = WebFilterConfig | CodeFilterConfig


def _resolve(source: str, config: AnyConfig | None) -> AnyConfig:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    expected = WebFilterConfig if source == "web" else CodeFilterConfig
    if config is None:
        return expected()
    if not isinstance(config, expected):
        raise ValueError(f"config for source {source!r} must be a {expected.__name__}, "
                         f"got {type(config).__name__}")
    return config


def rule_names(source: str, config: WebFilterConfig | CodeFilterConfig | None = None) -> list[str]:
    """The enabled rules, in the order they are evaluated (the first failing one is reported)."""
    cfg = _resolve(source, config)
    return [name for _, checks in _stages(source, cfg) for name in _names(checks(cfg))]


def filter_documents(docs: pl.DataFrame, source: str,
                     config: WebFilterConfig | CodeFilterConfig | None = None) -> pl.DataFrame:
    """Judge every document; return all rows and columns of ``docs`` plus the verdict.

    ``docs`` needs string columns ``id``, ``text`` and ``uri`` (the code rules read the uri's
    extension). ``source`` is ``"web"`` or ``"code"``. Added (or replaced) columns:
    ``drop_reason`` (null when kept, else the first failing rule of :func:`rule_names`) and
    ``drop_detail`` (null when kept, else the measurement, e.g. ``"words=42 < 50"``).
    """
    cfg = _resolve(source, config)
    if not isinstance(docs, pl.DataFrame):
        raise ValueError(f"docs must be a polars DataFrame, got {type(docs).__name__}")
    missing = [c for c in ("id", "text", "uri") if c not in docs.columns]
    if missing:
        raise ValueError(f"docs is missing required column(s) {missing}; has {docs.columns}")
    for col in ("text", "uri"):
        if docs.schema[col] not in (pl.String, pl.Null):
            raise ValueError(f"docs column {col!r} must be a string column, got {docs.schema[col]}")
    n = docs.height
    reason = pl.Series("drop_reason", [None] * n, dtype=pl.String)
    detail = pl.Series("drop_detail", [None] * n, dtype=pl.String)
    work = pl.DataFrame({
        "_i": pl.int_range(n, dtype=pl.UInt32, eager=True),
        "text": docs.get_column("text").cast(pl.String).fill_null(""),
        "uri": docs.get_column("uri").cast(pl.String),
    })
    for features, checks in _stages(source, cfg):
        if work.height == 0:
            break
        active = [c for c in checks(cfg) if c is not None]
        if not active:
            continue
        work = features(work, cfg)
        why, what = pl.lit(None, pl.String), pl.lit(None, pl.String)
        for name, fails, text in reversed(active):  # the first failing rule wins
            why = pl.when(fails).then(pl.lit(name)).otherwise(why)
            what = pl.when(fails).then(text).otherwise(what)
        verdict = work.select("_i", why.alias("r"), what.alias("d"))
        dropped = verdict.filter(pl.col("r").is_not_null())
        if dropped.height:
            idx = dropped.get_column("_i")
            reason = reason.scatter(idx, dropped.get_column("r"))
            detail = detail.scatter(idx, dropped.get_column("d"))
        keep = [c for c in ("_i", "text", "uri", "_tokens") if c in work.columns]  # tokens are reused
        work = work.filter(verdict.get_column("r").is_null()).select(keep)
    return docs.with_columns(reason, detail)


def funnel(filtered: pl.DataFrame) -> dict[str, Any]:
    """Counts of a filtered frame: ``{"in": n, "kept": k, "dropped": {rule: count}}``.

    ``in == kept + sum(dropped.values())``; rules are listed by decreasing count (then name).
    """
    if not isinstance(filtered, pl.DataFrame) or "drop_reason" not in filtered.columns:
        raise ValueError("filtered must be a DataFrame returned by filter_documents (no drop_reason column)")
    reasons = filtered.get_column("drop_reason")
    counts = reasons.drop_nulls().value_counts(name="n")
    dropped = {r: int(c) for r, c in sorted(zip(counts.get_column("drop_reason").to_list(),
                                                  counts.get_column("n").to_list(), strict=True),
                                              key=lambda rc: (-rc[1], rc[0]))}
    return {"in": filtered.height, "kept": int(reasons.null_count()), "dropped": dropped}
