"""Bad input never takes down other shards and never loses documents silently.

File-level problems fail the shard with a message naming the file and the reason; record-level
problems become rejects with a reason; read == written + rejected in every shard.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from phi_assets.ingest.assets import raw_code_shards, raw_web_shards
from phi_assets.ingest.readers import ReaderOptions, ShardError
from phi_assets.ingest.shards import DOCS_FILE, REJECTS_FILE, ingest_shard, resolve_shard
from tests.support.dagster_runs import materialize_shard
from tests.support.files import IDLE_HELP, landing, write_warc

GOOD = [{"text": "def add(a, b):\n    return a + b\n"}, {"text": "print('hello')\n"}]


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def ingest(profile, tmp_path, name, data: bytes, options=ReaderOptions()):
    (landing(profile, "code") / name).write_bytes(data)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    stats = ingest_shard(resolve_shard("code", name, profile), profile, out, options)
    assert stats.reconciles()
    assert pq.read_metadata(out / DOCS_FILE).num_rows == stats.num_written
    assert pq.read_metadata(out / REJECTS_FILE).num_rows == stats.num_rejected
    return stats, out


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def truncated_parquet(tmp_path: Path) -> bytes:
    path = tmp_path / "whole.parquet"
    pq.write_table(pa.Table.from_pylist(GOOD * 50), path)
    return path.read_bytes()[:-40]


SHARD_FAILURES = {
    "truncated gzip": ("cut.jsonl.gz", lambda t: half(gzip.compress(jsonl_bytes(GOOD * 500))),
                       "corrupt or truncated compressed stream"),
    "truncated zstd": ("cut.jsonl.zst",
                       lambda t: half(zstandard.ZstdCompressor().compress(jsonl_bytes(GOOD * 500))),
                       "corrupt or truncated compressed stream"),
    "not gzip at all": ("fake.jsonl.gz", lambda t: b"this is not gzip\n", "compressed stream"),
    "broken parquet": ("broken.parquet", truncated_parquet, "not a readable parquet file"),
    "parquet without text column": (
        "nocol.parquet",
        lambda t: _parquet_bytes(t, [{"body": "x", "lang": "en"}]),
        "wrong schema: no text column 'text' or 'content'; columns are ['body', 'lang']"),
    "jsonl without text field": ("schema.jsonl", lambda t: jsonl_bytes([{"body": "x"}] * 3),
                                 "wrong schema: no record has the text field"),
    "empty file": ("empty.jsonl", lambda t: b"", "empty file"),
    "only blank lines": ("blank.jsonl", lambda t: b"\n\n  \n", "empty shard: no records"),
    "only a BOM and blank CRLF lines": ("bom.jsonl", lambda t: b"\xef\xbb\xbf\r\n \r\n",
                                        "empty shard: no records"),
    "binary junk": ("junk.jsonl", lambda t: os.urandom(4096) + b"\x00" * 16, "binary data"),
    "truncated warc": ("cut.warc.gz", lambda t: _warc_bytes(t)[:5000], "corrupt or truncated WARC"),
    "unknown format": ("notes.docx", lambda t: b"PK\x03\x04", "unknown format"),
}


def _parquet_bytes(tmp_path: Path, rows) -> bytes:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path.read_bytes()


def _warc_bytes(tmp_path: Path) -> bytes:
    page = IDLE_HELP.read_bytes()
    records = [("https://docs.python.org/3/library/idle.html", page, "text/html")] * 2
    return write_warc(tmp_path / "whole.warc.gz", records, gz=True).read_bytes()


@pytest.mark.parametrize("case", sorted(SHARD_FAILURES))
def test_unreadable_shard_fails_naming_file_and_reason(profile, tmp_path, case):
    name, make, reason = SHARD_FAILURES[case]
    with pytest.raises(ShardError) as err:
        ingest(profile, tmp_path, name, make(tmp_path))
    assert name in str(err.value) and reason in str(err.value)
    assert not (tmp_path / "out" / "_manifest.json").exists()


REJECT_CASES = {
    "invalid utf-8": (b'{"text": "caf\xe9 ' + b'"}\n', "invalid_utf8"),
    "lone surrogate": (b'{"text": "bad \\ud800 surrogate"}\n', "invalid_utf8"),
    "null text": (b'{"text": null}\n', "null_text"),
    "empty text": (b'{"text": "  \\n "}\n', "empty_text"),
    "number as text": (b'{"text": 42}\n', "text_not_string"),
    "invalid json": (b'{"text": "unterminated\n', "invalid_json"),
    "not an object": (b'["text", "in", "a", "list"]\n', "not_an_object"),
    "record without text": (b'{"body": "elsewhere"}\n', "missing_text_field"),
    "duplicate id": (jsonl_bytes(GOOD[:1]), "duplicate_id"),
    "binary text": (jsonl_bytes([{"text": "\x00\x01\x02\x03 payload" * 10}]), "binary"),
}


@pytest.mark.parametrize("case", sorted(REJECT_CASES))
def test_bad_record_is_rejected_with_reason_and_others_go_on(profile, tmp_path, case):
    bad, reason = REJECT_CASES[case]
    stats, out = ingest(profile, tmp_path, "mixed.jsonl", jsonl_bytes(GOOD) + bad)
    assert stats.num_read == 3 and stats.num_written == 2
    assert dict(stats.rejected) == {reason: 1}
    (reject,) = pq.read_table(out / REJECTS_FILE).to_pylist()
    assert reject["reason"] == reason and reject["position"] == "line 3" and reject["detail"]


def test_enormous_document_is_rejected_whole_but_not_held_in_memory(profile, tmp_path):
    huge_line = json.dumps({"text": "x" * 3_000_000}).encode() + b"\n"
    options = ReaderOptions(max_record_bytes=1_000_000)
    stats, out = ingest(profile, tmp_path, "huge.jsonl", jsonl_bytes(GOOD) + huge_line, options)
    assert dict(stats.rejected) == {"too_large": 1} and stats.num_written == 2
    (reject,) = pq.read_table(out / REJECTS_FILE).to_pylist()
    assert reject["raw_len"] == len(huge_line)  # the whole record is accounted for ...
    assert reject["raw_sha256"] == hashlib.sha256(huge_line).hexdigest()
    assert 900_000 < len(reject["raw"]) <= 1 << 20 and huge_line.startswith(reject["raw"])


def test_document_over_max_doc_bytes_is_rejected(profile, tmp_path):
    big = jsonl_bytes([{"text": "y" * (profile.sizes.max_doc_bytes + 1)}])
    stats, _ = ingest(profile, tmp_path, "big.jsonl", jsonl_bytes(GOOD) + big)
    assert dict(stats.rejected) == {"too_large": 1}


@pytest.mark.slow  # reads a 99-fold gzip stream to its cut
def test_bad_shard_fails_its_partition_only_and_is_quarantined(profile, instance, resources, store):
    (landing(profile, "web") / "good.jsonl").write_bytes(jsonl_bytes(GOOD))
    (landing(profile, "web") / "cut.jsonl.gz").write_bytes(half(gzip.compress(jsonl_bytes(GOOD * 99))))
    bad = materialize_shard(raw_web_shards, "cut.jsonl.gz", instance, resources)
    good = materialize_shard(raw_web_shards, "good.jsonl", instance, resources)
    assert not bad.success and good.success
    (failure,) = [e for e in bad.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert "cut.jsonl.gz" in message and "corrupt or truncated compressed stream" in message
    quarantine = Path(failure.step_failure_data.user_failure_data.metadata["quarantine"].value)
    assert json.loads(quarantine.read_text())["uri"].endswith("cut.jsonl.gz")
    assert store.current_version("raw_web_shards", "cut.jsonl.gz") is None
    meta = good.asset_materializations_for_node("raw_web_shards")[0].metadata
    assert meta["dagster/row_count"].value == 2 and meta["num_rejected"].value == 0


def test_shard_with_no_valid_document_is_blocked_by_the_expectations(profile, instance, resources):
    """Everything rejected: counts reconcile, but the blocking GX check fails, so it can't flow on."""
    (landing(profile, "code") / "blank.jsonl").write_bytes(jsonl_bytes([{"text": " "}, {"text": None}]))
    result = materialize_shard(raw_code_shards, "blank.jsonl", instance, resources)
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "great_expectations" and not check.passed
    assert "expect_table_row_count_to_be_between" in json.dumps(check.metadata["failures"].value)
    meta = result.asset_materializations_for_node("raw_code_shards")[0].metadata
    assert meta["num_read"].value == 2 and meta["num_rejected"].value == 2
    assert meta["reject_reasons"].value == {"empty_text": 1, "null_text": 1}
    assert isinstance(result, dg.ExecuteInProcessResult)


def test_long_shards_report_progress(profile, tmp_path):
    from phi_assets.ingest.readers import read_jsonl
    from phi_assets.ingest.shards import ingest_items

    path = landing(profile, "web") / "many.jsonl"
    path.write_bytes(jsonl_bytes([{"text": f"document number {i}"} for i in range(50)]))
    seen = []
    stats = ingest_items(read_jsonl(str(path)), "web", str(path), tmp_path, 1000,
                         progress=lambda s: seen.append(s.num_read), progress_every_s=0.0)
    assert seen == list(range(1, 51)) and stats.num_written == 50
