"""Python functions as abstracted token streams, for syntax-level similarity (decontamination pass 2).

``code_functions`` splits a source file into its functions (nested ones included; line ranges from
``ast`` when the file parses, from indentation otherwise) and abstracts each one: identifiers
become ``ID`` and literals ``NUM`` / ``STR``, while keywords, builtins, attribute names and
operators stay. Two functions that differ only in their names have the same stream.
"""

from __future__ import annotations

import ast
import bisect
import builtins
import io
import keyword
import re
import textwrap
import tokenize
from typing import NamedTuple

BUILTINS = frozenset(dir(builtins))
DEF_RE = re.compile(r"^([ \t]*)(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(")
ROUGH_TOKEN_RE = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|\d[\w.]*|\w+|[^\w\s]")


class Function(NamedTuple):
    """A function's source, its abstracted token stream, and the identifier behind each ``ID``."""

    text: str
    tokens: tuple[str, ...]
    names: tuple[str | None, ...]


def code_functions(source: str) -> list[Function]:
    """Every function, nested ones included: line ranges from ``ast`` when the code parses, from
    indentation otherwise; tokens from one ``tokenize`` pass over the document."""
    lines = source.splitlines()
    try:
        ranges = [(n.lineno, n.end_lineno) for n in ast.walk(ast.parse(source))
                  if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        ranges = _indented_functions(lines)
    streams = _abstract(source) if ranges else None
    out = []
    for start, end in ranges:
        text = "\n".join(lines[start - 1 : end])
        if streams is not None:
            lo, hi = bisect.bisect_left(streams[2], start), bisect.bisect_right(streams[2], end)
            tokens, names = streams[0][lo:hi], streams[1][lo:hi]
        else:  # the document does not tokenize as a whole: the function on its own, or a regex
            tokens, names, _ = _abstract(textwrap.dedent(text)) or _abstract(text, rough=True)
        skip = 0
        while skip < len(tokens) and tokens[skip] in ("INDENT", "DEDENT"):  # a class body's INDENT
            skip += 1
        out.append(Function(text, tuple(tokens[skip:]), tuple(names[skip:])))
    return out


def _indented_functions(lines: list[str]) -> list[tuple[int, int]]:
    """Line ranges of ``def`` blocks by indentation, for code that does not parse."""
    ranges = []
    for i, line in enumerate(lines):
        if not (m := DEF_RE.match(line)):
            continue
        indent, end = len(m.group(1).expandtabs()), i
        for j in range(i + 1, len(lines)):
            stripped = lines[j].strip()
            if not stripped:
                continue
            line_indent = len(lines[j].expandtabs()) - len(lines[j].expandtabs().lstrip())
            if line_indent <= indent and stripped[0] not in ")]}":  # a closing bracket continues a signature
                break
            end = j
        ranges.append((i + 1, end + 1))
    return ranges


def _abstract(source: str, rough: bool = False) -> tuple[list[str], list[str | None], list[int]] | None:
    """Abstracted tokens, their identifiers and line numbers; None when ``source`` does not
    tokenize. ``rough``: a regex approximation that always succeeds."""
    tokens, names, lines, previous, fstring_depth = [], [], [], "", 0
    if rough:
        stream = [(_rough_kind(m.group()), m.group(), 0) for m in ROUGH_TOKEN_RE.finditer(source)]
    else:
        stream = ((tokenize.tok_name[t.type], t.string, t.start[0])
                  for t in tokenize.generate_tokens(io.StringIO(source).readline))
    try:
        for kind, string, line in stream:
            if kind == "FSTRING_START":  # Python 3.12+ splits f-strings: one STR, as in 3.11
                fstring_depth += 1
                value = "STR" if fstring_depth == 1 else None
            elif kind == "FSTRING_END" or fstring_depth:
                fstring_depth -= kind == "FSTRING_END"
                value = None
            else:
                value = _abstract_one(kind, string, previous)
            if value is not None:
                tokens.append(value)
                names.append(string if value == "ID" else None)
                lines.append(line)
                previous = value
    except (tokenize.TokenError, SyntaxError):
        return None
    return tokens, names, lines


def _abstract_one(kind: str, string: str, previous: str) -> str | None:
    if kind == "NAME":
        keep = keyword.iskeyword(string) or string in BUILTINS or previous == "."  # attributes stay
        return string if keep else "ID"
    if kind in ("NUMBER", "STRING"):
        return "NUM" if kind == "NUMBER" else "STR"
    if kind in ("OP", "NEWLINE", "INDENT", "DEDENT"):
        return kind if kind != "OP" else string if string != ";" else None  # `;` ends a statement anyway
    return None  # comments, blank lines, encoding and end markers carry no structure


def _rough_kind(string: str) -> str:
    if string[0] in "\"'":
        return "STRING"
    if string[0].isdigit():
        return "NUMBER"
    return "NAME" if string[0].isalnum() or string[0] == "_" else "OP"
