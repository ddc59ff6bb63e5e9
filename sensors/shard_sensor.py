"""``shard_sensor``: new objects in the landing area become partitions and ingest runs.

Watches ``{landing_root}/code`` and ``{landing_root}/web`` and identifies each object by its listing
metadata only (``sensors.landing``: name, size, ETag or version id, else mtime; never the bytes: a tick
opens no object, whatever its size). Each new one is added as a dynamic partition of ``code_shards`` /
``web_shards`` and gets a run request with ``run_key = "{source}:{name}:{identity}"`` and the tag
``phi/shard_identity``, so the same object seen twice, or the sensor restarted from its persisted
cursor or from none, never yields a duplicate partition or run (Dagster drops a run key it has seen);
a changed object (size, mtime, ETag) gets a new run for the same partition. The content hash is the
ingest step's (``shards.shard_fingerprint``, its versioning input): a touched file's run finds the bytes
unchanged and skips the work; a renamed copy of known bytes is a partition of its own (its documents
are exact duplicates, which dedup removes).

The cursor holds, per source, the identities of the objects of the latest listing (``{"seen": {name:
identity}}``): O(objects in the landing area now), not O(objects ever seen).

An object whose partition's latest ``raw_{source}_shards`` materialization recorded its current
identity (the ``shard_identity`` metadata the ingest step takes from ``fs.info``) is not requested
again: a fresh cursor (a new daemon, ``dagster dev`` on a home the demo filled) finds every landed
object new to it, but only the ones nobody ingested, or that changed since, are new to the pipeline.
"""

from __future__ import annotations

import json

import dagster as dg

from jobs import INGEST_JOBS
from phi_assets.ingest.assets import PARTITIONS
from phi_assets.ingest.shards import IDENTITY_METADATA
from resources import ProfileResource
from sensors.landing import NewShard, scan_landing
from sensors.records import latest_materialization

IDENTITY_TAG = "phi/shard_identity"
URI_TAG = "phi/shard_uri"


def ingested(instance: dg.DagsterInstance, source: str, shard: NewShard) -> bool:
    """Whether the shard's partition was last materialized from an object with this very identity."""
    record = latest_materialization(instance, dg.AssetKey(f"raw_{source}_shards"), shard.name)
    recorded = record.asset_materialization.metadata.get(IDENTITY_METADATA) if record else None
    return recorded is not None and recorded.value == shard.identity


@dg.sensor(
    name="shard_sensor",
    jobs=list(INGEST_JOBS.values()),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers new shard files in the landing area and requests their ingestion.",
)
def shard_sensor(context: dg.SensorEvaluationContext, profile: ProfileResource) -> dg.SensorResult:
    state = json.loads(context.cursor) if context.cursor else {}
    settings = profile.get()
    run_requests, partition_requests, known = [], [], []
    for source, job in INGEST_JOBS.items():
        new, state[source] = scan_landing(settings.landing_uri(source), state.get(source, {}))
        pdef = PARTITIONS[source]
        registered = {s.name for s in new if context.instance.has_dynamic_partition(pdef.name, s.name)}
        keys = [s.name for s in new if s.name not in registered]
        if keys:
            partition_requests.append(pdef.build_add_request(keys))
        for shard in new:
            if shard.name in registered and ingested(context.instance, source, shard):
                known.append(shard.name)
                continue
            context.log.info(f"new {source} shard {shard.name} ({shard.identity})")
            run_requests.append(dg.RunRequest(
                run_key=f"{source}:{shard.name}:{shard.identity}", job_name=job.name,
                partition_key=shard.name, tags={URI_TAG: shard.uri, IDENTITY_TAG: shard.identity}))
    if known:
        context.log.info(f"already ingested as listed now, not requested: {', '.join(known)}")
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=partition_requests,
        cursor=json.dumps(state, sort_keys=True),
        skip_reason=None if run_requests else "no new shard files",
    )
