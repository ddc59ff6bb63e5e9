"""``judged_pairs`` (group ``training``): judge-guided DPO pairs for prompts no program can check (phi-4).

The SFT policy answers open prompts (``judging.py``: textbook topics, the questions of the web rewrites,
user-style requests) several times through the LLM engine (vLLM); the judge (the engine's default model,
``generator_model``; at scale any OpenAI-compatible endpoint the ``llm`` resource points at) compares pairs
of answers in both orders, and a pair is kept only where both verdicts name the same answer. A version
holds ``comparisons.parquet`` (every comparison, both replies, its outcome) and ``pairs.parquet`` (the kept
ones as prompt, chosen, rejected, with the judge's scores and rationales), which ``dpo_checkpoint`` mixes
with the execution-verified pairs.
"""

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri
from phi_assets.common.tables import md_table
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.ingest.batches import Batches, read_batches
from phi_assets.models.assets import generator_model, model_ref
from phi_assets.synthetic.corpus_assets import synthetic_corpus
from phi_assets.training import judging
from phi_assets.training.post_training import sft_checkpoint, sft_policy
from phi_assets.training.runs import parent_checkpoint
from resources import ArtifactStore, LLMEngine, ProfileResource

CODE_VERSION = code_version(__name__, "judged_pairs")
COMPARISONS = "comparisons.parquet"
PAIRS = "pairs.parquet"
RATIONALES = {"rationale_ab": pl.String, "rationale_ba": pl.String}  # the judge's, in each order
PAIR_SCHEMA = {
    **{k: pl.String for k in ("prompt_id", "source", "prompt", "chosen", "rejected")},
    "score_chosen": pl.Float64, "score_rejected": pl.Float64, **RATIONALES,
}
COMPARISON_SCHEMA = {
    **{k: pl.String for k in ("prompt_id", "source", "prompt", "first", "second", "outcome", "winner")},
    "score_first": pl.Float64, "score_second": pl.Float64, **RATIONALES,
}
FUNNEL = ("compared", "kept", "ties", "disagreed", "unparsed")
PROMPT_READS = Batches(text_bytes=8 << 20, rows=1024)  # what reading a prompt source holds at a time


class JudgedPairsConfig(dg.Config):
    prompts: int = 0  # open prompts per source (0: the profile's judged_prompts)
    sources: list[str] = list(judging.SOURCES)  # textbooks, rewrites (their questions), requests (the file)
    requests_file: str = ""  # user-style requests, one per line (empty: the project's prompts/requests.txt)
    samples: int = 4  # policy answers per prompt
    temperature: float = 0.8
    max_tokens: int = 96  # per answer
    max_pairs: int = 2  # answer pairs judged per prompt, each in both orders
    judge_max_tokens: int = 64  # the verdict comes first; the scores and the rationale follow
    seed: int = 0


def open_prompts(store: ArtifactStore, corpus: dict, config: JudgedPairsConfig, limit: int) -> list:
    """Up to ``limit`` prompts from each configured source."""
    unknown = sorted(set(config.sources) - set(judging.SOURCES))
    if unknown:
        raise dg.Failure(description=f"judged_pairs: sources {unknown} are not among {judging.SOURCES}")
    found = []
    for source, name, columns, make in (
        ("textbooks", "textbooks.parquet", ["id", "topic", "audience"], judging.textbook_prompts),
        ("rewrites", "rewrites.parquet", ["id", "text"], judging.rewrite_prompts),
    ):
        if source in config.sources:
            with closing(_corpus_rows(store, corpus, name, columns)) as rows:
                found += make(rows, limit)
    if "requests" in config.sources:
        path = Path(config.requests_file) if config.requests_file else judging.REQUESTS_FILE
        if not path.is_file():
            raise dg.Failure(description=f"judged_pairs: requests_file {path} does not exist")
        found += judging.request_prompts(path, limit)
    return found


def _corpus_rows(store: ArtifactStore, corpus: dict, name: str, columns: list[str]) -> Iterator[dict]:
    """A synthetic corpus file's ``columns``, row by row, read a bounded batch at a time: a prompt source
    stops reading once it has its prompts (phi-1 scale holds a million textbook sections)."""
    for table in read_batches(file_uri(store, corpus, name), PROMPT_READS, columns):
        yield from table.to_pylist()


def _answers(context, store: ArtifactStore, llm: LLMEngine, parent: dict, prompts: list,
             config: JudgedPairsConfig) -> tuple[list[list[str]], int]:
    """``config.samples`` answers of the SFT policy to every prompt (its engine closed afterwards)."""
    policy, _ = sft_policy(context, store, llm, parent, config.max_tokens, config.temperature)
    try:
        answers = policy.sample([p.policy_prompt for p in prompts], config.samples, config.seed)
    finally:
        policy.llm.close()
    return answers, policy.generated


def _build(context, store: ArtifactStore, llm: LLMEngine, parent: dict, judge_manifest: dict, phi_home: str,
           prompts: list, config: JudgedPairsConfig, out: Path) -> Built:
    answers, generated = _answers(context, store, llm, parent, prompts, config)
    items = judging.comparisons(prompts, answers, config.max_pairs)
    judge = model_ref(judge_manifest, store, llm, f"{phi_home}/models")
    requests = [r for item in items for r in item.requests(config.judge_max_tokens)]
    replies = llm.generate(judge, requests, log=context.log, desc="judge verdicts").results if requests else []
    rows, stats = judging.resolve(items, [r.text if r.ok else None for r in replies], prefilled=True)
    context.log.info(f"judged_pairs: {stats.compared} comparisons, {stats.kept} kept, {stats.ties} ties, "
                     f"{stats.disagreed} position-swap disagreements, {stats.unparsed} unparsed")
    comparisons = pl.DataFrame(rows, schema=COMPARISON_SCHEMA)
    comparisons.write_parquet(out / COMPARISONS)
    pairs = pl.DataFrame(judging.preference_rows(rows), schema=PAIR_SCHEMA)
    pairs.write_parquet(out / PAIRS)
    # the version is what was judged and how (the pairs alone would make every judge that keeps none alike)
    return Built(stable_hash(comparisons.rows()), {
        "prompts": {s: sum(p.source == s for p in prompts) for s in config.sources},  # 0: a source gave none
        "answers": sum(len(a) for a in answers), "policy_tokens": generated, "judge": judge.name,
        "compared": stats.compared, "kept": stats.kept, "ties": stats.ties, "disagreed": stats.disagreed,
        "unparsed": stats.unparsed, "verdicts": stats.verdicts, "by_source": stats.by_source,
        "agreement_rate": stats.agreement_rate, "tie_rate": stats.tie_rate,
        "first_position_rate": stats.first_position_rate,
        "examples": pairs.head(3).select("source", "chosen", "rejected", "rationale_ab").to_dicts(),
    })


def _metadata(meta: dict, lineage: dict) -> dict:
    def rate(value):
        return -1.0 if value is None else float(value)  # -1: nothing to measure (no verdict parsed)

    return {
        "judged_pairs": meta["kept"],
        "compared": meta["compared"],
        "funnel": dg.MetadataValue.json({k: meta[k] for k in FUNNEL}),
        "agreement_rate": rate(meta["agreement_rate"]),
        "tie_rate": rate(meta["tie_rate"]),
        "first_position_rate": rate(meta["first_position_rate"]),
        "verdicts": dg.MetadataValue.json(meta["verdicts"]),
        "prompts": dg.MetadataValue.json(meta["prompts"]),
        "pairs_by_source": dg.MetadataValue.json(meta["by_source"]),
        "judge": meta["judge"],
        "examples": md_table(["source", "chosen", "rejected", "rationale"],
                             [[e["source"], repr(e["chosen"][:60]), repr(e["rejected"][:60]),
                               repr((e["rationale_ab"] or "")[:80])] for e in meta["examples"]]),
        "lineage": dg.MetadataValue.json(lineage),
    }


@dg.asset(
    deps=[sft_checkpoint, synthetic_corpus, generator_model],
    group_name="training",
    op_tags=steps.tags("eval"),
    kinds={"vllm"},
    code_version=CODE_VERSION,
    description="DPO pairs for prompts with no executable check (phi-4): the SFT policy's answers compared by "
    "an LLM judge in both orders; only pairs whose two verdicts agree are kept, with the judge's rationale and "
    "scores.",
)
def judged_pairs(
    context: dg.AssetExecutionContext,
    config: JudgedPairsConfig,
    store: ArtifactStore,
    profile: ProfileResource,
    llm: LLMEngine,
) -> dg.MaterializeResult:
    settings = profile.get()
    parent, _ = parent_checkpoint(store, "sft_checkpoint")
    corpus = current(store, "synthetic_corpus", reader="judged_pairs")
    judge_manifest = current(store, "generator_model", reader="judged_pairs")
    prompts = open_prompts(store, corpus, config, config.prompts or settings.sizes.judged_prompts)
    if not prompts:
        raise dg.Failure(description=f"judged_pairs: no prompts in sources {config.sources}")
    inputs = {
        "policy": parent["data_version"],
        "judge": judge_manifest["data_version"],
        "config": config.model_dump(),
        "prompts": stable_hash([(p.id, p.prompt) for p in prompts]),
    }
    outcome = materialize_versioned(
        context, store, code_version=CODE_VERSION, inputs=inputs,
        build=lambda out: _build(context, store, llm, parent, judge_manifest, settings.phi_home, prompts,
                                 config, out),
    )
    lineage = {"sft_checkpoint": parent["data_version"], "synthetic_corpus": corpus["data_version"],
               "generator_model": judge_manifest["data_version"]}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={**_metadata(outcome.metadata, lineage), "skipped": outcome.skipped},
    )
