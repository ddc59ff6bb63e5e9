"""In-process Dagster runs: materializing one shard, a failed step's error, the code location's sensors."""

from __future__ import annotations

import dagster as dg

#: The sensors the code location runs (docs/retraining-loop.md).
SENSORS = frozenset({
    "shard_sensor",
    "automation_sensor",
    "mixture_retraining_sensor",
    "checkpoint_eval_sensor",
    "eval_regression_sensor",
    "run_failure_sensor",
})


def materialize_shard(asset, key: str, instance, resources, run_config=None):
    """``asset`` for the dynamic partition ``key`` (added first), without raising on a failed step."""
    instance.add_dynamic_partitions(asset.partitions_def.name, [key])
    return dg.materialize([asset], partition_key=key, instance=instance, resources=resources,
                          run_config=run_config, raise_on_error=False)


def step_error(result) -> str:
    """The failed step's error messages of an in-process run, its causes' included."""
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)
