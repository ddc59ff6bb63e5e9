"""shard_sensor: a new file becomes a partition and a run; nothing is ever requested twice, and a file
the instance shows ingested as it is listed now is not requested again from a fresh cursor. A tick
identifies files from their listing (name, size, mtime) and reads no file's bytes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import dagster as dg
import pytest

from phi_assets.ingest.assets import raw_code_shards
from resources import ArtifactStore, ProfileResource
from sensors.shard_sensor import IDENTITY_TAG, shard_sensor
from tests.support.dagster_runs import materialize_shard
from tests.support.files import landing
from tests.test_landing_scan import spy_reads  # also registers the ``counting://`` filesystem

ROW = json.dumps({"text": "import this\n"}) + "\n"


def tick(instance, profile, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"profile": ProfileResource.from_profile(profile),
                                                 "store": ArtifactStore(root=profile.artifact_root)})
    result = shard_sensor(context)
    for request in result.dynamic_partitions_requests:  # what the daemon does with the result
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_new_file_becomes_partition_and_run(instance, profile):
    (landing(profile, "code") / "stack-000.jsonl").write_text(ROW)
    result = tick(instance, profile)
    (request,) = result.run_requests
    assert request.partition_key == "stack-000.jsonl" and request.job_name == "ingest_code_job"
    identity = request.tags[IDENTITY_TAG]
    assert request.run_key == f"code:stack-000.jsonl:{identity}" and len(identity) == 24
    (added,) = result.dynamic_partitions_requests
    assert added.partitions_def_name == "code_shards" and list(added.partition_keys) == ["stack-000.jsonl"]
    assert instance.get_dynamic_partitions("code_shards") == ["stack-000.jsonl"]


def test_same_file_seen_again_gives_nothing(instance, profile):
    (landing(profile, "web") / "fineweb-000.jsonl").write_text(ROW)
    first = tick(instance, profile)
    second = tick(instance, profile, first.cursor)
    assert len(first.run_requests) == 1
    assert second.run_requests == [] and second.dynamic_partitions_requests == []


def test_restart_with_persisted_cursor_gives_nothing(instance, profile):
    (landing(profile, "web") / "a.jsonl").write_text(ROW)
    cursor = tick(instance, profile).cursor
    # a restarted sensor gets the cursor back from the instance
    again = tick(instance, profile, json.loads(json.dumps(cursor)))
    assert again.run_requests == [] and again.dynamic_partitions_requests == []
    assert instance.get_dynamic_partitions("web_shards") == ["a.jsonl"]


def test_a_touched_file_gives_a_new_run(instance, profile):
    """The tick does not read the bytes, so a new mtime is a new object (its ingest run skips the work:
    see test_a_touched_file_is_requested_once_and_its_ingestion_skips)."""
    path = landing(profile, "web") / "a.jsonl"
    path.write_text(ROW)
    first = tick(instance, profile)
    os.utime(path, (1, 1))
    (request,) = tick(instance, profile, first.cursor).run_requests
    assert request.partition_key == "a.jsonl" and request.run_key != first.run_requests[0].run_key


def test_copy_under_another_name_is_a_shard_of_its_own(instance, profile):
    src = landing(profile, "code") / "one.jsonl"
    src.write_text(ROW)
    cursor = tick(instance, profile).cursor
    shutil.copy2(src, landing(profile, "code") / "one-copy.jsonl")
    (request,) = tick(instance, profile, cursor).run_requests
    assert request.partition_key == "one-copy.jsonl"


def test_changed_content_requests_a_new_run_for_the_same_partition(instance, profile):
    path = landing(profile, "code") / "s.jsonl"
    path.write_text(ROW)
    first = tick(instance, profile)
    path.write_text(ROW + json.dumps({"text": "x = 1\n"}) + "\n")
    second = tick(instance, profile, first.cursor)
    (request,) = second.run_requests
    assert request.partition_key == "s.jsonl" and request.run_key != first.run_requests[0].run_key
    assert second.dynamic_partitions_requests == []  # the partition already exists


def test_in_progress_uploads_are_ignored(instance, profile):
    for name in (".s.jsonl.swp", "_tmp.jsonl", "upload.jsonl.part", "x.jsonl.tmp"):
        (landing(profile, "code") / name).write_text(ROW)
    result = tick(instance, profile)
    assert result.run_requests == [] and result.skip_reason is not None


def test_lost_cursor_gives_no_duplicate_partition_and_the_same_run_key(instance, profile):
    """Dagster drops run requests whose run_key it has seen; the key is the file's name and identity."""
    (landing(profile, "code") / "k.jsonl").write_text(ROW)
    first = tick(instance, profile)
    again = tick(instance, profile, cursor=None)
    assert again.dynamic_partitions_requests == []
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]


def test_a_fresh_cursor_skips_files_ingested_with_their_current_content(instance, profile, resources):
    """`dagster dev` on a home whose landed files were ingested (by the demo, by hand): nothing is
    requested; a file that changed since its ingestion, or never was ingested, still is."""
    code = landing(profile, "code")
    (code / "done.jsonl").write_text(ROW)
    (code / "edited.jsonl").write_text(ROW + json.dumps({"text": "y = 2\n"}) + "\n")
    for key in ("done.jsonl", "edited.jsonl"):
        assert materialize_shard(raw_code_shards, key, instance, resources).success
    (code / "edited.jsonl").write_text(ROW + json.dumps({"text": "y = 3\n"}) + "\n")
    (code / "waiting.jsonl").write_text(json.dumps({"text": "z = 4\n"}) + "\n")
    instance.add_dynamic_partitions("code_shards", ["waiting.jsonl"])  # registered, never ingested
    result = tick(instance, profile)
    assert sorted(r.partition_key for r in result.run_requests) == ["edited.jsonl", "waiting.jsonl"]
    assert result.dynamic_partitions_requests == []
    assert tick(instance, profile, result.cursor).run_requests == []


def test_landing_area_can_be_any_fsspec_uri():
    """The k8s profile lands shards on object stores; fsspec's memory filesystem stands in."""
    import fsspec

    from sensors.landing import scan_landing

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/phi-landing/web/cc-000.jsonl", ROW.encode())
    fs.pipe_file("/phi-landing/web/.cc-001.jsonl.part", ROW.encode())
    new, state = scan_landing("memory://phi-landing/web", {})
    assert [(s.name, s.uri) for s in new] == [("cc-000.jsonl", "memory:///phi-landing/web/cc-000.jsonl")]
    assert scan_landing("memory://phi-landing/web", state)[0] == []


def test_a_touched_file_is_requested_once_and_its_ingestion_skips(instance, profile, resources):
    """The identity the ingest step records (from ``fs.info``) is what a fresh cursor compares: the run
    for a touched file skips the work (same bytes) and records the new identity, so it is not asked
    for again."""
    path = landing(profile, "code") / "t.jsonl"
    path.write_text(ROW)
    assert materialize_shard(raw_code_shards, "t.jsonl", instance, resources).success
    assert tick(instance, profile).run_requests == []
    os.utime(path, (1, 1))
    (request,) = tick(instance, profile).run_requests
    result = materialize_shard(raw_code_shards, "t.jsonl", instance, resources)
    (event,) = result.asset_materializations_for_node("raw_code_shards")
    assert event.metadata["skipped"].value is True
    assert event.metadata["shard_identity"].value == request.tags[IDENTITY_TAG]
    assert tick(instance, profile).run_requests == []


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return spy_reads(monkeypatch)


def test_a_tick_reads_no_file(instance, profile, reads, tmp_path):
    """The sensor's evaluation over a landing area on a filesystem that counts reads: none, for a 1 GB
    file (sparse) as for a small one, on a fresh cursor and on the next tick."""
    root = tmp_path / "counting" / "landing"  # a ``counting`` directory: Python-level opens count too
    (root / "code").mkdir(parents=True)
    (root / "code" / "small.jsonl").write_text(ROW)
    with open(root / "code" / "big.jsonl", "wb") as f:
        f.truncate(1 << 30)
    counted = dataclasses.replace(profile, landing_root=f"counting://{root}")
    reads.clear()
    first = tick(instance, counted)
    assert sorted(r.partition_key for r in first.run_requests) == ["big.jsonl", "small.jsonl"]
    assert tick(instance, counted, first.cursor).run_requests == []
    assert reads == []


def test_the_cursor_holds_the_landing_area_not_its_history(instance, profile):
    """Files land and leave over many ticks: the cursor keeps the identities of what is there now."""
    code = landing(profile, "code")
    cursor, sizes = None, []
    for n in range(30):
        (code / f"s-{n:03}.jsonl").write_text(ROW)
        if n >= 4:
            (code / f"s-{n - 4:03}.jsonl").unlink()
        result = tick(instance, profile, cursor)
        assert [r.partition_key for r in result.run_requests] == [f"s-{n:03}.jsonl"]
        cursor = result.cursor
        assert sorted(json.loads(cursor)["code"]["seen"]) == sorted(p.name for p in code.iterdir())
        sizes.append(len(cursor))
    assert max(sizes[4:]) == min(sizes[4:])  # 4 files, whatever the number seen
