"""The Hugging Face card of an evaluated checkpoint stage: ``README.md`` in ``model_card``'s version.

The front matter is built with ``huggingface_hub`` (``ModelCardData``, ``EvalResult``; shared fields in
``phi_assets.common.hf_card``), so ``huggingface_hub.ModelCard.load`` reads it and the Hub shows it:

- ``license: apache-2.0``, ``library_name: transformers``, ``pipeline_tag: text-generation``, tags;
- ``base_model``: the parent checkpoint, ``phi-factory/<stage>@<data version>`` (none for pretrained);
- ``datasets``: the data lineage of the whole chain: the mixture version, its sources, and the
  post-training data (``synthetic_corpus``, ``preference_pairs``) versions;
- ``model-index``: every score ``eval_scores`` of the stage recorded (pass@k per benchmark, the
  understanding score when graded), the numbers of its manifest unchanged (fractions, not percent).

The body: what the model is and how to load it, then ``MODEL_CARD.md``'s sections (``card_text.sections``:
model, recipe, data, decontamination, evaluation, lineage) with a "Data ablations" section before the
lineage: the ``ablation_report`` table and the verdict of the arm this checkpoint's data recipe is
(``phi4_mix``), or "not run" when no report exists.
"""

import dagster as dg
from huggingface_hub import EvalResult

from phi_assets.common import hf_card
from phi_assets.evaluation.card_facts import ABLATION_ASSET, Facts
from phi_assets.evaluation.card_text import sections

ABLATION_ARM = "phi4_mix"  # the arm whose data recipe is the mixture the checkpoints train on
#: benchmark -> (Hub dataset id, display name)
BENCHMARK_DATASETS = {
    "humaneval": ("openai/openai_humaneval", "HumanEval"),
    "mbpp": ("google-research-datasets/mbpp", "MBPP"),
}
UNDERSTANDING = ("phi-factory/understanding", "phi-1 understanding (Table 2, LLM-graded)")


def eval_results(evaluation: dict) -> list[EvalResult]:
    """The ``model-index`` entries of an ``eval_scores`` manifest: pass@k of every benchmark (k ascending),
    then the understanding score when it was graded."""
    meta = evaluation["metadata"]
    out = []
    for benchmark, scores in sorted(meta["scores"].items()):
        dataset, name = BENCHMARK_DATASETS.get(benchmark, (benchmark, benchmark))
        ks = sorted((k for k in scores if k.startswith("pass@")), key=lambda k: int(k[5:]))
        for k in ks:
            out.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="Code generation",
                    dataset_type=dataset,
                    dataset_name=name,
                    dataset_split="test",
                    metric_type=k,
                    metric_name=k,
                    metric_value=float(scores[k]),
                    verified=False,
                )
            )
    score = (meta.get("understanding") or {}).get("score")
    if score is not None:
        out.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=UNDERSTANDING[0],
                dataset_name=UNDERSTANDING[1],
                metric_type="understanding",
                metric_value=float(score),
                verified=False,
            )
        )
    return out


def chain_datasets(facts: Facts) -> list[str]:
    """The data lineage of the whole chain as local identifiers: the mixture version, each of its sources,
    then the data versions each later stage names (the synthetic corpus of SFT, DPO's pairs)."""
    out: list[str] = []
    for manifest in facts.chain:
        for name in hf_card.lineage_datasets(manifest["metadata"].get("lineage", {})):
            if name not in out:
                out.append(name)
        if manifest is facts.chain[0] and facts.mixture is not None:
            out += [hf_card.local_id(source) for source in sorted(facts.mixture["metadata"].get("shards", {}))]
    return out


def base_model(facts: Facts) -> str | None:
    """The checkpoint this one was initialized from (the chain's previous link), or None for pretraining."""
    if len(facts.chain) < 2:
        return None
    parent = facts.chain[-2]
    return hf_card.checkpoint_id(parent["asset"], parent["data_version"])


def _interval(stat: dict) -> str:
    return f"{stat['mean']:+.4f} [{stat['lo']:+.4f}, {stat['hi']:+.4f}]"


def ablation_section(report: dict | None) -> str:
    """The ablation report's table and the verdict of ``phi4_mix``; "not run" without a report. A report
    whose metadata lacks what the card shows is a failure naming it."""
    if report is None:
        return (
            f"Not run: `{ABLATION_ASSET}` has no materialized version, so this card cannot say how the data "
            f"recipe (`{ABLATION_ARM}`) compares with training on the raw data."
        )
    meta = report.get("metadata", {})
    missing = [k for k in ("baseline", "table_md", "arms") if k not in meta]
    if missing:
        raise dg.Failure(
            description=f"model_card: {ABLATION_ASSET} version {report.get('data_version')} has no "
            f"{missing} in its metadata; materialize it again with the current code"
        )
    intro = (
        f"`{ABLATION_ASSET}` `{report['data_version']}`: small models trained on each data recipe (arm) "
        f"with several seeds, each compared with the baseline `{meta['baseline']}` (means, with the interval "
        "in brackets)."
    )
    arms = [a for a in meta["arms"] if a.get("arm") == ABLATION_ARM]
    if not arms:
        names = ", ".join(f"`{a.get('arm')}`" for a in meta["arms"]) or "none"
        verdict = f"The report has no `{ABLATION_ARM}` arm (the checkpoints' data recipe); its arms: {names}."
    else:
        arm = arms[0]
        versus = arm.get("vs_baseline") or {}
        shown = meta.get("primary") or sorted(versus)  # the report's primary metrics, when it names them
        # a difference of None: no seed in common with the baseline
        deltas = "; ".join(f"{m} {_interval(versus[m])}" for m in shown if versus.get(m))
        verdict = (
            f"**Verdict for this checkpoint's data recipe (`{ABLATION_ARM}`, {arm.get('seeds', '?')} seeds)**: "
            f"{arm.get('verdict', 'none recorded')}"
            + (f" (vs `{meta['baseline']}`: {deltas})" if deltas else "")
        )
    return "\n\n".join([intro, meta["table_md"].strip(), verdict])


def body(facts: Facts, decontamination: dict, max_rows: int) -> str:
    """The card's markdown: what the model is and how to load it, then the model card's sections with the
    data ablations before the lineage."""
    cp = facts.checkpoint
    base = base_model(facts)
    parts = [
        f"# {hf_card.NAMESPACE} {facts.stage}",
        f"`{hf_card.checkpoint_id(facts.asset, cp['data_version'])}`: a phi-1-style decoder-only code model "
        "(the Phi architecture, Hugging Face transformers format) trained by phi-factory, the Dagster "
        'implementation of the "Textbooks Are All You Need" recipe: '
        f"{hf_card.STAGE_SUMMARY.get(facts.stage, facts.asset)}. "
        + (f"Base model `{base}`. " if base else "")
        + f"Licence {hf_card.LICENSE}. The numbers below are read from the artifact store's manifests "
        f"(`model_card[{facts.stage}]`); nothing was recomputed.",
        "## Usage",
        hf_card.usage(),
    ]
    for heading, text in sections(facts, decontamination, max_rows):
        if heading == "## Lineage":
            parts += ["## Data ablations", ablation_section(facts.ablation)]
        parts += [heading, text] if heading else [text]
    return "\n\n".join(parts)


def readme(facts: Facts, decontamination: dict, max_rows: int = 64) -> str:
    """The whole ``README.md``: front matter and body, a function of the facts only (no clock)."""
    cp = facts.checkpoint
    data = hf_card.card_data(
        base=base_model(facts),
        datasets=chain_datasets(facts),
        model_name=hf_card.checkpoint_id(facts.asset, cp["data_version"]),
        eval_results=eval_results(facts.eval),
    )
    return str(hf_card.card(data, body(facts, decontamination, max_rows)))
