"""Frames of documents for the heuristic filters, and the drop reason each gets."""

from __future__ import annotations

import polars as pl

from phi_assets.curation.heuristics import filter_documents


def frame(*texts: str, uris: list[str | None] | None = None) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"d{i}" for i in range(len(texts))], "text": list(texts),
                         "uri": uris or [f"https://example.org/{i}" for i in range(len(texts))]},
                        schema={"id": pl.String, "text": pl.String, "uri": pl.String})


def reasons(texts: list[str], source: str = "web", config=None, uris=None) -> list[str | None]:
    return filter_documents(frame(*texts, uris=uris), source, config).get_column("drop_reason").to_list()
