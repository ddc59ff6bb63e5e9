"""``mixture_retraining_sensor``: the retraining policy's answer to new data.

New shards flow through the automated curation path (``phi_assets/common/automation.py``) into a new
``mixture_weights`` version. When that version differs from the one the current
``pretrained_checkpoint`` was trained on (Dagster records it as the checkpoint's
``dagster/input_data_version/mixture_weights``) and every blocking check of ``mixture_weights``
passed on that materialization, the sensor requests one ``training_job`` run. The run key is the
mixture's data version: a version is trained once, whatever happens to the cursor. With
``RetrainingPolicy.reseed`` the run's pretraining seed comes from the triggering materialization:
new data the token budget never reaches would otherwise retrain into bit-identical weights, and
nothing downstream would change. A version whose
checks failed is reported and never trained; one whose checks have not run yet is looked at again
on the next tick. ``RetrainingPolicy.on_new_mixture`` turns it off.

Only the latest ``mixture_weights`` materialization is looked at, and it is compared with what the
instance says the checkpoint was trained on, not with the cursor: a fresh cursor (a new daemon,
``dagster dev`` on an existing home) requests nothing when the current checkpoint was trained on the
current mixture.

The new checkpoints are then evaluated by ``checkpoint_eval_sensor``, and a falling score requests
another run through ``eval_regression_sensor`` (``sensors/eval_sensors.py``).
"""

from __future__ import annotations

import dagster as dg

from jobs import training_job
from phi_assets.mixture.assets import mixture_weights
from resources import RetrainingPolicy
from sensors.records import data_version, latest_materialization

MIXTURE_KEY = dg.AssetKey("mixture_weights")
CHECKPOINT_KEY = dg.AssetKey("pretrained_checkpoint")
INPUT_VERSION_TAG = f"dagster/input_data_version/{MIXTURE_KEY.to_user_string()}"


def blocking_checks(instance: dg.DagsterInstance, record) -> tuple[list[str], list[str]]:
    """(failed, not yet evaluated) blocking checks of mixture_weights for this materialization."""
    keys = [spec.key for spec in mixture_weights.check_specs if spec.blocking]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    failed, pending = [], []
    for key in keys:
        execution = latest.get(key)
        evaluation = execution.event.asset_check_evaluation if execution and execution.event else None
        target = evaluation.target_materialization_data if evaluation else None
        if evaluation is None or target is None or target.storage_id < record.storage_id:
            pending.append(key.name)
        elif not evaluation.passed:
            failed.append(key.name)
    return failed, pending


def trained_on(instance: dg.DagsterInstance) -> str | None:
    """The mixture data version the current pretrained checkpoint was trained on."""
    record = latest_materialization(instance, CHECKPOINT_KEY)
    return record.asset_materialization.tags.get(INPUT_VERSION_TAG) if record else None


@dg.sensor(
    name="mixture_retraining_sensor",
    job=training_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a training run when the mixture's data version changes (new data passed curation).",
)
def mixture_retraining_sensor(
    context: dg.SensorEvaluationContext, retraining: RetrainingPolicy
) -> dg.SensorResult | dg.SkipReason:
    if not retraining.on_new_mixture:
        return dg.SkipReason("the retraining policy does not retrain on a new mixture (on_new_mixture=False)")
    after = int(context.cursor) if context.cursor else 0
    # The latest materialization only (training reads the current mixture): paging through history
    # from a fresh cursor would start at the oldest versions, which the checkpoint was not trained on.
    latest = latest_materialization(context.instance, MIXTURE_KEY)
    if latest is None or latest.storage_id <= after:
        return dg.SkipReason("no new mixture_weights materialization")
    version = data_version(latest)
    if version is None or version == trained_on(context.instance):
        return dg.SensorResult(
            cursor=str(latest.storage_id), skip_reason=f"mixture {version} is already trained"
        )
    failed, pending = blocking_checks(context.instance, latest)
    if pending and not failed:
        return dg.SkipReason(f"mixture {version}: blocking checks {pending} not evaluated yet")
    if failed:
        context.log.warning(f"mixture {version}: blocking checks {failed} failed; not retraining on it")
        return dg.SensorResult(cursor=str(latest.storage_id), skip_reason=f"mixture {version} failed {failed}")
    context.log.info(f"new mixture {version}: requesting a training run")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"mixture:{version}",
                job_name=training_job.name,
                run_config=retraining.run_config(latest.storage_id),
                tags={"phi/trigger": "new_mixture", "phi/mixture_version": version},
            )
        ],
        cursor=str(latest.storage_id),
    )
