"""Packed token shards: documents as token ids joined with ``<|endoftext|>``, memory-mappable.

One shard directory holds
- ``tokens.bin``: every document's ids followed by the separator, back to back, raw little-endian
  uint16 (vocabulary <= 65,536) or uint32; memory-mapped, any slice reads without loading the rest;
- ``offsets.bin``: int64, ``num_docs + 1`` entries; document ``i`` is ``tokens[offsets[i]:offsets[i+1]]``
  (its separator included);
- ``split.bin``: the index of the validation split, three columns of ``num_docs`` 8-byte entries back
  to back, the documents in ascending split score (``split_scores``: a stable hash of the id in
  [0, 1)): the score (float64), the document (int64) and the running token count in that order
  (int64). The documents of a ``val_fraction`` are the first ``searchsorted(score, val_fraction)``,
  their tokens the running count there: the loader opens a split of any fraction with one binary
  search per shard, and lists a shard's documents only when it reaches it (``SplitIndex``);
- ``documents.parquet``: ``id`` and ``num_tokens`` per document, in order (lineage back to the corpus);
- ``tokens.json``: dtype, counts, the tokenizer's version, and the histogram of document lengths:
  per power-of-two bucket (bucket ``b`` holds the lengths in ``[2**b, 2**(b+1))``, separator
  included) the documents and their tokens; midtraining reads its long-document shares off it.

Format 1, shards written before ``split.bin`` and the histogram (a ``tokens.json`` without
``shard_format``), still open: ``TokenShard.split_index`` then hashes the shard's ids (once per opened
shard, held in memory) and the histogram is ``None``.

``write_shard`` streams: it encodes a batch at a time and appends to the files, so a shard larger than
memory works (sorting the split index at the end holds about 24 bytes per document of the shard);
``read_documents`` gives it batches within a memory budget (``TOKENIZE_MEMORY``). ``write_encoded``
writes already-encoded documents (``write_shard`` is it with the tokenizer in front). ``TokenShard.open``
checks a written shard; its files are memory-mapped when first read.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from phi_assets.ingest.batches import Batches, StepMemory, read_batches, rows_only
from phi_assets.mixture.tokenizer import Loaded, encode_documents

TOKENS, OFFSETS, DOCUMENTS, META = "tokens.bin", "offsets.bin", "documents.parquet", "tokens.json"
SPLIT = "split.bin"
FILES = (TOKENS, OFFSETS, DOCUMENTS, META)  # every format; format 2 adds SPLIT
FORMAT = 2  # 2: split.bin and the length histogram; 1: neither
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
TOKENIZE_MEMORY = StepMemory(
    "tokenize", TOKENIZE_BASELINE_MB, TOKENIZE_PEAK_PER_TEXT_BYTE, TOKENIZE_MAX_BATCH_ROWS
)


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
    shard_format: int = 1  # FORMAT when written; a tokens.json without it is format 1
    # documents and their tokens per length bucket (``length_buckets``); None in format 1
    length_docs: list[int] | None = None
    length_tokens: list[int] | None = None

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


def split_scores(ids: Sequence[str]) -> np.ndarray:
    """A stable number in [0, 1) per document id: the big-endian 8-byte blake2b digest of ``split:<id>``
    over 2**64. The validation split is the documents below val_fraction, whatever the sharding."""
    digests = b"".join(hashlib.blake2b(f"split:{i}".encode(), digest_size=8).digest() for i in ids)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2**64


def length_buckets(lengths: np.ndarray) -> np.ndarray:
    """The histogram bucket of each document length: ``b`` for a length in ``[2**b, 2**(b+1))`` (0 for
    lengths below 2; exact for lengths below 2**53)."""
    return np.maximum(np.frexp(np.asarray(lengths, dtype=np.float64))[1] - 1, 0)


def length_histogram(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(documents, tokens) per length bucket, up to the longest document's bucket."""
    lengths = np.asarray(lengths, dtype=np.int64)
    buckets = length_buckets(lengths)
    size = int(buckets.max()) + 1 if len(buckets) else 0
    tokens = np.bincount(buckets, weights=lengths, minlength=size)  # float64: exact below 2**53 tokens
    return np.bincount(buckets, minlength=size).astype(np.int64), tokens.astype(np.int64)


def add_histograms(a: Sequence[int], b: Sequence[int]) -> np.ndarray:
    """Two histograms' sum (the shorter padded with empty buckets)."""
    out = np.zeros(max(len(a), len(b)), dtype=np.int64)
    out[: len(a)] += np.asarray(a, dtype=np.int64)
    out[: len(b)] += np.asarray(b, dtype=np.int64)
    return out


@dataclass(frozen=True)
class SplitIndex:
    """A shard's documents in ascending split score: ``score[j]`` and ``doc[j]``, and ``tokens[j]`` the
    tokens of the documents ``doc[: j + 1]``. Memory-mapped from ``split.bin`` (format 2)."""

    score: np.ndarray  # float64, ascending
    doc: np.ndarray  # int64
    tokens: np.ndarray  # int64, running total

    def below(self, val_fraction: float) -> int:
        """How many documents score below ``val_fraction`` (they are ``doc[:n]``): a binary search."""
        return int(np.searchsorted(self.score, val_fraction, side="left"))

    def tokens_of_first(self, n: int) -> int:
        return int(self.tokens[n - 1]) if n else 0


def build_split_index(scores: np.ndarray, lengths: np.ndarray) -> SplitIndex:
    """The split index of documents with these scores and lengths (in document order); ties keep
    document order."""
    order = np.argsort(scores, kind="stable")
    return SplitIndex(scores[order], order.astype(np.int64), np.cumsum(np.asarray(lengths, np.int64)[order]))


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


def document_lengths(documents: str | Path | BinaryIO, rows: int = 65_536) -> Iterator[np.ndarray]:
    """The ``num_tokens`` of a shard's ``documents.parquet`` (a path or an open file), ``rows`` at a
    time: a shard's lengths in bounded memory."""
    with pq.ParquetFile(documents) as parquet:
        for batch in parquet.iter_batches(batch_size=rows, columns=["num_tokens"]):
            yield batch.column(0).to_numpy()


# (ids, token ids of the batch back to back with their separators, per-document lengths, text bytes)
Encoded = tuple[list[str], np.ndarray, np.ndarray, int]
_SCORES = ".scores.partial"  # the split scores in document order while a shard is written


def write_shard(
    batches: Iterator[tuple[list[str], list[str]]],
    loaded: Loaded,
    out: Path,
    tokenizer_version: str,
    progress: Callable[[int, int], None] | None = None,
) -> ShardStats:
    """Encode ``batches`` of (ids, texts) into a shard directory ``out``; returns its counts."""

    def encoded() -> Iterator[Encoded]:
        for ids, texts in batches:
            flat, lengths = encode_documents(loaded, texts)
            yield ids, flat, lengths, sum(len(t.encode()) for t in texts)

    return write_encoded(
        encoded(), out, loaded.dtype, loaded.vocab_size, loaded.eot_id, tokenizer_version, progress
    )


def write_encoded(
    batches: Iterator[Encoded],
    out: Path,
    dtype: np.dtype | str,
    vocab_size: int,
    eot_id: int,
    tokenizer_version: str,
    progress: Callable[[int, int], None] | None = None,
) -> ShardStats:
    """Write encoded documents (``Encoded`` batches) into a shard directory ``out``; returns its counts.
    The files do not depend on how the documents are batched."""
    out, dtype = Path(out), np.dtype(dtype)
    out.mkdir(parents=True, exist_ok=True)
    n = {"docs": 0, "tokens": 0, "bytes": 0, "longest": 0}
    hist_docs = hist_tokens = np.zeros(0, dtype=np.int64)
    token_digest, id_digest = hashlib.sha256(), hashlib.sha256()  # two streams: batching cannot matter
    with (
        open(out / TOKENS, "wb") as tokens,
        open(out / OFFSETS, "wb") as offsets,
        open(out / _SCORES, "wb") as scores,
        pq.ParquetWriter(out / DOCUMENTS, DOC_SCHEMA, compression="zstd") as documents,
    ):
        offsets.write(np.zeros(1, dtype=np.int64).tobytes())
        for ids, flat, lengths, text_bytes in batches:
            lengths = np.asarray(lengths, dtype=np.int64)
            _check_batch(out, ids, flat, lengths, dtype)
            tokens.write(flat.tobytes())
            token_digest.update(flat.tobytes())
            id_digest.update("".join(f"{i}\0" for i in ids).encode())
            offsets.write((n["tokens"] + np.cumsum(lengths)).tobytes())
            scores.write(split_scores(ids).tobytes())
            documents.write_table(pa.table({"id": ids, "num_tokens": lengths}, schema=DOC_SCHEMA))
            docs, toks = length_histogram(lengths)
            hist_docs, hist_tokens = add_histograms(hist_docs, docs), add_histograms(hist_tokens, toks)
            n["docs"] += len(ids)
            n["tokens"] += int(lengths.sum())
            n["bytes"] += text_bytes
            n["longest"] = max(n["longest"], int(lengths.max(initial=0)))
            if progress:
                progress(len(ids), int(lengths.sum()))
    _write_split_index(out)
    stats = ShardStats(
        n["docs"],
        n["tokens"],
        n["bytes"],
        dtype.name,
        vocab_size,
        eot_id,
        tokenizer_version,
        n["longest"],
        hashlib.sha256(
            f"{dtype.name}:{eot_id}:{token_digest.hexdigest()}:{id_digest.hexdigest()}".encode()
        ).hexdigest(),
        FORMAT,
        hist_docs.tolist(),
        hist_tokens.tolist(),
    )
    _replace(out / META, lambda f: f.write(json.dumps(asdict(stats), indent=1).encode()))
    return stats


def _check_batch(out: Path, ids: list[str], flat: np.ndarray, lengths: np.ndarray, dtype: np.dtype) -> None:
    if (
        flat.dtype != dtype
        or len(ids) != len(lengths)
        or int(lengths.sum()) != len(flat)
        or (lengths < 1).any()
    ):
        raise ValueError(
            f"token shard {out}: a batch of {len(ids)} ids, {len(lengths)} lengths (each >= 1, one separator) "
            f"and {len(flat)} {flat.dtype} tokens; expected as many lengths as ids, summing to the "
            f"tokens, of dtype {dtype}"
        )


def _write_split_index(out: Path) -> None:
    """``split.bin`` from the scores written beside the shard, a column at a time (at the peak about 24
    bytes a document: the order, one column, one temporary), beside its place and renamed into it."""
    scores = np.fromfile(out / _SCORES, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    partial = out / f".{SPLIT}.partial"
    with open(partial, "wb") as f:
        scores[order].tofile(f)
        del scores
        order.tofile(f)
        offsets = _map(out / OFFSETS, np.dtype(np.int64))
        tokens = offsets[order + 1]
        tokens -= offsets[order]
        np.cumsum(tokens, out=tokens).tofile(f)
    os.replace(partial, out / SPLIT)
    (out / _SCORES).unlink()


def _replace(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` beside it and rename it into place: a reader sees the whole file or none."""
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as f:
        write(f)
    os.replace(partial, path)


@dataclass
class TokenShard:
    """A written shard. ``tokens`` and ``offsets`` are memory-mapped on first use (the OS reads just the
    pages a slice touches) and unmapped by ``release``: an opened shard holds neither a page nor a file
    descriptor until it is read (opening reads ``tokens.json`` and the last offset)."""

    path: Path
    stats: ShardStats
    computed_split: SplitIndex | None = field(default=None, repr=False)  # format 1: from the ids, once
    maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)  # file -> its map

    @classmethod
    def open(cls, path: Path) -> TokenShard:
        path = Path(path)
        missing = [f for f in FILES if not (path / f).is_file()]
        if missing:
            raise ValueError(f"token shard {path}: missing {', '.join(missing)}")
        stats = ShardStats(**json.loads((path / META).read_text()))
        if stats.shard_format > FORMAT:
            raise ValueError(f"token shard {path}: format {stats.shard_format}, this code reads up to {FORMAT}")
        if stats.shard_format >= 2 and not (path / SPLIT).is_file():
            raise ValueError(f"token shard {path}: missing {SPLIT}")
        sizes = {
            name: (path / name).stat().st_size for name in (TOKENS, OFFSETS, SPLIT) if (path / name).exists()
        }
        itemsize = np.dtype(stats.dtype).itemsize
        last = (
            np.fromfile(path / OFFSETS, np.int64, 1, offset=sizes[OFFSETS] - 8) if sizes[OFFSETS] >= 8 else [-1]
        )
        torn = sizes[OFFSETS] != 8 * (stats.num_docs + 1) or sizes[TOKENS] != itemsize * stats.num_tokens
        torn |= last[0] != stats.num_tokens
        if stats.shard_format >= 2:
            torn |= sizes[SPLIT] != 24 * stats.num_docs
            torn |= sum(stats.length_docs or []) != stats.num_docs
            torn |= sum(stats.length_tokens or []) != stats.num_tokens
        if torn:
            raise ValueError(f"token shard {path}: its files disagree with {META} (a torn write?)")
        return cls(path, stats)

    @property
    def tokens(self) -> np.ndarray:
        """(num_tokens,) uint16 | uint32, memory-mapped."""
        return self._mapped(TOKENS, np.dtype(self.stats.dtype))

    @property
    def offsets(self) -> np.ndarray:
        """(num_docs + 1,) int64, memory-mapped."""
        return self._mapped(OFFSETS, np.dtype(np.int64))

    def _mapped(self, name: str, dtype: np.dtype) -> np.ndarray:
        if name not in self.maps:
            self.maps[name] = _map(self.path / name, dtype)
        return self.maps[name]

    @property
    def num_docs(self) -> int:
        return self.stats.num_docs

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def ids(self) -> list[str]:
        return pq.read_table(self.path / DOCUMENTS, columns=["id"]).column("id").to_pylist()

    def release(self) -> None:
        """Drop this shard's maps: the pages it read leave this process's memory (the OS keeps them in
        its page cache) and their file descriptors close, once no slice of them is held; the next use
        maps the files again. A loader calls it on the shards it has finished, so a long run holds
        the shards being read, not every shard it has read."""
        self.maps.clear()

    def split_index(self) -> SplitIndex:
        """The shard's split index: memory-mapped afresh from ``split.bin`` (format 2: nothing is kept,
        so an index no longer used is unmapped), or for format 1 computed from the ids (hashing each in
        Python) and kept on this object."""
        if self.stats.shard_format >= 2:
            raw, n = _map(self.path / SPLIT, np.dtype(np.int64)), self.num_docs
            return SplitIndex(raw[:n].view(np.float64), raw[n : 2 * n], raw[2 * n :])
        if self.computed_split is None:
            self.computed_split = build_split_index(split_scores(self.ids()), np.diff(self.offsets))
        return self.computed_split


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    """The whole elements of ``path``, a read-only array over a memory map of it: the map (and its file
    descriptor) lasts as long as the array or a slice of it."""
    with open(path, "rb") as f:
        count = os.fstat(f.fileno()).st_size // dtype.itemsize
        if count == 0:  # mmap refuses empty files
            return np.zeros(0, dtype=dtype)
        return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=dtype, count=count)
