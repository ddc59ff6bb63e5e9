"""``automation_sensor``: evaluates the declarative automation conditions of ``phi_assets/common/automation.py``
and launches what they request (runs grouped by partition, as Dagster's daemon launches them)."""

import dagster as dg

automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.all(),  # the assets with a condition (phi_assets/common/automation.py)
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Updates the curation path, the mixture weights and the model cards when their inputs "
    "change (eager, gated by the inputs' blocking checks).",
)
