"""The Hugging Face card (``README.md`` with YAML front matter) of a checkpoint export: what training and
evaluation share.

Every checkpoint version's ``hf/`` export carries a first card written by the training run
(``export_card``: licence, base model, the data it trained on, the recipe; no scores yet), and
``model_card`` writes the full card of an evaluated stage (``phi_assets.evaluation.hf_card``, with the
``model-index``). Both build their metadata here (``card_data``) with ``huggingface_hub``'s
``ModelCardData``, so ``huggingface_hub.ModelCard.load`` reads them and ``upload_folder`` can push them.

Checkpoints and data are named by stable local identifiers, ``phi-factory/<name>@<data version>``
(``local_id``): the base model of ``sft`` is ``phi-factory/midtrained@<its version>``. The Hub accepts only
its own repository ids there; ``phi_assets.evaluation.publish`` replaces them when it pushes.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

README = "README.md"
NAMESPACE = "phi-factory"
LICENSE = "apache-2.0"  # the project's licence (pyproject.toml)
LIBRARY = "transformers"
PIPELINE = "text-generation"
TAGS = ["phi", "phi-factory", "code", "textbooks-are-all-you-need"]
CHECKPOINT = "_checkpoint"  # checkpoint assets are <stage>_checkpoint (a variant: <stage>_checkpoint_<variant>)
#: lineage keys naming the data a stage trained on (the tokenizer and the parent checkpoint are not data)
DATA_KEYS = {
    "mixture": "mixture_weights",
    "synthetic_corpus": "synthetic_corpus",
    "preference_pairs": "preference_pairs",
    "judged_pairs": "judged_pairs",
    "safety_sft": "safety_sft",
    "safety_pairs": "safety_pairs",
}
#: what each stage of the chain is, in a sentence
STAGE_SUMMARY = {
    "pretrained": "pretrained from scratch on the token mixture (filtered code and web, synthetic textbooks, "
    "exercises and rewrites)",
    "midtrained": "the pretrained checkpoint trained further on the mixture reweighted toward long documents, "
    "at a longer context",
    "sft": "the midtrained checkpoint fine-tuned on verified synthetic exercises, textbook instructions, "
    "MBPP's training split and safety examples (supervised fine-tuning)",
    "dpo": "the SFT checkpoint tuned by direct preference optimization on preference pairs verified by "
    "execution, pairs an LLM judge preferred in both orders, and safety pairs",
    "sft_no_safety": "the responsible-AI control: sft without the safety examples",
    "dpo_no_safety": "the responsible-AI control: dpo without the safety pairs, from sft_no_safety",
}


def local_id(name: str, version: str | None = None) -> str:
    """``phi-factory/<name>@<version>`` (or without a version): how a card names a checkpoint or data."""
    return f"{NAMESPACE}/{name}" + (f"@{version}" if version else "")


def stage_of(asset: str) -> str:
    """``sft_checkpoint`` -> ``sft``: the stage a checkpoint asset trains (``sft_checkpoint_no_safety`` ->
    ``sft_no_safety``)."""
    return asset.replace(CHECKPOINT, "", 1)


def checkpoint_id(asset: str, version: str) -> str:
    """The local identifier of a checkpoint version: ``phi-factory/<stage>@<data version>``."""
    return local_id(stage_of(asset), version)


def base_model(lineage: dict) -> str | None:
    """The parent checkpoint a checkpoint's lineage names (``<stage>_checkpoint: version``), or None for
    pretraining, which starts from scratch."""
    parents = [(k, v) for k, v in lineage.items() if CHECKPOINT in k and isinstance(v, str)]
    if len(parents) > 1:
        raise ValueError(
            f"the lineage names {len(parents)} parent checkpoints ({sorted(parents)}); expected one"
        )
    return checkpoint_id(*parents[0]) if parents else None


def lineage_datasets(lineage: dict) -> list[str]:
    """The data versions a checkpoint's lineage names, as local ids (``phi-factory/mixture_weights@v``)."""
    return [
        local_id(asset, lineage[key]) for key, asset in DATA_KEYS.items() if isinstance(lineage.get(key), str)
    ]


def card_data(
    *,
    base: str | None,
    datasets: list[str],
    model_name: str | None = None,
    eval_results: list[EvalResult] | None = None,
) -> ModelCardData:
    """The front matter every phi-factory card has: licence, library, pipeline, tags, base model, datasets
    and (for an evaluated stage) the ``model-index`` of its scores."""
    return ModelCardData(
        license=LICENSE,
        library_name=LIBRARY,
        pipeline_tag=PIPELINE,
        tags=list(TAGS),
        language=["en", "code"],
        base_model=base,
        datasets=datasets or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )


def card(data: ModelCardData, body: str) -> ModelCard:
    """A card from its metadata and markdown body (``ModelCard.from_template`` without a template)."""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n")


def usage(path: str = "<this folder or repository>") -> str:
    """How to load the export with transformers."""
    return (
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{path}")\n'
        f'model = AutoModelForCausalLM.from_pretrained("{path}")\n'
        'ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids\n'
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0]))\n"
        "```"
    )


def export_card(asset: str, lineage: dict, summary: dict) -> ModelCard:
    """The card a training run writes into its export: what the run knows (its parent, the data versions
    its lineage names, the recipe and config, tokens and steps), no scores (``model_card`` adds them)."""
    stage = stage_of(asset)
    base = base_model(lineage)
    recipe = lineage.get("recipe") or {}
    config = recipe.get("config") or {}
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(config.items()) if not isinstance(v, (dict, list)))
    data = lineage_datasets(lineage)
    body = [
        f"# {NAMESPACE} {stage}",
        "A phi-1-style decoder-only code model (the Phi architecture, Hugging Face transformers format) "
        'trained by phi-factory, the Dagster implementation of the "Textbooks Are All You Need" recipe: '
        f"{STAGE_SUMMARY.get(stage, asset)}. Licence {LICENSE}. Its local identifier is "
        f"`{local_id(stage, '<data version>')}`, the data version being the first 32 hex digits of the "
        "sha256 of `model.safetensors`.",
        "This card was written with the export by the training run; the evaluated card "
        f"(`model_card[{stage}]`: scores, decontamination, full lineage) replaces it when the stage is "
        "published.",
        "## Training",
        f"- **Base model**: {f'`{base}`' if base else 'none (trained from scratch)'}\n"
        f"- **Recipe**: `{recipe.get('name', 'not recorded')}`\n"
        f"- **Data**: {', '.join(f'`{d}`' for d in data) or 'see the parent checkpoint'}\n"
        f"- **Steps**: {summary.get('steps', '-')}, **tokens seen**: {summary.get('tokens', '-')}, "
        f"**parameters**: {summary.get('num_params', '-')}",
        "| setting | value |\n|---|---|\n" + rows if rows else "",
        "## Lineage",
        "\n".join(f"- `{k}`: `{v}`" for k, v in sorted(lineage.items()) if isinstance(v, str)) or "-",
        "## Usage",
        usage(),
    ]
    return card(card_data(base=base, datasets=data), "\n\n".join(p for p in body if p))


def write_card(model_card: ModelCard, path: Path) -> None:
    """Write a card atomically (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(str(model_card))
    os.replace(tmp, path)
