"""``rai_scores`` (group ``evaluation``): responsible-AI evaluation of safety post-training (phi-3's Figure 8).

Two checkpoints answer the held-out ``eval`` split of the safety set (``phi_assets.common.safety``): a treatment
(``dpo_checkpoint``, post-trained with ``safety_sft`` and ``safety_pairs``) and the control
(``dpo_checkpoint_no_safety``, the same chain without them). Each answer (greedy, via the LLM engine, vLLM on
the checkpoint's export) is labelled refused or complied twice:

- by the judge (the ``llm`` resource's model, ``generator_model``; any OpenAI-compatible endpoint at scale) with
  ``safety.REFUSAL_RUBRIC``, its reply prefilled with ``Label:``;
- by the keyword baseline (``safety.keyword_refusal``), beside it.

The judge's label is the measurement; where it names none, the keyword label stands in (counted as
``judge_unparsed``). Per model and category: the **refusal rate** on harmful requests (higher is safer) and the
**over-refusal rate** on benign look-alikes (lower is more helpful). A version holds ``answers.parquet`` (every
answer with both labels and the judge's reply) and ``calibration.parquet``: both labels of the set's own
``chosen`` and ``rejected`` answers of the same requests, whose refusal is known, so the metadata says how
often the judge and the keywords are right (``judge_accuracy``, ``keyword_accuracy``; a judge below
``safety.RELIABLE_ACCURACY`` is flagged ``judge_reliable`` False, with a warning). Metadata: the with/without
table (judge, keywords), a bar plot, the treatment's rates as floats (``rai_refusal_rate`` and
``rai_answer_rate`` = 1 - over-refusal, both higher is better: ``eval_regression_sensor`` requests retraining
when one falls below the best earlier comparable one by more than the policy's margin), ``model_version`` and
``eval_set`` (which materializations compare).
"""

from pathlib import Path

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common import plots, safety
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, local_copy
from phi_assets.common.tables import md_table
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.models.assets import generator_model, model_ref
from resources import ArtifactStore, LLMEngine, ProfileResource
from resources.llm import Request
from resources.llm.checkpoint import checkpoint_engine, checkpoint_model

CODE_VERSION = code_version(__name__, "rai_scores")
RAI_ASSET = "rai_scores"
ANSWERS = "answers.parquet"
CALIBRATION = "calibration.parquet"
WITH, WITHOUT = "with_safety", "without_safety"
#: the sensor's metrics (the treatment's, higher is better)
RAI_METRICS = ("rai_refusal_rate", "rai_answer_rate")
ANSWER_SCHEMA = {
    **{k: pl.String for k in ("model", "id", "category", "kind", "prompt", "answer", "judge_reply")},
    "keyword_refused": pl.Boolean,
    "judge_refused": pl.Boolean,
    "refused": pl.Boolean,
}
CALIBRATION_SCHEMA = {
    **{k: pl.String for k in ("id", "kind", "answer", "judge_reply")},
    "refusal": pl.Boolean, "judge_refused": pl.Boolean, "keyword_refused": pl.Boolean,
}


class RaiConfig(dg.Config):
    path: str = ""  # the safety set (empty: the project's); its eval split is asked
    per_cell: int = (
        0  # eval requests per (category, kind), the first in the file (0: the profile's rai_per_cell)
    )
    treatment: str = "dpo_checkpoint"  # the checkpoint post-trained with the safety data
    control: str = "dpo_checkpoint_no_safety"  # the same chain without it
    max_tokens: int = 64  # per answer (a refusal shows in its first sentence)
    judge_max_tokens: int = 8  # the label follows the prefilled "Label:"


def requests_of(items: list[safety.SafetyItem], max_tokens: int) -> list[Request]:
    return [Request.completion(i.chat_prompt, temperature=0.0, max_tokens=max_tokens) for i in items]


def judge_requests(items: list[safety.SafetyItem], answers: list[str], max_tokens: int) -> list[Request]:
    return [
        Request.chat(
            [
                {"role": "system", "content": safety.REFUSAL_RUBRIC},
                {"role": "user", "content": safety.judge_user(i.prompt, a)},
                {"role": "assistant", "content": safety.LABEL_PREFILL},
            ],
            max_tokens=max_tokens,
            temperature=0.0,
            stop=("\n",),
        )
        for i, a in zip(items, answers, strict=True)
    ]


def labelled_rows(
    model: str, items: list[safety.SafetyItem], answers: list[str], replies: list[str | None]
) -> list[dict]:
    """One row per answer: both labels, and ``refused``: the judge's, else the keyword baseline's."""
    rows = []
    for item, answer, reply in zip(items, answers, replies, strict=True):
        keyword, judged = safety.keyword_refusal(answer), safety.parse_label(reply)
        rows.append(
            {
                "model": model,
                "id": item.id,
                "category": item.category,
                "kind": item.kind,
                "prompt": item.prompt,
                "answer": answer,
                "judge_reply": reply or "",
                "keyword_refused": keyword,
                "judge_refused": judged,
                "refused": keyword if judged is None else judged,
            }
        )
    return rows


def rates_of(rows: list[dict], label: str) -> dict:
    return safety.rai_rates(safety.Labelled(r["model"], r["category"], r["kind"], bool(r[label])) for r in rows)


def _answers(
    store: ArtifactStore, llm: LLMEngine, manifest: dict, name: str, items, config: RaiConfig, log
) -> list[str]:
    """The checkpoint's greedy answers to every request (its engine closed afterwards)."""
    hf = local_copy(store, manifest, "hf")
    engine = checkpoint_engine(llm, Path(hf))
    try:
        ref = checkpoint_model(
            engine,
            f"{name}-{manifest['data_version'][:12]}",
            manifest["data_version"],
            Path(hf),
            file_uri(store, manifest, "hf"),
        )
        results = engine.generate(
            ref, requests_of(items, config.max_tokens), log=log, desc=f"{name} answers"
        ).results
    finally:
        engine.close()
    return [r.text if r.ok else "" for r in results]


def _build(
    context,
    store: ArtifactStore,
    llm: LLMEngine,
    models: dict[str, dict],
    judge_manifest: dict,
    phi_home: str,
    items,
    config: RaiConfig,
    out: Path,
) -> Built:
    answers = {
        m: _answers(store, llm, manifest, m, items, config, context.log) for m, manifest in models.items()
    }
    judge = model_ref(judge_manifest, store, llm, f"{phi_home}/models")
    flat = [a for m in models for a in answers[m]]
    references = safety.reference_answers(items)
    asked = judge_requests([*items * len(models), *(i for i, _, _ in references)],
                           [*flat, *(a for _, a, _ in references)], config.judge_max_tokens)
    replies = llm.generate(judge, asked, log=context.log, desc="refusal labels").results
    texts = [r.text if r.ok else None for r in replies]
    n = len(items)
    rows = [
        row
        for k, m in enumerate(models)
        for row in labelled_rows(m, items, answers[m], texts[k * n : (k + 1) * n])
    ]
    frame = pl.DataFrame(rows, schema=ANSWER_SCHEMA)
    frame.write_parquet(out / ANSWERS)
    calibration = calibration_rows(references, texts[len(models) * n :])
    pl.DataFrame(calibration, schema=CALIBRATION_SCHEMA).write_parquet(out / CALIBRATION)
    parsed = [r for r in rows if r["judge_refused"] is not None]
    truth = [r["refusal"] for r in calibration]
    judge_accuracy = safety.label_accuracy(truth, [r["judge_refused"] for r in calibration])
    if judge_accuracy is not None and judge_accuracy < safety.RELIABLE_ACCURACY:
        context.log.warning(
            f"rai_scores: the judge {judge.name} labels {judge_accuracy:.2f} of the safety set's own reference "
            f"answers right (below {safety.RELIABLE_ACCURACY}); its refusal rates are not a measurement"
        )
    return Built(
        stable_hash([frame.rows(), [r["judge_reply"] for r in calibration]]),
        {
            "judge": judge.name,
            "rates": rates_of(rows, "refused"),
            "keyword_rates": rates_of(rows, "keyword_refused"),
            "judge_unparsed": len(rows) - len(parsed),
            "judge_keyword_agreement": (
                sum(r["judge_refused"] == r["keyword_refused"] for r in parsed) / len(parsed)
                if parsed
                else None
            ),
            "judge_accuracy": judge_accuracy,
            "keyword_accuracy": safety.label_accuracy(truth, [r["keyword_refused"] for r in calibration]),
            "examples": [{k: r[k] for k in ("model", "kind", "prompt", "answer", "refused")} for r in rows[:4]],
        },
    )


def calibration_rows(references: list, replies: list[str | None]) -> list[dict]:
    """The judge's and the keywords' labels of the set's reference answers, beside the truth."""
    return [
        {"id": item.id, "kind": item.kind, "answer": answer, "refusal": truth, "judge_reply": reply or "",
         "judge_refused": safety.parse_label(reply), "keyword_refused": safety.keyword_refusal(answer)}
        for (item, answer, truth), reply in zip(references, replies, strict=True)
    ]


def _rate(value) -> float:
    return -1.0 if value is None else round(float(value), 4)  # -1: no request of that kind


def rai_metadata(meta: dict, lineage: dict, model_version: str, eval_set: str) -> dict:
    rates, keyword = meta["rates"], meta["keyword_rates"]
    overall = rates.get(WITH, {}).get(safety.ALL, {})
    categories = sorted(c for c in rates.get(WITH, {}) if c != safety.ALL)
    refused = {
        label: [_rate(rates.get(m, {}).get(c, {}).get("refusal_rate")) for c in categories]
        for label, m in (("without safety", WITHOUT), ("with safety", WITH))
    }
    return {
        "table": md_table(safety.FIGURE8_HEADER, safety.figure8_rows(rates, WITHOUT, WITH)),
        "keyword_table": md_table(safety.FIGURE8_HEADER, safety.figure8_rows(keyword, WITHOUT, WITH)),
        "rai_refusal_rate": _rate(overall.get("refusal_rate")),
        "rai_answer_rate": _rate(
            None if overall.get("over_refusal_rate") is None else 1.0 - overall["over_refusal_rate"]
        ),
        "refusal_rate_without_safety": _rate(rates.get(WITHOUT, {}).get(safety.ALL, {}).get("refusal_rate")),
        "over_refusal_rate_without_safety": _rate(
            rates.get(WITHOUT, {}).get(safety.ALL, {}).get("over_refusal_rate")
        ),
        "refusal_plot": plots.grouped_bar_plot(
            categories, refused, "harmful requests refused", "share refused"
        ),
        "rates": dg.MetadataValue.json(rates),
        "judge": meta["judge"],
        "judge_unparsed": meta["judge_unparsed"],
        "judge_keyword_agreement": _rate(meta["judge_keyword_agreement"]),
        # the labels' accuracy on the set's own chosen and rejected answers (whose refusal is known)
        "judge_accuracy": _rate(meta["judge_accuracy"]),
        "keyword_accuracy": _rate(meta["keyword_accuracy"]),
        "judge_reliable": (meta["judge_accuracy"] or 0.0) >= safety.RELIABLE_ACCURACY,
        "examples": md_table(
            ["model", "kind", "prompt", "answer", "refused"],
            [
                [e["model"], e["kind"], repr(e["prompt"][:50]), repr(e["answer"][:60]), str(e["refused"])]
                for e in meta["examples"]
            ],
        ),
        "model_version": model_version,
        "eval_set": eval_set,
        "lineage": dg.MetadataValue.json(lineage),
    }


def _eval_items(config: RaiConfig, sizes) -> list[safety.SafetyItem]:
    try:
        items = safety.load_set(Path(config.path) if config.path else safety.DEFAULT_SET)
    except safety.SafetySetError as e:
        raise dg.Failure(description=f"rai_scores: {e}") from e
    return safety.split_rows(items, "eval", config.per_cell or sizes.rai_per_cell)


@dg.asset(
    # the checkpoints by key: evaluation does not import the training stage
    deps=[dg.AssetKey("dpo_checkpoint"), dg.AssetKey("dpo_checkpoint_no_safety"), generator_model],
    group_name="evaluation",
    op_tags=steps.tags("eval"),
    kinds={"vllm"},
    code_version=CODE_VERSION,
    description="Responsible-AI scores (phi-3's Figure 8): refusal of held-out harmful requests, over-refusal"
    " on benign look-alikes, per category, of the checkpoint post-trained with and without safety data,"
    " labelled by the LLM judge with a refusal rubric, a keyword baseline beside it.",
)
def rai_scores(
    context: dg.AssetExecutionContext,
    config: RaiConfig,
    store: ArtifactStore,
    profile: ProfileResource,
    llm: LLMEngine,
) -> dg.MaterializeResult:
    settings = profile.get()
    items = _eval_items(config, settings.sizes)
    models = {
        WITHOUT: current(store, config.control, reader=RAI_ASSET),
        WITH: current(store, config.treatment, reader=RAI_ASSET),
    }
    judge_manifest = current(store, "generator_model", reader=RAI_ASSET)
    eval_set = stable_hash({"items": [(i.id, i.prompt) for i in items], "max_tokens": config.max_tokens}, 16)
    inputs = {
        "models": {m: v["data_version"] for m, v in models.items()},
        "judge": judge_manifest["data_version"],
        "eval_set": eval_set,
        "config": config.model_dump(),
    }
    outcome = materialize_versioned(
        context,
        store,
        code_version=CODE_VERSION,
        inputs=inputs,
        build=lambda out: _build(
            context, store, llm, models, judge_manifest, settings.phi_home, items, config, out
        ),
    )
    lineage = {
        config.treatment: models[WITH]["data_version"],
        config.control: models[WITHOUT]["data_version"],
        "generator_model": judge_manifest["data_version"],
    }
    metadata = rai_metadata(outcome.metadata, lineage, models[WITH]["data_version"], eval_set)
    context.log.info(f"rai_scores (judge {outcome.metadata['judge']}):\n{metadata['table'].value}")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={**metadata, "requests": len(items), "skipped": outcome.skipped},
    )


RAI_ASSETS = [rai_scores]
