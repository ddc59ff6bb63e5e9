"""Mixture weights and epoch accounting: how often each source is seen for a token budget.

A source with weight ``w`` contributes ``w * budget`` tokens to a run; with ``unique`` tokens on
disk that is ``w * budget / unique`` epochs (passes over the source). The phi-4 report's
pretraining mixture (its Table 5) is the default: web 15%, web rewrites 15%, synthetic 40%, code
20%, targeted acquisitions 10%. ``default_weights`` maps those categories onto the sources that
exist (a category without tokens is dropped and the rest renormalised; a category with several
sources splits its share in proportion to their tokens, so they repeat equally often).
``cap_epochs`` enforces an epoch cap by moving the excess weight of over-repeated sources to the
others in proportion to their weights (water-filling), and says so when the budget cannot be met.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

PHI4_TABLE = {"web": 0.15, "web_rewrites": 0.15, "synthetic": 0.40, "code": 0.20, "targeted": 0.10}
CATEGORY = {
    "filtered_web": "web",
    "rewritten_web": "web_rewrites",
    "synthetic_textbooks": "synthetic",
    "synthetic_exercises": "synthetic",
    "filtered_code": "code",
}
SOURCES = tuple(CATEGORY)
TOLERANCE = 1e-9
DEFAULT_MAX_EPOCHS = 16.0  # Muennighoff et al. (2023): repeated data adds little beyond ~16 epochs


def normalise(weights: Mapping[str, float], tokens: Mapping[str, int]) -> dict[str, float]:
    """Weights over exactly the sources of ``tokens``, summing to 1; user errors raise ValueError."""
    unknown = sorted(set(weights) - set(tokens))
    if unknown:
        raise ValueError(f"unknown sources {unknown}; the sources are {sorted(tokens)}")
    bad = {s: w for s, w in weights.items() if not w >= 0}
    if bad:
        raise ValueError(f"weights must be >= 0, got {bad}")
    empty = sorted(s for s, w in weights.items() if w > 0 and tokens[s] <= 0)
    if empty:
        raise ValueError(f"sources {empty} have weight but no tokens; give them weight 0 or add data")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the weights sum to 0; give at least one source with tokens a weight")
    return {s: weights.get(s, 0.0) / total for s in tokens}


def default_weights(
    tokens: Mapping[str, int], table: Mapping[str, float] = PHI4_TABLE, category: Mapping[str, str] = CATEGORY
) -> dict[str, float]:
    """The phi-4 table mapped onto the sources with tokens, renormalised."""
    present: dict[str, list[str]] = {}
    for source, n in tokens.items():
        if n > 0:
            present.setdefault(category.get(source, source), []).append(source)
    if not present:
        raise ValueError("no source has any tokens; materialize the tokenized sources first")
    raw = {s: 0.0 for s in tokens}
    for cat, members in present.items():
        share = table.get(cat, 0.0)
        in_cat = sum(tokens[s] for s in members)
        for s in members:
            raw[s] = share * tokens[s] / in_cat
    if sum(raw.values()) <= 0:
        raise ValueError(f"none of the categories {sorted(present)} has a weight in the table {dict(table)}")
    return normalise(raw, tokens)


def epochs(weights: Mapping[str, float], tokens: Mapping[str, int], budget: int) -> dict[str, float]:
    return {s: (w * budget / tokens[s] if tokens[s] else 0.0) for s, w in weights.items()}


def cap_epochs(
    weights: Mapping[str, float], tokens: Mapping[str, int], budget: int, max_epochs: float
) -> dict[str, float]:
    """Weights with no source beyond ``max_epochs``: capped sources keep ``max_epochs`` worth of
    weight and their excess goes to the uncapped ones in proportion to their weights."""
    if budget <= 0 or max_epochs <= 0:
        raise ValueError(f"token budget and epoch cap must be > 0, got {budget} and {max_epochs}")
    capacity = {s: max_epochs * tokens[s] / budget for s in weights}
    reachable = sum(min(capacity[s], 1.0) for s, w in weights.items() if w > 0)
    if reachable < 1 - TOLERANCE:
        have = sum(tokens[s] for s, w in weights.items() if w > 0)
        raise ValueError(
            f"a budget of {budget:,} tokens needs at least {budget / max_epochs:,.0f} unique tokens at "
            f"{max_epochs:g} epochs, but the weighted sources hold {have:,}: raise max_epochs, lower "
            "the budget or add data"
        )
    out, free = dict(weights), {s for s, w in weights.items() if w > 0}
    while True:
        over = {s for s in free if out[s] > capacity[s] + TOLERANCE}
        if not over:
            return out
        for s in over:
            out[s] = capacity[s]
        free -= over
        excess = 1.0 - sum(out.values())
        mass = sum(out[s] for s in free)
        for s in free:
            out[s] += excess * out[s] / mass


def table(
    requested: Mapping[str, float],
    weights: Mapping[str, float],
    tokens: Mapping[str, int],
    budget: int,
    category: Mapping[str, str] = CATEGORY,
) -> pl.DataFrame:
    """The accounting table: one row per source."""
    seen = epochs(weights, tokens, budget)
    return pl.DataFrame(
        {
            "source": list(weights),
            "category": [category.get(s, s) for s in weights],
            "requested_weight": [requested.get(s, 0.0) for s in weights],
            "weight": list(weights.values()),
            "unique_tokens": [tokens[s] for s in weights],
            "tokens_seen": [round(w * budget) for w in weights.values()],
            "epochs": list(seen.values()),
        },
        schema={
            "source": pl.String,
            "category": pl.String,
            "requested_weight": pl.Float64,
            "weight": pl.Float64,
            "unique_tokens": pl.Int64,
            "tokens_seen": pl.Int64,
            "epochs": pl.Float64,
        },
    )
