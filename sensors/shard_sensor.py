"""``shard_sensor``: new files in the landing area become partitions and ingest runs.

Watches ``{landing_root}/code`` and ``{landing_root}/web``. Each new file (by content hash) is
added as a dynamic partition of ``code_shards`` / ``web_shards`` and gets a run request whose
``run_key`` is ``{source}:{content hash}``, so the same file seen twice, or the sensor restarted
from its persisted cursor, never yields a duplicate partition or run.

A file whose partition's latest ``raw_{source}_shards`` materialization was ingested from these very
bytes (the version's manifest records the content hash as its input) is not requested again: a
fresh cursor (a new daemon, ``dagster dev`` on a home the demo filled) finds every landed file new
to it, but only the ones nobody ingested, or that changed since, are new to the pipeline.
"""

from __future__ import annotations

import json

import dagster as dg

from jobs import INGEST_JOBS
from phi_assets.ingest.assets import PARTITIONS
from resources import ArtifactStore, ProfileResource
from sensors.landing import NewShard, scan_landing
from sensors.records import data_version, latest_materialization


def ingested(instance: dg.DagsterInstance, store: ArtifactStore, source: str, shard: NewShard) -> bool:
    """Whether the shard's partition currently holds an ingestion of exactly this content."""
    asset = f"raw_{source}_shards"
    version = data_version(latest_materialization(instance, dg.AssetKey(asset), shard.name))
    manifest = store.read_manifest(asset, shard.name, version) if version else None
    return manifest is not None and manifest.get("inputs", {}).get("shard") == shard.content_hash


@dg.sensor(
    name="shard_sensor",
    jobs=list(INGEST_JOBS.values()),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers new shard files in the landing area and requests their ingestion.",
)
def shard_sensor(
    context: dg.SensorEvaluationContext, profile: ProfileResource, store: ArtifactStore
) -> dg.SensorResult:
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
            if shard.name in registered and ingested(context.instance, store, source, shard):
                known.append(shard.name)
                continue
            context.log.info(f"new {source} shard {shard.name} ({shard.content_hash})")
            run_requests.append(dg.RunRequest(
                run_key=f"{source}:{shard.content_hash}", job_name=job.name,
                partition_key=shard.name, tags={"phi/shard_uri": shard.uri}))
    if known:
        context.log.info(f"already ingested with this content, not requested: {', '.join(known)}")
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=partition_requests,
        cursor=json.dumps(state, sort_keys=True),
        skip_reason=None if run_requests else "no new shard files",
    )
