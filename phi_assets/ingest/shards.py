"""One shard in, one versioned set of files out: documents, rejects, and the counts that reconcile.

``ingest_shard`` streams records from a reader, validates each one, writes kept documents to
``docs.parquet`` and rejected ones (with reason and raw bytes) to ``rejects.parquet``, both zstd
parquet, in batches. ``read == written + sum(rejected by reason)`` holds for every shard.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from phi_assets.common.profiles import Profile
from phi_assets.ingest import embedded
from phi_assets.ingest.batches import release_freed_memory
from phi_assets.ingest.readers import (
    READERS,
    SUFFIXES,
    Item,
    ReaderOptions,
    Record,
    Rejected,
    ShardError,
    detect_format,
)
from phi_assets.ingest.schema import DOC_SCHEMA, REJECT_SCHEMA, doc_id, meta_json

DOCS_FILE, REJECTS_FILE = "docs.parquet", "rejects.parquet"
# C0 controls other than tab, newlines, form feed, and DEL. In UTF-8 these bytes never occur inside
# a multi-byte sequence, so counting them on the encoded bytes is exact.
_CONTROL_BYTES = bytes([*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F])
MAX_CONTROL_FRACTION = 0.01
LENGTH_BINS = 24  # histogram of log2(characters): 1 .. 16M


@dataclass(frozen=True)
class ShardSpec:
    source: str  # "code" | "web"
    key: str  # the partition key
    uri: str  # file or directory URI, or the embedded key
    fmt: str  # a key of READERS, or "embedded"


def resolve_shard(source: str, key: str, profile: Profile) -> ShardSpec:
    """Where a partition's data lives: an embedded corpus, or an entry in the landing area."""
    if key.startswith(embedded.PREFIX):
        return ShardSpec(source, key, key, "embedded")
    uri = f"{profile.landing_uri(source)}/{key}"
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise ShardError(uri, "shard file not found in the landing area")
    fmt = detect_format(key, is_dir=fs.isdir(path))
    if fmt is None:
        raise ShardError(uri, f"unknown format; supported suffixes: {sorted(SUFFIXES)}")
    return ShardSpec(source, key, uri, fmt)


def content_hash(uri: str) -> str:
    """sha256 of a file's bytes, or of a directory's (relative path, file hash) pairs."""
    fs, path = fsspec.core.url_to_fs(uri)
    h = hashlib.sha256()
    if fs.isdir(path):
        for p in sorted(fs.find(path)):
            h.update(p[len(path) :].encode() + b"\0" + content_hash(fs.unstrip_protocol(p)).encode())
        return h.hexdigest()[:32]
    with fs.open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:32]


#: Listing fields that name one stored version of an object (s3fs ``ETag``; gcsfs and adlfs ``etag``;
#: gcsfs ``md5Hash``/``generation``; version ids), in the order they are preferred: ``ls(detail=True)``
#: and ``info`` return the first ones alike. Without any of them, size and modification time identify.
VERSION_FIELDS = ("ETag", "etag", "md5Hash", "generation", "VersionId", "version_id")
MTIME_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")
IDENTITY_METADATA = "shard_identity"  # the raw asset's materialization metadata key


def _stamp(info: dict[str, Any]) -> list[str]:
    for key in VERSION_FIELDS + MTIME_FIELDS:
        if info.get(key) not in (None, ""):
            return [str(info.get("size")), str(info[key]).strip('"')]
    return [str(info.get("size")), ""]


def listing_identity(fs: fsspec.AbstractFileSystem, entry: dict[str, Any]) -> str:
    """A landing object's identity from listing metadata only (an ``ls(detail=True)`` entry or ``info``):
    its name, size and ETag/version (else mtime); a directory's, from its files' (relative name, size,
    ETag or mtime) found under it. Never opens an object; independent of the entry's key order."""
    path = entry["name"].rstrip("/")
    name = path.rsplit("/", 1)[-1]
    if entry.get("type") == "directory":
        found = fs.find(path, detail=True)
        files = [[p[len(path):], *_stamp(found[p])] for p in sorted(found)]
        listed = ["directory", name, files]
    else:
        listed = ["file", name, _stamp(entry)]
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()[:24]


def shard_identity(spec: ShardSpec) -> str | None:
    """``listing_identity`` of a landed shard (``fs.info``: no body read); None for embedded corpora."""
    if spec.fmt == "embedded":
        return None
    fs, path = fsspec.core.url_to_fs(spec.uri)
    return listing_identity(fs, fs.info(path))


def shard_fingerprint(spec: ShardSpec, profile: Profile) -> str:
    if spec.fmt == "embedded":
        return embedded.embedded_fingerprint(spec.source, spec.key, profile.sizes)
    return content_hash(spec.uri)


def open_items(spec: ShardSpec, profile: Profile, options: ReaderOptions) -> Iterator[Item]:
    if spec.fmt == "embedded":
        return embedded.embedded_records(spec.source, spec.key, profile.sizes, options)
    return READERS[spec.fmt](spec.uri, options)


@dataclass
class ShardStats:
    source: str
    uri: str
    num_read: int = 0
    num_written: int = 0
    rejected: Counter = field(default_factory=Counter)
    num_bytes: int = 0  # UTF-8 bytes of kept text
    num_chars: int = 0
    length_hist: list[int] = field(default_factory=lambda: [0] * LENGTH_BINS)
    preview: list[dict[str, Any]] = field(default_factory=list)
    data_version: str = ""

    @property
    def num_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def est_tokens(self) -> int:
        # ~4 characters per token for English text and code with BPE vocabularies (GPT-2 era)
        return self.num_chars // 4

    def reconciles(self) -> bool:
        return self.num_read == self.num_written + self.num_rejected

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(rejected=dict(sorted(self.rejected.items())), num_rejected=self.num_rejected,
                   est_tokens=self.est_tokens)
        return out


def check_text(text: Any, max_doc_bytes: int) -> tuple[str | None, str, bytes | None]:
    """(reason or None, detail, the text as UTF-8). Reasons: the taxonomy in docs/data-model.md."""
    if text is None:
        return "null_text", "text is null", None
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return "invalid_utf8", str(exc), None
    if not isinstance(text, str):
        return "text_not_string", f"text is a {type(text).__name__}", None
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from JSON "\ud800"
        return "invalid_utf8", str(exc), None
    if not text.strip():
        return "empty_text", f"{len(text)} whitespace characters", encoded
    if len(encoded) > max_doc_bytes:
        return "too_large", f"{len(encoded)} bytes > max_doc_bytes={max_doc_bytes}", encoded
    controls = len(encoded) - len(encoded.translate(None, _CONTROL_BYTES))
    if b"\x00" in encoded or controls > MAX_CONTROL_FRACTION * len(text):
        return "binary", f"{controls} control characters in {len(text)}", encoded
    return None, "", encoded


class _BatchWriter:
    """Buffered parquet writer: bounded memory whatever the shard size."""

    def __init__(self, path: Path, schema: pa.Schema, max_rows: int = 2048, max_bytes: int = 32 << 20):
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")
        self.schema, self.max_rows, self.max_bytes = schema, max_rows, max_bytes
        self.rows: list[dict[str, Any]] = []
        self.bytes = 0

    def add(self, row: dict[str, Any], size: int) -> None:
        self.rows.append(row)
        self.bytes += size
        if len(self.rows) >= self.max_rows or self.bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows, self.bytes = [], 0
            release_freed_memory()  # else the freed rows' pages stay, and RSS creeps up with the shard

    def close(self) -> None:
        self.flush()
        self.writer.close()


Progress = Callable[[ShardStats], None]


def _to_row(item: Record, source: str, seen: set[str], max_doc_bytes: int) -> tuple[dict, int] | Rejected:
    """A document row and its UTF-8 size, or the reject that says why not."""
    reason, detail, encoded = check_text(item.text, max_doc_bytes)
    ident = doc_id(encoded) if reason is None else None
    if ident is not None and ident in seen:
        reason, detail = "duplicate_id", f"same text as an earlier document ({ident})"
    if reason is not None:
        raw = encoded if encoded is not None else _raw_of(item.text)
        return Rejected.of(item.uri, item.position, reason, detail, raw)
    seen.add(ident)
    text = item.text if isinstance(item.text, str) else encoded.decode("utf-8")
    row = {"id": ident, "text": text, "source": source, "uri": item.uri, "license": item.license,
           "meta": meta_json(item.meta)}
    return row, len(encoded)


def ingest_items(
    items: Iterable[Item], source: str, uri: str, out_dir: Path, max_doc_bytes: int,
    preview_rows: int = 5, progress: Progress | None = None, progress_every_s: float = 15.0,
) -> ShardStats:
    """Validate and write one shard's items into ``out_dir``; return its counts and version.

    ``progress`` (if given) is called with the running counts every ``progress_every_s`` seconds.
    """
    stats = ShardStats(source=source, uri=uri)
    seen: set[str] = set()
    version = hashlib.sha256(source.encode())
    docs = _BatchWriter(out_dir / DOCS_FILE, DOC_SCHEMA)
    rejects = _BatchWriter(out_dir / REJECTS_FILE, REJECT_SCHEMA, max_rows=256)
    next_report = time.monotonic() + progress_every_s
    try:
        for item in items:
            stats.num_read += 1
            if progress is not None and time.monotonic() >= next_report:
                progress(stats)
                next_report = time.monotonic() + progress_every_s
            outcome = item if isinstance(item, Rejected) else _to_row(item, source, seen, max_doc_bytes)
            if isinstance(outcome, Rejected):
                stats.rejected[outcome.reason] += 1
                version.update(f"!{outcome.position}|{outcome.reason}|{outcome.raw_sha256}\n".encode())
                rejects.add(asdict(outcome), outcome.raw_len)
                continue
            row, num_bytes = outcome
            _count_doc(stats, row, num_bytes, preview_rows)
            version.update(f"{row['id']}|{row['uri']}|{row['license']}|{row['meta']}\n".encode())
            docs.add(row, num_bytes)
    finally:
        docs.close()
        rejects.close()
    assert stats.reconciles(), stats
    stats.data_version = version.hexdigest()[:32]
    return stats


def _raw_of(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return repr(value).encode("utf-8", "backslashreplace")


def _count_doc(stats: ShardStats, row: dict[str, Any], num_bytes: int, preview_rows: int) -> None:
    chars = len(row["text"])
    stats.num_written += 1
    stats.num_chars += chars
    stats.num_bytes += num_bytes
    stats.length_hist[min(LENGTH_BINS - 1, int(math.log2(max(chars, 1))))] += 1
    if len(stats.preview) < preview_rows:
        snippet = " ".join(row["text"][:120].split())
        stats.preview.append({"id": row["id"][:12], "uri": row["uri"][-80:], "chars": chars,
                              "text": snippet})


def ingest_shard(spec: ShardSpec, profile: Profile, out_dir: Path, options: ReaderOptions,
                 progress: Progress | None = None) -> ShardStats:
    """Read, validate and write one shard. Raises ``ShardError`` for an unreadable shard."""
    stats = ingest_items(open_items(spec, profile, options), spec.source, spec.uri, out_dir,
                         profile.sizes.max_doc_bytes, progress=progress)
    if stats.num_read == 0:
        raise ShardError(spec.uri, "empty shard: no records")
    if stats.num_written == 0 and set(stats.rejected) == {"missing_text_field"}:
        raise ShardError(spec.uri, "wrong schema: no record has the text field "
                                   f"({stats.num_read} records); set text_field")
    return stats
