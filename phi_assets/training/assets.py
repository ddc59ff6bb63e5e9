"""Training assets (group ``training``): the checkpoints, trained outside the Dagster process.

The chain is ``pretrained_checkpoint`` -> ``midtrained_checkpoint`` (``pretraining.py``) ->
``sft_checkpoint`` -> ``preference_pairs`` (``post_training.py``) and ``judged_pairs`` (``judged_assets.py``) ->
``dpo_checkpoint`` (``dpo_assets.py``), with the safety data (``safety_sft``, ``safety_pairs``:
``safety_data.py``) mixed into SFT and DPO; ``sft_checkpoint_no_safety`` -> ``dpo_checkpoint_no_safety``
(``safety_controls.py``) is the same chain without it, the control of ``rai_scores``; beside it,
``transferred_checkpoint`` (``pretraining.py``) grows the pretrained model into a larger one (phi-2's
scaled knowledge transfer). Each training
asset writes the entrypoint's config (``phi_assets.training.entrypoint``) and starts it through the
``training_launcher`` resource (Dagster Pipes: a subprocess on local/ci, a Kubernetes Job or PyTorchJob
on k8s), so the orchestrator never imports CUDA. Only rank 0 reports; every step's metrics come back as
Pipes messages. Launching and recording a run, and what its version holds, is ``runs.py``.
"""

from phi_assets.training.dpo_assets import DPO_ASSETS, dpo_checkpoint, judged_pairs
from phi_assets.training.post_training import POST_TRAINING_ASSETS, preference_pairs, sft_checkpoint
from phi_assets.training.pretraining import (
    PRETRAINING_ASSETS,
    midtrained_checkpoint,
    pretrained_checkpoint,
    transferred_checkpoint,
)
from phi_assets.training.safety_controls import (
    SAFETY_CONTROL_ASSETS,
    dpo_checkpoint_no_safety,
    sft_checkpoint_no_safety,
)
from phi_assets.training.safety_data import SAFETY_DATA_ASSETS, safety_pairs, safety_sft

__all__ = [
    "TRAINING_ASSETS",
    "dpo_checkpoint",
    "dpo_checkpoint_no_safety",
    "judged_pairs",
    "midtrained_checkpoint",
    "preference_pairs",
    "pretrained_checkpoint",
    "safety_pairs",
    "safety_sft",
    "sft_checkpoint",
    "sft_checkpoint_no_safety",
    "transferred_checkpoint",
]

TRAINING_ASSETS = [*PRETRAINING_ASSETS, *SAFETY_DATA_ASSETS, *POST_TRAINING_ASSETS, *DPO_ASSETS,
                   *SAFETY_CONTROL_ASSETS]
