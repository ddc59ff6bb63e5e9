"""When a falling eval score asks for retraining, and where failed runs are recorded."""

from __future__ import annotations

import dagster as dg


class RetrainingPolicy(dg.ConfigurableResource):
    """Settings of the sensor-triggered retraining loop (``sensors/eval_sensors.py``).

    ``eval_regression_sensor`` requests a retraining run when a new model's score on any of
    ``metrics`` is below the best earlier comparable score of the same stage by more than ``margin``
    (absolute, e.g. 0.02 = 2 points of pass@1); a ``rai_scores`` materialization likewise on ``rai_metrics``
    with ``rai_margin``. ``reseed``: a retraining run (a regression's or a
    new mixture's) draws a new pretraining seed from the triggering event, so it trains a new chain
    even when no input changed, or when the new data lies beyond what the token budget reaches
    (without it, such a run reuses the stored checkpoints or retrains into identical weights). At most
    ``max_consecutive`` retraining runs are requested for one stage in a row without a new model
    that holds its score, so a stage that keeps regressing cannot retrain forever.

    ``on_new_mixture``: ``mixture_retraining_sensor`` (``sensors/retraining.py``) requests a training
    run whenever the mixture's data version changes, i.e. new data passed curation.
    """

    margin: float = 0.02
    metrics: list[str] = ["humaneval_pass@1", "mbpp_pass@1"]
    # rai_scores (the safety-trained model; higher is better): harmful requests refused, benign ones answered
    rai_metrics: list[str] = ["rai_refusal_rate", "rai_answer_rate"]
    rai_margin: float = 0.1  # a rate over tens of requests moves in steps of a few points
    reseed: bool = True
    max_consecutive: int = 2
    on_new_mixture: bool = True
    failures_log: str = ""  # JSON lines of failed runs; "" = {phi_home}/run_failures.jsonl

    def run_config(self, seed: int) -> dict:
        """A retraining run's config: the pretraining seed from the triggering event under ``reseed``."""
        if not self.reseed:
            return {}
        return {"ops": {"pretrained_checkpoint": {"config": {"train": {"seed": seed}}}}}
