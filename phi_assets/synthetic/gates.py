"""Quality gates over a whole synthetic set: fuzzy dedup, diversity, coverage.

- ``fuzzy_dedup``: the curation MinHash LSH (5-word shingles, 14 x 8, confirmed at estimated
  Jaccard >= 0.7 with the survivor) over one set; the survivor of a cluster is its smallest id.
- ``diversity``: distinct n-gram ratios over the set (distinct / total word n-grams for n = 1, 2,
  3: low values mean the generator keeps saying the same things), repeated openings (share of
  documents whose first five words another document also starts with: the classic symptom of a
  prompt without enough seed diversity) and the most common openings, and length statistics.
- ``coverage``: how many documents each value of a seed field (topic, audience, format) got, and
  the share of the seed space that is represented at all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from phi_assets.curation import dedup, minhash

_WORD = re.compile(r"\w+")
OPENING_WORDS = 5


def fuzzy_dedup(
    ids: Sequence[str],
    texts: Sequence[str],
    config: minhash.MinHashConfig = minhash.MinHashConfig(),  # noqa: B008
    min_similarity: float = 0.7,
) -> pl.DataFrame:
    """Per document (in input order): ``keep`` and the ``survivor_id`` of its cluster (None if alone)."""
    sigs = minhash.signatures(list(texts), config)
    result = dedup.deduplicate([dedup.ShardSignatures("set", list(ids), sigs)], config, min_similarity)
    return result.decisions.sort("row").select("id", "keep", "survivor_id", "cluster_kind")


def _openings(texts: Sequence[str]) -> list[str]:
    return [" ".join(_WORD.findall(t.lower())[:OPENING_WORDS]) for t in texts]


def diversity(texts: Sequence[str]) -> dict[str, Any]:
    words = [_WORD.findall(t.lower()) for t in texts]
    out: dict[str, Any] = {"num_docs": len(texts)}
    for n in (1, 2, 3):
        grams = Counter(tuple(w[i : i + n]) for w in words for i in range(len(w) - n + 1))
        total = sum(grams.values())
        out[f"distinct_{n}grams"] = round(len(grams) / total, 4) if total else 0.0
    openings = Counter(_openings(texts))
    repeated = sum(c for c in openings.values() if c > 1)
    out["repeated_openings"] = round(repeated / len(texts), 4) if texts else 0.0
    out["top_openings"] = [{"opening": o, "docs": c} for o, c in openings.most_common(5) if c > 1]
    lengths = np.array([len(w) for w in words]) if words else np.zeros(0)
    out["words_mean"] = round(float(lengths.mean()), 1) if len(lengths) else 0.0
    out["words_median"] = float(np.median(lengths)) if len(lengths) else 0.0
    return out


def coverage(frame: pl.DataFrame, column: str, universe: Sequence[str]) -> dict[str, Any]:
    counts = Counter(frame[column].to_list()) if frame.height and column in frame.columns else Counter()
    covered = [u for u in universe if counts.get(u)]
    return {
        "covered": len(covered),
        "of": len(universe),
        "fraction": round(len(covered) / len(universe), 4) if universe else 0.0,
        "counts": {u: counts.get(u, 0) for u in universe},
    }
