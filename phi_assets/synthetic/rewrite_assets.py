"""``rewritten_web``: web documents of ``filtered_web_corpus`` rewritten by the generator model
(phi-4, Nemotron-CC), one batch of the documents per partition, with its prompt chosen by the
document's quality bucket. Validation, decontamination and the batch files are as for the other
generating assets (``batches.py``)."""

from functools import partial
from typing import Any

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, user_error
from phi_assets.common.versioning import materialize_versioned
from phi_assets.curation import stages
from phi_assets.curation.assets import corpus_shards, filtered_web_corpus
from phi_assets.curation.checks import decontamination_check_spec
from phi_assets.models.assets import generator_model, model_ref
from phi_assets.synthetic import batches, generate, templates
from phi_assets.synthetic.batches import BATCHES
from resources import ArtifactStore, ProfileResource
from resources.curation import DecontaminationResource, EncoderResource
from resources.llm import LLMEngine

# The batch selection and decontamination are in the code version, with the prompt files.
REWRITE_CODE_VERSION = code_version(__name__, "rewritten_web")


class RewriteConfig(dg.Config):
    docs_per_batch: int = 0  # 0: the profile's size (ci 3, local 12)
    high_threshold: float = 3.0  # educational score of the "high" bucket (question-answer pairs)
    medium_threshold: float = 2.0  # "medium" from here; below is "low" (both rewritten as textbook)
    max_doc_chars: int = 3000  # the start of each document the model reads
    max_tokens: int = 0  # 0: the profile's synthetic_max_tokens (ci 160, local 256)
    temperature: float = 0.7
    seed: int = 0
    min_words: int = 40
    max_copied: float = 0.5  # a rewrite sharing more of its word 8-grams with the source is a copy


def _rewrite_sources(
    store: ArtifactStore,
    corpora: list[tuple[str, dict]],
    buckets: generate.Buckets,
    batch: int,
    num_batches: int,
) -> pl.DataFrame:
    """This batch's share of the decontaminated, deduplicated web documents, with their buckets."""
    frames = []
    for key, corpus in corpora:
        shard = store.read_manifest("quality_filtered_web_shards", key, corpus["inputs"]["shard"])
        scores = pl.read_parquet(file_uri(store, corpus, stages.SCORES)).filter(
            pl.col("decision") != "contaminated"
        )
        mine = scores.filter(
            pl.Series([generate.in_batch(i, batch, num_batches) for i in scores["id"]], dtype=pl.Boolean)
        )
        if mine.height:
            docs = stages.read_rows(file_uri(store, shard, stages.DOCS), mine.select("row"))
            frames.append(
                mine.join(docs.select("row", "text"), on="row").with_columns(source_shard=pl.lit(key))
            )
    if not frames:
        return pl.DataFrame()
    docs = pl.concat(frames).sort("id").unique("id", keep="first", maintain_order=True)
    bucket = [buckets.of(s) for s in docs["edu_score"].to_list()]
    return docs.select(
        source_id="id",
        source_uri="uri",
        source_shard="source_shard",
        edu_score="edu_score",
        source_text="text",
        bucket=pl.Series(bucket, dtype=pl.String),
        style=pl.Series([generate.STYLE_OF_BUCKET[b] for b in bucket], dtype=pl.String),
    )


def _build_rewrites(
    context,
    config: RewriteConfig,
    store: ArtifactStore,
    llm: LLMEngine,
    profile: ProfileResource,
    generator: dict,
    corpora: list[tuple[str, dict]],
    buckets: generate.Buckets,
    rules: generate.TextRules,
    scanner,
    styles: dict[str, templates.Template],
    n: int,
    max_tokens: int,
    ran: dict[str, Any],
    out,
):
    batch, num_batches = batches.batch_index(context.partition_key), len(BATCHES.get_partition_keys())
    available = _rewrite_sources(store, corpora, buckets, batch, num_batches)
    docs = available.head(n) if available.height else available
    if not docs.height:
        context.log.warning(f"rewritten_web[{context.partition_key}]: no web documents in this batch")
        empty = pl.DataFrame(schema=generate.REWRITE_SCHEMA)
        return batches.finish(
            out,
            REWRITE_CODE_VERSION,
            empty,
            generate.failures_frame([]),
            0,
            {"llm": {}, "contaminated": [], "recheck_flagged": 0, "available": 0, "buckets": {}},
            ran,
        )
    requests = generate.rewrite_requests(
        docs,
        styles,
        max_doc_chars=config.max_doc_chars,
        max_tokens=max_tokens,
        temperature=config.temperature,
        seed=config.seed,
    )
    model = model_ref(generator, store, llm, f"{profile.get().phi_home}/models")
    gen = llm.generate(model, requests, log=context.log, desc=f"rewrites {context.partition_key}")
    kept, failed = generate.rewrite_rows(
        docs, gen.results, rules, styles, batches.model_fields(generator), config.max_copied
    )
    clean, removed, decon = batches.decontaminate(
        kept, scanner, is_code=False, set_name="rewrites", desc="decontaminate rewrites"
    )
    failed = pl.concat([failed, generate.failures_frame(removed)])
    return batches.finish(
        out,
        REWRITE_CODE_VERSION,
        clean,
        failed,
        docs.height,
        {
            "llm": gen.stats.metadata(),
            **decon,
            "available": available.height,
            "buckets": dict(sorted(docs.group_by("bucket").len().iter_rows())),
        },
        ran,
    )


@dg.asset(
    partitions_def=BATCHES,
    deps=[dg.AssetDep(filtered_web_corpus, partition_mapping=dg.AllPartitionMapping()), generator_model],
    group_name="synthetic",
    op_tags=steps.tags("llm-client"),
    kinds={"parquet", "vllm"},
    code_version=REWRITE_CODE_VERSION,
    check_specs=[decontamination_check_spec("rewritten_web")],
    description="Web documents rewritten by the generator model (phi-4, Nemotron-CC): high-quality ones as "
    "question-answer pairs, the rest as textbook sections; each row keeps its source document id.",
)
def rewritten_web(
    context: dg.AssetExecutionContext,
    config: RewriteConfig,
    store: ArtifactStore,
    llm: LLMEngine,
    profile: ProfileResource,
    encoder: EncoderResource,
    decontamination: DecontaminationResource,
) -> dg.MaterializeResult:
    sizes = profile.get().sizes
    n, max_tokens = (
        config.docs_per_batch or sizes.rewrites_per_batch,
        config.max_tokens or sizes.synthetic_max_tokens,
    )
    generator = current(store, "generator_model")
    buckets = user_error(
        "rewritten_web", lambda: generate.Buckets(config.high_threshold, config.medium_threshold)
    )
    rules = user_error("rewritten_web", lambda: generate.TextRules(config.min_words))
    scanner = user_error("rewritten_web", lambda: decontamination.get(encoder))
    prompts = templates.load_all()
    styles = {"qa": prompts["rewrite_qa"], "textbook": prompts["rewrite_textbook"]}
    corpora = corpus_shards(context, store, "web", "rewritten_web")
    inputs = {
        "model": generator["data_version"],
        "corpus": [(k, m["data_version"]) for k, m in corpora],
        "decontamination": scanner.version,
        "config": {**config.model_dump(), "n": n, "max_tokens": max_tokens},
    }
    ran: dict[str, Any] = {}  # what this run generated (see batches.finish)
    build = partial(
        _build_rewrites, context, config, store, llm, profile, generator, corpora, buckets, rules, scanner,
        styles, n, max_tokens, ran,
    )
    outcome = materialize_versioned(
        context, store, code_version=REWRITE_CODE_VERSION, inputs=inputs, build=build
    )
    return batches.generation_result(
        store,
        outcome,
        "rewritten_web",
        scanner.version,
        llm,
        ran,
        {
            "documents_in_batch": outcome.metadata["available"],
            "by_bucket": dg.MetadataValue.json(outcome.metadata["buckets"]),
        },
    )
