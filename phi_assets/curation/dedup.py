"""Exact and fuzzy (MinHash LSH) deduplication in one process, for sets that fit in memory: the
synthetic sets (``phi_assets/synthetic/gates.py``). The corpora, which do not fit, are deduplicated in
stages by ``lsh.py``; this module is also the single-process baseline of ``benchmarks/curation_scale.py``.

What: ``deduplicate`` takes every shard's MinHash signatures (``minhash.py``; row i is document i
of that shard's docs.parquet) and decides, per document, whether it is kept. ``write_cluster_db``
writes the decisions and clusters to a DuckDB file for inspection.

How:
- Exact duplicates: the same ``id`` (content hash of the text) anywhere in the given shards.
- Near duplicates: locality-sensitive hashing over bands: documents whose signatures agree on all
  ``rows_per_band`` values of any one band are candidates. 14 bands of 8 rows make a pair of
  Jaccard similarity s a candidate with probability 1 - (1 - s^8)^14: 0.92 at 0.8, 0.56 at 0.7,
  0.05 at 0.5 (the S-curve's threshold is (1/14)^(1/8) ~ 0.72).
- Clusters: connected components of the links (union-find over numpy arrays). Survivor: the member
  with the smallest (id, shard, row) tuple, so it depends on the documents only, not on the order
  of the shards or rows; ``cluster_id`` is the survivor's id (unique: documents with one id are
  always in one cluster).
- ``min_similarity`` (default 0.7; ``None``: plain LSH components, as FineWeb/datatrove) works on
  the estimated Jaccard similarity, the fraction of equal signature entries (standard deviation
  ~0.04 with 112 hashes), in two places. (1) A candidate link is kept only if it reaches it
  (checked against the first member of each band group: linear in the group size); this drops
  most chance matches below 0.7 and costs pairs at 0.8 about 0.5%. (2) Chains are split: a
  member stays in a component only if it reaches ``min_similarity`` with the survivor itself;
  the others lose their links to the settled members and are clustered again among themselves
  (repeated until stable). So every removed near duplicate resembles the document kept in its
  place, and links A~B~C cannot remove C for a survivor A it shares little with: on web data,
  chaining through boilerplate is what grows giant components. Why 0.7: the LSH threshold is
  ~0.72, and 0.7 keeps pairs at 0.8 (the usual near-duplicate bound) with high probability.
- ``cluster_kind``: "exact" if all members share one id, else "near". A removed document counts
  as exact-removed if its id equals its survivor's id, otherwise as near-removed.
- Documents with no words (``minhash.EMPTY_SIGNATURE``) take part in exact matching only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from phi_assets.curation.minhash import EMPTY_SIGNATURE, MinHashConfig, read_signatures


@dataclass(frozen=True)
class ShardSignatures:
    shard: str  # the shard's name (e.g. its partition key), unique within one deduplicate() call
    ids: Sequence[str] | np.ndarray
    sigs: np.ndarray  # (len(ids), num_hashes) uint32; row i is document i of the shard

    @classmethod
    def read(cls, shard: str, path: str | Path,
             config: MinHashConfig = MinHashConfig()) -> ShardSignatures:  # noqa: B008 (frozen)
        ids, sigs = read_signatures(path, config)
        return cls(shard, ids, sigs)


@dataclass(frozen=True)
class DedupResult:
    decisions: pl.DataFrame  # one row per input document, sorted by (shard, row)
    num_docs: int
    num_kept: int
    num_exact_removed: int
    num_near_removed: int
    num_clusters: int

    @property
    def reconciles(self) -> bool:
        kept = int(self.decisions["keep"].sum()) if self.decisions.height else 0
        return (self.num_docs == self.decisions.height == self.num_kept + self.num_exact_removed
                + self.num_near_removed and kept == self.num_kept)


def _validate(shards: Sequence[ShardSignatures], config: MinHashConfig) -> None:
    seen: set[str] = set()
    for s in shards:
        if not isinstance(s.shard, str) or not s.shard or s.shard in seen:
            raise ValueError(f"shard names must be unique non-empty strings, got {s.shard!r} twice or empty")
        seen.add(s.shard)
        sigs = np.asarray(s.sigs)
        if sigs.ndim != 2 or sigs.shape != (len(s.ids), config.num_hashes):
            raise ValueError(f"shard {s.shard!r}: sigs must have shape ({len(s.ids)}, {config.num_hashes}) "
                             f"(ids x num_bands*rows_per_band), got {sigs.shape}")
        if sigs.dtype != np.uint32:
            raise ValueError(f"shard {s.shard!r}: sigs must be uint32, got {sigs.dtype}")


def _band_edges(band: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(member, first member) for every group of ``rows`` with identical ``band`` values."""
    if len(rows) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.lexsort(band.T[::-1])  # exact: sorts by all band values, no hashing of the band
    sorted_band = band[order]
    same = np.all(sorted_band[1:] == sorted_band[:-1], axis=1)
    head = np.maximum.accumulate(np.where(np.concatenate(([False], same)), 0, np.arange(len(order))))
    member = np.flatnonzero(np.concatenate(([False], same)))
    return rows[order[member]], rows[order[head[member]]]


def _components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Root of each node: the smallest node of its connected component (hook roots, then compress)."""
    parent = np.arange(n)
    while len(u):
        pu, pv = parent[u], parent[v]
        lo, hi = np.minimum(pu, pv), np.maximum(pu, pv)
        linked = lo != hi
        if not linked.any():
            break
        np.minimum.at(parent, hi[linked], lo[linked])  # parent[x] <= x always: no cycles
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def _similarity(sigs: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of rows a[i] and b[i]: the fraction of equal signature entries."""
    out = np.empty(len(a))
    for i in range(0, len(a), 65536):  # bounded temporaries: 65536 x num_hashes booleans
        out[i:i + 65536] = np.mean(sigs[a[i:i + 65536]] == sigs[b[i:i + 65536]], axis=1)
    return out


def _anchored(n: int, u: np.ndarray, v: np.ndarray, sigs: np.ndarray, src: np.ndarray,
              threshold: float) -> np.ndarray:
    """Components, with chains split: a member stays with its component's root (smallest node) only
    if their similarity reaches ``threshold``. The others lose their links to settled nodes and
    are clustered again among themselves, until every member is similar to its root."""
    root = np.arange(n)
    settled = np.zeros(n, dtype=bool)
    while True:
        r = _components(n, u, v)
        free = np.flatnonzero(~settled)
        member = free[r[free] != free]
        ok = _similarity(sigs, src[member], src[r[member]]) >= threshold
        root[member[ok]] = r[member[ok]]
        settled[free[r[free] == free]] = True
        settled[member[ok]] = True
        if ok.all():
            return root
        linked = ~settled[u] & ~settled[v]
        u, v = u[linked], v[linked]


def deduplicate(shards: Sequence[ShardSignatures],
                config: MinHashConfig = MinHashConfig(),  # noqa: B008 (frozen dataclass)
                min_similarity: float | None = 0.7) -> DedupResult:
    """Exact + near-duplicate clusters and keep/remove decisions over all ``shards`` (module doc)."""
    if min_similarity is not None and not 0.0 <= min_similarity <= 1.0:
        raise ValueError(f"min_similarity must be in [0, 1] or None, got {min_similarity}")
    _validate(shards, config)
    docs = pl.concat([pl.DataFrame({"shard": pl.Series([s.shard] * len(s.ids), dtype=pl.String),
                                    "row": pl.Series(np.arange(len(s.ids)), dtype=pl.Int64),
                                    "id": pl.Series(list(s.ids), dtype=pl.String)}) for s in shards]
                     or [pl.DataFrame(schema={"shard": pl.String, "row": pl.Int64, "id": pl.String})])
    if docs["id"].null_count():
        raise ValueError("ids must not be null")
    # Canonical order: by (id, shard, row). Node i is the i-th document in it, so a component's
    # smallest node is its survivor, whatever order the shards and rows came in.
    canon = docs.with_row_index("src").sort(["id", "shard", "row"])
    src = canon["src"].to_numpy().astype(np.int64)
    n = len(src)
    ids = canon["id"].to_numpy()
    new_id = np.ones(n, dtype=bool)
    new_id[1:] = ids[1:] != ids[:-1]
    id_group = np.cumsum(new_id) - 1
    first_of_id = np.flatnonzero(new_id)
    exact_u = np.flatnonzero(~new_id)
    edges_u, edges_v = [exact_u], [first_of_id[id_group[exact_u]]]

    stacked = np.concatenate([np.asarray(s.sigs) for s in shards]) if shards else np.empty((0, 0), np.uint32)
    # Fuzzy matching runs on one document per id (copies are linked already), without empty ones.
    reps = first_of_id
    if n:
        maybe_empty = reps[stacked[src[reps], 0] == EMPTY_SIGNATURE]  # full check only for these few
        empty = maybe_empty[np.all(stacked[src[maybe_empty]] == EMPTY_SIGNATURE, axis=1)]
        reps = np.setdiff1d(reps, empty, assume_unique=True)
    r = config.rows_per_band
    for b in range(config.num_bands):
        u, v = _band_edges(stacked[src[reps], b * r:(b + 1) * r], reps)
        if min_similarity is not None and len(u):
            similar = _similarity(stacked, src[u], src[v]) >= min_similarity
            u, v = u[similar], v[similar]
        edges_u.append(u)
        edges_v.append(v)
    u, v = np.concatenate(edges_u), np.concatenate(edges_v)
    if min_similarity is None:
        root = _components(n, u, v)
    else:
        root = _anchored(n, u, v, stacked, src, min_similarity)

    size = np.bincount(root, minlength=n)
    clustered = size[root] > 1
    keep = root == np.arange(n)
    same_as_survivor = id_group == id_group[root]
    all_exact = np.bincount(root, weights=~same_as_survivor, minlength=n) == 0
    survivor = pl.Series(root)
    decisions = canon.select("shard", "row", "id").with_columns(
        pl.Series("clustered", clustered), pl.Series("keep", keep),
        pl.Series("kind", np.where(all_exact[root], "exact", "near")),
        canon["shard"].gather(survivor).alias("survivor_shard"),
        canon["row"].gather(survivor).alias("survivor_row"),
        canon["id"].gather(survivor).alias("survivor_id"),
    ).select(
        "shard", "row", "id",
        pl.when("clustered").then("survivor_id").alias("cluster_id"),
        pl.when("clustered").then("kind").alias("cluster_kind"),
        "keep",
        *(pl.when("clustered").then(c).alias(c) for c in ("survivor_shard", "survivor_row", "survivor_id")),
    ).sort("shard", "row")
    return DedupResult(
        decisions=decisions, num_docs=n, num_kept=int(keep.sum()),
        num_exact_removed=int((~keep & same_as_survivor).sum()),
        num_near_removed=int((~keep & ~same_as_survivor).sum()),
        num_clusters=int((keep & clustered).sum()),
    )


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _create_views(con: duckdb.DuckDBPyConnection, files: Mapping[str, str] | None) -> None:
    con.execute("""CREATE VIEW cluster_members AS
        SELECT cluster_id, cluster_kind AS kind, shard, row, id, keep AS is_survivor FROM documents
        WHERE cluster_id IS NOT NULL ORDER BY cluster_id, is_survivor DESC, shard, row""")
    if files is None:
        return
    con.execute("CREATE TABLE shard_files (shard VARCHAR PRIMARY KEY, path VARCHAR NOT NULL)")
    con.executemany("INSERT INTO shard_files VALUES (?, ?)", sorted(files.items()))
    paths = ", ".join(_sql_str(p) for p in sorted(set(files.values())))
    # file_row_number is the 0-based row within each file, the ``row`` of the decisions.
    con.execute(f"""CREATE VIEW cluster_texts AS
        SELECT m.*, t.text FROM cluster_members m
        JOIN shard_files f ON f.shard = m.shard
        JOIN read_parquet([{paths}], filename = true, file_row_number = true) t
          ON t.filename = f.path AND t.file_row_number = m.row
        ORDER BY m.cluster_id, m.is_survivor DESC, m.shard, m.row""")


def write_cluster_db(result: DedupResult, path: Path, docs_paths: Mapping[str, str] | None = None) -> Path:
    """Write ``result`` to a DuckDB file at ``path``, atomically (a temp file in the same folder,
    then ``os.replace``; nothing is left behind on failure). Tables: ``documents`` (the decisions),
    ``clusters`` (cluster_id, kind, size, survivor_shard, survivor_row, survivor_id), ``summary``
    (the counts); view ``cluster_members`` (cluster_id, kind, shard, row, id, is_survivor). With
    ``docs_paths`` (shard -> its docs.parquet, a local path or a URL DuckDB can read): table
    ``shard_files`` and view ``cluster_texts`` (cluster_members plus ``text``; it reads the ``text``
    column of all listed files at query time)."""
    path = Path(path)
    files = None
    if docs_paths is not None:
        missing = sorted(set(result.decisions["shard"].unique()) - set(docs_paths))
        if missing:
            raise ValueError(f"docs_paths has no entry for shards {missing[:5]} ({len(missing)} missing)")
        files = {s: p if "://" in str(p) else str(Path(p).resolve()) for s, p in docs_paths.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    con = duckdb.connect(str(tmp))
    try:
        con.register("decisions_src", result.decisions.to_arrow())
        con.execute("CREATE TABLE documents AS SELECT * FROM decisions_src ORDER BY shard, row")
        con.unregister("decisions_src")
        con.execute("""CREATE TABLE clusters AS
            SELECT cluster_id, min(cluster_kind) AS kind, count(*) AS size,
                   min(survivor_shard) AS survivor_shard, min(survivor_row) AS survivor_row,
                   min(survivor_id) AS survivor_id
            FROM documents WHERE cluster_id IS NOT NULL GROUP BY cluster_id ORDER BY cluster_id""")
        con.execute("""CREATE TABLE summary AS SELECT ? AS num_docs, ? AS num_kept, ? AS num_exact_removed,
            ? AS num_near_removed, ? AS num_clusters""",
                    [result.num_docs, result.num_kept, result.num_exact_removed, result.num_near_removed,
                     result.num_clusters])
        _create_views(con, files)
        con.close()
        os.replace(tmp, path)
    except BaseException:
        con.close()
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
            leftover.unlink(missing_ok=True)
        raise
    return path
