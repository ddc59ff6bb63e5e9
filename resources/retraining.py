"""When a falling eval score asks for retraining, and where failed runs are recorded."""

from __future__ import annotations

import dagster as dg


class RetrainingPolicy(dg.ConfigurableResource):
    """Settings of the sensor-triggered retraining loop (``sensors/eval_sensors.py``).

    ``eval_regression_sensor`` requests a retraining run when a new model's score on any of
    ``metrics`` is below the best earlier comparable score of the same stage by more than ``margin``
    (absolute, e.g. 0.02 = 2 points of pass@1). ``reseed``: the retraining run draws a new
    pretraining seed from the triggering event, so it trains a new chain even when no input changed
    (without it, a run over unchanged inputs reuses the stored checkpoints). At most
    ``max_consecutive`` retraining runs are requested for one stage in a row without a new model
    that holds its score, so a stage that keeps regressing cannot retrain forever.
    """

    margin: float = 0.02
    metrics: list[str] = ["humaneval_pass@1", "mbpp_pass@1"]
    reseed: bool = True
    max_consecutive: int = 2
    failures_log: str = ""  # JSON lines of failed runs; "" = {phi_home}/run_failures.jsonl
