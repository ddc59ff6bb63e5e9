"""The one ``Definitions`` object of the code location (loaded by ``workspace.yaml``).

The profile (``PHI_PROFILE``: local, ci, k8s) picks resources and the executor in ``resources``.
"""

from __future__ import annotations

import dagster as dg

from jobs import ALL_JOBS
from phi_assets.ablations.assets import ABLATION_ASSETS
from phi_assets.curation.assets import CURATION_ASSETS
from phi_assets.evaluation.assets import EVALUATION_ASSETS
from phi_assets.evaluation.model_card import MODEL_CARD_ASSETS
from phi_assets.evaluation.rai import RAI_ASSETS
from phi_assets.ingest.assets import raw_catalog, raw_code_shards, raw_web_shards
from phi_assets.mixture.assets import MIXTURE_ASSETS
from phi_assets.mixture.search_assets import SEARCH_ASSETS
from phi_assets.models.assets import generator_model
from phi_assets.synthetic.assets import SYNTHETIC_ASSETS
from phi_assets.training.assets import TRAINING_ASSETS
from resources import build_executor, build_resources, load_profile
from sensors import ALL_SENSORS


def build_definitions() -> dg.Definitions:
    profile = load_profile()
    return dg.Definitions(
        assets=[raw_code_shards, raw_web_shards, raw_catalog, generator_model, *CURATION_ASSETS,
                *SYNTHETIC_ASSETS, *MIXTURE_ASSETS, *SEARCH_ASSETS,
                *TRAINING_ASSETS, *EVALUATION_ASSETS, *RAI_ASSETS, *MODEL_CARD_ASSETS, *ABLATION_ASSETS],
        jobs=ALL_JOBS,
        sensors=ALL_SENSORS,
        resources=build_resources(profile),
        executor=build_executor(profile),
    )


defs = build_definitions()
