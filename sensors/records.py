"""Reading the instance's materialization records, shared by the sensors."""

from __future__ import annotations

import dagster as dg


def materializations(
    instance: dg.DagsterInstance,
    key: dg.AssetKey,
    *,
    after: int | None = None,
    before: int | None = None,
    partition: str | None = None,
    limit: int = 100,
) -> list[dg.EventLogRecord]:
    """Materializations of ``key`` (one partition when given): the first ``limit`` after ``after``,
    oldest first; with ``before``, the last ``limit`` before it, newest first."""
    records_filter = dg.AssetRecordsFilter(
        asset_key=key,
        after_storage_id=after,
        before_storage_id=before,
        asset_partitions=[partition] if partition else None,
    )
    return instance.fetch_materializations(records_filter, limit=limit, ascending=before is None).records


def latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None
) -> dg.EventLogRecord | None:
    """The newest materialization of ``key`` (of one partition when given)."""
    records_filter = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None)
    records = instance.fetch_materializations(records_filter, limit=1, ascending=False).records
    return records[0] if records else None


def data_version(record: dg.EventLogRecord | None) -> str | None:
    """The data version Dagster recorded on a materialization."""
    return record.asset_materialization.tags.get("dagster/data_version") if record else None
