"""``mixture_retraining_sensor``'s gate on a real Dagster instance: a new mixture version is trained only
after every blocking check of ``mixture_weights`` passed on that very materialization. Checks that
have not run yet make it wait (and look again); failed checks make it give that version up.

The materializations are reported as events and the checks run as real Dagster check executions
(stand-ins with the real checks' names), as a curation run would record them."""

import dagster as dg
import pytest

from jobs import training_job
from phi_assets.mixture.assets import mixture_weights
from resources import RetrainingPolicy
from sensors.retraining import INPUT_VERSION_TAG, mixture_retraining_sensor

CHECKS = [spec.name for spec in mixture_weights.check_specs if spec.blocking]


def report(instance, key: str, **tags: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, tags=tags))


def new_mixture(instance, version: str) -> None:
    report(instance, "mixture_weights", **{"dagster/data_version": version})


def run_checks(instance, failing: tuple[str, ...] = ()) -> None:
    """Every blocking check of mixture_weights, against its latest materialization."""

    def check(name: str) -> dg.AssetChecksDefinition:
        @dg.asset_check(asset="mixture_weights", name=name, blocking=True)
        def _check() -> dg.AssetCheckResult:
            return dg.AssetCheckResult(passed=name not in failing)

        return _check

    defs = dg.Definitions(
        assets=[dg.AssetSpec("mixture_weights")],
        asset_checks=[check(name) for name in CHECKS],
        jobs=[dg.define_asset_job("checks", selection=dg.AssetSelection.checks_for_assets("mixture_weights"))],
    )
    result = defs.resolve_job_def("checks").execute_in_process(instance=instance, raise_on_error=False)
    evaluations = [e for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    assert sorted(e.event_specific_data.check_name for e in evaluations) == sorted(CHECKS)


def tick(instance, cursor=None) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"retraining": RetrainingPolicy()}
    )
    return mixture_retraining_sensor(context)


def skipped(result: dg.SensorResult | dg.SkipReason) -> str:
    """Why the tick requested nothing (a run request fails the test)."""
    if isinstance(result, dg.SkipReason):
        return result.skip_message
    assert not result.run_requests, result.run_requests
    return result.skip_reason.skip_message


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        report(inst, "pretrained_checkpoint", **{INPUT_VERSION_TAG: "mix-0"})  # trained on mix-0
        yield inst


def test_it_waits_for_the_checks_of_a_new_mixture_then_trains_it_once(instance):
    new_mixture(instance, "mix-1")
    waiting = tick(instance)
    assert isinstance(waiting, dg.SkipReason) and "not evaluated yet" in skipped(waiting)
    run_checks(instance)
    result = tick(instance)  # no cursor was stored while waiting: the same materialization again
    (request,) = result.run_requests
    assert request.job_name == training_job.name and request.run_key == "mixture:mix-1"
    assert skipped(tick(instance, result.cursor)) == "no new mixture_weights materialization"


def test_checks_run_on_an_earlier_materialization_do_not_count(instance):
    new_mixture(instance, "mix-1")
    run_checks(instance)
    new_mixture(instance, "mix-2")  # its own checks have not run yet
    waiting = tick(instance)
    assert isinstance(waiting, dg.SkipReason) and "mix-2" in skipped(waiting)


def test_a_mixture_whose_blocking_check_failed_is_never_trained(instance):
    new_mixture(instance, "mix-1")
    run_checks(instance, failing=(CHECKS[0],))
    refused = tick(instance)
    assert CHECKS[0] in skipped(refused) and "failed" in skipped(refused)
    assert refused.cursor  # given up: the next tick does not look at it again
    assert skipped(tick(instance, refused.cursor)) == "no new mixture_weights materialization"
    new_mixture(instance, "mix-2")  # the next version passes: that one is trained
    run_checks(instance)
    (request,) = tick(instance, refused.cursor).run_requests
    assert request.run_key == "mixture:mix-2"


def test_the_version_the_checkpoint_was_trained_on_is_not_trained_again(instance):
    new_mixture(instance, "mix-0")
    run_checks(instance)
    assert "mix-0 is already trained" in skipped(tick(instance))


@pytest.mark.slow  # records 121 mixture versions
def test_a_fresh_cursor_looks_at_the_latest_mixture_only(instance):
    """A new daemon on a long history: the current mixture is the one the checkpoint was trained on,
    so nothing is requested, however many earlier versions there were (more than one page of records)."""
    for i in range(120):
        new_mixture(instance, f"mix-old-{i}")
    new_mixture(instance, "mix-0")
    run_checks(instance)
    result = tick(instance)
    assert "mix-0 is already trained" in skipped(result)
    assert int(result.cursor) == instance.fetch_materializations(
        dg.AssetKey("mixture_weights"), limit=1
    ).records[0].storage_id
