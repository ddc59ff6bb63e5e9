"""The seed space of the synthetic data (phi-1.5, Cosmopedia): topics x audiences x formats.

Topics come from two places: the curated list in ``prompts/topics.txt`` and clusters of the
filtered corpora. Each corpus's documents are embedded (the curation encoder), grouped with
k-means, and each cluster is named by its highest-weighted TF-IDF terms (``"widget, canvas and
event"``), so the synthetic data also covers what the real data is about.

``draw`` turns the topic table into generation prompts' fields, seeded by (seed, batch): within a
batch the 16 (audience, format) pairs come in a shuffled round-robin, so every batch covers them
evenly, and the topic is drawn uniformly. Draw ``i`` of a batch depends only on draws ``0..i``,
so a batch with more draws extends, never reshuffles, a smaller one (the request cache then
answers the common prefix).
"""

from __future__ import annotations

import itertools
import keyword
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from phi_assets.synthetic.templates import PROMPTS_DIR

VERSIONED_FILES = ("prompts/topics.txt",)  # relative to this module's folder: synthetic/

AUDIENCES = ("young children", "high school students", "college students", "researchers")
FORMATS = ("textbook section", "tutorial", "worked example", "Q&A")
TOPIC_SCHEMA = {
    "topic_id": pl.String,
    "topic": pl.String,
    "origin": pl.String,
    "keywords": pl.String,
    "num_docs": pl.Int64,
}
_CODE_STOP = set(keyword.kwlist) | {
    "self",
    "cls",
    "none",
    "true",
    "false",
    "args",
    "kwargs",
    "return",
    "def",
    "import",
    "str",
    "int",
    "list",
    "dict",
    "len",
    "print",
    "isinstance",
    "raise",
    "value",
    "values",
    "name",
    "obj",
    "object",
    "result",
    "data",
}


def curated_topics(path: Path = PROMPTS_DIR / "topics.txt") -> list[str]:
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    topics = [line for line in lines if line and not line.startswith("#")]
    duplicates = sorted({t for t in topics if topics.count(t) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate topics {duplicates}")
    if not topics:
        raise ValueError(f"{path}: no topics")
    return topics


def cluster_topics(
    texts: Sequence[str], embeddings: np.ndarray, k: int, seed: int, origin: str, num_terms: int = 3
) -> list[dict]:
    """``k`` k-means clusters of ``embeddings``, each named by its top TF-IDF terms."""
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

    k = min(k, len(texts) // 2)  # a cluster of one document is no topic
    if k < 1:
        return []
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(embeddings)
    vectorizer = TfidfVectorizer(
        max_features=20000,
        lowercase=True,
        token_pattern=r"(?u)\b[a-zA-Z]{3,}\b",
        stop_words=sorted(ENGLISH_STOP_WORDS | _CODE_STOP),
        sublinear_tf=True,
    )
    try:
        weights = vectorizer.fit_transform(texts)
    except ValueError:  # no words at all
        return []
    terms = np.array(vectorizer.get_feature_names_out())
    topics = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        mean = np.asarray(weights[members].mean(axis=0)).ravel()
        top = [t for t in terms[np.argsort(-mean, kind="stable")[:num_terms]] if mean[terms == t][0] > 0]
        if not top:
            continue
        name = top[0] if len(top) == 1 else f"{', '.join(top[:-1])} and {top[-1]}"
        topics.append({"topic": name, "origin": origin, "keywords": " ".join(top), "num_docs": len(members)})
    return topics


def topic_table(curated: Sequence[str], mined: Sequence[dict]) -> pl.DataFrame:
    rows = [{"topic": t, "origin": "curated", "keywords": "", "num_docs": 0} for t in curated]
    seen = {t.lower() for t in curated}
    for row in mined:
        if row["topic"].lower() not in seen:  # two clusters with the same name are one topic
            seen.add(row["topic"].lower())
            rows.append(row)
    return pl.DataFrame([{"topic_id": f"t{i:04d}", **r} for i, r in enumerate(rows)], schema=TOPIC_SCHEMA)


def draw(topics: Sequence[str], n: int, seed: int, batch: int, prefix: str) -> pl.DataFrame:
    """``n`` seeded (topic, audience, format) draws for batch number ``batch`` (module doc)."""
    if not topics:
        raise ValueError("no topics to draw from")
    pairs = list(itertools.product(AUDIENCES, FORMATS))
    order = np.random.default_rng([seed, batch, 0]).permutation(len(pairs))
    pick = np.random.default_rng([seed, batch, 1])
    rows = []
    for i in range(n):
        audience, fmt = pairs[order[i % len(pairs)]]
        rows.append(
            {
                "draw_id": f"{prefix}-{batch:03d}-{i:04d}",
                "topic": topics[int(pick.integers(len(topics)))],
                "audience": audience,
                "format": fmt,
                "seed": seed * 1_000_003 + batch * 10_007 + i,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "draw_id": pl.String,
            "topic": pl.String,
            "audience": pl.String,
            "format": pl.String,
            "seed": pl.Int64,
        },
    )
