"""The code location loads, validates, and has exactly the expected asset graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"
ROOT = Path(__file__).resolve().parents[1]


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    out = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        out[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "partitions": getattr(node.partitions_def, "name", None),
            "checks": sorted(c.name for c in node.check_keys),
            "has_code_version": node.code_version is not None,
        }
    return out


def test_definitions_load_and_validate(phi_home):
    from phi_assets.definitions import build_definitions

    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"ingest_code_job", "ingest_web_job",
                                                             "catalog_job"}
    assert defs.resolve_sensor_def("shard_sensor") is not None


def test_asset_graph_matches_snapshot(phi_home):
    """Pins keys, dependencies, groups, partitions and checks. Regenerate deliberately with
    PHI_UPDATE_SNAPSHOTS=1 when the graph is meant to change."""
    from phi_assets.definitions import build_definitions

    snapshot = graph_snapshot(build_definitions())
    if os.environ.get("PHI_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
    assert snapshot == json.loads(SNAPSHOT.read_text())
    assert all(node["has_code_version"] for node in snapshot.values())


def test_k8s_profile_uses_the_kubernetes_executor(monkeypatch, phi_home):
    """No cluster here: only the wiring is checked (the executor is dagster-k8s's, configured from the
    deployment profile ``PHI_K8S_PROFILE`` names; tests/test_k8s_deploy.py checks the pods it builds)."""
    from phi_assets.definitions import build_definitions

    monkeypatch.setenv("PHI_PROFILE", "k8s")
    monkeypatch.setenv("PHI_ARTIFACT_ROOT", "memory://phi/artifacts")
    monkeypatch.setenv("PHI_LANDING_ROOT", "memory://phi/landing")
    monkeypatch.setenv("PHI_K8S_PROFILE", "a100x8x4")
    defs = build_definitions()
    assert defs.executor.name == "k8s_phi"
    assert defs.resources["training_launcher"].nodes == 4  # the profile's PyTorchJobs
    assert defs.resources["store"].root == "memory://phi/artifacts"


def test_k8s_profile_without_uris_names_the_missing_variables(monkeypatch, phi_home):
    from resources import load_profile

    monkeypatch.setenv("PHI_PROFILE", "k8s")
    with pytest.raises(ValueError, match="PHI_ARTIFACT_ROOT, PHI_LANDING_ROOT"):
        load_profile()


def test_unknown_profile_is_a_clear_error(monkeypatch, phi_home):
    from resources import load_profile

    monkeypatch.setenv("PHI_PROFILE", "prod")
    with pytest.raises(ValueError, match="PHI_PROFILE='prod' is not a profile"):
        load_profile()


@pytest.mark.slow  # `dagster definitions validate` in a child process
def test_dagster_cli_validates_the_workspace(phi_home, tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh")}
    os.makedirs(env["DAGSTER_HOME"])
    done = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w",
                           "workspace.yaml"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Validation successful for code location phi_factory" in done.stdout + done.stderr
