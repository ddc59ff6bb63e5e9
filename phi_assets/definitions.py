"""The one ``Definitions`` object of the code location (loaded by ``workspace.yaml``).

The profile (``PHI_PROFILE``: local, ci, k8s) picks resources and the executor here, and only here.
"""

from __future__ import annotations

import dagster as dg

from jobs import ALL_JOBS
from phi_assets.ingest.assets import raw_catalog, raw_code_shards, raw_web_shards
from resources import build_resources, load_profile
from sensors import ALL_SENSORS


def executor_for(profile_name: str) -> dg.ExecutorDefinition:
    if profile_name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor  # one pod per step: per-shard fan-out on the cluster
    return dg.multiprocess_executor


def build_definitions() -> dg.Definitions:
    profile = load_profile()
    return dg.Definitions(
        assets=[raw_code_shards, raw_web_shards, raw_catalog],
        jobs=ALL_JOBS,
        sensors=ALL_SENSORS,
        resources=build_resources(profile),
        executor=executor_for(profile.name),
    )


defs = build_definitions()
