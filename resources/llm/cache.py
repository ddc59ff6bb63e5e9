"""Durable request cache: every finished request, keyed by hash(model version, request).

Layout, one directory per model version under the artifact store::

    {store}/_llm_cache/{model_version}/seg-{time_ns}-{uuid8}.parquet     the results (SEGMENT_SCHEMA)
    {store}/_llm_cache/{model_version}/_index/seg-{...}.parquet.keys     its key index (sidecar)

The engine writes one segment per chunk of requests it finished, so a run killed mid-batch keeps
every chunk it completed and a re-run pays only for the rest. Successful results and deterministic
failures are stored; transient failures never are. Segments are written in row groups of
``ROW_GROUP_ROWS`` rows and never change once written; names sort by creation time.

Index: a segment's sidecar holds one 64-bit digest per row, in row order (``_digest``: a hex key's
first 16 hex digits, any other key's blake2b-64). A ``RequestCache`` keeps, per model version, the
digests of every segment it has seen in one sorted numpy array beside the (segment, row) each came
from: 16 bytes an entry, about 16 MB for a million. ``lookup`` lists the directory, loads only the
sidecars of segments it has not seen yet (merged in, sorted), finds the wanted keys by binary
search, and then reads, from just the segments that hold them, just the row groups that hold them.
A digest only narrows the search: every row read is checked against the full key, so a digest
collision costs a read, never a wrong answer. When a key is in several segments (two runs wrote
it), the newest segment wins. ``count`` is the number of indexed rows, from the index alone.

Atomicity: every file is written whole (temp file + rename locally, one put on object stores), the
sidecar before its segment, and only listed ``seg-*.parquet`` names are read, so a reader never
sees a segment without its index; a sidecar whose segment is not there (a writer killed between
the two puts) is never looked at, nor are temp files (names starting with "." or "_"). Segments
written before sidecars existed are indexed from their ``key`` column on first sight, and that
index is stored as their sidecar (best effort: a read-only store just rebuilds it next time).
The ``_index`` directory is skipped by pyarrow's dataset discovery, so older code that scans the
directory as a parquet dataset still reads it.

Columns added since the first layout (``ADDED_FIELDS``: ``logprobs``, each completion's top-k
log-probabilities as JSON, null when none were asked for) are optional: a segment written before
them, or a table given to ``put_table`` without them, reads as null there. JSON keeps every float
exactly, so a cached result equals the one that was generated.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from resources.artifact_store import ArtifactStore, safe_segment
from resources.llm.types import Completion, ModelRef, Request, Result

CACHE_DIR = "_llm_cache"
INDEX_DIR = "_index"
INDEX_SUFFIX = ".keys"
INDEX_MAGIC = b"PHIKEYS1"  # then the row count (uint64 LE), then one uint64 LE digest per row
ROW_GROUP_ROWS = 256  # a hit reads one row group: small groups read little beside the row wanted
# Dictionary pages only where values repeat: each page of a row group read costs a decompression.
# No statistics: lookups never filter on them, and they would grow every footer a lookup parses.
DICTIONARY_COLUMNS = ["model", "finish_reasons.list.element", "error", "error_kind"]  # leaf paths
SCHEMA = pa.schema([
    ("key", pa.string()),
    ("model", pa.string()),
    ("request", pa.string()),  # the request as JSON, so the cache explains itself
    ("texts", pa.list_(pa.string())),
    ("num_tokens", pa.list_(pa.int32())),
    ("finish_reasons", pa.list_(pa.string())),
    ("num_prompt_tokens", pa.int32()),
    ("error", pa.string()),
    ("error_kind", pa.string()),
    ("created_at", pa.float64()),
])
# What a lookup reads back: the columns a Result is made of (not the request, model or time).
RESULT_COLUMNS = ["key", "texts", "num_tokens", "finish_reasons", "num_prompt_tokens", "error", "error_kind"]
# Columns added later: read back too where a segment has them; written as null where a table lacks them.
ADDED_FIELDS = [
    pa.field("logprobs", pa.list_(pa.string())),  # per completion: JSON of its [{token: logprob}, ...]
]
SEGMENT_SCHEMA = pa.schema([*SCHEMA, *ADDED_FIELDS])  # what put_table writes


class RequestCache:
    def __init__(self, store: ArtifactStore):
        self.store = store
        self._indexes: dict[str, KeyIndex] = {}  # by directory (one per model version)
        self._lock = threading.Lock()

    def directory(self, model: ModelRef) -> str:
        return f"{self.store.base_path}/{CACHE_DIR}/{safe_segment(model.version)}"

    def lookup(self, model: ModelRef, keys: Iterable[str]) -> dict[str, Result]:
        wanted = set(keys)
        if not wanted:
            return {}
        fs, directory = self.store.fs, self.directory(model)
        with self._lock:
            hits = self._refreshed(fs, directory).find(wanted)
        found: dict[str, Result] = {}
        newest: dict[str, str] = {}  # key -> the segment its result came from
        for segment, rows in hits.items():
            try:
                read = read_rows(fs, f"{directory}/{segment}", rows)
            except FileNotFoundError:  # removed since it was listed (the cache was cleared): a miss
                continue
            for row in read:
                key = row["key"]
                if key in wanted and newest.get(key, "") < segment:
                    found[key], newest[key] = _result_from_row(row), segment
        return found

    def put(self, model: ModelRef, pairs: Sequence[tuple[Request, Result]]) -> int:
        """Store the cacheable results (successes and deterministic failures) as one segment."""
        rows = [_row(model, request, result) for request, result in pairs if not result.transient]
        if not rows:
            return 0
        self.put_table(model, pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA))
        return len(rows)

    def put_table(self, model: ModelRef, table: pa.Table) -> str:
        """Store rows already in ``SCHEMA`` (``ADDED_FIELDS`` optional) as one segment: its sidecar index
        first, then the segment. Returns the segment's name."""
        for added in ADDED_FIELDS:
            if added.name not in table.column_names:
                table = table.append_column(added, pa.nulls(len(table), added.type))
        table = table.select(SEGMENT_SCHEMA.names).cast(SEGMENT_SCHEMA)
        digests = digest_array(table.column("key").to_pylist())
        name = f"seg-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        directory = self.directory(model)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP_ROWS,
                       use_dictionary=DICTIONARY_COLUMNS, write_statistics=False)
        self.store.write_bytes(_sidecar(directory, name), encode_index(digests))
        self.store.write_bytes(f"{directory}/{name}", buf.getvalue())
        with self._lock:
            if directory in self._indexes:  # no need to read back what this instance wrote
                self._indexes[directory].add({name: digests})
        return name

    def count(self, model: ModelRef) -> int:
        """Rows stored for ``model`` (a key stored twice counts twice), from the index alone."""
        with self._lock:
            return self._refreshed(self.store.fs, self.directory(model)).size

    def _refreshed(self, fs: fsspec.AbstractFileSystem, directory: str) -> KeyIndex:
        """The index of ``directory``, with every segment written since it was last listed (call
        with the lock held)."""
        listed = list_segments(fs, directory)
        index = self._indexes.get(directory)
        if index is None or not index.known.issubset(listed):  # first sight, or segments were removed
            index = self._indexes[directory] = KeyIndex()
        new = [s for s in listed if s not in index.known]
        if new:
            index.add(self._load_digests(fs, directory, new))
        return index

    def _load_digests(self, fs: fsspec.AbstractFileSystem, directory: str,
                      segments: list[str]) -> dict[str, np.ndarray]:
        paths = [_sidecar(directory, s) for s in segments]
        # One call: object stores fetch the sidecars concurrently; a missing one comes back as an error.
        blobs = fs.cat_ranges(paths, None, None, on_error="return")
        loaded = {}
        for path, segment, blob in zip(paths, segments, blobs, strict=True):
            digests = decode_index(blob) if isinstance(blob, bytes) else None
            if digests is None:  # written before sidecars existed: index its key column, once
                digests = index_segment(fs, f"{directory}/{segment}")
                try:
                    self.store.write_bytes(path, encode_index(digests))
                except OSError:  # a read-only store: rebuilt on the next first sight
                    pass
            loaded[segment] = digests
        return loaded


class KeyIndex:
    """Key digests of a set of segments, sorted, each with the (segment, row) it came from."""

    def __init__(self) -> None:
        self.segments: list[str] = []  # segment id -> name
        self.known: set[str] = set()
        self.digests = np.empty(0, dtype=np.uint64)
        self.segment_ids = np.empty(0, dtype=np.uint32)
        self.rows = np.empty(0, dtype=np.uint32)

    @property
    def size(self) -> int:
        return len(self.digests)

    @property
    def nbytes(self) -> int:
        return self.digests.nbytes + self.segment_ids.nbytes + self.rows.nbytes

    def add(self, new: dict[str, np.ndarray]) -> None:
        """Merge segments (name -> digests in row order) into the sorted arrays."""
        new = {name: d for name, d in new.items() if name not in self.known}
        if not new:
            return
        first = len(self.segments)
        self.segments.extend(new)
        self.known.update(new)
        digests = np.concatenate([d.astype(np.uint64, copy=False) for d in new.values()])
        ids = np.repeat(np.arange(first, first + len(new), dtype=np.uint32), [len(d) for d in new.values()])
        rows = np.concatenate([np.arange(len(d), dtype=np.uint32) for d in new.values()])
        order = np.argsort(digests, kind="stable")
        if self.size:  # two sorted runs: the stable sort (timsort) merges them in linear time
            digests = np.concatenate([self.digests, digests[order]])
            ids = np.concatenate([self.segment_ids, ids[order]])
            rows = np.concatenate([self.rows, rows[order]])
            order = np.argsort(digests, kind="stable")
        self.digests, self.segment_ids, self.rows = digests[order], ids[order], rows[order]

    def find(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Segment name -> sorted rows whose digest matches one of ``keys`` (a superset of the
        rows that hold them: check the key of each row read)."""
        wanted = digest_array(list(keys))
        if not self.size or not len(wanted):
            return {}
        lo = np.searchsorted(self.digests, wanted, side="left")
        hi = np.searchsorted(self.digests, wanted, side="right")
        hit = hi > lo
        if not hit.any():
            return {}
        positions = np.concatenate([np.arange(a, b) for a, b in zip(lo[hit], hi[hit], strict=True)])
        ids, rows = self.segment_ids[positions], self.rows[positions]
        return {self.segments[i]: np.unique(rows[ids == i]) for i in np.unique(ids).tolist()}


def _digest(key: str) -> int:
    """64 bits of a key: a hex hash's own first 16 digits, else blake2b. Persisted in sidecars:
    changing it makes every stored index wrong (lookups would miss, never return a wrong row)."""
    if len(key) >= 16:
        try:
            return int(key[:16], 16)
        except ValueError:
            pass
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def digest_array(keys: Sequence[str]) -> np.ndarray:
    return np.fromiter((_digest(k) for k in keys), dtype=np.uint64, count=len(keys))


def encode_index(digests: np.ndarray) -> bytes:
    return INDEX_MAGIC + np.uint64(len(digests)).astype("<u8").tobytes() + digests.astype("<u8").tobytes()


def decode_index(blob: bytes) -> np.ndarray | None:
    """The digests of a sidecar, or None if it is not one (then the segment is indexed anew)."""
    head = len(INDEX_MAGIC) + 8
    if len(blob) < head or not blob.startswith(INDEX_MAGIC):
        return None
    n = int(np.frombuffer(blob, dtype="<u8", count=1, offset=len(INDEX_MAGIC))[0])
    if len(blob) != head + 8 * n:
        return None
    return np.frombuffer(blob, dtype="<u8", offset=head).astype(np.uint64, copy=False)  # a view


def index_segment(fs: fsspec.AbstractFileSystem, path: str) -> np.ndarray:
    """Digests of a segment's keys in row order, from its ``key`` column alone."""
    with fs.open(path, "rb") as f:
        keys = pq.ParquetFile(f).read(columns=["key"], use_threads=False).column("key").to_pylist()
    return digest_array(keys)


def list_segments(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    """Names of the finished segments in ``directory`` (temp files and sidecars are not segments)."""
    fs.invalidate_cache(directory)  # object stores cache listings: new segments must show
    try:
        entries = fs.ls(directory, detail=False)
    except FileNotFoundError:
        return []
    names = (e.rstrip("/").rsplit("/", 1)[-1] for e in entries)
    return sorted(n for n in names if n.startswith("seg-") and n.endswith(".parquet"))


def read_rows(fs: fsspec.AbstractFileSystem, path: str, rows: np.ndarray) -> list[dict]:
    """Rows ``rows`` (sorted) of a segment, ``RESULT_COLUMNS`` and the ``ADDED_FIELDS`` it has only,
    reading only the row groups that hold them."""
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        meta = parquet.metadata
        stored = set(parquet.schema_arrow.names)
        columns = RESULT_COLUMNS + [a.name for a in ADDED_FIELDS if a.name in stored]
        starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        rows = rows[rows < starts[-1]]  # an index never points past its segment; be safe anyway
        if not len(rows):
            return []
        group_of = np.searchsorted(starts, rows, side="right") - 1
        groups = np.unique(group_of)
        table = parquet.read_row_groups(groups.tolist(), columns=columns, use_threads=False)
    sizes = starts[groups + 1] - starts[groups]
    offset_in_table = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # where each read group begins
    local = offset_in_table[np.searchsorted(groups, group_of)] + rows - starts[group_of]
    return table.take(pa.array(local, type=pa.int64())).to_pylist()


def _sidecar(directory: str, segment: str) -> str:
    return f"{directory}/{INDEX_DIR}/{segment}{INDEX_SUFFIX}"


def _row(model: ModelRef, request: Request, result: Result) -> dict:
    return {
        "key": result.key,
        "model": model.name,
        "request": json.dumps(request.to_json(), sort_keys=True),
        "texts": [c.text for c in result.completions],
        "num_tokens": [c.num_tokens for c in result.completions],
        "finish_reasons": [c.finish_reason for c in result.completions],
        "logprobs": _logprobs_json(result.completions),
        "num_prompt_tokens": result.num_prompt_tokens,
        "error": result.error,
        "error_kind": result.error_kind,
        "created_at": time.time(),
    }


def _logprobs_json(completions: list[Completion]) -> list[str | None] | None:
    """Each completion's logprobs as JSON (None where it has none); None when no completion has any."""
    if all(c.logprobs is None for c in completions):
        return None
    return [None if c.logprobs is None else json.dumps(c.logprobs) for c in completions]


def _result_from_row(row: dict) -> Result:
    stored = row.get("logprobs") or [None] * len(row["texts"])
    logprobs = [None if j is None else json.loads(j) for j in stored]
    completions = [Completion(t, n, f, lp) for t, n, f, lp in
                   zip(row["texts"], row["num_tokens"], row["finish_reasons"], logprobs, strict=True)]
    return Result(key=row["key"], completions=completions, num_prompt_tokens=row["num_prompt_tokens"],
                  error=row["error"], error_kind=row["error_kind"], cached=True)
