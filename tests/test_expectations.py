"""The Great Expectations suite really validates: good shards pass, each violation is named."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from phi_assets.ingest.expectations import validate_docs
from phi_assets.ingest.schema import DOC_SCHEMA, doc_id


def doc(text, source="code", ident=None):
    return {"id": ident or doc_id(text or "-"), "text": text, "source": source, "uri": "u",
            "license": None, "meta": "{}"}


def test_good_shard_passes(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist([doc("a = 1\n"), doc("b = 2\n")], schema=DOC_SCHEMA), path)
    result = validate_docs(path, max_chars=1000)
    assert result.success and result.failures() == []
    assert {o.expectation for o in result.outcomes} >= {
        "expect_column_values_to_be_unique", "expect_table_columns_to_match_ordered_list"}


def test_each_violation_is_reported(tmp_path):
    rows = [doc("same"), doc("same"), doc(None), doc("x" * 50), doc("ok", source="forum")]
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)  # several batches
    result = validate_docs(path, max_chars=10)
    failed = {(o.expectation, o.column): o.unexpected_count for o in result.outcomes if not o.success}
    assert not result.success
    assert failed == {
        ("expect_column_values_to_be_unique", "id"): 2,
        ("expect_column_values_to_not_be_null", "text"): 1,
        ("expect_column_value_lengths_to_be_between", "text"): 1,
        ("expect_column_values_to_be_in_set", "source"): 1,
    }


def test_wrong_columns_fail_the_schema_expectation(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": doc_id("t"), "text": "t", "source": "web"}]), path)
    result = validate_docs(path, max_chars=10)
    assert "expect_table_columns_to_match_ordered_list" in " ".join(result.failures())
