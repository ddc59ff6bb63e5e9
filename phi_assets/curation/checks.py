"""The benchmark-decontamination check, shared by every corpus that can reach training.

A corpus asset declares ``decontamination_check_spec(name)`` (blocking: downstream assets do not
run when it fails) and returns ``decontamination_check_result`` built from its build metadata:
``recheck_flagged`` is the number of HumanEval/MBPP matches found when the written corpus was
scanned again after the flagged documents were removed; anything but 0 fails the check.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

CHECK_NAME = "decontaminated"


def decontamination_check_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        CHECK_NAME,
        asset=asset,
        blocking=True,
        description="No document of the written corpus matches a HumanEval or MBPP task "
        "(13-gram + difflib; code: embedding similarity + syntax ratio).",
    )


def decontamination_check_result(
    asset: str, build: dict[str, Any], scanner_version: str
) -> dg.AssetCheckResult:
    removed = build.get("contaminated", [])
    tasks = sorted({f"{r['task_id']}" for r in removed})
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=CHECK_NAME,
        passed=build["recheck_flagged"] == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "num_flagged_in_output": build["recheck_flagged"],
            "num_removed": len(removed),
            "removed_task_ids": dg.MetadataValue.json(tasks),
            "decontaminator_version": scanner_version,
        },
    )
