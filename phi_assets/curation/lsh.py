"""Deduplication in stages that each fit a fixed memory budget (Dagster-free).

The corpus-wide step of fuzzy dedup cannot hold every signature of The Stack in one process (1e9
documents x 112 hashes x 4 bytes = 448 GB), so it runs in stages, each partitioned or bounded:

1. **Bands, per shard** (``write_bands``, in the shard's quality-filter step). For every document and
   every LSH band (``rows_per_band`` signature entries), a 64-bit hash of the band's values, plus one
   more "band" holding the first 64 bits of the document id (exact duplicates; documents without
   words take part in this one only). Each (band, hash range) slice is one row group of
   ``bands.parquet``, so a bucket step reads exactly its slices and nothing else of the shard.
2. **Buckets, per (band group, hash range)** (``bucket_candidates``; partitions
   ``BucketLayout.keys()``). Reads its slices from every shard, groups equal band hashes, and links
   each member of a group to the group's first member (by shard key, then row: independent of arrival
   order): the candidate pairs, and the (shard, row) they need. No text is read. A new shard changes
   only the partitions where it has slices (with many ranges, a small shard touches few of them).
   Then ``lsh_pairs`` confirms them in two more partitioned steps: **shingle sets, per shard**
   (``write_shingles``: each shard reads its candidate rows once and writes their shingle sets, one
   record batch per bucket partition) and **pairs, per bucket partition** (``confirm_candidates``:
   every candidate pair on the **exact Jaccard similarity of the two shingle sets**, the very sets the
   signatures estimate; only pairs at or above ``min_similarity`` go on). That is a shuffle: texts
   are read once per shard, not once per (partition, shard) a candidate row sits in.
3. **Clusters, over confirmed pairs only** (``cluster``). Connected components of the confirmed
   pairs in DuckDB under a memory limit (it spills to disk past it): nodes are the documents of
   confirmed pairs, not every document, so the work follows the number of duplicates. Survivor: the
   member with the smallest (id, shard, row), as before. Writes one removal file per shard that
   lost documents, a digest per shard, and ``clusters.duckdb`` for inspection.
4. **Survivors, per shard** (``survivor_rows``): a shard's documents minus its own removal file.

Why components are one step: connected components need every edge of a component in one place, and a
component can span any shards and bands. DuckDB keeps that step's memory under the budget by
spilling; its input is the confirmed pairs (duplicates), never the corpus.

Clusters are components of confirmed pairs: A~B and B~C confirmed put A, B and C in one cluster even
if A and C are below the threshold (each removed document resembles a document of its cluster, not
necessarily the survivor).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from phi_assets.curation import edu
from phi_assets.curation.minhash import EMPTY_SIGNATURE, MinHashConfig

PAIRS, CLUSTER_DB, REMOVALS = "pairs.parquet", "clusters.duckdb", "removals"
CANDIDATES, WANTED = "candidates.parquet", "wanted.arrow"
WANTED_BATCH_ROWS = 65_536
_WANTED_META = b"phi.lsh_wanted"
_BANDS_META = b"phi.lsh_bands"
_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
PAIR_SCHEMA = pa.schema(
    [
        ("u_shard", pa.string()),
        ("u_row", pa.int64()),
        ("u_id", pa.string()),
        ("v_shard", pa.string()),
        ("v_row", pa.int64()),
        ("v_id", pa.string()),
        ("similarity", pa.float32()),
    ]
)
CANDIDATE_SCHEMA = pa.schema(
    [("u_shard", pa.string()), ("u_row", pa.int64()), ("v_shard", pa.string()), ("v_row", pa.int64())]
)
WANTED_SCHEMA = pa.schema([("shard", pa.string()), ("row", pa.int64())])
REMOVAL_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("cluster_id", pa.string()),
        ("kind", pa.string()),
        ("survivor_shard", pa.string()),
        ("survivor_row", pa.int64()),
    ]
)


@dataclass(frozen=True)
class BucketLayout:
    """How the LSH buckets are partitioned: bands go to ``band_groups`` groups (band b to group
    b mod G; the id "band" after the last LSH band), hashes to ``hash_ranges`` equal ranges."""

    band_groups: int
    hash_ranges: int

    def __post_init__(self) -> None:
        if self.band_groups < 1 or self.hash_ranges < 1:
            raise ValueError(
                f"band_groups and hash_ranges must be >= 1, got {self.band_groups}, {self.hash_ranges}"
            )

    def keys(self) -> list[str]:
        return [f"g{g:02d}-r{r:03d}" for g in range(self.band_groups) for r in range(self.hash_ranges)]

    def parse(self, key: str) -> tuple[int, int]:
        if key not in self.keys():
            raise ValueError(f"unknown bucket partition {key!r}: expected one of {self.keys()[:3]}...")
        group, hash_range = key.split("-")
        return int(group[1:]), int(hash_range[1:])

    def bands_of(self, group: int, num_bands: int) -> list[int]:
        """The bands (0..num_bands, the last one the id band) of a group."""
        return [b for b in range(num_bands + 1) if b % self.band_groups == group]

    def range_of(self, hashes: np.ndarray) -> np.ndarray:
        return (((hashes >> np.uint64(32)) * np.uint64(self.hash_ranges)) >> np.uint64(32)).astype(np.int64)


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * _M1
    h = h ^ (h >> np.uint64(33))
    h = h * _M2
    return h ^ (h >> np.uint64(33))


def band_hashes(sigs: np.ndarray, band: int, rows_per_band: int) -> np.ndarray:
    """64-bit hash of each document's values in one band (equal values, equal hash)."""
    h = np.full(len(sigs), (band + 1) * int(_M2) % (1 << 64), dtype=np.uint64)
    for column in sigs[:, band * rows_per_band : (band + 1) * rows_per_band].T:
        h = _mix(h ^ column.astype(np.uint64))
    return h


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    return np.fromiter((int(i[:16], 16) for i in ids), dtype=np.uint64, count=len(ids))


# --- 1. bands, per shard ---------------------------------------------------------------------------


def band_table(ids: Sequence[str], sigs: np.ndarray, config: MinHashConfig, layout: BucketLayout) -> pa.Table:
    """(band, range, hash, row) of every document in every band, sorted by (band, range, hash, row)."""
    n = len(ids)
    nonempty = np.flatnonzero(~np.all(sigs == EMPTY_SIGNATURE, axis=1)) if n else np.empty(0, np.int64)
    bands, hashes, rows = [], [], []
    for b in range(config.num_bands):
        bands.append(np.full(len(nonempty), b, np.int64))
        hashes.append(band_hashes(sigs[nonempty], b, config.rows_per_band))
        rows.append(nonempty)
    bands.append(np.full(n, config.num_bands, np.int64))
    hashes.append(id_hashes(ids))
    rows.append(np.arange(n))
    band, h, row = np.concatenate(bands), np.concatenate(hashes), np.concatenate(rows)
    rng = layout.range_of(h)
    order = np.lexsort((row, h, rng, band))
    return pa.table(
        {
            "band": pa.array(band[order], pa.int32()),
            "range": pa.array(rng[order], pa.int32()),
            "hash": pa.array(h[order], pa.uint64()),
            "row": pa.array(row[order], pa.int64()),
        }
    )


def bands_file(group: int) -> str:
    return f"bands-g{group:02d}.parquet"


def write_bands(
    ids: Sequence[str], sigs: np.ndarray, config: MinHashConfig, layout: BucketLayout, folder: Path
) -> dict[str, dict[str, list]]:
    """Write ``band_table`` as one file per band group (``bands_file(g)``), one row group per (band,
    range) slice. Each footer maps ``"band:range"`` to [row group, rows, digest] for its group, so a
    bucket step reads one small footer per shard and then exactly its row groups. Returns the maps."""
    table = band_table(ids, sigs, config, layout)
    band, rng = table["band"].to_numpy(), table["range"].to_numpy()
    hashes, rows = table["hash"].to_numpy(), table["row"].to_numpy()
    cut = np.flatnonzero((band[1:] != band[:-1]) | (rng[1:] != rng[:-1])) + 1
    starts = np.concatenate(([0], cut)) if len(band) else np.empty(0, np.int64)
    ends = np.concatenate((cut, [len(band)])) if len(band) else np.empty(0, np.int64)
    written = {}
    for group in range(layout.band_groups):
        mine = [(s, e) for s, e in zip(starts, ends, strict=True) if band[s] % layout.band_groups == group]
        slices = {
            f"{band[s]}:{rng[s]}": [
                i,
                int(e - s),
                hashlib.blake2b(hashes[s:e].tobytes() + rows[s:e].tobytes(), digest_size=12).hexdigest(),
            ]
            for i, (s, e) in enumerate(mine)
        }
        meta = {
            "num_bands": config.num_bands,
            "rows_per_band": config.rows_per_band,
            "band_groups": layout.band_groups,
            "hash_ranges": layout.hash_ranges,
            "slices": slices,
        }
        schema = table.schema.with_metadata({_BANDS_META: json.dumps(meta).encode()})
        with pq.ParquetWriter(folder / bands_file(group), schema, compression="zstd") as writer:
            for s, e in mine:
                writer.write_table(
                    table.slice(s, e - s).replace_schema_metadata(schema.metadata), row_group_size=int(e - s)
                )
        written[bands_file(group)] = slices
    return written


def open_input(path: str, fs=None, mapped: bool = False):
    """A stage's input file, opened for reading: through ``fs`` when it is given (an object store), else
    the local path, memory-mapped when ``mapped`` (Arrow IPC batches then reference the map, no copy)."""
    if fs is not None:
        return fs.open(path, "rb")
    return pa.memory_map(path) if mapped else open(path, "rb")


def read_slice_index(path: str, fs=None) -> dict[str, list]:
    """The slice map ``write_bands`` stored in a bands file's footer."""
    with open_input(path, fs) as f:
        meta = pq.ParquetFile(f).schema_arrow.metadata
    return json.loads(meta[_BANDS_META])["slices"]


def partition_slices(
    slices: dict[str, list], layout: BucketLayout, group: int, hash_range: int, num_bands: int
) -> list[list]:
    """The [row group, rows, digest] entries of one bucket partition, in band order."""
    wanted = [f"{b}:{hash_range}" for b in layout.bands_of(group, num_bands)]
    return [slices[k] for k in wanted if k in slices]


def touched(written: dict[str, dict[str, list]], layout: BucketLayout) -> str:
    """Which bucket partitions a shard has slices in, as a hex bitmap over ``layout.keys()``."""
    bits = 0
    for name, slices in written.items():
        group = int(name.removeprefix("bands-g").removesuffix(".parquet"))
        for key in slices:
            bits |= 1 << (group * layout.hash_ranges + int(key.split(":")[1]))
    return f"{bits:0{(len(layout.keys()) + 3) // 4}x}"


def touches(bitmap: str, index: int) -> bool:
    return bool(int(bitmap, 16) >> index & 1)


# --- 2. buckets: candidates, confirmed on exact Jaccard ------------------------------------------


@dataclass(frozen=True)
class ShardInput:
    shard: str  # the partition key
    bands: str  # path/URI of its bands file for this partition's group
    row_groups: tuple[int, ...]  # the row groups of that file that belong to this bucket partition


def candidate_edges(
    shards: Sequence[ShardInput], read_groups: Callable[[str, Sequence[int]], pa.Table]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(member, head) node pairs of every group of equal (band, hash), deduplicated, plus the
    node -> shard index map basis. A node is shard_index << 32 | row; shards are indexed in key order."""
    order = sorted(range(len(shards)), key=lambda i: shards[i].shard)
    parts = []
    for index, i in enumerate(order):
        if not shards[i].row_groups:
            continue
        t = read_groups(shards[i].bands, shards[i].row_groups)
        node = (np.int64(index) << np.int64(32)) | t["row"].to_numpy().astype(np.int64)
        parts.append((t["band"].to_numpy().astype(np.int64), t["hash"].to_numpy(), node))
    if not parts:
        empty = np.empty(0, np.int64)
        return empty, empty, np.array([shards[i].shard for i in order], dtype=object)
    band = np.concatenate([p[0] for p in parts])
    h = np.concatenate([p[1] for p in parts])
    node = np.concatenate([p[2] for p in parts])
    srt = np.lexsort((node, h, band))
    band, h, node = band[srt], h[srt], node[srt]
    same = np.concatenate(([False], (band[1:] == band[:-1]) & (h[1:] == h[:-1])))
    head = np.maximum.accumulate(np.where(same, 0, np.arange(len(node))))
    member = np.flatnonzero(same)
    u, v = node[member], node[head[member]]
    pairs = np.unique(np.stack([u, v], axis=1), axis=0) if len(u) else np.empty((0, 2), np.int64)
    return pairs[:, 0], pairs[:, 1], np.array([shards[i].shard for i in order], dtype=object)


def _node_columns(nodes: np.ndarray, shard_keys: np.ndarray) -> tuple[pa.Array, pa.Array]:
    return (
        pa.array(shard_keys[nodes >> np.int64(32)].tolist(), pa.string()),
        pa.array(nodes & np.int64(0xFFFFFFFF), pa.int64()),
    )


def bucket_candidates(
    shards: Sequence[ShardInput],
    read_groups: Callable[[str, Sequence[int]], pa.Table],
    out: Path,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """One bucket partition: its candidate pairs (``CANDIDATES``, sorted by u then v) and the rows
    they need (``WANTED``: distinct (shard, row), sorted, in Arrow IPC batches whose first and last
    shard the footer lists, so a shard reads only the batches that hold its rows: Arrow IPC rather than
    parquet because every shard opens every partition's file, and an IPC read costs a fraction of a
    parquet read's fixed cost). No text is read here; ``lsh_pairs`` confirms the pairs."""
    u, v, keys = candidate_edges(shards, read_groups)
    u_shard, u_row = _node_columns(u, keys)
    v_shard, v_row = _node_columns(v, keys)
    pq.write_table(
        pa.table([u_shard, u_row, v_shard, v_row], schema=CANDIDATE_SCHEMA),
        out / CANDIDATES,
        compression="zstd",
    )
    nodes = np.unique(np.concatenate([u, v]))
    shard, row = _node_columns(nodes, keys)
    wanted = pa.table([shard, row], schema=WANTED_SCHEMA)
    batches = wanted.to_batches(max_chunksize=WANTED_BATCH_ROWS)
    bounds = {
        "first": [b["shard"][0].as_py() for b in batches],
        "last": [b["shard"][-1].as_py() for b in batches],
    }
    schema = WANTED_SCHEMA.with_metadata({_WANTED_META: json.dumps(bounds).encode()})
    with pa.OSFile(str(out / WANTED), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch.replace_schema_metadata(schema.metadata))
    with_rows = len(np.unique(nodes >> np.int64(32)))
    log(f"{len(u):,} candidate pairs over {len(nodes):,} rows of {with_rows} of {len(shards)} shards")
    return {"candidates": int(len(u)), "candidate_rows": int(len(nodes)), "shards_with_candidates": with_rows}


def wanted_rows(path: str, shard: str, fs=None) -> np.ndarray:
    """The sorted rows of ``shard`` in a bucket partition's ``WANTED`` file (Arrow IPC, sorted by
    shard): only the record batches whose first and last shard (in the footer) can hold it are read."""
    reader = pa.ipc.open_file(open_input(path, fs, mapped=True))
    bounds = json.loads(reader.schema.metadata[_WANTED_META])
    parts = [
        reader.get_batch(i)
        for i, (first, last) in enumerate(zip(bounds["first"], bounds["last"], strict=True))
        if first <= shard <= last
    ]
    if not parts:
        return np.empty(0, np.int64)
    table = pa.Table.from_batches(parts)
    return table.filter(pc.equal(table["shard"], shard))["row"].to_numpy().astype(np.int64)


def read_row_groups(path: str, groups: Sequence[int], fs=None) -> pa.Table:
    with open_input(path, fs) as f:
        return pq.ParquetFile(f).read_row_groups(
            list(groups), columns=["band", "hash", "row"], use_threads=False
        )


def take_rows(path: str, rows: np.ndarray, columns: Sequence[str], fs=None) -> pa.Table:
    """``columns`` of the given sorted rows of a docs.parquet, reading only the row groups that hold them."""
    with open_input(path, fs) as f:
        pf = pq.ParquetFile(f)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        bounds = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        if len(rows) and rows[-1] >= bounds[-1]:
            raise ValueError(
                f"{path}: row {int(rows[-1])} asked, the file has {int(bounds[-1])} rows; "
                "the shard changed after dedup read it"
            )
        group_of = np.searchsorted(bounds, rows, side="right") - 1
        parts = [
            pf.read_row_group(int(g), columns=list(columns)).take(pa.array(rows[group_of == g] - bounds[g]))
            for g in np.unique(group_of)
        ]
    return pa.concat_tables(parts) if parts else pf.schema_arrow.empty_table().select(list(columns))


def read_sample(chosen: pl.DataFrame, docs: dict[str, str], fs=None) -> pl.DataFrame:
    """shard, row, id, uri, text of the chosen (shard, row) documents, sorted by (shard, row)."""
    frames = []
    for (shard,), part in chosen.sort("shard", "row").group_by(["shard"], maintain_order=True):
        rows = part["row"].to_numpy().astype(np.int64)
        table = pl.from_arrow(take_rows(docs[shard], rows, ("id", "uri", "text"), fs))
        frames.append(table.with_columns(shard=pl.lit(shard), row=pl.Series(rows)))
    schema = {"shard": pl.String, "row": pl.Int64, "id": pl.String, "uri": pl.String, "text": pl.String}
    return pl.concat(frames).select(*schema) if frames else pl.DataFrame(schema=schema)


# --- 3. clusters over confirmed pairs ---------------------------------------------------------------


def _components(con: duckdb.DuckDBPyConnection, log: Callable[[str], None]) -> int:
    """Label every node of ``edges(a, b)`` with the smallest node of its component (min-label
    propagation with pointer jumping, until nothing changes). Returns the number of rounds."""
    con.execute("CREATE TEMP TABLE label AS SELECT node, node AS label FROM nodes")
    rounds = 0
    while True:
        rounds += 1
        con.execute("""CREATE OR REPLACE TEMP TABLE step AS
            SELECT node, min(label) AS label FROM (
                SELECT node, label FROM label
                UNION ALL SELECT e.a, l.label FROM edges e JOIN label l ON l.node = e.b
                UNION ALL SELECT e.b, l.label FROM edges e JOIN label l ON l.node = e.a
            ) GROUP BY node""")
        con.execute("""CREATE OR REPLACE TEMP TABLE step AS
            SELECT s.node, least(s.label, p.label) AS label FROM step s JOIN step p ON p.node = s.label""")
        changed = con.execute("""SELECT count(*) FROM step s JOIN label l USING (node)
            WHERE s.label <> l.label""").fetchone()[0]
        con.execute("CREATE OR REPLACE TEMP TABLE label AS SELECT * FROM step")
        log(f"components: round {rounds}, {changed:,} labels changed")
        if not changed:
            return rounds


def cluster(
    pair_files: Sequence[str],
    shard_keys: Sequence[str],
    out: Path,
    memory_limit_mb: int = 2048,
    threads: int = 2,
    log: Callable[[str], None] = lambda _: None,
    filesystem=None,
) -> dict:
    """Clusters of the confirmed pairs of every bucket partition: ``clusters.duckdb`` (tables
    ``cluster_members``, ``clusters``, ``pairs``, ``summary``) and ``removal_stem(shard).parquet`` per
    shard that loses documents."""
    keys = sorted(shard_keys)
    spill = out.parent / f".{out.name}.spill-{uuid.uuid4().hex[:8]}"
    con = duckdb.connect(str(out / CLUSTER_DB))
    try:
        if filesystem is not None:  # pair files on an object store: read through the store's fsspec
            con.register_filesystem(filesystem)
        con.execute(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
        con.execute(f"SET threads = {int(threads)}")
        con.execute(f"SET temp_directory = '{spill}'")
        con.execute("SET preserve_insertion_order = false")
        con.execute("CREATE TEMP TABLE shard_keys (shard_no INTEGER, shard VARCHAR)")
        con.executemany("INSERT INTO shard_keys VALUES (?, ?)", list(enumerate(keys)))
        files = [str(p) for p in pair_files]
        if files:
            con.execute(f"CREATE TEMP VIEW pairs_src AS SELECT * FROM read_parquet({files!r})")
        else:
            con.register("pairs_src", PAIR_SCHEMA.empty_table())
        con.execute("""CREATE TABLE pairs AS SELECT u_shard, u_row, u_id, v_shard, v_row, v_id,
            max(similarity) AS similarity FROM pairs_src GROUP BY ALL ORDER BY ALL""")
        con.execute("""CREATE TEMP TABLE nodes AS
            SELECT shard, row, id, (row_number() OVER (ORDER BY id, shard, row)) - 1 AS node FROM (
                SELECT u_shard AS shard, u_row AS row, u_id AS id FROM pairs
                UNION SELECT v_shard, v_row, v_id FROM pairs)""")
        con.execute("""CREATE TEMP TABLE edges AS SELECT a.node AS a, b.node AS b FROM pairs p
            JOIN nodes a ON a.shard = p.u_shard AND a.row = p.u_row
            JOIN nodes b ON b.shard = p.v_shard AND b.row = p.v_row""")
        rounds = _components(con, log)
        con.execute("""CREATE TABLE cluster_members AS
            SELECT s.id AS cluster_id, n.shard, n.row, n.id, n.node = l.label AS is_survivor,
                   CASE WHEN n.id = s.id THEN 'exact' ELSE 'near' END AS member_kind,
                   s.shard AS survivor_shard, s.row AS survivor_row
            FROM label l JOIN nodes n ON n.node = l.node JOIN nodes s ON s.node = l.label""")
        con.execute("""CREATE TABLE clusters AS
            SELECT cluster_id, CASE WHEN bool_and(member_kind = 'exact') THEN 'exact' ELSE 'near' END AS kind,
                   count(*) AS size, min(survivor_shard) AS survivor_shard, min(survivor_row) AS survivor_row
            FROM cluster_members GROUP BY cluster_id ORDER BY cluster_id""")
        return _write_removals(con, out, keys, rounds)
    finally:
        con.close()
        for leftover in spill.glob("*") if spill.exists() else []:
            leftover.unlink()
        if spill.exists():
            spill.rmdir()


def removal_stem(shard: str) -> str:
    """Where a shard's removal list (a folder of parquet files) and record (``.json``) live in a dedup
    version: md5 of the shard key, which DuckDB computes the same way."""
    return f"{REMOVALS}/{hashlib.md5(shard.encode()).hexdigest()[:20]}"


def _write_removals(con: duckdb.DuckDBPyConnection, out: Path, keys: list[str], rounds: int) -> dict:
    """One pass writes every shard's removal list (DuckDB ``PARTITION_BY``: a folder per shard)."""
    (out / REMOVALS).mkdir()
    counts = con.execute("""SELECT count(*) FILTER (WHERE NOT is_survivor AND member_kind = 'exact'),
        count(*) FILTER (WHERE NOT is_survivor AND member_kind = 'near'), count(DISTINCT cluster_id)
        FROM cluster_members""").fetchone()
    per_shard = con.execute("""SELECT shard, count(*),
            md5(string_agg(row || ':' || id || ':' || cluster_id, ',' ORDER BY row))
        FROM cluster_members WHERE NOT is_survivor GROUP BY shard ORDER BY shard""").fetchall()
    staged = out / f".{REMOVALS}-by-stem"
    if per_shard:
        con.execute(f"""COPY (SELECT row, id, cluster_id, member_kind AS kind, survivor_shard, survivor_row,
                substr(md5(shard), 1, 20) AS stem FROM cluster_members WHERE NOT is_survivor)
            TO '{staged}' (FORMAT parquet, PARTITION_BY (stem), COMPRESSION zstd)""")
    removals = {}
    for shard, n, digest in per_shard:
        stem = removal_stem(shard)
        (staged / f"stem={stem.rsplit('/', 1)[1]}").rename(out / stem)
        removals[shard] = {"file": stem, "removed": n, "digest": digest}
    if staged.exists():
        staged.rmdir()
    con.execute(
        """CREATE TABLE summary AS SELECT ? AS num_exact_removed, ? AS num_near_removed,
        ? AS num_clusters, ? AS component_rounds""",
        [counts[0], counts[1], counts[2], rounds],
    )
    largest = con.execute("""SELECT cluster_id, kind AS cluster_kind, size AS len FROM clusters
        ORDER BY size DESC, cluster_id LIMIT 10""").fetchall()
    return {
        "num_exact_removed": counts[0],
        "num_near_removed": counts[1],
        "num_clusters": counts[2],
        "num_pairs": con.execute("SELECT count(*) FROM pairs").fetchone()[0],
        "component_rounds": rounds,
        "removals": removals,
        "largest_clusters": [{"cluster_id": c, "cluster_kind": k, "len": n} for c, k, n in largest],
    }


def add_cluster_texts(db: Path, docs_paths: dict[str, str], filesystem=None) -> None:
    """The ``cluster_texts`` view: members with their text, read from the shards' docs at query time
    (local paths or URLs DuckDB reads). Shards on an object store are read through ``filesystem`` (the
    store's fsspec) while the view is made, as ``cluster`` reads the pair files; a later query of the view
    needs DuckDB's httpfs or that filesystem registered on its connection."""
    con = duckdb.connect(str(db))
    try:
        if filesystem is not None:
            con.register_filesystem(filesystem)
        con.execute("CREATE OR REPLACE TABLE shard_files (shard VARCHAR PRIMARY KEY, path VARCHAR NOT NULL)")
        con.executemany("INSERT INTO shard_files VALUES (?, ?)", sorted(docs_paths.items()))
        if not docs_paths:
            return
        paths = ", ".join("'" + p.replace("'", "''") + "'" for p in sorted(set(docs_paths.values())))
        con.execute(f"""CREATE OR REPLACE VIEW cluster_texts AS
            SELECT m.cluster_id, m.shard, m.row, m.id, m.is_survivor, t.text FROM cluster_members m
            JOIN shard_files f ON f.shard = m.shard
            JOIN read_parquet([{paths}], filename = true, file_row_number = true) t
              ON t.filename = f.path AND t.file_row_number = m.row
            ORDER BY m.cluster_id, m.is_survivor DESC, m.shard, m.row""")
    finally:
        con.close()


# --- 4. survivors, per shard ------------------------------------------------------------------------


def survivor_rows(docs_path: str, removal_path: str | None) -> pl.DataFrame:
    """(row, id) of a shard's documents that dedup keeps: all rows minus its own removal list (a
    folder of parquet files, ``cluster`` writes it)."""
    ids = (
        pl.read_parquet(docs_path, columns=["id"])
        .with_row_index("row")
        .select(pl.col("row").cast(pl.Int64), "id")
    )
    if removal_path is None:
        return ids
    removed = pl.read_parquet(f"{removal_path.rstrip('/')}/*.parquet", columns=["row", "id"])
    stale = removed.join(ids, on=["row", "id"], how="anti")
    if stale.height:
        raise ValueError(
            f"{removal_path}: {stale.height} removed rows do not match {docs_path} "
            "(the shard changed after dedup ran; materialize dedup again)"
        )
    return ids.join(removed.select("row"), on="row", how="anti").sort("row")


def sample_survivors(shards: Sequence[tuple[str, str, str | None]], n: int, seed: int) -> pl.DataFrame:
    """``n`` surviving documents chosen by ``edu.sample_documents``'s seeded hash of their id, merged
    from each shard's own ``n`` (a bottom-n sample: the same as sampling the whole corpus at once,
    holding at most 2n candidates). Columns: shard, row, id."""
    best = pl.DataFrame(schema={"shard": pl.String, "row": pl.Int64, "id": pl.String})
    for shard, docs, removal in sorted(shards):
        kept = survivor_rows(docs, removal).with_columns(pl.lit(shard).alias("shard"))
        chosen = edu.sample_documents(kept.select("shard", "row", "id"), n, seed) if kept.height else kept
        best = edu.sample_documents(pl.concat([best, chosen.select(best.columns)]), n, seed)
    return best
