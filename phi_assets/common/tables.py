"""Markdown tables for Dagster metadata: the one helper every stage's metadata uses."""

from __future__ import annotations

from typing import Any

import dagster as dg

VERSION_EXEMPT = "Markdown tables for metadata: how results look, not what they are"


def md_cell(value: Any) -> str:
    """A value as one Markdown table cell: pipes escaped, line breaks flattened."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_lines(head: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table as text."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def md_table(head: list[str], rows: list[list[Any]]) -> dg.MarkdownMetadataValue:
    """A Markdown table as Dagster metadata."""
    return dg.MetadataValue.md(md_lines(head, rows))
