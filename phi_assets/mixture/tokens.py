"""Packed token shards: documents as token ids joined with ``<|endoftext|>``, memory-mappable.

One shard directory holds
- ``tokens.bin``: every document's ids followed by the separator, back to back, raw little-endian
  uint16 (vocabulary <= 65,536) or uint32; ``np.memmap`` reads any slice without loading the rest;
- ``offsets.bin``: int64, ``num_docs + 1`` entries; document ``i`` is ``tokens[offsets[i]:offsets[i+1]]``
  (its separator included);
- ``documents.parquet``: ``id`` and ``num_tokens`` per document, in order (lineage back to the corpus);
- ``tokens.json``: dtype, counts and the tokenizer's version.

``write_shard`` streams: it encodes a batch at a time and appends to the files, so a shard larger than
memory works; ``read_documents`` gives it batches within a memory budget (``TOKENIZE_MEMORY``).
``TokenShard.open`` maps a written shard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from phi_assets.ingest.batches import Batches, StepMemory, read_batches, rows_only
from phi_assets.mixture.tokenizer import Loaded, encode_documents

TOKENS, OFFSETS, DOCUMENTS, META = "tokens.bin", "offsets.bin", "documents.parquet", "tokens.json"
FILES = (TOKENS, OFFSETS, DOCUMENTS, META)
DOC_SCHEMA = pa.schema([("id", pa.string()), ("num_tokens", pa.int64())])
# Memory of tokenization (benchmarks/step_memory.py measures it): batches of at most ``text_bytes`` of
# text, sized so that TOKENIZE_BASELINE_MB + TOKENIZE_PEAK_PER_TEXT_BYTE x text_bytes <= the budget. Per
# byte of a batch: its texts as Python strings, the tokenizer's encodings of them (ids, tokens, masks:
# about a hundred bytes per token) and the ids as Python ints, then as one array. The baseline: the
# interpreter, the tokenizer, the parquet reader and writer. Measured on Python source (2 CPUs, a BPE of
# 8,192 tokens): peak ~ 400 MiB + 31 to 34 x batch MiB; one factor for every source.
TOKENIZE_PEAK_PER_TEXT_BYTE = 40
TOKENIZE_BASELINE_MB = 400
TOKENIZE_MAX_BATCH_ROWS = 1024  # the tokenizers' thread pool shares a batch's documents out
TOKENIZE_MEMORY = StepMemory("tokenize", TOKENIZE_BASELINE_MB, TOKENIZE_PEAK_PER_TEXT_BYTE,
                             TOKENIZE_MAX_BATCH_ROWS)


@dataclass(frozen=True)
class ShardStats:
    num_docs: int
    num_tokens: int  # separators included: what the loader reads
    num_text_bytes: int
    dtype: str
    vocab_size: int
    eot_id: int
    tokenizer_version: str
    max_doc_tokens: int
    content_sha256: str  # of the ids and tokens: the shard's data version

    @property
    def bytes_per_token(self) -> float:
        return self.num_text_bytes / max(self.num_tokens - self.num_docs, 1)


def hash_partition(index: int, count: int) -> Callable[[list[str]], list[bool]]:
    """A row filter keeping the documents whose id hashes to partition ``index`` of ``count``."""
    if not 0 <= index < count:
        raise ValueError(f"partition {index} of {count} does not exist")

    def keep(ids: list[str]) -> list[bool]:
        return [int(hashlib.sha256(i.encode()).hexdigest()[:12], 16) % count == index for i in ids]

    return keep


def read_documents(
    path: str | BinaryIO,
    *,
    batch_rows: int = TOKENIZE_MAX_BATCH_ROWS,
    keep: Callable[[list[str]], list[bool]] | None = None,
    limits: Batches | None = None,
) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) batches of a parquet file with ``id`` and ``text`` (a path, URI or open file), in
    order, within ``limits`` (default: ``batch_rows`` documents whatever their size; the tokenized
    assets pass ``TOKENIZE_MEMORY``'s batches for their budget); ``keep`` selects rows by id (a hash
    partition of a larger file)."""
    for batch in read_batches(path, limits or rows_only(batch_rows), columns=["id", "text"]):
        ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
        del batch
        if keep is not None:
            mask = keep(ids)
            ids = [i for i, k in zip(ids, mask, strict=True) if k]
            texts = [t for t, k in zip(texts, mask, strict=True) if k]
        if ids:
            yield ids, texts


def write_shard(
    batches: Iterator[tuple[list[str], list[str]]],
    loaded: Loaded,
    out: Path,
    tokenizer_version: str,
    progress: Callable[[int, int], None] | None = None,
) -> ShardStats:
    """Encode ``batches`` of (ids, texts) into a shard directory ``out``; returns its counts."""
    out.mkdir(parents=True, exist_ok=True)
    num_docs = num_tokens = num_bytes = longest = 0
    token_digest, id_digest = hashlib.sha256(), hashlib.sha256()  # two streams: batching cannot matter
    with (
        open(out / TOKENS, "wb") as tokens,
        open(out / OFFSETS, "wb") as offsets,
        pq.ParquetWriter(out / DOCUMENTS, DOC_SCHEMA, compression="zstd") as documents,
    ):
        offsets.write(np.zeros(1, dtype=np.int64).tobytes())
        for ids, texts in batches:
            flat, lengths = encode_documents(loaded, texts)
            tokens.write(flat.tobytes())
            token_digest.update(flat.tobytes())
            id_digest.update("".join(f"{i}\0" for i in ids).encode())
            offsets.write((num_tokens + np.cumsum(lengths)).tobytes())
            documents.write_table(pa.table({"id": ids, "num_tokens": lengths}, schema=DOC_SCHEMA))
            num_docs += len(ids)
            num_tokens += int(lengths.sum())
            num_bytes += sum(len(t.encode()) for t in texts)
            longest = max(longest, int(lengths.max()))
            if progress:
                progress(len(ids), int(lengths.sum()))
    stats = ShardStats(
        num_docs,
        num_tokens,
        num_bytes,
        loaded.dtype.name,
        loaded.vocab_size,
        loaded.eot_id,
        tokenizer_version,
        longest,
        hashlib.sha256(
            f"{loaded.dtype.name}:{loaded.eot_id}:{token_digest.hexdigest()}:{id_digest.hexdigest()}".encode()
        ).hexdigest(),
    )
    (out / META).write_text(json.dumps(asdict(stats), indent=1))
    return stats


@dataclass
class TokenShard:
    """A written shard, memory-mapped: ``tokens`` and ``offsets`` are read lazily by the OS."""

    path: Path
    stats: ShardStats
    tokens: np.ndarray  # (num_tokens,) uint16 | uint32
    offsets: np.ndarray  # (num_docs + 1,) int64
    split_scores: np.ndarray | None = None  # the loader's per-document split hashes, once computed

    @classmethod
    def open(cls, path: Path) -> TokenShard:
        path = Path(path)
        missing = [f for f in FILES if not (path / f).is_file()]
        if missing:
            raise ValueError(f"token shard {path}: missing {', '.join(missing)}")
        stats = ShardStats(**json.loads((path / META).read_text()))
        tokens = _map(path / TOKENS, np.dtype(stats.dtype))
        offsets = _map(path / OFFSETS, np.dtype(np.int64))
        if len(offsets) != stats.num_docs + 1 or not offsets[-1] == len(tokens) == stats.num_tokens:
            raise ValueError(f"token shard {path}: offsets and tokens disagree with {META} (a torn write?)")
        return cls(path, stats, tokens, offsets)

    @property
    def num_docs(self) -> int:
        return self.stats.num_docs

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def ids(self) -> list[str]:
        return pq.read_table(self.path / DOCUMENTS, columns=["id"]).column("id").to_pylist()


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # np.memmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
