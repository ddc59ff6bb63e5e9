"""MinHash signatures of documents: the per-shard stage of fuzzy deduplication.

What: for every document, ``num_bands * rows_per_band`` 32-bit MinHash values over the set of its
``shingle_words``-word shingles (FineWeb's recipe: 5-word shingles, 14 bands x 8 rows). Two
documents agree in one position with probability about the Jaccard similarity of their shingle
sets. The corpus stages (``lsh.py``; ``dedup.py`` for the small in-memory sets of synthetic data) read
these signatures (``signatures_table`` /
``read_signatures``), never the text.

How, vectorised with numpy over batches of about 1 MiB of text (memory stays bounded on big shards):

1. Words: ``normalize`` (see there). ASCII documents are normalised on their bytes with a lookup
   table; any other document goes through ``normalize`` in Python first, then the same byte path
   (which leaves normalised text unchanged).
2. Shingle hash (64 bits): a polynomial hash mod 2^64 of the shingle's UTF-8 bytes (its words joined
   by single spaces), for all shingles of the batch at once from prefix sums: with
   C[i] = sum_{j<i} byte_j * P^j, the span [s, e) hashes to (C[e] - C[s]) * P^-s (P odd, so
   invertible mod 2^64). Then the span length is folded in and the murmur3 finaliser mixes the bits.
3. k = bands * rows permutations x -> (a_k * x + b_k) mod 2^64 with odd a_k (multiply-shift
   hashing); the minimum over a document's shingles (``np.minimum.reduceat``), and the top 32 bits
   of that minimum are the signature entry (taking the top bits commutes with the minimum).
   a_k and b_k come from blake2b of (seed, k): the same in every process, machine and numpy version.

Edge cases: a document with fewer words than ``shingle_words`` has one shingle, all its words. A
document with no words after normalisation (empty, or only punctuation) gets ``EMPTY_SIGNATURE``:
every entry 0xFFFFFFFF; dedup leaves such documents out of fuzzy matching (exact matching only).

Memory: about 40 bytes per byte of text in the current batch (``batch_bytes``, 1 MiB, plus the
document that fills it; ingest caps documents at ``Sizes.max_doc_bytes``), a table of powers of P
sized to the largest batch (16 bytes per byte), and the output (4 bytes x num_hashes per document).

Nothing uses Python's ``hash()``: a signature depends only on the text, the config and (for
non-ASCII text) the Unicode database of the Python version.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ALGORITHM = "phi-minhash-v1"  # bump when signatures of the same text and config would change
EMPTY_SIGNATURE = 0xFFFFFFFF
SIGNATURE_COLUMN = "minhash"
_META_KEY = b"phi.minhash"
BATCH_BYTES = 1 << 20


@dataclass(frozen=True)
class MinHashConfig:
    shingle_words: int = 5  # FineWeb: 5-word shingles
    num_bands: int = 14  # FineWeb: 14 buckets x 8 hashes; LSH threshold (1/14)^(1/8) ~ 0.72
    rows_per_band: int = 8
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("shingle_words", "num_bands", "rows_per_band", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"MinHashConfig.{name} must be an int, got {value!r}")
        for name in ("shingle_words", "num_bands", "rows_per_band"):
            if getattr(self, name) < 1:
                raise ValueError(f"MinHashConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"MinHashConfig.seed must be in [0, 2**63), got {self.seed}")
        if self.num_hashes > 4096:
            raise ValueError(f"MinHashConfig: num_bands * rows_per_band must be <= 4096, got {self.num_hashes}")

    @property
    def num_hashes(self) -> int:
        return self.num_bands * self.rows_per_band


# --- normalisation -------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_ASCII_SEPARATORS = re.compile(r"[^a-z0-9\x80-\U0010ffff]+")


class _NonAsciiTable(dict):
    """str.translate table, filled on first sight of a code point: drop combining marks (Mn, the
    diacritics after NFD), keep letters, numbers and other marks, turn everything else into a space."""

    def __missing__(self, code: int) -> int | None:
        if code < 128:
            value: int | None = code
        else:
            category = unicodedata.category(chr(code))
            value = None if category == "Mn" else code if category[0] in "LNM" else 32
        self[code] = value
        return value


_NON_ASCII = _NonAsciiTable()


def normalize(text: str) -> str:
    """The words of ``text``, joined by single spaces. In order: lowercase; for non-ASCII text,
    Unicode NFD with combining marks dropped (diacritics: "Café" -> "cafe"); every number (a run of
    decimal digits, with single "." or "," between digits: "3.14", "1,000") becomes "0"; every
    character that is not a letter, number or mark (punctuation, symbols, "_", whitespace, control
    characters) separates words. Like datatrove's ``simplify_text``, without its tokenizer."""
    text = text.lower()
    if not text.isascii():
        text = unicodedata.normalize("NFD", text).translate(_NON_ASCII)
    text = _NUMBER.sub("0", text)
    return _ASCII_SEPARATORS.sub(" ", text).strip()


def _ascii_table() -> np.ndarray:
    # Bytes >= 128 only occur in text that went through normalize() already: they are word bytes.
    table = np.arange(256, dtype=np.uint8)
    for c in range(128):
        ch = chr(c)
        table[c] = ord("0") if ch.isdigit() else ord(ch.lower()) if ch.isalnum() else 32
    return table


_BYTE_TABLE = _ascii_table()

# --- hashing -------------------------------------------------------------------------------------

_P = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64
_LENGTH_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
_powers_cache: tuple[np.ndarray, np.ndarray] = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i mod 2^64 for i < n (at least), grown by doubling and kept for the process."""
    global _powers_cache
    if len(_powers_cache[0]) < n:
        size = max(n, 2 * len(_powers_cache[0]), 1 << 16)
        tables = []
        for base in (_P, pow(_P, -1, 2**64)):
            t = np.full(size, base, dtype=np.uint64)
            t[0] = 1
            tables.append(np.cumprod(t, out=t))  # uint64 products wrap: arithmetic mod 2^64
        _powers_cache = (tables[0], tables[1])
    return _powers_cache


def _fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser, in place."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


@lru_cache(maxsize=16)
def _permutations(seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    words = [hashlib.blake2b(f"{ALGORITHM}:{seed}:{i}".encode(), digest_size=16).digest() for i in range(k)]
    a = np.array([int.from_bytes(w[:8], "little") | 1 for w in words], dtype=np.uint64)
    b = np.array([int.from_bytes(w[8:], "little") for w in words], dtype=np.uint64)
    return a, b


def _shingle_hashes(blobs: list[bytes], n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of all shingles of a batch (ASCII or pre-normalised UTF-8 bytes), and the
    number of shingles per document (0 for a document without words)."""
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
    raw = np.frombuffer(b" ".join(blobs), dtype=np.uint8)  # the space keeps documents apart
    if len(raw) == 0:
        return np.empty(0, dtype=np.uint64), np.zeros(len(blobs), dtype=np.int64)
    doc_start = np.zeros(len(blobs), dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=doc_start[1:])
    # Keep the first byte of each number and of each run of separators (see normalize()).
    digit = (raw >= ord("0")) & (raw <= ord("9"))
    number = digit.copy()
    number[1:-1] |= ((raw[1:-1] == ord(".")) | (raw[1:-1] == ord(","))) & digit[:-2] & digit[2:]
    mapped = _BYTE_TABLE[raw]
    space = mapped == 32
    keep = np.ones(len(raw), dtype=bool)
    keep[1:] = ~((number[1:] & number[:-1]) | (space[1:] & space[:-1]))
    position = np.flatnonzero(keep)
    text = mapped[position]
    word = text != 32
    starts = np.flatnonzero(word & np.concatenate(([True], ~word[:-1])))
    ends = np.flatnonzero(word & np.concatenate((~word[1:], [True]))) + 1
    words_per_doc = np.bincount(np.searchsorted(doc_start, position[starts], side="right") - 1,
                                minlength=len(blobs))
    first_word = np.cumsum(words_per_doc) - words_per_doc
    counts = np.where(words_per_doc >= n, words_per_doc - n + 1, np.minimum(words_per_doc, 1))
    doc = np.repeat(np.arange(len(blobs)), counts)
    first_shingle = np.cumsum(counts) - counts
    start_word = first_word[doc] + (np.arange(len(doc)) - first_shingle[doc])
    end_word = np.minimum(start_word + (n - 1), first_word[doc] + words_per_doc[doc] - 1)
    s, e = starts[start_word], ends[end_word]

    pw, inv = _powers(len(text) + 1)
    prefix = np.zeros(len(text) + 1, dtype=np.uint64)
    np.cumsum(np.multiply(text, pw[: len(text)], dtype=np.uint64), out=prefix[1:])
    h = (prefix[e] - prefix[s]) * inv[s]
    h += (e - s).astype(np.uint64) * _LENGTH_MIX
    return _fmix64(h), counts


def _batch_signatures(blobs: list[bytes], config: MinHashConfig) -> np.ndarray:
    hashes, counts = _shingle_hashes(blobs, config.shingle_words)
    out = np.full((len(blobs), config.num_hashes), EMPTY_SIGNATURE, dtype=np.uint32)
    has = counts > 0
    if not has.any():
        return out
    offsets = (np.cumsum(counts) - counts)[has]
    a, b = _permutations(config.seed, config.num_hashes)
    mins = np.empty((config.num_hashes, len(offsets)), dtype=np.uint64)
    tmp = np.empty_like(hashes)
    for k in range(config.num_hashes):  # one permutation over all shingles at a time: cache-sized
        np.multiply(hashes, a[k], out=tmp)
        tmp += b[k]
        np.minimum.reduceat(tmp, offsets, out=mins[k])
    out[has] = (mins >> np.uint64(32)).astype(np.uint32).T
    return out


def signatures(texts: Sequence[str], config: MinHashConfig = MinHashConfig(),
               batch_bytes: int = BATCH_BYTES) -> np.ndarray:
    """MinHash signatures, shape (len(texts), config.num_hashes), dtype uint32 (see module doc)."""
    if batch_bytes < 1:
        raise ValueError(f"batch_bytes must be >= 1, got {batch_bytes}")
    out = np.empty((len(texts), config.num_hashes), dtype=np.uint32)
    blobs: list[bytes] = []
    size = first = 0
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a str, got {type(text).__name__}")
        blob = text.encode("ascii") if text.isascii() else normalize(text).encode("utf-8")
        blobs.append(blob)
        size += len(blob)
        if size >= batch_bytes:
            out[first: i + 1] = _batch_signatures(blobs, config)
            blobs, size, first = [], 0, i + 1
    if blobs:
        out[first:] = _batch_signatures(blobs, config)
    return out


# --- storage next to the shard -------------------------------------------------------------------

def _config_meta(config: MinHashConfig) -> bytes:
    return json.dumps({"algorithm": ALGORITHM, **asdict(config)}, sort_keys=True).encode()


def signatures_table(ids: Sequence[str], sigs: np.ndarray, config: MinHashConfig = MinHashConfig()) -> pa.Table:
    """``id`` (string) and ``minhash`` (fixed-size list of uint32) per document, in shard row order;
    the schema metadata records the algorithm and config, which ``read_signatures`` checks."""
    sigs = np.asarray(sigs)
    if sigs.ndim != 2 or sigs.shape != (len(ids), config.num_hashes) or sigs.dtype != np.uint32:
        raise ValueError(f"sigs must be uint32 of shape ({len(ids)}, {config.num_hashes}), "
                         f"got {sigs.dtype} {sigs.shape}")
    column = pa.FixedSizeListArray.from_arrays(pa.array(sigs.ravel(), pa.uint32()), config.num_hashes)
    table = pa.table({"id": pa.array(ids, pa.string()), SIGNATURE_COLUMN: column})
    return table.replace_schema_metadata({_META_KEY: _config_meta(config)})


def shard_signatures(docs_path: str | Path, config: MinHashConfig = MinHashConfig(),
                     batch_rows: int = 8192) -> pa.Table:
    """``signatures_table`` of a docs parquet file, read ``batch_rows`` documents at a time."""
    ids: list[str] = []
    parts: list[np.ndarray] = []
    for batch in pq.ParquetFile(docs_path).iter_batches(batch_size=batch_rows, columns=["id", "text"]):
        ids.extend(batch.column("id").to_pylist())
        parts.append(signatures(batch.column("text").to_pylist(), config))
    sigs = np.concatenate(parts) if parts else np.empty((0, config.num_hashes), np.uint32)
    return signatures_table(ids, sigs, config)


def read_signatures(path: str | Path, config: MinHashConfig | None = None) -> tuple[list[str], np.ndarray]:
    """(ids, sigs) of a file written from ``signatures_table``. With ``config``: ValueError unless
    the file was made with the same algorithm and config (signatures would not be comparable)."""
    table = pq.read_table(path, columns=["id", SIGNATURE_COLUMN])
    stored = (table.schema.metadata or {}).get(_META_KEY)
    if config is not None and stored != _config_meta(config):
        raise ValueError(f"{path}: signatures were computed with {stored and stored.decode()}, "
                         f"expected {_config_meta(config).decode()}")
    column = table.column(SIGNATURE_COLUMN).combine_chunks()
    if column.null_count or not pa.types.is_fixed_size_list(column.type):
        raise ValueError(f"{path}: {SIGNATURE_COLUMN} must be a non-null fixed-size list, got {column.type}")
    width = column.type.list_size
    sigs = column.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False).reshape(-1, width)
    return table.column("id").to_pylist(), sigs


def shingle_sets(texts: Sequence[str], config: MinHashConfig = MinHashConfig()) -> list[np.ndarray]:
    """The set of 64-bit shingle hashes of each text (sorted, unique): the sets whose Jaccard
    similarity the signatures estimate. Dedup confirms candidate pairs on them exactly."""
    blobs = [t.encode("ascii") if t.isascii() else normalize(t).encode("utf-8") for t in texts]
    hashes, counts = _shingle_hashes(blobs, config.shingle_words)
    return [np.unique(part) for part in np.split(hashes, np.cumsum(counts)[:-1])] if blobs else []
