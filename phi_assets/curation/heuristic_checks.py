"""Building blocks of the heuristic rules (``heuristics.py``): a rule is ``(name, fails, detail)``,
two polars expressions over a stage's feature columns, and the token column the web rules share."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from phi_assets.curation.filter_config import TOKEN_PATTERN

Check = tuple[str, pl.Expr, pl.Expr]


def col(name: str) -> pl.Expr:
    return pl.col(name)


def ratio(num: str, den: str) -> pl.Expr:
    return pl.when(col(den) > 0).then(col(num) / col(den)).otherwise(0.0)


def rounded(expr: pl.Expr) -> pl.Expr:
    """A float feature rounded for drop_detail."""
    return expr.cast(pl.Float64).round(4)


def above(name: str, value: pl.Expr, limit: float | None, label: str, integer: bool = False) -> Check | None:
    if limit is None:
        return None
    return name, value > limit, pl.format(f"{label}={{}} > {limit:g}", value if integer else rounded(value))


def below(name: str, value: pl.Expr, limit: float | None, label: str, integer: bool = False) -> Check | None:
    if limit is None:
        return None
    return name, value < limit, pl.format(f"{label}={{}} < {limit:g}", value if integer else rounded(value))


def between(name: str, value: pl.Expr, low: float | None, high: float | None, label: str,
            integer: bool = False) -> Check | None:
    shown = value if integer else rounded(value)
    if low is None and high is None:
        return None
    if low is None:
        return above(name, value, high, label, integer)
    if high is None:
        return below(name, value, low, label, integer)
    return (name, (value < low) | (value > high),
            pl.when(value < low).then(pl.format(f"{label}={{}} < {low:g}", shown))
            .otherwise(pl.format(f"{label}={{}} > {high:g}", shown)))


def check_names(checks: Sequence[Check | None]) -> list[str]:
    return list(dict.fromkeys(c[0] for c in checks if c is not None))


def with_tokens(work: pl.DataFrame) -> pl.DataFrame:
    if "_tokens" in work.columns:
        return work
    return work.with_columns(pl.col("text").str.extract_all(TOKEN_PATTERN).alias("_tokens"))


def n_tokens(work: pl.DataFrame) -> pl.Expr:
    if "_tokens" in work.columns:
        return pl.col("_tokens").list.len()
    return pl.col("text").str.count_matches(TOKEN_PATTERN)
