"""A fresh `dagster dev` on the demo's home queues no run.

`make ui` on a home the demo filled starts every sensor of the code location with an empty cursor
(a new daemon; the demo ran no sensor). The sensors must derive what is new from the instance, not
from their cursors: the demo already ingested the landed files, trained on the current mixture and
evaluated every checkpoint version, so the first tick of each requests nothing. Something new (a
checkpoint version nobody evaluated, a file nobody ingested) is still requested.

Each sensor is evaluated as the daemon would on its first tick: ``evaluate_tick`` with no cursor, and
for ``automation_sensor`` (an ``AutomationConditionSensorDefinition``, which the daemon evaluates
itself) ``dg.evaluate_automation_conditions`` on its selection with no cursor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from resources import build_resources, load_profile
from tests.support.dagster_runs import SENSORS
from tests.support.homes import copy_home


@pytest.fixture
def fresh_home(demo_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the demo's home, with the environment `make ui` gives the code location on it."""
    home = tmp_path / "phi"
    copy_home(demo_run["home"], home)
    monkeypatch.setenv("PHI_PROFILE", "ci")
    monkeypatch.setenv("PHI_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))  # what the demo and `make ui` use
    for var in ("PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def location(fresh_home: Path) -> Iterator[tuple[dg.Definitions, dg.DagsterInstance]]:
    from phi_assets.definitions import build_definitions

    defs = build_definitions()  # built here: its resources point at the copy
    with dg.DagsterInstance.get() as instance:
        yield defs, instance


def first_ticks(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, list[str]]:
    """What every sensor of the code location asks for on its first tick: run keys (or, for the
    automation, asset partitions) and partitions to add."""
    resources = build_resources(load_profile())
    asked: dict[str, list[str]] = {}
    for sensor in defs.sensors:
        if isinstance(sensor, dg.AutomationConditionSensorDefinition):
            result = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, asset_selection=sensor.asset_selection, cursor=None
            )
            asked[sensor.name] = sorted(
                f"{key.to_user_string()}[{partition}]"
                for key in defs.resolve_asset_graph().get_all_asset_keys()
                if result.get_num_requested(key)
                for partition in result.get_requested_partitions(key)
            )
            continue
        # with the instance's ref, as the daemon's context has it: run requests for dynamic
        # partitions are then validated against the instance (and the partitions the tick adds)
        with dg.build_sensor_context(
            instance=instance,
            instance_ref=instance.get_ref(),
            cursor=None,
            definitions=defs,
            resources=resources,
            sensor_name=sensor.name,
        ) as context:
            data = sensor.evaluate_tick(context)
        asked[sensor.name] = sorted(
            [r.run_key or f"{r.job_name}[{r.partition_key}]" for r in data.run_requests]
            + [
                f"add {request.partitions_def_name}: {list(request.partition_keys)}"
                for request in data.dynamic_partitions_requests or []
                if isinstance(request, dg.AddDynamicPartitionsRequest)
            ]
        )
    return asked


def test_a_fresh_dagster_dev_on_the_demo_home_requests_no_run(location):
    defs, instance = location
    names = {sensor.name for sensor in defs.sensors}
    assert SENSORS <= names
    # the home is the one the premise is about: landed files, trained checkpoints, their evaluations
    assert instance.get_dynamic_partitions("code_shards")
    assert instance.fetch_materializations(dg.AssetKey("eval_scores"), limit=1).records
    asked = first_ticks(defs, instance)
    assert set(asked) == names
    assert {name: what for name, what in asked.items() if what} == {}


def test_something_new_is_still_requested_on_a_fresh_tick(location, fresh_home: Path):
    """The first test can fail: a checkpoint version nobody evaluated, and a file nobody ingested, are
    requested by the same first ticks."""
    from phi_assets.evaluation.assets import STAGES
    from sensors.records import data_version, latest_materialization
    from sensors.retraining import INPUT_VERSION_TAG, MIXTURE_KEY

    defs, instance = location
    assert STAGES["pretrained"] == "pretrained_checkpoint"
    # as a training run records it: trained on the current mixture (no new mixture to retrain on)
    mixture = data_version(latest_materialization(instance, MIXTURE_KEY))
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "pretrained_checkpoint", tags={"dagster/data_version": "new", INPUT_VERSION_TAG: mixture}
        )
    )
    shard = fresh_home / "landing" / "code" / "fresh-start.jsonl"
    shard.parent.mkdir(parents=True, exist_ok=True)
    shard.write_text(json.dumps({"text": "def fresh_start():\n    return 'new'\n"}) + "\n")
    asked = first_ticks(defs, instance)
    assert asked["checkpoint_eval_sensor"] == ["eval:pretrained:new"]
    (run_key, added) = sorted(asked["shard_sensor"], key=lambda what: what.startswith("add"))
    assert run_key.startswith("code:") and added == "add code_shards: ['fresh-start.jsonl']"
    assert asked["eval_regression_sensor"] == [] and asked["mixture_retraining_sensor"] == []
