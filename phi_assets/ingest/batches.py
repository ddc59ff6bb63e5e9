"""A document parquet file read in batches bounded by a memory budget: the one batching of every
per-shard step (ingest's expectations, the quality filter, scoring and decontamination, tokenization).

A step's peak RSS is about ``baseline + factor x (UTF-8 bytes of text in a batch)`` whatever the shard
size. ``StepMemory`` holds a step's two measured numbers (benchmarks/filter_memory.py and
benchmarks/step_memory.py measure them) and sizes its batches from a budget; ``read_batches`` streams
the file a few documents at a time and yields single-chunk tables within those limits;
``release_freed_memory`` gives back what a batch freed, so that RSS does not creep up batch after batch.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from phi_assets.ingest.schema import DOC_COLUMNS

DEFAULT_MEMORY_BUDGET_MB = 2048  # every per-shard step's memory_budget_mb
MAX_DOC_BYTES = 1 << 20  # ingest keeps documents up to Sizes.max_doc_bytes (1 MB) of UTF-8
UNBOUNDED = sys.maxsize


@dataclass(frozen=True)
class Batches:
    """How much of a shard a step holds at a time."""

    text_bytes: int  # UTF-8 bytes of text per batch (a larger document alone is a batch of one)
    rows: int  # documents per batch


@dataclass(frozen=True)
class StepMemory:
    """A step's measured memory: peak RSS <= ``baseline_mb`` + ``per_text_byte`` x the text of a batch."""

    step: str  # named in errors
    baseline_mb: int  # the interpreter, its libraries and models, the readers and writers
    per_text_byte: int | Mapping[str, int]  # one factor, or one per source
    max_rows: int  # also bound the per-document overheads of many small documents

    def factor(self, source: str | None) -> int:
        if isinstance(self.per_text_byte, int):
            return self.per_text_byte
        if source not in self.per_text_byte:
            raise ValueError(f"source must be one of {sorted(self.per_text_byte)}, got {source!r}")
        return self.per_text_byte[source]

    def batches(self, memory_budget_mb: int, source: str | None = None) -> Batches:
        """The largest batches whose peak stays under ``memory_budget_mb``."""
        factor = self.factor(source)
        text_bytes = ((memory_budget_mb - self.baseline_mb) << 20) // factor
        if text_bytes < MAX_DOC_BYTES:
            what = f"{source} {self.step}" if source and not isinstance(self.per_text_byte, int) else self.step
            raise ValueError(
                f"memory_budget_mb={memory_budget_mb} is too small for the {what} step: it needs "
                f"at least {self.baseline_mb + factor * (MAX_DOC_BYTES >> 20)} MB (a {self.baseline_mb} MB "
                f"baseline plus {factor}x the largest document, {MAX_DOC_BYTES >> 20} MiB)"
            )
        return Batches(text_bytes=int(text_bytes), rows=self.max_rows)


def rows_only(rows: int) -> Batches:
    """Batches of ``rows`` documents whatever their size."""
    return Batches(text_bytes=UNBOUNDED, rows=rows)


def parquet_source(docs: str | BinaryIO) -> AbstractContextManager[Any]:
    """A local path as itself (arrow's own reader: no Python buffers), a URI as an fsspec file, an
    open file as it is."""
    if not isinstance(docs, str) or "://" not in docs:
        return nullcontext(docs)
    return fsspec.open(docs, "rb")


def text_bytes(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """UTF-8 bytes of each row's ``text`` (0 for a null, or for every row of a table without one)."""
    if "text" not in table.schema.names:
        return np.zeros(table.num_rows, np.int64)
    sizes = pc.fill_null(pc.binary_length(table.column("text")), 0)
    return sizes.to_numpy(zero_copy_only=False).astype(np.int64)


def _cut(sizes: np.ndarray, limits: Batches) -> int:
    """How many leading documents make one batch: within both limits, at least one."""
    within = int(np.searchsorted(np.cumsum(sizes), limits.text_bytes, side="right"))
    return max(1, min(within, limits.rows))


def read_batches(
    docs: str | BinaryIO, limits: Batches, columns: Sequence[str] | None = DOC_COLUMNS
) -> Iterator[pa.Table]:
    """The rows of a parquet file (``columns``; None: all of them, in the file's order), in order, as
    single-chunk tables within ``limits``. The file is read a few documents at a time (as many as fit
    in ``limits.text_bytes`` if each were ``MAX_DOC_BYTES``), so what is held besides the batch is at
    most one such read."""
    step = max(1, min(limits.rows, limits.text_bytes // MAX_DOC_BYTES))
    pending: list[pa.RecordBatch] = []
    size = rows = 0
    names = None if columns is None else list(columns)
    with parquet_source(docs) as f, pq.ParquetFile(f) as parquet:
        for chunk in parquet.iter_batches(batch_size=step, columns=names):
            pending.append(chunk)
            size, rows = size + int(text_bytes(chunk).sum()), rows + chunk.num_rows
            while size > limits.text_bytes or rows >= limits.rows:  # a full batch is pending
                table = pa.Table.from_batches(pending)
                sizes = text_bytes(table)
                cut = _cut(sizes, limits)
                batch = table.slice(0, cut).combine_chunks()  # contiguous: the chunks read can go
                pending = table.slice(cut).to_batches()
                size, rows = int(sizes[cut:].sum()), table.num_rows - cut
                del table
                yield batch
                del batch
    if rows:
        yield pa.Table.from_batches(pending).combine_chunks()


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (AttributeError, OSError):
        return None


def release_freed_memory() -> None:
    """Give freed memory back to the system: the C heap's free pages (glibc's ``malloc_trim``; elsewhere
    nothing) and arrow's pool's cached ones. A streaming step frees each batch's strings and tables, but
    the allocators keep most of their pages, so without this its RSS creeps up with the shard (ingest:
    490 MiB at 430 MB of text, 697 MiB at 1.3 GB; 408 and 477 MiB when released after each write), and
    a step that alternates Python strings and arrow tables holds the leftovers of both."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    pa.default_memory_pool().release_unused()
