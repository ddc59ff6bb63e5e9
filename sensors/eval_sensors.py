"""The retraining loop: new checkpoints are evaluated, falling scores request retraining, failed runs
are recorded.

- ``checkpoint_eval_sensor``: a checkpoint stage (or the default engine model) with a new data version
  gets an ``eval_job`` run for its ``eval_scores`` partition; the run key is the stage and the data
  version, so one version is evaluated once, whatever happens to the cursor. A version that the
  partition's latest ``eval_scores`` materialization already evaluated is not requested, whoever ran
  that evaluation: a fresh cursor (a new daemon, ``dagster dev`` on an existing home) requests only
  the versions nobody evaluated.
- ``eval_regression_sensor``: an ``eval_scores`` materialization of a new model whose score on one of the
  policy's metrics falls below the best earlier comparable one (same stage, same ``eval_set``) by more
  than the margin requests one ``training_job`` run. ``rai_scores`` materializations are judged the same way
  on the policy's ``rai_metrics`` (the safety-trained model's refusal rate on harmful requests and answer rate
  on benign look-alikes) with ``rai_margin``, as the stage ``rai``. Its run key is the triggering event (the
  materialization's storage id): a repeat of the event, or a restart without the cursor, requests
  nothing new. A re-evaluation of the same model is not a new event about the model, and a stage
  gets at most ``max_consecutive`` requests in a row (``RetrainingPolicy``). A fresh cursor starts
  after the latest ``eval_scores`` materialization: what came before was judged by earlier ticks or
  predates the sensor, and judging it again would request retraining runs from history.
- ``run_failure_sensor``: every failed run becomes one JSON line (run, job, partition, trigger, the
  failing steps and the error) in the policy's ``failures_log``. Dagster starts a fresh run status
  sensor at the latest event, so earlier failures are not recorded twice.

With ``shard_sensor`` (new data lands, is ingested) this closes the loop: data -> training -> eval ->
retraining.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from jobs import eval_job, training_job
from phi_assets.evaluation.assets import EVAL_ASSET, STAGES
from phi_assets.evaluation.rai import RAI_ASSET
from resources import ProfileResource, RetrainingPolicy
from sensors.records import data_version, latest_materialization, materializations

EVAL_KEY = dg.AssetKey(EVAL_ASSET)
RAI_KEY = dg.AssetKey(RAI_ASSET)
WATCHED = (EVAL_KEY, RAI_KEY)  # what eval_regression_sensor judges
RAI_STAGE = "rai"  # rai_scores' stage in the sensor's streaks and tags (it has no partitions)
PAGE = 100  # records read per asset and tick


def _value(metadata: dict, key: str):
    entry = metadata.get(key)
    return getattr(entry, "value", entry)


def evaluated_version(instance: dg.DagsterInstance, stage: str) -> str | None:
    """The model version the latest ``eval_scores[stage]`` evaluated: its ``model_version`` metadata, or
    (an evaluation without it) the stage asset's data version Dagster recorded as the run's input."""
    record = latest_materialization(instance, EVAL_KEY, stage)
    if record is None:
        return None
    materialization = record.asset_materialization
    version = _value(materialization.metadata, "model_version")
    return str(version) if version else materialization.tags.get(f"dagster/input_data_version/{STAGES[stage]}")


@dataclass(frozen=True)
class Regression:
    stage: str
    metric: str
    score: float
    best: float
    model_version: str


def watched(policy: RetrainingPolicy, record) -> tuple[str, list[str], float]:
    """The stage a materialization speaks for, the policy's metrics of its asset and their margin."""
    if record.asset_key == RAI_KEY:
        return RAI_STAGE, policy.rai_metrics, policy.rai_margin
    return record.partition_key, policy.metrics, policy.margin


def find_regression(instance: dg.DagsterInstance, record, policy: RetrainingPolicy) -> Regression | None | str:
    """Whether this eval_scores (or rai_scores) materialization is a regression. "same model" when it
    re-evaluates the model of the stage's previous comparable materialization (no new event about a model)."""
    meta = record.asset_materialization.metadata
    stage, metrics, margin = watched(policy, record)
    eval_set = _value(meta, "eval_set")
    earlier = [
        r
        for r in materializations(instance, record.asset_key, before=record.storage_id,
                                  partition=record.partition_key, limit=1000)
        if _value(r.asset_materialization.metadata, "eval_set") == eval_set
    ]
    if not earlier:
        return None
    model = _value(meta, "model_version")
    if _value(earlier[0].asset_materialization.metadata, "model_version") == model:
        return "same model"
    worst = None
    for metric in metrics:
        score = _value(meta, metric)
        previous = [_value(r.asset_materialization.metadata, metric) for r in earlier]
        previous = [float(p) for p in previous if isinstance(p, (int, float)) and p >= 0]  # -1: not measured
        if not isinstance(score, (int, float)) or score < 0 or not previous:
            continue
        best = max(previous)
        if score < best - margin and (worst is None or best - score > worst.best - worst.score):
            worst = Regression(stage, metric, float(score), best, str(model))
    return worst


def new_records(instance: dg.DagsterInstance, after: int) -> list:
    """The watched assets' materializations after ``after``, oldest first (storage ids are global). Where one
    asset has more than a page, the rest wait for the next tick: nothing later than its page is read."""
    pages = [materializations(instance, key, after=after or None, limit=PAGE) for key in WATCHED]
    cap = min((page[-1].storage_id for page in pages if len(page) == PAGE), default=None)
    merged = sorted((r for page in pages for r in page), key=lambda r: r.storage_id)
    return [r for r in merged if cap is None or r.storage_id <= cap]


def _latest_watched(instance: dg.DagsterInstance) -> int:
    latest = [latest_materialization(instance, key) for key in WATCHED]
    return max((r.storage_id for r in latest if r is not None), default=0)


@dg.sensor(
    name="eval_regression_sensor",
    job=training_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a retraining run when a new model's eval score falls below the best earlier one.",
)
def eval_regression_sensor(
    context: dg.SensorEvaluationContext, retraining: RetrainingPolicy
) -> dg.SensorResult:
    if context.cursor:
        state = json.loads(context.cursor)
    else:
        # A fresh cursor (a new daemon or instance, `dagster dev` on an existing home) starts after the
        # latest evaluation: earlier ones were judged by an earlier tick or predate the sensor, and
        # judging them again would request retraining runs nobody asked for.
        state = {"after": _latest_watched(context.instance), "streak": {}}
    requests = []
    for record in new_records(context.instance, state["after"]):
        state["after"] = record.storage_id
        found = find_regression(context.instance, record, retraining)
        stage, _, margin = watched(retraining, record)
        if found == "same model":
            continue
        if found is None:
            state["streak"][stage] = 0
            continue
        streak = state["streak"].get(stage, 0)
        what = (
            f"{record.asset_key.to_user_string()}[{stage}]: {found.metric} {found.score:.3f} < best "
            f"{found.best:.3f} - margin {margin} (model {found.model_version[:12]})"
        )
        if streak >= retraining.max_consecutive:
            context.log.warning(f"{what}; not retraining: {streak} retraining runs in a row already")
            continue
        state["streak"][stage] = streak + 1
        context.log.info(f"{what}; requesting a retraining run")
        requests.append(
            dg.RunRequest(
                run_key=f"eval-regression:{record.storage_id}",
                job_name=training_job.name,
                run_config=retraining.run_config(record.storage_id),
                tags={
                    "phi/trigger": "eval_regression",
                    "phi/stage": stage,
                    "phi/metric": found.metric,
                    "phi/score": f"{found.score:.4f}",
                    "phi/best": f"{found.best:.4f}",
                    "phi/model": found.model_version,
                },
            )
        )
    return dg.SensorResult(
        run_requests=requests,
        cursor=json.dumps(state, sort_keys=True),
        skip_reason=None if requests else "no regressing eval score",
    )


@dg.sensor(
    name="checkpoint_eval_sensor",
    job=eval_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates every new checkpoint version (and a new default engine model) on HumanEval, MBPP.",
)
def checkpoint_eval_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    state = json.loads(context.cursor) if context.cursor else {}
    requests, evaluated = [], []
    for stage, asset in STAGES.items():
        seen = state.get(asset, {"after": 0, "version": None})
        # Only the latest materialization matters (the eval reads the stage's current version): never
        # page through history, which on a fresh cursor would start at the oldest versions.
        latest = latest_materialization(context.instance, dg.AssetKey(asset))
        if latest is None or latest.storage_id <= seen["after"]:
            continue
        version = data_version(latest)
        state[asset] = {"after": latest.storage_id, "version": version}
        if not version or version == seen["version"]:
            continue
        if version == evaluated_version(context.instance, stage):
            # evaluated already (by the demo, by hand, or by runs this sensor requested before its
            # cursor was lost): the instance says so, whatever the cursor knows
            evaluated.append(f"{stage} {version[:12]}")
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"eval:{stage}:{version}",
                job_name=eval_job.name,
                partition_key=stage,
                tags={"phi/trigger": f"new {asset}"},
            )
        )
    if evaluated:
        context.log.info(f"already evaluated, not requested: {', '.join(evaluated)}")
    return dg.SensorResult(
        run_requests=requests,
        cursor=json.dumps(state, sort_keys=True),
        skip_reason=None if requests else "no new checkpoint version without an evaluation",
    )


def _root_cause(error) -> str:
    """The user code's own error, not Dagster's wrapper around it."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def failures_log(policy: RetrainingPolicy, profile: ProfileResource) -> Path:
    return Path(policy.failures_log or f"{profile.get().phi_home}/run_failures.jsonl")


@dg.run_failure_sensor(
    name="run_failure_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records every failed run (job, partition, trigger, failing steps, error) as a JSON line.",
)
def run_failure_sensor(
    context: dg.RunFailureSensorContext, retraining: RetrainingPolicy, profile: ProfileResource
) -> None:
    run = context.dagster_run
    steps = [e.step_key for e in context.get_step_failure_events()]
    errors = [
        _root_cause(e.event_specific_data.error)
        for e in context.get_step_failure_events()
        if e.event_specific_data and e.event_specific_data.error
    ]
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition"),
        "trigger": run.tags.get("phi/trigger") or run.tags.get("dagster/sensor_name") or "manual",
        "failed_steps": steps,
        "error": (errors[0] if errors else context.failure_event.message or "")[:2000],
    }
    path = failures_log(retraining, profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one write() of one line with O_APPEND: a reader never sees half a record
        os.write(fd, line)
    finally:
        os.close(fd)
    context.log.info(f"recorded failed run {run.run_id} of {run.job_name} in {path}")
