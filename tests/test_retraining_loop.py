"""The sensor-triggered retraining loop on the ``ci`` profile, end to end.

Starting from the graph the demo materialized (``demo_run``; copied, so its home is untouched), a
new code shard dropped into the landing area (beside a corrupt one, which is quarantined and must hold
nothing back) flows on by itself: ``shard_sensor`` registers it and
requests its ingestion; the automation conditions (``phi_assets/common/automation.py``, the evaluation
``automation_sensor`` runs) request the curation path, the catalog and the mixture weights; the
mixture's data version changes; ``mixture_retraining_sensor`` requests one training run; its new
checkpoints get ``eval_job`` requests from ``checkpoint_eval_sensor``; and a falling score requests
retraining through ``eval_regression_sensor``.

Every sensor and condition is the project's own, evaluated against a real Dagster instance, and every
requested run really executes (ingestion, curation, training, evaluation in the sandbox). What stands
in for the Dagster daemon is this test: it ticks the sensors, evaluates the automation conditions with
``dg.evaluate_automation_conditions`` (what the automation sensor evaluates), and executes the requested
runs in process, in dependency order (the daemon would launch them as runs or a backfill). Of the four
evaluation requests only the final (dpo) one is executed, to keep the suite's time: the others run the
same code on the other checkpoints. The new evaluation then gets its model card, by automation.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import dagster as dg
import pytest

from phi_assets.common.automation import ON_NEW_DATA, ON_NEW_PARTITIONS
from resources import RetrainingPolicy, build_resources, load_profile
from tests.support.dagster_runs import SENSORS, step_error
from tests.support.homes import copy_home

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
CURATED = {
    "raw_catalog",
    "dedup_code_buckets",
    "dedup_code_shingles",
    "dedup_code_pairs",
    "dedup_code",
    "filtered_code_corpus",
    "tokenized_filtered_code",
    "mixture_weights",
}
NOT_AUTOMATED = {
    "edu_annotations",
    "edu_classifier",
    "tokenizer",
    "topics",
    "mixture_proxies",
    "mixture_search",
    "synthetic_textbooks",
    "pretrained_checkpoint",
    "dpo_checkpoint",
    "eval_scores",
}




def _new_code_shard(path: Path) -> int:
    """Real Python code none of the corpora hold: a package's own modules (not the standard library)."""
    root = Path(importlib.util.find_spec("tqdm").origin).parent
    rows = [
        {"text": p.read_text(), "path": f"tqdm/{p.relative_to(root)}"}
        for p in sorted(root.rglob("*.py"))
        if 500 < p.stat().st_size < 60_000
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.rename(path)  # in-progress names are ignored by the sensor; the move makes it visible
    return len(rows)


def _tick(sensor, instance, defs, cursor=None, resources=None):
    """One evaluation of a sensor with the profile's resources (``resources`` overrides some)."""
    resources = {**build_resources(load_profile()), **(resources or {})}
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=resources
    ) as context:
        result = sensor(context)
        cursor = context.cursor
    if isinstance(result, dg.SkipReason):
        return [], None, cursor
    return result.run_requests or [], result, result.cursor if result.cursor is not None else cursor


def _execute(defs, instance, request: dg.RunRequest, success: bool = True):
    job = defs.resolve_job_def(request.job_name)
    result = job.execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        run_config={**QUIET, **(request.run_config or {})},
        tags=request.tags,
        raise_on_error=False,
    )
    assert result.success == success, f"{request.job_name}[{request.partition_key}]: success {result.success}"
    return result


def _automation(defs, instance, cursor):
    from sensors.automation import automation_sensor

    result = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=automation_sensor.asset_selection, cursor=cursor
    )
    requested = {
        key.to_user_string(): result.get_requested_partitions(key)
        for key in defs.resolve_asset_graph().get_all_asset_keys()
        if result.get_num_requested(key)
    }
    return requested, result.cursor


def _run_requested(defs, instance, requested: dict[str, set]) -> None:
    """What the daemon launches for an automation tick, one asset partition per run, in dependency order."""
    for key in defs.resolve_asset_graph().toposorted_asset_keys:
        name = key.to_user_string()
        for partition in sorted(requested.get(name, ()), key=str):
            job = defs.resolve_implicit_job_def_def_for_assets([key])
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[key],
                partition_key=partition,
                run_config=QUIET,
                raise_on_error=False,
            )
            assert result.success, f"{name}[{partition}] failed"


def _latest(instance, asset: str, partition: str | None = None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None
        ),
        limit=1,
    ).records
    return records[0] if records else None


def _version(record) -> str:
    return record.asset_materialization.tags["dagster/data_version"]


def _land_a_new_and_a_corrupt_shard(defs, instance, profile, shard_cursor):
    """Step 1 of the loop: a good code shard and a corrupt one land; the shard sensor registers both and
    requests one ingest run each; the corrupt one's run fails naming it, the good one ingests every record."""
    from sensors.shard_sensor import shard_sensor

    landing = Path(profile.landing_uri("code"))
    docs = _new_code_shard(landing / "tqdm-sources.jsonl")
    (landing / "corrupt.jsonl").write_bytes(b"\x00\x01binary\x00" * 64)
    requests, result, shard_cursor = _tick(shard_sensor, instance, defs, shard_cursor)
    by_shard = {r.partition_key: r for r in requests}
    assert sorted(by_shard) == ["corrupt.jsonl", "tqdm-sources.jsonl"]
    assert {r.job_name for r in requests} == {"ingest_code_job"}
    for partitions in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(partitions.partitions_def_name, list(partitions.partition_keys))
    failed = _execute(defs, instance, by_shard["corrupt.jsonl"], success=False)
    assert "binary data" in step_error(failed) and "corrupt.jsonl" in step_error(failed)
    _execute(defs, instance, by_shard["tqdm-sources.jsonl"])
    raw = _latest(instance, "raw_code_shards", "tqdm-sources.jsonl").asset_materialization.metadata
    assert raw["num_read"].value == docs and raw["dagster/row_count"].value > docs // 2
    return shard_cursor


def _settle(defs, instance, cursor, ticks: int = 8) -> tuple[dict[str, set], str]:
    """Automation ticks, each running what it requested, until a tick requests nothing: {asset: the
    partitions run} and the cursor. Fails the test if ``ticks`` ticks do not settle it."""
    ran: dict[str, set] = {}
    for _ in range(ticks):
        requested, cursor = _automation(defs, instance, cursor)
        if not requested:
            return ran, cursor
        _run_requested(defs, instance, requested)
        for name, partitions in requested.items():
            ran.setdefault(name, set()).update(partitions)
    pytest.fail(f"automation did not settle in {ticks} ticks: {requested}")


@pytest.fixture
def loop_home(demo_run, tmp_path, monkeypatch) -> Path:
    home = tmp_path / "phi"
    home.mkdir()
    copy_home(demo_run["home"], home)
    monkeypatch.setenv("PHI_PROFILE", "ci")
    monkeypatch.setenv("PHI_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    for var in ("PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_automation_covers_the_curation_path_only():
    """The conditions sit where the docs say: per-shard curation and the roll-ups that count it."""
    from phi_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    automated = {
        k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition is not None
    }
    assert CURATED <= automated
    assert not automated & NOT_AUTOMATED
    rollups = {"raw_catalog", "dedup_code_buckets", "dedup_web_buckets", "dedup_code_pairs", "dedup_web_pairs",
               "dedup_code", "dedup_web",
               "mixture_weights"}  # read every partition there is
    for name in automated:
        expected = ON_NEW_PARTITIONS if name in rollups else ON_NEW_DATA
        assert graph.get(dg.AssetKey(name)).automation_condition is expected, name
    names = {s.name for s in defs.sensors}
    assert SENSORS <= names
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert {
        "data_refresh_job",
        "pretrain_job",
        "posttraining_job",
        "eval_job",
        "model_card_job",
        "training_job",
    } <= jobs


def test_a_new_shard_flows_to_retraining_and_evaluation(loop_home):
    from phi_assets.definitions import build_definitions
    from sensors.eval_sensors import checkpoint_eval_sensor, eval_regression_sensor
    from sensors.retraining import mixture_retraining_sensor
    from sensors.shard_sensor import shard_sensor

    defs = build_definitions()
    profile = load_profile()
    with dg.DagsterInstance.from_config(str(loop_home / "dagster")) as instance:
        # Baseline ticks on the materialized graph: the sensors take their cursors, nothing is stale.
        _, _, shard_cursor = _tick(shard_sensor, instance, defs)
        requested, auto_cursor = _automation(defs, instance, None)
        assert not requested, f"automation requested work on an up-to-date graph: {requested}"
        requests, _, mixture_cursor = _tick(mixture_retraining_sensor, instance, defs)
        assert requests == []
        _, _, eval_cursor = _tick(checkpoint_eval_sensor, instance, defs)
        _, _, regression_cursor = _tick(eval_regression_sensor, instance, defs)
        mixture_before = _version(_latest(instance, "mixture_weights"))
        checkpoint_before = _version(_latest(instance, "pretrained_checkpoint"))

        # 1. A new shard lands, and a corrupt one beside it: both registered, one ingest run each. The corrupt
        # one is quarantined and its run fails, naming the file; it must not hold the good one back.
        shard_cursor = _land_a_new_and_a_corrupt_shard(defs, instance, profile, shard_cursor)

        # 2. Automation ticks (the daemon's, every 30 s) request the curation path down to the mixture weights,
        # each tick what became stale through the previous one's runs, until nothing is left.
        ran, auto_cursor = _settle(defs, instance, auto_cursor)
        assert set(ran) == CURATED, ran
        code_shards = set(instance.get_dynamic_partitions("code_shards")) - {"corrupt.jsonl"}
        assert ran["filtered_code_corpus"] == code_shards  # dedup decides what every shard keeps
        assert "tqdm-sources.jsonl" in ran["tokenized_filtered_code"]
        mixture = _latest(instance, "mixture_weights")
        assert _version(mixture) != mixture_before  # more code tokens: a new mixture

        # 3. The retraining policy requests one training run on the new mixture; it trains new checkpoints.
        requests, _, mixture_cursor = _tick(mixture_retraining_sensor, instance, defs, mixture_cursor)
        assert [(r.job_name, r.run_key) for r in requests] == [("training_job", f"mixture:{_version(mixture)}")]
        seed = requests[0].run_config["ops"]["pretrained_checkpoint"]["config"]["train"]["seed"]
        assert seed == mixture.storage_id  # reseeded from the triggering event
        _execute(defs, instance, requests[0])
        pretrained = _latest(instance, "pretrained_checkpoint")
        assert _version(pretrained) != checkpoint_before
        tags = pretrained.asset_materialization.tags
        assert tags["dagster/input_data_version/mixture_weights"] == _version(mixture)
        assert _tick(mixture_retraining_sensor, instance, defs, mixture_cursor)[0] == []  # trained once

        # 4. Every new checkpoint version gets an evaluation request; the final one is evaluated.
        requests, _, eval_cursor = _tick(checkpoint_eval_sensor, instance, defs, eval_cursor)
        by_stage = {r.partition_key: r for r in requests}
        assert set(by_stage) == {"pretrained", "midtrained", "sft", "dpo"}
        dpo = _version(_latest(instance, "dpo_checkpoint"))
        assert by_stage["dpo"].run_key == f"eval:dpo:{dpo}"
        _execute(defs, instance, by_stage["dpo"])
        scores = _latest(instance, "eval_scores", "dpo").asset_materialization.metadata
        assert scores["model_version"].value == dpo
        requested, auto_cursor = _automation(defs, instance, auto_cursor)  # a new evaluation: a new card
        assert requested == {"model_card": {"dpo"}}
        _run_requested(defs, instance, requested)
        card = Path(
            _latest(instance, "model_card", "dpo").asset_materialization.metadata["path"].value
        ).read_text()
        assert dpo in card and _version(mixture) in card

        # 5. An eval regression requests retraining. The ci models score near zero, so the policy is set to
        # count any score not above the best earlier one as a regression (margin -0.01).
        strict = {"retraining": RetrainingPolicy(margin=-0.01)}
        requests, _, _ = _tick(eval_regression_sensor, instance, defs, regression_cursor, resources=strict)
        assert [(r.job_name, r.tags["phi/stage"], r.tags["phi/trigger"]) for r in requests] == [
            ("training_job", "dpo", "eval_regression")
        ]
        assert requests[0].tags["phi/model"] == dpo
        lenient = {"retraining": RetrainingPolicy(margin=1.0)}  # no pass@1 falls by more than 1
        assert _tick(eval_regression_sensor, instance, defs, regression_cursor, resources=lenient)[0] == []
