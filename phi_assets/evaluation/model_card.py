"""``model_card`` (group ``evaluation``): a markdown card per trained checkpoint stage.

One partition per stage of the training chain: ``pretrained``, ``midtrained``, ``sft``, ``dpo`` (the
stages of ``eval_scores`` less ``reference``, which is not trained here). The card describes the
checkpoint that ``eval_scores`` of the same stage evaluated, which must be the stage's current version:

- **model**: the checkpoint's data version, its architecture (from its Hugging Face ``config.json``) and
  the chain of parent checkpoints it was initialized from;
- **recipe**: each stage of the chain's training config and losses;
- **data**: the tokenizer, the mixture (tokens per source, weights, epochs) and the post-training data;
- **decontamination**: the HumanEval/MBPP method and thresholds and what every corpus removed;
- **evaluation**: pass@k per benchmark beside the rows of the phi-1 paper's Table 1;
- **data ablations** (the Hugging Face card): the ``ablation_report`` table and the verdict of the
  ``phi4_mix`` arm, the checkpoints' data recipe, or "not run";
- **lineage**: the current data version of every asset partition upstream of the checkpoint, back to
  the raw shards (the walk of the asset graph), and whether the assets downstream of each recorded
  that version (a version nobody recorded is ``-``; one replaced after its consumers ran is ``stale``).

Everything is read from the artifact store's manifests (and the Dagster instance for dynamic partition
keys); nothing is recomputed. A version holds ``MODEL_CARD.md``, ``lineage.json`` and ``README.md``, the
Hugging Face card (YAML front matter with licence, base model, datasets and the ``model-index`` of the scores;
``huggingface_hub.ModelCard.load`` reads it); the data version is a hash of both cards, and the work is
skipped when every upstream version (the ablation report's included) is unchanged.

This module is the asset; ``card_facts`` reads the store and walks the asset graph, ``card_text`` renders
the markdown, ``hf_card`` the Hugging Face card, and ``publish`` assembles a push-ready folder (the
checkpoint's export with this card).
"""

import json
from pathlib import Path

import dagster as dg

from k8s import steps
from phi_assets.common.automation import ON_NEW_DATA
from phi_assets.common.code_version import code_version
from phi_assets.common.hf_card import README
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.evaluation.assets import EVAL_ASSET
from phi_assets.evaluation.card_facts import CARD_STAGES, gather, lineage_inputs
from phi_assets.evaluation.card_text import CARD, LINEAGE, render
from phi_assets.evaluation.hf_card import readme
from resources import ArtifactStore, DecontaminationResource

CODE_VERSION = code_version(__name__, "model_card")
CARD_ASSET = "model_card"
card_stages = dg.StaticPartitionsDefinition(list(CARD_STAGES))


class ModelCardConfig(dg.Config):
    max_partition_rows: int = 64  # a partitioned asset with more partitions gets one summary row in the card


def code_location_graph(context: dg.AssetExecutionContext):
    """The code location's asset graph, partitions definitions included, from the run's own job: a job's
    graph keeps only the assets it runs (the others as stubs, without partitions or parents) but holds the
    graph it was cut from as its ``source_asset_graph``. That holds for ``dagster asset materialize`` and
    for a job of the ``Definitions`` executed in process, whose context has no repository."""
    graph = context.job_def.asset_layer.asset_graph
    return getattr(graph, "source_asset_graph", graph)


@dg.asset(
    partitions_def=card_stages,
    deps=[
        dg.AssetDep(
            dg.AssetKey(EVAL_ASSET), partition_mapping=dg.StaticPartitionMapping({s: s for s in CARD_STAGES})
        )
    ],
    group_name="evaluation",
    op_tags=steps.tags("light"),
    kinds={"markdown"},
    code_version=CODE_VERSION,
    automation_condition=ON_NEW_DATA,
    description="A markdown card per trained checkpoint stage: architecture, recipe, tokens per source and the "
    "mixture, decontamination results, eval scores beside phi-1's Table 1, and the data version of every "
    "upstream asset partition back to the raw shards; plus the Hugging Face card (README.md: licence, base "
    "model, datasets, model-index, data ablations).",
)
def model_card(
    context: dg.AssetExecutionContext,
    config: ModelCardConfig,
    store: ArtifactStore,
    decontamination: DecontaminationResource,
) -> dg.MaterializeResult:
    stage = context.partition_key
    if config.max_partition_rows < 1:
        raise dg.Failure(
            description=f"model_card: max_partition_rows must be >= 1, got {config.max_partition_rows}"
        )
    facts = gather(context, store, code_location_graph(context), stage)
    settings = {"ngram": decontamination.ngram, "use_embeddings": decontamination.use_embeddings}
    inputs = {
        "stage": stage,
        "lineage": lineage_inputs(facts),
        "decontamination": settings,
        "config": config.model_dump(),
        "ablation_report": facts.ablation["data_version"] if facts.ablation else None,
    }

    def build(out: Path) -> Built:
        text = render(facts, settings, config.max_partition_rows)
        (out / CARD).write_text(text)
        rows = [
            {
                "asset": e.asset,
                "partition": e.partition,
                "data_version": e.version,
                "code_version": e.code_version,
                "recorded_downstream": e.status,
            }
            for e in facts.entries
        ]
        (out / LINEAGE).write_text(json.dumps(rows, indent=1))
        hub = readme(facts, settings, config.max_partition_rows)
        (out / README).write_text(hub)
        return Built(
            stable_hash([text, hub]),
            {
                "stage": stage,
                "checkpoint": facts.asset,
                "checkpoint_version": facts.checkpoint["data_version"],
                "eval_version": facts.eval["data_version"],
                "assets": len({e.asset for e in facts.entries}),
                "partitions": len(facts.entries),
                "shards": {n: sum(1 for e in facts.entries if e.asset == n) for n in facts.sources},
                "stale": [f"{e.where}: {e.status}" for e in facts.entries if e.status.startswith("stale")],
                "not_materialized": [e.where for e in facts.entries if e.version is None],
            },
        )

    outcome = materialize_versioned(context, store, code_version=CODE_VERSION, inputs=inputs, build=build)
    meta = outcome.metadata
    where = store.version_path(CARD_ASSET, stage, outcome.data_version)
    text = store.fs.cat_file(f"{where}/{CARD}").decode()
    hub = store.fs.cat_file(f"{where}/{README}").decode()
    for problem in meta["stale"] + [f"{w}: not materialized" for w in meta["not_materialized"]]:
        context.log.warning(f"model_card[{stage}]: {problem}")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "card": dg.MetadataValue.md(text),
            "path": dg.MetadataValue.path(store.uri(f"{where}/{CARD}")),
            "lineage_file": dg.MetadataValue.path(store.uri(f"{where}/{LINEAGE}")),
            "hf_card": dg.MetadataValue.md(hub),
            "hf_card_path": dg.MetadataValue.path(store.uri(f"{where}/{README}")),
            "checkpoint_version": meta["checkpoint_version"],
            "eval_version": meta["eval_version"],
            "lineage_assets": meta["assets"],
            "lineage_partitions": meta["partitions"],
            "shards": dg.MetadataValue.json(meta["shards"]),
            "stale": dg.MetadataValue.json(meta["stale"]),
            "not_materialized": dg.MetadataValue.json(meta["not_materialized"]),
            "skipped": outcome.skipped,
        },
    )


MODEL_CARD_ASSETS = [model_card]
