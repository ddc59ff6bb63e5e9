"""A DuckDB catalog over all raw shards, queryable with SQL.

Tables and views (see README "Query the catalog"):
- ``raw_shards``: one row per shard: source, shard, data_version, uri, counts, bytes, estimated
  tokens, reject reasons (JSON), and the locations of its parquet files, relative to the artifact
  root (``raw_code_shards/<shard>/<version>/docs.parquet``) so the rows stay true when the home moves.
- ``raw_documents`` / ``raw_rejects``: views over every shard's parquet files. DuckDB cannot resolve a
  view's paths against anything but the working directory, so the views name the files as resolved
  against the artifact root when the catalog is built; ``raw_catalog`` rebuilds the published catalog
  on every materialization, which binds a copied home's catalog to the copy's own files.
- ``raw_sources``: per-source totals.
The file is built in a temporary file beside the target and renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

SHARD_COLUMNS = {
    "source": "VARCHAR", "shard": "VARCHAR", "data_version": "VARCHAR", "uri": "VARCHAR",
    "num_read": "BIGINT", "num_docs": "BIGINT", "num_rejected": "BIGINT", "rejected": "JSON",
    "num_bytes": "BIGINT", "num_chars": "BIGINT", "est_tokens": "BIGINT",
    "docs_path": "VARCHAR", "rejects_path": "VARCHAR",
}


def shard_row(source: str, shard: str, manifest: dict[str, Any], docs: str, rejects: str) -> dict:
    """One ``raw_shards`` row; ``docs`` and ``rejects`` are the files' locations as persisted
    (relative to the artifact root)."""
    stats = manifest["metadata"]["stats"]
    return {
        "source": source, "shard": shard, "data_version": manifest["data_version"],
        "uri": stats["uri"], "num_read": stats["num_read"], "num_docs": stats["num_written"],
        "num_rejected": stats["num_rejected"], "rejected": json.dumps(stats["rejected"]),
        "num_bytes": stats["num_bytes"], "num_chars": stats["num_chars"],
        "est_tokens": stats["est_tokens"], "docs_path": docs, "rejects_path": rejects,
    }


def _create(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], resolve: Callable[[str], str]) -> None:
    cols = ", ".join(f"{name} {kind}" for name, kind in SHARD_COLUMNS.items())
    con.execute(f"CREATE TABLE raw_shards ({cols})")
    if rows:
        marks = ", ".join("?" for _ in SHARD_COLUMNS)
        con.executemany(f"INSERT INTO raw_shards VALUES ({marks})",
                        [[r[c] for c in SHARD_COLUMNS] for r in rows])
    con.execute("""CREATE VIEW raw_sources AS SELECT source, count(*) AS num_shards,
        sum(num_read) AS num_read, sum(num_docs) AS num_docs, sum(num_rejected) AS num_rejected,
        sum(num_bytes) AS num_bytes, sum(est_tokens) AS est_tokens
        FROM raw_shards GROUP BY source ORDER BY source""")
    for view, column in (("raw_documents", "docs_path"), ("raw_rejects", "rejects_path")):
        paths = [resolve(r[column]) for r in rows]
        if paths:
            files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{files}], "
                        "filename = true, union_by_name = true)")


def build_catalog(rows: list[dict[str, Any]], out_path: Path,
                  resolve: Callable[[str], str] = lambda location: location) -> Path:
    """Write the catalog database to ``out_path`` atomically; ``resolve`` turns a row's persisted
    file locations into what the views read (``ArtifactStore.resolve``)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".duckdb", dir=out_path.parent)
    os.close(fd)
    os.unlink(tmp)  # duckdb creates the file itself
    try:
        with duckdb.connect(tmp) as con:
            _create(con, rows, resolve)
        os.replace(tmp, out_path)
    finally:
        for leftover in (tmp, tmp + ".wal"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return out_path


def source_totals(catalog: Path) -> list[tuple]:
    with duckdb.connect(str(catalog), read_only=True) as con:
        return con.execute("SELECT * FROM raw_sources").fetchall()
