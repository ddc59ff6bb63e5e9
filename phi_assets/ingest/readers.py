r"""Streaming readers: shard files in, ``Record``s (or per-record ``Rejected``s) out.

Formats: JSONL (plain, .gz, .zst), parquet (Hugging Face datasets layout, text column
configurable), HTML and WARC (main text extracted with resiliparse), and source trees (``*.py``).
Readers never load a whole shard: JSONL is read line by line with a bounded line length, parquet
batch by batch, WARC record by record, source trees file by file. A shard that cannot be read at
all raises ``ShardError`` naming the file and the reason; a bad record becomes a ``Rejected``.

Framing is not data. What a file adds around its records is removed; what is inside a record is
kept as it is:

- A UTF-8 byte-order mark at the very start of a JSONL stream (after decompression) or of a source
  file is dropped, as Python's ``utf-8-sig`` does. A BOM anywhere else is data: at the start of a
  later JSONL line (BOM'd files concatenated) it is invalid JSON and that line is rejected.
- JSONL lines end in ``\n`` or ``\r\n``; the last line may have no line end. Blank lines are not
  records: they are neither read nor rejected (not counted), but they count for line numbers.
  ``max_record_bytes`` bounds a line without its line end; a reject's raw bytes and length are the
  line as in the file. A lone ``\r`` does not end a JSONL line.
- Source files are decoded as Python reads them: the PEP 263 coding cookie, and universal
  newlines (``\r\n`` and ``\r`` become ``\n``). The Stack keeps the original bytes; here a CRLF and
  an LF checkout of one file are one document (same text, same id, found by exact dedup), and the
  model is not taught ``\r``. The document id of a CRLF file is the hash of its LF text.
- Text inside a JSONL record or a parquet cell is never changed (an escaped ``\r\n`` in a JSON
  string stays). HTML and WARC bodies need nothing here: resiliparse drops the BOM when it decodes
  and the text extraction normalises line ends.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractBufferedFile

from phi_assets.ingest.schema import RAW_KEEP_BYTES

TEXT_FIELD_CANDIDATES = ("text", "content")
URI_FIELDS = ("uri", "url", "path", "max_stars_repo_path")
LICENSE_FIELDS = ("license", "licenses", "max_stars_repo_licenses")
BOM = codecs.BOM_UTF8


class ShardError(Exception):
    """A whole shard could not be read. The message names the file and the reason."""

    def __init__(self, uri: str, reason: str):
        super().__init__(f"{uri}: {reason}")
        self.uri, self.reason = uri, reason


@dataclass
class Record:
    text: Any  # a str from a well-formed input; anything else is rejected downstream
    uri: str
    position: str
    license: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rejected:
    uri: str
    position: str
    reason: str
    detail: str
    raw: bytes | None = None
    raw_len: int = 0
    raw_sha256: str | None = None

    @classmethod
    def of(cls, uri: str, position: str, reason: str, detail: str, raw: bytes | None) -> Rejected:
        if raw is None:
            return cls(uri, position, reason, detail)
        digest = hashlib.sha256(raw).hexdigest()
        return cls(uri, position, reason, detail, raw[:RAW_KEEP_BYTES], len(raw), digest)


Item = Record | Rejected


@dataclass(frozen=True)
class ReaderOptions:
    text_field: str | None = None  # None: the first of TEXT_FIELD_CANDIDATES that exists
    max_record_bytes: int = 4_000_000
    batch_rows: int = 1024


def _open(uri: str) -> io.BufferedIOBase:
    """Open a file or URI for binary reading, decompressing .gz and .zst by suffix.

    zstd goes through backports.zstd (the Python 3.14 ``compression.zstd`` API): it streams with
    bounded memory and raises ``EOFError`` on a truncated stream, as gzip does. An object store's file
    (s3fs, gcsfs: an fsspec ``AbstractBufferedFile``) has no ``readline(size)``; it comes wrapped in an
    ``io.BufferedReader``, which has.
    """
    f = fsspec.open(uri, "rb", compression="infer").open()
    return io.BufferedReader(f) if isinstance(f, AbstractBufferedFile) else f


def _compression_error(uri: str, exc: Exception) -> ShardError:
    return ShardError(uri, f"corrupt or truncated compressed stream ({type(exc).__name__}: {exc})")


def _sniff_binary(uri: str, head: bytes, what: str) -> None:
    if not head:
        raise ShardError(uri, "empty file (no bytes after decompression)")
    if b"\x00" in head:
        raise ShardError(uri, f"binary data, not {what} (NUL bytes in the first {len(head)} bytes)")


def _first_field(obj: dict, names: Iterable[str]) -> Any:
    for name in names:
        if obj.get(name) not in (None, "", []):
            return obj[name]
    return None


def _license(value: Any) -> str | None:
    if value is None:
        return None
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _without_line_end(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(b"\n") else line


def _bounded_lines(f: io.BufferedIOBase, limit: int) -> Iterator[tuple[int, bytes, int, str | None]]:
    r"""Yield (line number, bytes, full length, sha256 if cut). Overlong lines are not kept whole.

    A line is overlong when it holds more than ``limit`` bytes without its line end (``\n`` or
    ``\r\n``). The bytes and length yielded are the line's, line end included.
    """
    number = 0
    while True:
        line = f.readline(limit + 2)  # room for a whole record of `limit` bytes and a CRLF
        if not line:
            return
        number += 1
        # a line cut by readline has limit + 2 bytes and no "\n": over the limit even less a "\r"
        if len(_without_line_end(line)) <= limit:
            yield number, line, len(line), None
            continue
        digest, total, prefix = hashlib.sha256(line), len(line), line[:RAW_KEEP_BYTES]
        while not line.endswith(b"\n"):
            line = f.readline(1 << 20)
            if not line:
                break
            digest.update(line)
            total += len(line)
        yield number, prefix, total, digest.hexdigest()


def _jsonl_record(uri: str, number: int, line: bytes, text_field: str | None) -> Item:
    position = f"line {number}"
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Rejected.of(uri, position, "invalid_utf8", str(exc), line)
    except json.JSONDecodeError as exc:
        return Rejected.of(uri, position, "invalid_json", str(exc), line)
    if not isinstance(obj, dict):
        return Rejected.of(uri, position, "not_an_object", f"a JSON {type(obj).__name__}", line)
    names = (text_field,) if text_field else TEXT_FIELD_CANDIDATES
    name = next((n for n in names if n in obj), None)
    if name is None:
        detail = f"no field {' or '.join(map(repr, names))}; keys are {sorted(obj)[:20]}"
        return Rejected.of(uri, position, "missing_text_field", detail, line)
    return _record(obj, name, f"{uri}#L{number}", position)


def _record(obj: dict[str, Any], text_key: str, fallback_uri: str, position: str) -> Record:
    """A record from a JSON object or parquet row: the text, its URI and license; the rest is meta."""
    text = obj.pop(text_key)
    record_uri = _first_field(obj, URI_FIELDS) or fallback_uri
    return Record(text, str(record_uri), position, _license(_first_field(obj, LICENSE_FIELDS)), obj)


def read_jsonl(uri: str, options: ReaderOptions = ReaderOptions()) -> Iterator[Item]:
    try:
        with _open(uri) as f:
            head = f.read(8192)
            _sniff_binary(uri, head, "JSONL")
        with _open(uri) as f:
            if head.startswith(BOM):
                f.read(len(BOM))  # the file's encoding mark, not part of the first record
            lines = _bounded_lines(f, options.max_record_bytes)
            for number, line, length, digest in lines:
                if digest is not None:
                    detail = f"record of {length} bytes exceeds max_record_bytes"
                    yield Rejected(uri, f"line {number}", "too_large", detail, line, length, digest)
                elif line.strip():
                    yield _jsonl_record(uri, number, line, options.text_field)
    except (EOFError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise ShardError(uri, "file not found") from exc
        raise _compression_error(uri, exc) from exc


def read_parquet(uri: str, options: ReaderOptions = ReaderOptions()) -> Iterator[Item]:
    try:
        f = _open(uri)
    except FileNotFoundError as exc:
        raise ShardError(uri, "file not found") from exc
    try:
        parquet = pq.ParquetFile(f)
    except (pa.ArrowException, OSError, ValueError) as exc:
        f.close()
        raise ShardError(uri, f"not a readable parquet file ({exc})") from exc
    with f:
        names = parquet.schema_arrow.names
        wanted = (options.text_field,) if options.text_field else TEXT_FIELD_CANDIDATES
        text_col = next((n for n in wanted if n in names), None)
        if text_col is None:
            raise ShardError(
                uri,
                f"wrong schema: no text column {' or '.join(map(repr, wanted))}; columns are "
                f"{names}; set text_field to the column that holds the text",
            )
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=options.batch_rows):
                for obj in batch.to_pylist():
                    row += 1
                    yield _record(obj, text_col, f"{uri}#row={row}", f"row {row}")
        except (pa.ArrowException, OSError) as exc:
            raise ShardError(uri, f"corrupt parquet data after row {row} ({exc})") from exc


def html_to_text(html: bytes) -> tuple[str, str | None]:
    """Main text (boilerplate removed) and title of an HTML page, with encoding detection."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(bytes_to_str(html, detect_encoding(html)))
    text = extract_plain_text(tree, main_content=True, alt_texts=False, links=False)
    return text, (tree.title or None)


def read_html(uri: str, options: ReaderOptions = ReaderOptions()) -> Iterator[Item]:
    with _open(uri) as f:
        html = f.read(options.max_record_bytes + 1)
        if not html:
            raise ShardError(uri, "empty file")
        if len(html) > options.max_record_bytes:
            yield _oversized(f, html, uri, "file", "HTML file exceeds max_record_bytes")
            return
    text, title = html_to_text(html)
    yield Record(text, uri, "file", None, {"title": title, "format": "html"})


def read_warc(uri: str, options: ReaderOptions = ReaderOptions()) -> Iterator[Item]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    count = 0
    try:
        with _open_plain(uri) as f:  # fastwarc detects gzip per record itself
            records = ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True)
            for record in records:
                count += 1
                target = record.headers.get("WARC-Target-URI") or f"{uri}#record={count}"
                ctype = (record.http_headers.get("Content-Type") or "") if record.http_headers else ""
                body = record.reader.read(options.max_record_bytes + 1)
                position = f"record {count}"
                if len(body) < min(record.content_length, options.max_record_bytes + 1):
                    raise EOFError(f"record {count} ({target}) is truncated: "
                                   f"{len(body)} of {record.content_length} bytes")
                if "html" not in ctype.lower():
                    yield Rejected.of(target, position, "not_html", f"Content-Type {ctype!r}", body)
                elif len(body) > options.max_record_bytes:
                    yield Rejected.of(target, position, "too_large", "exceeds max_record_bytes", body)
                else:
                    text, title = html_to_text(body)
                    meta = {"title": title, "warc_date": record.headers.get("WARC-Date")}
                    yield Record(text, target, position, None, meta)
    except (OSError, EOFError, ValueError) as exc:
        raise ShardError(uri, f"corrupt or truncated WARC ({exc})") from exc
    if count == 0:
        raise ShardError(uri, "no WARC response records (empty or not a WARC file)")


def _oversized(f: io.BufferedIOBase, head: bytes, uri: str, position: str, detail: str) -> Rejected:
    """Reject an oversized item keeping its first bytes; the rest is hashed, not held."""
    digest, total = hashlib.sha256(head), len(head)
    while chunk := f.read(1 << 20):
        digest.update(chunk)
        total += len(chunk)
    return Rejected(uri, position, "too_large", detail, head[:RAW_KEEP_BYTES], total, digest.hexdigest())


def decode_python_source(raw: bytes) -> str:
    r"""Decode Python source as Python does: its PEP 263 coding cookie (UTF-8 by default), a
    leading UTF-8 BOM dropped (``utf-8-sig``), universal newlines (``\r\n``, ``\r`` become ``\n``)."""
    encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    return raw.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")


def _open_plain(path: str) -> io.BufferedIOBase:
    return open(path, "rb") if "://" not in path else fsspec.open(path, "rb").open()


def read_source_files(
    files: Iterable[tuple[str, str]], license_: str | None, options: ReaderOptions
) -> Iterator[Item]:
    """Source files given as (path or URI, name), one document each."""
    for path, name in files:
        with _open_plain(path) as f:
            raw = f.read(options.max_record_bytes + 1)
            if len(raw) > options.max_record_bytes:
                yield _oversized(f, raw, path, name, "file exceeds max_record_bytes")
                continue
        try:
            text = decode_python_source(raw)
        except (SyntaxError, UnicodeDecodeError, LookupError) as exc:
            yield Rejected.of(path, name, "invalid_utf8", f"cannot decode: {exc}", raw)
            continue
        yield Record(text, path, name, license_, {"path": name, "language": "python"})


def read_source_tree(uri: str, options: ReaderOptions = ReaderOptions()) -> Iterator[Item]:
    fs, root = fsspec.core.url_to_fs(uri)
    paths = sorted(fs.glob(f"{root.rstrip('/')}/**/*.py"))
    if not paths:
        raise ShardError(uri, "source tree holds no *.py files")
    files = ((fs.unstrip_protocol(p), p[len(root.rstrip("/")) + 1 :]) for p in paths)
    yield from read_source_files(files, None, options)


READERS = {
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "html": read_html,
    "warc": read_warc,
    "pytree": read_source_tree,
}
SUFFIXES = {
    ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".jsonl.zst": "jsonl", ".ndjson": "jsonl",
    ".json.gz": "jsonl", ".ndjson.gz": "jsonl", ".ndjson.zst": "jsonl",
    ".parquet": "parquet",
    ".html": "html", ".htm": "html",
    ".warc": "warc", ".warc.gz": "warc",
}


def detect_format(name: str, is_dir: bool = False) -> str | None:
    """The reader for a landing entry by its name; directories are source trees."""
    if is_dir:
        return "pytree"
    lower = name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return SUFFIXES[suffix]
    return None
