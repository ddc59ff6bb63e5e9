"""The one document schema of the pipeline, and the schema of rejected records.

Every stage reads and writes documents as zstd parquet with these columns:
``id`` (stable content hash of ``text``), ``text``, ``source``, ``uri``, ``license`` (nullable),
``meta`` (a JSON object as a string). Rejected records keep where they came from, why they were
rejected, and their raw bytes (up to ``RAW_KEEP_BYTES``; the length and sha256 of the whole).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

DOC_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("license", pa.string(), nullable=True),
        pa.field("meta", pa.string(), nullable=False),
    ]
)
DOC_COLUMNS = tuple(DOC_SCHEMA.names)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("position", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("raw", pa.binary(), nullable=True),
        pa.field("raw_len", pa.int64(), nullable=False),
        pa.field("raw_sha256", pa.string(), nullable=True),
    ]
)
RAW_KEEP_BYTES = 1 << 20  # rejects keep the first MiB; the source file keeps the rest

SOURCES = ("code", "web")


def doc_id(text: str | bytes) -> str:
    """Stable content hash of a document's text (128-bit blake2b of its UTF-8, hex)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def meta_json(meta: dict[str, Any] | None) -> str:
    return json.dumps(meta or {}, sort_keys=True, ensure_ascii=False, default=str)
