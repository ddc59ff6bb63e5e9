"""Configuration of the heuristic quality filters: thresholds (the papers' defaults), character
sets and patterns. ``heuristics`` applies them; docs/filters.md cites the source of every value."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

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
WORD_CHAR = _char_class(PUNCTUATION + TERMINAL_PUNCTUATION, negate=True)  # token is a "word"
# Python's str.splitlines() boundaries (Gopher and C4 count lines like datatrove does).
LINE_BREAK = r"\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]"
INLINE_SPACE = r"[^\S\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]"
TERMINAL_AT_END = _char_class(TERMINAL_PUNCTUATION) + r"\z"
# C4 (TFDS c4_utils / datatrove c4_filters.py): Wikipedia citation markers removed before the
# end-of-line check, the end marks, and the policy phrases that remove a line.
C4_CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
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
C4_SENTENCE_BREAK = (
    r"(?:\w\w|\d|[^\w\s.])\.[\"'\u201d\u2019)\]]*\s+"
    r"|[!?]+[\"'\u201d\u2019)\]]*\s+"
    r"|\p{Ll}\.\p{Lu}"
)

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")

# Code: StarCoder2's encoded-data patterns (base64, hex byte lists, \u escapes).
# ASCII mode ((?-u)): the same matches on these ASCII classes, and a DFA-friendly word boundary
# (Unicode \b made this one regex 10x slower).
ENCODED_DATA = (
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
DATA_LINE = (
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
