"""``shard_sensor``: new files in the landing area become partitions and ingest runs.

Watches ``{landing_root}/code`` and ``{landing_root}/web``. Each new file (by content hash) is
added as a dynamic partition of ``code_shards`` / ``web_shards`` and gets a run request whose
``run_key`` is ``{source}:{content hash}``, so the same file seen twice, or the sensor restarted
from its persisted cursor, never yields a duplicate partition or run.
"""


import json

import dagster as dg

from jobs import INGEST_JOBS
from phi_assets.ingest.assets import PARTITIONS
from resources import ProfileResource
from sensors.landing import scan_landing


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
    run_requests, partition_requests = [], []
    for source, job in INGEST_JOBS.items():
        new, state[source] = scan_landing(settings.landing_uri(source), state.get(source, {}))
        pdef = PARTITIONS[source]
        keys = [s.name for s in new if not context.instance.has_dynamic_partition(pdef.name, s.name)]
        if keys:
            partition_requests.append(pdef.build_add_request(keys))
        for shard in new:
            context.log.info(f"new {source} shard {shard.name} ({shard.content_hash})")
            run_requests.append(dg.RunRequest(
                run_key=f"{source}:{shard.content_hash}", job_name=job.name,
                partition_key=shard.name, tags={"phi/shard_uri": shard.uri}))
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=partition_requests,
        cursor=json.dumps(state, sort_keys=True),
        skip_reason=None if run_requests else "no new shard files",
    )
