"""The retraining loop's sensors on a real Dagster instance: eval_scores materializations (reported as
events, as a finished eval run would record them) drive eval_regression_sensor, checkpoint
materializations drive checkpoint_eval_sensor, and a real failed run reaches run_failure_sensor.

A fresh cursor (a new daemon, ``dagster dev`` on an existing home) requests nothing from history:
eval_regression_sensor starts after the latest evaluation, and checkpoint_eval_sensor skips the
versions the instance shows evaluated. Tests of what happens on new events take the sensor's first
tick's cursor before recording them."""

import json

import dagster as dg
import pytest

from jobs import eval_job, training_job
from resources import ProfileResource, RetrainingPolicy
from sensors.eval_sensors import checkpoint_eval_sensor, eval_regression_sensor, run_failure_sensor

POLICY = RetrainingPolicy(margin=0.05, reseed=True, max_consecutive=2)


def record_eval(instance, stage: str, model: str, humaneval: float, mbpp: float = 0.5, eval_set: str = "set-a"):
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="eval_scores",
            partition=stage,
            metadata={
                "humaneval_pass@1": dg.MetadataValue.float(humaneval),
                "mbpp_pass@1": dg.MetadataValue.float(mbpp),
                "model_version": model,
                "eval_set": eval_set,
            },
        )
    )


def tick(instance, cursor=None, policy=POLICY) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"retraining": policy})
    return eval_regression_sensor(context)


def started(instance) -> str:
    """The cursor of the sensor's first tick, before the events under test."""
    first = tick(instance)
    assert first.run_requests == []
    return first.cursor


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_a_regression_requests_exactly_one_retraining_run_and_its_repeat_none(instance):
    record_eval(instance, "dpo", "m1", 0.30)
    first = tick(instance)
    assert first.run_requests == []  # nothing earlier to compare with
    record_eval(instance, "dpo", "m2", 0.20)  # 10 points below the best, margin 5
    second = tick(instance, first.cursor)
    (request,) = second.run_requests
    assert request.job_name == training_job.name
    assert request.tags["phi/stage"] == "dpo" and request.tags["phi/metric"] == "humaneval_pass@1"
    assert request.tags["phi/score"] == "0.2000" and request.tags["phi/best"] == "0.3000"
    event_id = json.loads(second.cursor)["after"]
    assert request.run_key == f"eval-regression:{event_id}"
    # the same event again: nothing with the cursor; without it (a lost cursor), the same run key,
    # which Dagster does not launch twice
    assert tick(instance, second.cursor).run_requests == []
    replay = tick(instance, first.cursor).run_requests
    assert [r.run_key for r in replay] == [request.run_key]


def test_the_retraining_request_is_a_valid_training_run_with_a_new_seed(instance):
    cursor = started(instance)
    record_eval(instance, "sft", "m1", 0.30)
    record_eval(instance, "sft", "m2", 0.10)
    (request,) = tick(instance, cursor).run_requests
    seed = request.run_config["ops"]["pretrained_checkpoint"]["config"]["train"]["seed"]
    assert seed == int(request.run_key.split(":")[1])
    from phi_assets.definitions import defs

    job = defs.resolve_job_def(training_job.name)
    validated = dg.validate_run_config(job, request.run_config)
    assert validated["ops"]["pretrained_checkpoint"]["config"]["train"] == {"seed": seed}
    (plain,) = tick(instance, cursor, policy=RetrainingPolicy(margin=0.05, reseed=False)).run_requests
    assert plain.run_config == {}


def test_within_the_margin_other_eval_sets_and_other_stages_do_not_count(instance):
    cursor = started(instance)
    record_eval(instance, "dpo", "m1", 0.30)
    record_eval(instance, "dpo", "m2", 0.27)  # 3 points down: within the 5-point margin
    record_eval(instance, "dpo", "m3", 0.10, eval_set="set-b")  # another problem set: not comparable
    record_eval(instance, "sft", "m4", 0.10)  # another stage: nothing earlier
    assert tick(instance, cursor).run_requests == []


def test_the_best_earlier_score_counts_not_the_last_one(instance):
    cursor = started(instance)
    for model, score in (("m1", 0.40), ("m2", 0.37), ("m3", 0.34)):
        record_eval(instance, "dpo", model, score)
    # m2 is within the margin of m1; m3 is within it of m2, but 6 points below m1
    (request,) = tick(instance, cursor).run_requests
    assert request.tags["phi/best"] == "0.4000" and request.tags["phi/score"] == "0.3400"


def test_a_regression_on_any_metric_counts(instance):
    cursor = started(instance)
    record_eval(instance, "dpo", "m1", 0.30, mbpp=0.50)
    record_eval(instance, "dpo", "m2", 0.31, mbpp=0.40)
    (request,) = tick(instance, cursor).run_requests
    assert request.tags["phi/metric"] == "mbpp_pass@1"


def test_re_evaluating_the_same_model_is_not_a_new_regression(instance):
    record_eval(instance, "dpo", "m1", 0.30)
    cursor = started(instance)
    record_eval(instance, "dpo", "m2", 0.10)
    result = tick(instance, cursor)
    assert len(result.run_requests) == 1
    cursor = result.cursor
    record_eval(instance, "dpo", "m2", 0.10)  # eval_scores re-materialized, same checkpoint
    assert tick(instance, cursor).run_requests == []


def test_a_stage_that_keeps_regressing_stops_requesting(instance):
    record_eval(instance, "dpo", "m0", 0.50)
    cursor, requested = started(instance), 0
    for i in range(4):
        record_eval(instance, "dpo", f"m{i + 1}", 0.10)
        result = tick(instance, cursor)
        cursor, requested = result.cursor, requested + len(result.run_requests)
    assert requested == POLICY.max_consecutive
    record_eval(instance, "dpo", "m9", 0.55)  # a new model that holds its score resets the count
    record_eval(instance, "dpo", "m10", 0.10)
    assert len(tick(instance, cursor).run_requests) == 1


def test_a_fresh_cursor_does_not_judge_history_again(instance):
    """A new daemon on a home with evaluations (a regression among them) requests nothing; it judges
    what is evaluated after its first tick."""
    record_eval(instance, "dpo", "m1", 0.30)
    record_eval(instance, "dpo", "m2", 0.10)  # a regression, judged (or not) before this sensor ran
    first = tick(instance)
    assert first.run_requests == []
    assert json.loads(first.cursor)["after"] == instance.fetch_materializations(
        dg.AssetKey("eval_scores"), limit=1
    ).records[0].storage_id
    assert tick(instance, first.cursor).run_requests == []
    record_eval(instance, "dpo", "m3", 0.05)  # new, and below the best earlier score (m1's)
    (request,) = tick(instance, first.cursor).run_requests
    assert request.tags["phi/model"] == "m3" and request.tags["phi/best"] == "0.3000"


def test_a_fresh_cursor_on_an_instance_without_evaluations_judges_every_later_one(instance):
    first = tick(instance)
    assert json.loads(first.cursor)["after"] == 0
    record_eval(instance, "dpo", "m1", 0.30)
    record_eval(instance, "dpo", "m2", 0.10)
    assert len(tick(instance, first.cursor).run_requests) == 1


def record_checkpoint(instance, asset: str, version: str):
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=asset, tags={"dagster/data_version": version})
    )


def test_a_new_checkpoint_version_is_evaluated_once(instance):
    context = dg.build_sensor_context(instance=instance)
    assert checkpoint_eval_sensor(context).run_requests == []
    record_checkpoint(instance, "dpo_checkpoint", "v1")
    record_checkpoint(instance, "generator_model", "g1")
    first = checkpoint_eval_sensor(dg.build_sensor_context(instance=instance))
    assert sorted((r.partition_key, r.run_key, r.job_name) for r in first.run_requests) == [
        ("dpo", "eval:dpo:v1", eval_job.name),
        ("reference", "eval:reference:g1", eval_job.name),
    ]
    record_checkpoint(instance, "dpo_checkpoint", "v1")  # re-materialized without change (skipped work)
    second = checkpoint_eval_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert second.run_requests == []
    record_checkpoint(instance, "dpo_checkpoint", "v2")
    record_checkpoint(instance, "dpo_checkpoint", "v3")  # two versions since the last tick: the latest
    third = checkpoint_eval_sensor(dg.build_sensor_context(instance=instance, cursor=second.cursor))
    assert [(r.partition_key, r.run_key) for r in third.run_requests] == [("dpo", "eval:dpo:v3")]


def eval_tick(instance, cursor=None) -> dg.SensorResult:
    return checkpoint_eval_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


def test_a_fresh_cursor_skips_the_versions_already_evaluated(instance):
    """`dagster dev` on a home whose checkpoints were trained and evaluated (by the demo, by hand):
    nothing is requested; a checkpoint version nobody evaluated still is."""
    record_checkpoint(instance, "dpo_checkpoint", "v1")
    record_eval(instance, "dpo", "v1", 0.30)
    record_checkpoint(instance, "sft_checkpoint", "s2")
    record_eval(instance, "sft", "s1", 0.30)  # an earlier version's evaluation: s2 is new
    record_checkpoint(instance, "generator_model", "g1")  # never evaluated: new
    first = eval_tick(instance)
    assert sorted(r.run_key for r in first.run_requests) == ["eval:reference:g1", "eval:sft:s2"]
    assert eval_tick(instance, first.cursor).run_requests == []
    record_eval(instance, "sft", "s2", 0.30)
    record_eval(instance, "reference", "g1", 0.30)
    assert eval_tick(instance).run_requests == []  # a lost cursor after the evaluations: nothing


def test_an_evaluation_recorded_only_as_the_runs_input_version_counts(instance):
    record_checkpoint(instance, "pretrained_checkpoint", "p1")
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="eval_scores",
            partition="pretrained",
            tags={"dagster/input_data_version/pretrained_checkpoint": "p1"},
        )
    )
    assert eval_tick(instance).run_requests == []
    # another stage's evaluation of the same input version is not this stage's
    record_checkpoint(instance, "midtrained_checkpoint", "p1")
    assert [r.run_key for r in eval_tick(instance).run_requests] == ["eval:midtrained:p1"]


@pytest.mark.slow  # records 120 checkpoint versions
def test_a_fresh_cursor_on_a_long_history_requests_only_the_latest_version(instance):
    for i in range(120):  # more than one page of records
        record_checkpoint(instance, "dpo_checkpoint", f"v{i}")
    record_eval(instance, "dpo", "v119", 0.30)
    assert eval_tick(instance).run_requests == []
    record_checkpoint(instance, "dpo_checkpoint", "v120")
    assert [r.run_key for r in eval_tick(instance).run_requests] == ["eval:dpo:v120"]


def test_a_failed_run_is_recorded(instance, tmp_path):
    @dg.op
    def explode():
        raise ValueError("shard web-003.jsonl: not JSON at line 7")

    @dg.job(tags={"phi/trigger": "eval_regression"})
    def doomed():
        explode()

    result = doomed.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    log = tmp_path / "failures.jsonl"
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_sensor",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={
            "retraining": RetrainingPolicy(failures_log=str(log)),
            "profile": ProfileResource(
                name="ci", phi_home=str(tmp_path), landing_root="", catalog_path="", artifact_root=""
            ),
        },
    ).for_run_failure()
    run_failure_sensor(context)
    (line,) = log.read_text().splitlines()
    record = json.loads(line)
    assert record["run_id"] == result.run_id and record["job"] == "doomed"
    assert record["failed_steps"] == ["explode"] and record["trigger"] == "eval_regression"
    assert "web-003.jsonl: not JSON at line 7" in record["error"]


def record_rai(instance, model: str, refusal: float, answer: float = 0.8, eval_set: str = "safety-a"):
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="rai_scores",
            metadata={
                "rai_refusal_rate": dg.MetadataValue.float(refusal),
                "rai_answer_rate": dg.MetadataValue.float(answer),
                "model_version": model,
                "eval_set": eval_set,
            },
        )
    )


def test_a_falling_refusal_rate_in_rai_scores_requests_retraining(instance):
    """rai_scores is judged beside eval_scores, on the policy's rai_metrics and rai_margin (0.1): a refusal rate
    20 points below the best earlier one requests a training run; one within the margin, or on another safety
    set, does not; -1 (no request of that kind) is not a score."""
    cursor = started(instance)
    record_rai(instance, "m1", 0.90)
    record_rai(instance, "m2", 0.85)  # within the margin
    record_rai(instance, "m3", 0.20, eval_set="safety-b")  # another set: nothing earlier to compare with
    record_eval(instance, "dpo", "m3", 0.30)  # eval_scores between them: the events are read in order
    record_rai(instance, "m4", -1.0, answer=0.8)  # not measured: no regression
    record_rai(instance, "m5", 0.70, answer=0.85)
    result = tick(instance, cursor)
    (request,) = result.run_requests
    assert request.job_name == training_job.name
    assert request.tags["phi/stage"] == "rai" and request.tags["phi/metric"] == "rai_refusal_rate"
    assert request.tags["phi/score"] == "0.7000" and request.tags["phi/best"] == "0.9000"
    assert request.tags["phi/model"] == "m5"
    state = json.loads(result.cursor)
    assert state["streak"] == {"rai": 1, "dpo": 0}
    assert tick(instance, result.cursor).run_requests == []
    record_rai(instance, "m6", 0.90, answer=0.5)  # over-refusal grew: the answer rate fell 35 points
    (again,) = tick(instance, result.cursor).run_requests
    assert again.tags["phi/metric"] == "rai_answer_rate"
    assert tick(instance, result.cursor, policy=RetrainingPolicy(rai_margin=0.5)).run_requests == []
