"""The responsible-AI control (group ``training``): the post-training chain again, without the safety data.

``sft_checkpoint_no_safety`` and ``dpo_checkpoint_no_safety`` are ``sft_checkpoint`` and ``dpo_checkpoint`` with
one difference: no ``safety_sft`` examples, no ``safety_pairs``. Same parent (the midtrained checkpoint), same
instruction data, same verified and judged pairs (sampled from the safety-trained SFT policy: the pairs are the
treatment's, so the safety data is the only difference), same recipes and configs (their safety fields
ignored). ``rai_scores`` compares the two DPO checkpoints: the phi-3 report's Figure 8, with and without safety
post-training.
"""

import dagster as dg

from k8s import steps
from phi_assets.common.code_version import code_version
from phi_assets.synthetic.corpus_assets import synthetic_corpus
from phi_assets.training.dpo_assets import DPOConfig, judged_pairs, train_dpo
from phi_assets.training.post_training import FinetuneConfig, preference_pairs, train_sft
from phi_assets.training.pretraining import midtrained_checkpoint
from resources import ArtifactStore, DecontaminationResource, ProfileResource
from resources.training import TrainingLauncher

SFT_CONTROL_CODE_VERSION = code_version(__name__, "sft_checkpoint_no_safety")
DPO_CONTROL_CODE_VERSION = code_version(__name__, "dpo_checkpoint_no_safety")


@dg.asset(
    deps=[midtrained_checkpoint, synthetic_corpus],
    group_name="training",
    op_tags=steps.tags("light"),
    pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=SFT_CONTROL_CODE_VERSION,
    description="The responsible-AI control's SFT: sft_checkpoint without the safety examples.",
)
def sft_checkpoint_no_safety(
    context: dg.AssetExecutionContext,
    config: FinetuneConfig,
    store: ArtifactStore,
    decontamination: DecontaminationResource,
    training_launcher: TrainingLauncher,
    profile: ProfileResource,
) -> dg.MaterializeResult:
    return train_sft(
        context,
        config,
        store,
        decontamination,
        training_launcher,
        profile,
        code_version=SFT_CONTROL_CODE_VERSION,
        safety_data=False,
    )


@dg.asset(
    deps=[sft_checkpoint_no_safety, preference_pairs, judged_pairs],
    group_name="training",
    op_tags=steps.tags("light"),
    pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=DPO_CONTROL_CODE_VERSION,
    description="The RAI control's DPO: dpo_checkpoint without the safety pairs, from the control SFT.",
)
def dpo_checkpoint_no_safety(
    context: dg.AssetExecutionContext,
    config: DPOConfig,
    store: ArtifactStore,
    training_launcher: TrainingLauncher,
    profile: ProfileResource,
) -> dg.MaterializeResult:
    return train_dpo(
        context,
        config,
        store,
        training_launcher,
        profile,
        parent_asset="sft_checkpoint_no_safety",
        code_version=DPO_CONTROL_CODE_VERSION,
        safety_data=False,
    )


SAFETY_CONTROL_ASSETS = [sft_checkpoint_no_safety, dpo_checkpoint_no_safety]
