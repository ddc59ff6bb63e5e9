"""Each reader on small real files: JSONL (plain, gz, zst), parquet, HTML, WARC, source trees."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from phi_assets.common.profiles import Sizes
from phi_assets.ingest import embedded, readers
from phi_assets.ingest.readers import ReaderOptions, Record, Rejected, ShardError
from tests.support.files import IDLE_HELP, write_warc

STDLIB = Path(sysconfig.get_paths()["stdlib"])
REAL_FILES = ["json/decoder.py", "textwrap.py", "this.py"]


def real_rows() -> list[dict]:
    return [{"content": (STDLIB / p).read_text(), "max_stars_repo_path": p,
             "max_stars_repo_licenses": ["PSF-2.0"], "stars": 3} for p in REAL_FILES]


def records(items) -> list[Record]:
    items = list(items)
    assert all(isinstance(i, Record) for i in items), items
    return items


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_reader_plain_and_compressed(tmp_path, suffix):
    data = "".join(json.dumps(r) + "\n" for r in real_rows()).encode()
    if suffix.endswith(".gz"):
        import gzip

        data = gzip.compress(data)
    elif suffix.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path = tmp_path / f"stack{suffix}"
    path.write_bytes(data)
    assert readers.detect_format(path.name) == "jsonl"
    got = records(readers.read_jsonl(str(path)))
    assert [r.text for r in got] == [row["content"] for row in real_rows()]
    assert got[0].uri == "json/decoder.py" and got[0].license == "PSF-2.0"
    assert got[0].meta == {"max_stars_repo_path": "json/decoder.py",
                           "max_stars_repo_licenses": ["PSF-2.0"], "stars": 3}


def test_jsonl_text_field_is_configurable(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"body": "How do I sort a dict by value?", "text": "ignored"}) + "\n")
    got = records(readers.read_jsonl(str(path), ReaderOptions(text_field="body")))
    assert got[0].text == "How do I sort a dict by value?" and got[0].meta["text"] == "ignored"


def test_parquet_reader_hf_layout_with_content_column(tmp_path):
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(real_rows()), path, compression="zstd", row_group_size=2)
    got = records(readers.read_parquet(str(path), ReaderOptions(batch_rows=1)))
    assert [r.text for r in got] == [row["content"] for row in real_rows()]
    assert [r.position for r in got] == ["row 1", "row 2", "row 3"]
    assert got[2].uri == "this.py"


def test_html_reader_extracts_main_text_without_boilerplate(tmp_path):
    path = tmp_path / "help.html"
    shutil.copy(IDLE_HELP, path)
    (got,) = records(readers.read_html(str(path)))
    assert "IDLE" in got.meta["title"]
    assert "Integrated Development and Learning Environment" in got.text
    assert "<div" not in got.text and "<a " not in got.text
    assert len(got.text) < 0.6 * IDLE_HELP.stat().st_size  # markup and navigation removed


@pytest.mark.parametrize("gz", [False, True])
def test_warc_reader_keeps_html_responses(tmp_path, gz):
    html = IDLE_HELP.read_bytes()
    path = write_warc(tmp_path / ("crawl.warc.gz" if gz else "crawl.warc"), [
        ("https://docs.python.org/3/library/idle.html", html, "text/html; charset=utf-8"),
        ("https://example.org/logo.png", b"\x89PNG\r\n\x1a\n", "image/png"),
    ], gz)
    items = list(readers.read_warc(str(path)))
    assert isinstance(items[0], Record) and items[0].uri.endswith("/idle.html")
    assert "Integrated Development and Learning Environment" in items[0].text
    assert isinstance(items[1], Rejected) and items[1].reason == "not_html"


def test_source_tree_reader_reads_every_python_file(tmp_path):
    tree = tmp_path / "pkg"
    shutil.copytree(STDLIB / "json", tree)
    got = records(readers.read_source_tree(str(tree)))
    assert sorted(r.position for r in got) == sorted(
        p.relative_to(tree).as_posix() for p in tree.rglob("*.py"))
    assert all(r.meta["language"] == "python" for r in got)
    assert readers.detect_format("pkg", is_dir=True) == "pytree"


def test_source_reader_honours_pep263_coding_cookie(tmp_path):
    tree = tmp_path / "legacy"
    tree.mkdir()
    (tree / "latin.py").write_bytes("# -*- coding: latin-1 -*-\nname = 'Andr\xe9'\n".encode("latin-1"))
    (got,) = records(readers.read_source_tree(str(tree)))
    assert "André" in got.text


def test_embedded_stdlib_shards_partition_the_files():
    sizes = Sizes(num_code_shards=4, code_sample_every=8)
    shards = [embedded.stdlib_files(i, sizes) for i in range(4)]
    names = [rel for shard in shards for _, rel in shard]
    assert len(names) == len(set(names)) > 100  # disjoint, and a real corpus
    everything = embedded.stdlib_files(0, Sizes(num_code_shards=1, code_sample_every=8))
    assert sorted(names) == sorted(rel for _, rel in everything)


def test_embedded_web_corpus_is_real_package_documentation():
    sizes = Sizes(num_web_shards=1)
    docs = [r for r in embedded.package_doc_records(0, sizes) if r.text]
    by_package = {r.meta["package"].lower(): r for r in docs}
    assert "dagster" in by_package and "pypi.org/project/dagster/" in by_package["dagster"].uri
    assert "phi-factory" not in by_package
    topics = list(embedded.pydoc_topic_records())
    assert any(r.meta["topic"] == "with" and "with" in r.text for r in topics)


def test_missing_file_is_a_shard_error(tmp_path):
    with pytest.raises(ShardError, match="nope.jsonl: file not found"):
        list(readers.read_jsonl(str(tmp_path / "nope.jsonl")))


def test_jsonl_zst_written_by_a_streaming_writer(tmp_path):
    """Frames without a content size (as zstd's CLI and streaming writers make them)."""
    path = tmp_path / "stream.jsonl.zst"
    with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as writer:
        for row in real_rows() * 200:
            writer.write((json.dumps(row) + "\n").encode())
    got = records(readers.read_jsonl(str(path)))
    assert len(got) == 600 and got[-1].text == real_rows()[-1]["content"]


def _peak_python_bytes(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".parquet"])
def test_readers_stream_instead_of_loading_the_shard(tmp_path, suffix):
    """The first record of a ~40 MB shard comes out holding a small fraction of it in memory."""
    rows = [{"text": f"{i:08d} " + "lorem ipsum dolor sit amet " * 40} for i in range(36_000)]
    path = tmp_path / f"big{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2_000)
        reader = readers.read_parquet
    else:
        import gzip

        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        reader = readers.read_jsonl
    total = sum(len(r["text"]) for r in rows)
    assert total > 38_000_000
    first: list = []
    peak = _peak_python_bytes(lambda: first.append(next(reader(str(path)))))
    assert first[0].text.startswith("00000000 ")
    assert peak < total / 10, f"peak {peak} bytes for a {total}-byte shard"


# Real exports: a UTF-8 byte-order mark, CRLF line ends, no newline after the last line, blank lines.
BOM = b"\xef\xbb\xbf"
EXPORT_ROWS = [*real_rows(), {"text": "an escaped CRLF inside a value\r\nis data and stays"}]


def _compress(data: bytes, suffix: str) -> bytes:
    if suffix.endswith(".gz"):
        import gzip

        return gzip.compress(data)
    if suffix.endswith(".zst"):
        return zstandard.ZstdCompressor().compress(data)
    return data


def windows_export(rows: list[dict]) -> bytes:
    """BOM, CRLF line ends, a blank CRLF line after the first record, no final line end."""
    lines = [json.dumps(r).encode() for r in rows]
    return BOM + b"\r\n".join([lines[0], b"", *lines[1:]])


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_export_with_bom_crlf_and_no_final_newline(tmp_path, suffix):
    path = tmp_path / f"export{suffix}"
    path.write_bytes(_compress(windows_export(EXPORT_ROWS), suffix))
    got = records(readers.read_jsonl(str(path)))
    texts = [row.get("content", row.get("text")) for row in EXPORT_ROWS]
    assert [r.text for r in got] == texts  # every record once, exact; the blank line is no record
    assert [r.position for r in got] == ["line 1", "line 3", "line 4", "line 5"]
    assert got[0].uri == "json/decoder.py" and got[-1].uri.endswith("#L5")
    assert "\r\n" in got[-1].text and not any(t.endswith("\r") for t in texts)


def test_jsonl_bom_is_dropped_only_at_the_start_and_positions_stay_right(tmp_path):
    """Line numbers are unchanged by the BOM; a BOM later on (BOM'd files concatenated) is data."""
    good = [json.dumps({"text": f"document {i}"}).encode() for i in range(3)]
    data = BOM + b"\r\n".join([good[0], b'{"text": "unterminated', good[1], BOM + good[2]]) + b"\r\n"
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(data)
    items = list(readers.read_jsonl(str(path)))
    assert [(type(i).__name__, i.position) for i in items] == [
        ("Record", "line 1"), ("Rejected", "line 2"), ("Record", "line 3"), ("Rejected", "line 4")]
    assert items[0].text == "document 0" and items[2].text == "document 1"
    assert items[1].reason == "invalid_json" and items[1].raw == b'{"text": "unterminated\r\n'
    assert items[3].reason == "invalid_json" and "BOM" in items[3].detail


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_jsonl_max_record_bytes_bounds_the_record_without_its_line_end(tmp_path, line_end):
    record = json.dumps({"text": "x" * 80}).encode()
    longer = json.dumps({"text": "x" * 81}).encode()
    path = tmp_path / "bound.jsonl"
    path.write_bytes(BOM + record + line_end + longer + line_end + record)
    items = list(readers.read_jsonl(str(path), ReaderOptions(max_record_bytes=len(record))))
    assert [type(i).__name__ for i in items] == ["Record", "Rejected", "Record"]
    assert items[0].text == items[2].text == "x" * 80
    assert items[1].reason == "too_large" and items[1].position == "line 2"
    assert items[1].raw_len == len(longer + line_end)  # the line as in the file, line end included


def test_source_file_with_bom_and_crlf_reads_as_python_does(tmp_path):
    """Universal newlines: a CRLF (or old-Mac CR) checkout is the same document as the LF one."""
    text = "def greet(name):\n    return 'hi\\r\\n' + name\n"
    tree = tmp_path / "checkouts"
    tree.mkdir()
    (tree / "unix.py").write_bytes(text.encode())
    (tree / "windows.py").write_bytes(BOM + text.replace("\n", "\r\n").encode())
    (tree / "mac.py").write_bytes(text.replace("\n", "\r").encode())
    got = records(readers.read_source_tree(str(tree)))
    assert [r.position for r in got] == ["mac.py", "unix.py", "windows.py"]
    assert [r.text for r in got] == [text] * 3
    compile(got[2].text, "windows.py", "exec")


def test_html_with_bom_and_crlf_needs_no_handling(tmp_path):
    """Guard: resiliparse drops the BOM and normalises line ends (no fix was needed here)."""
    path = tmp_path / "help.html"
    path.write_bytes(BOM + IDLE_HELP.read_bytes().replace(b"\n", b"\r\n"))
    (got,) = records(readers.read_html(str(path)))
    assert "Integrated Development and Learning Environment" in got.text
    assert "\ufeff" not in got.text and "\r" not in got.text and "\ufeff" not in got.meta["title"]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_windows_export_ingests_without_rejects(profile, tmp_path, suffix):
    from phi_assets.ingest.shards import ingest_shard, resolve_shard
    from tests.support.files import landing

    name = f"export{suffix}"
    (landing(profile, "code") / name).write_bytes(_compress(windows_export(EXPORT_ROWS), suffix))
    out = tmp_path / "out"
    out.mkdir()
    stats = ingest_shard(resolve_shard("code", name, profile), profile, out, ReaderOptions())
    assert stats.num_read == stats.num_written == len(EXPORT_ROWS) and stats.num_rejected == 0
