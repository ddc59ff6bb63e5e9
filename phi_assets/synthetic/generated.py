"""Synthetic data assets (group ``synthetic``): data written for learning (phi-1, phi-1.5, phi-4).

- ``topics``: curated topics plus topics mined from clusters of the filtered corpora.
- ``synthetic_textbooks``, ``synthetic_exercises``, ``rewritten_web``: partitioned by batch (one
  step, and on Kubernetes one pod talking to the GPU pool's vLLM servers, per batch). Each batch
  generates through the LLM engine, whose request cache makes a killed run resume where it
  stopped; validates every candidate (failures are rows with reasons); removes HumanEval/MBPP
  matches (blocking ``decontaminated`` check); exercises are executed in the evaluation sandbox.
- ``synthetic_corpus``: every batch of the three sets, fuzzy-deduplicated within each set, with
  diversity and coverage measures and checks: what training reads.

The work itself is in ``generate.py`` (requests, parsing, validation), ``topics.py`` and
``gates.py``; prompts are files in ``prompts/``, part of the code versions.
"""

import random
import sys
from typing import Any

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets import plots
from phi_assets.curation import minhash, stages
from phi_assets.curation.assets import _current, _file, _user_error, filtered_code_corpus, filtered_web_corpus
from phi_assets.curation.checks import decontamination_check_result, decontamination_check_spec
from phi_assets.curation.edu import excerpt
from phi_assets.curation.metadata import md_table
from phi_assets.evaluation import sandbox
from phi_assets.ingest.assets import PARTITIONS
from phi_assets.ingest.schema import SOURCES
from phi_assets.synthetic import gates, generate, templates
from phi_assets.synthetic import topics as topic_space
from phi_assets.synthetic.assets import generator_model, model_ref
from phi_assets.versioning import Built, code_version_of, materialize_versioned, stable_hash
from resources import ArtifactStore, ProfileResource, load_profile
from resources.curation import DecontaminationResource, EncoderResource
from resources.llm import LLMEngine
from resources.llm.engine import GenerationStats

SIZES = load_profile().sizes
BATCHES = dg.StaticPartitionsDefinition([f"batch-{i:03d}" for i in range(SIZES.synthetic_batches)])
# This module holds real logic too (decontamination, batch selection), so its source is in every code
# version, with the prompt files and the sandbox that decides which exercises are kept.
_HERE = sys.modules[__name__]
TOPICS_CODE_VERSION = code_version_of(_HERE, topic_space, templates, salt=templates.prompts_salt())
GENERATE_CODE_VERSION = code_version_of(
    _HERE, generate, topic_space, templates, sandbox, salt=templates.prompts_salt()
)
CORPUS_CODE_VERSION = code_version_of(_HERE, gates, generate, minhash)
KEPT, FAILED = "docs.parquet", "failures.parquet"
SETS = {"textbooks": "synthetic_textbooks", "exercises": "synthetic_exercises", "rewrites": "rewritten_web"}
PREVIEW_CHARS = 400


def _batch_index(key: str) -> int:
    return int(key.rsplit("-", 1)[1])


def _write(frame: pl.DataFrame, path) -> None:
    frame.write_parquet(path, compression="zstd")


def _content_version(code_version: str, kept: pl.DataFrame, failed: pl.DataFrame) -> str:
    """Hash of what was produced (not of how long it took), so a rerun from the cache matches."""
    return stable_hash([code_version, kept.rows(), failed.select("candidate_id", "reason").rows()])


def _model_fields(generator: dict) -> dict[str, str]:
    return {"model": generator["metadata"]["model"]["name"], "model_version": generator["data_version"]}


def _preview(text: str) -> str:
    return excerpt(text, PREVIEW_CHARS).replace("\n", " ")


def _materialized(context, store: ArtifactStore, asset: str, keys, reader: str) -> list[tuple[str, dict]]:
    """(partition, current manifest) for each of ``keys`` that has one; the others are logged."""
    found = []
    for key in keys:
        manifest = store.current_manifest(asset, key)
        if manifest is None:
            context.log.warning(f"{asset}[{key}] has no materialized version; {reader} leaves it out")
            continue
        found.append((key, manifest))
    return found


def _shards(context, store: ArtifactStore, source: str, reader: str) -> list[tuple[str, dict]]:
    keys = sorted(context.instance.get_dynamic_partitions(PARTITIONS[source].name))
    return _materialized(context, store, f"filtered_{source}_corpus", keys, reader)


# --- topics -------------------------------------------------------------------------------------


class TopicsConfig(dg.Config):
    clusters_per_source: int = 0  # 0: the profile's size (ci 4, local 12)
    max_docs_per_source: int = 500  # documents embedded per corpus for clustering (a seeded sample)
    max_doc_chars: int = 1500
    seed: int = 0


def _corpus_texts(store: ArtifactStore, shards: list[tuple[str, dict]], limit: int, seed: int) -> list[str]:
    texts = []
    for _, manifest in shards:
        texts += pl.read_parquet(_file(store, manifest, stages.DOCS), columns=["text"])["text"].to_list()
    if len(texts) > limit:  # a seeded sample, in corpus order
        keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
        texts = [texts[i] for i in keep]
    return texts


@dg.asset(
    deps=[filtered_code_corpus, filtered_web_corpus],
    group_name="synthetic",
    op_tags=steps.tags("shard"),
    kinds={"parquet"},
    code_version=TOPICS_CODE_VERSION,
    description="Seed topics for synthetic data: the curated list in phi_assets/synthetic/prompts/topics.txt "
    "plus topics named after k-means clusters of the filtered corpora.",
)
def topics(
    context: dg.AssetExecutionContext,
    config: TopicsConfig,
    store: ArtifactStore,
    encoder: EncoderResource,
    profile: ProfileResource,
) -> dg.MaterializeResult:
    k = config.clusters_per_source or profile.get().sizes.topic_clusters
    curated = _user_error("topics", topic_space.curated_topics)
    corpora = {s: _shards(context, store, s, "topics") for s in SOURCES}
    enc = encoder.get()
    inputs = {
        "corpora": {s: [(k, m["data_version"]) for k, m in shards] for s, shards in corpora.items()},
        "encoder": enc.version,
        "k": k,
        "config": config.model_dump(),
    }

    def build(out):
        mined = []
        for source, shards in corpora.items():
            texts = _corpus_texts(store, shards, config.max_docs_per_source, config.seed)
            excerpts = [excerpt(t, config.max_doc_chars) for t in texts]
            if len(excerpts) >= 2:
                embeddings = enc.encode(excerpts, desc=f"embed filtered_{source}_corpus")
                mined += topic_space.cluster_topics(excerpts, embeddings, k, config.seed, f"cluster:{source}")
            context.log.info(f"topics: {len(texts)} {source} documents")
        table = topic_space.topic_table(curated, mined)
        _write(table, out / "topics.parquet")
        origins = dict(sorted(table.group_by("origin").len().iter_rows()))
        return Built(
            stable_hash([TOPICS_CODE_VERSION, table.rows()]),
            {
                "num_topics": table.height,
                "by_origin": origins,
                "mined": table.filter(pl.col("origin") != "curated").rows(named=True),
            },
        )

    outcome = materialize_versioned(
        context, store, code_version=TOPICS_CODE_VERSION, inputs=inputs, build=build
    )
    meta = outcome.metadata
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "dagster/row_count": meta["num_topics"],
            "num_topics": meta["num_topics"],
            "by_origin": dg.MetadataValue.json(meta["by_origin"]),
            "mined_topics": md_table(
                ["topic", "origin", "documents"],
                [[r["topic"], r["origin"], r["num_docs"]] for r in meta["mined"]],
            ),
            "audiences": ", ".join(topic_space.AUDIENCES),
            "formats": ", ".join(topic_space.FORMATS),
            "artifact": store.uri(_file(store, outcome.manifest, "topics.parquet")),
            "skipped": outcome.skipped,
        },
    )


def _topic_list(store: ArtifactStore) -> tuple[list[str], str]:
    manifest = _current(store, "topics")
    return pl.read_parquet(_file(store, manifest, "topics.parquet"))["topic"].to_list(), manifest[
        "data_version"
    ]


# --- shared by the three generating assets -----------------------------------------------------


def _decontaminate(kept: pl.DataFrame, scanner, *, is_code: bool, set_name: str, desc: str):
    """Remove benchmark matches (as failure rows), then scan what is left again for the check."""
    if not kept.height:
        return kept, [], {"contaminated": [], "recheck_flagged": 0}
    flagged = scanner.scan(kept["text"].to_list(), is_code=is_code, desc=desc)
    rows = set(flagged["row"].to_list())
    removed, listed = [], []
    for r in flagged.iter_rows(named=True):
        doc = kept.row(r["row"], named=True)
        cid = doc.get("candidate_id") or doc.get("draw_id") or doc["source_id"]
        detail = f"{r['benchmark']}/{r['task_id']} by {r['method']} ({r['score']:.2f})"
        removed.append(generate.failure(set_name, cid, "contaminated", detail, doc["text"]))
        listed.append({"id": doc["id"], **{k: r[k] for k in ("task_id", "benchmark", "method", "score")}})
    clean = kept.filter(~pl.Series([i in rows for i in range(kept.height)], dtype=pl.Boolean))
    recheck = scanner.scan(clean["text"].to_list(), is_code=is_code) if clean.height else []
    return clean, removed, {"contaminated": listed, "recheck_flagged": len(recheck)}


def _finish(
    out,
    code_version: str,
    kept: pl.DataFrame,
    failed: pl.DataFrame,
    candidates: int,
    extra: dict[str, Any],
    ran: dict[str, Any],
) -> Built:
    """Write a batch, check it reconciles, and describe it. ``ran`` gets what this run generated:
    a recomputed batch can reproduce a stored version (same rows, same data version), whose
    manifest then still describes the run that first made it."""
    ran["llm"] = extra["llm"]
    _write(kept, out / KEPT)
    _write(failed, out / FAILED)
    funnel = generate.reconcile(candidates, kept, failed)
    previews = [
        {
            k: r.get(k)
            for k in ("topic", "audience", "format", "bucket", "style", "function")
            if r.get(k) is not None
        }
        | {"text": _preview(r["text"])}
        for r in kept.head(3).iter_rows(named=True)
    ]
    failures = [
        {"reason": r["reason"], "detail": r["detail"], "text": _preview(r["text"])}
        for r in failed.unique("reason", keep="first", maintain_order=True).iter_rows(named=True)
    ]
    meta = {
        "funnel": funnel,
        "tokens": int(kept["num_tokens"].sum()) if kept.height else 0,
        "diversity": gates.diversity(kept["text"].to_list()),
        "previews": previews,
        "failure_examples": failures,
        **extra,
    }
    return Built(_content_version(code_version, kept, failed), meta)


def _batch_metadata(store: ArtifactStore, outcome, name: str, llm_stats: dict[str, Any]) -> dict[str, Any]:
    meta = outcome.metadata
    funnel, diversity = meta["funnel"], meta["diversity"]
    reasons = funnel["by_reason"]
    preview_head = [k for k in meta["previews"][0]] if meta["previews"] else ["text"]
    return {
        "dagster/row_count": funnel["kept"],
        "num_candidates": funnel["candidates"],
        "num_kept": funnel["kept"],
        "num_failed": funnel["failed"],
        "failed_by_reason": dg.MetadataValue.json(reasons),
        "funnel": plots.bar_plot(
            ["candidates", "kept", *reasons],
            [funnel["candidates"], funnel["kept"], *reasons.values()],
            f"{name} funnel",
            "",
            "candidates",
        ),
        "generated_tokens_kept": meta["tokens"],
        "distinct_3grams": diversity["distinct_3grams"],
        "repeated_openings": diversity["repeated_openings"],
        "preview": md_table(preview_head, [[p[k] for k in preview_head] for p in meta["previews"]]),
        "failure_examples": md_table(
            ["reason", "detail", "text"], [list(f.values()) for f in meta["failure_examples"]]
        ),
        **{k: (dg.MetadataValue.json(v) if isinstance(v, dict) else v) for k, v in llm_stats.items()},
        "artifact": store.uri(_file(store, outcome.manifest, KEPT)),
        "failures": store.uri(_file(store, outcome.manifest, FAILED)),
        "skipped": outcome.skipped,
    }


def _generation_result(
    store,
    outcome,
    name: str,
    scanner_version: str,
    llm: LLMEngine,
    ran: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dg.MaterializeResult:
    llm_stats = ran.get("llm", outcome.metadata["llm"])  # this run's, or the stored version's when skipped
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={**_batch_metadata(store, outcome, name, llm_stats), **(extra or {}), **llm.describe()},
        check_results=[decontamination_check_result(name, outcome.metadata, scanner_version)],
    )


# --- textbooks ----------------------------------------------------------------------------------


class TextbookConfig(dg.Config):
    draws_per_batch: int = 0  # 0: the profile's size (ci 3, local 16)
    max_tokens: int = 0  # 0: the profile's size (ci 160, local 320)
    temperature: float = 0.8  # each draw has its own seed: sampled, and reproducible
    seed: int = 0
    min_words: int = 60
    min_distinct_trigrams: float = 0.5
    drop_truncated: bool = False


@dg.asset(
    partitions_def=BATCHES,
    deps=[topics, generator_model],
    group_name="synthetic",
    op_tags=steps.tags("llm-client"),
    kinds={"parquet", "vllm"},
    code_version=GENERATE_CODE_VERSION,
    check_specs=[decontamination_check_spec("synthetic_textbooks")],
    description="Textbook sections, tutorials, worked examples and Q&As written by the generator model, one "
    "per seeded (topic, audience, format) draw (phi-1.5 / Cosmopedia).",
)
def synthetic_textbooks(
    context: dg.AssetExecutionContext,
    config: TextbookConfig,
    store: ArtifactStore,
    llm: LLMEngine,
    profile: ProfileResource,
    encoder: EncoderResource,
    decontamination: DecontaminationResource,
) -> dg.MaterializeResult:
    sizes = profile.get().sizes
    n, max_tokens = (
        config.draws_per_batch or sizes.textbooks_per_batch,
        config.max_tokens or sizes.synthetic_max_tokens,
    )
    generator = _current(store, "generator_model")
    topic_list, topics_version = _topic_list(store)
    rules = _user_error(
        "synthetic_textbooks",
        lambda: generate.TextRules(
            config.min_words, config.min_distinct_trigrams, drop_truncated=config.drop_truncated
        ),
    )
    scanner = _user_error("synthetic_textbooks", lambda: decontamination.get(encoder))
    template = templates.load_all()["textbook"]
    inputs = {
        "model": generator["data_version"],
        "topics": topics_version,
        "decontamination": scanner.version,
        "config": {**config.model_dump(), "n": n, "max_tokens": max_tokens},
    }

    ran: dict[str, Any] = {}  # what this run generated (see _finish)

    def build(out):
        draws = topic_space.draw(topic_list, n, config.seed, _batch_index(context.partition_key), "tb")
        requests = generate.textbook_requests(
            draws, template, max_tokens=max_tokens, temperature=config.temperature
        )
        model = model_ref(generator, store, llm, f"{profile.get().phi_home}/models")
        gen = llm.generate(model, requests, log=context.log, desc=f"textbooks {context.partition_key}")
        kept, failed = generate.textbook_rows(draws, gen.results, rules, _model_fields(generator), template)
        clean, removed, decon = _decontaminate(
            kept, scanner, is_code=False, set_name="textbooks", desc="decontaminate textbooks"
        )
        failed = pl.concat([failed, generate.failures_frame(removed)])
        return _finish(
            out, GENERATE_CODE_VERSION, clean, failed, draws.height, {"llm": gen.stats.metadata(), **decon}, ran
        )

    outcome = materialize_versioned(
        context, store, code_version=GENERATE_CODE_VERSION, inputs=inputs, build=build
    )
    return _generation_result(store, outcome, "synthetic_textbooks", scanner.version, llm, ran)


# --- exercises ----------------------------------------------------------------------------------


class ExerciseConfig(dg.Config):
    draws_per_batch: int = 0  # 0: the profile's size (ci 4, local 24)
    samples: int = 4  # sampled exercises per draw; every verified one is kept (rejection sampling)
    max_tokens: int = 256  # stage one: the function
    test_max_tokens: int = 96  # stage two: its tests
    temperature: float = 0.8
    seed: int = 0
    timeout_s: float = 5.0  # sandbox limits per program
    memory_mb: int = 512
    workers: int = 0  # parallel sandbox processes; 0: one per CPU


def _combined(*stats: GenerationStats) -> GenerationStats:
    out = GenerationStats()
    for one in stats:
        for name in (
            "num_requests",
            "num_cache_hits",
            "num_prompt_tokens",
            "num_generated_tokens",
            "num_new_generated_tokens",
            "generate_seconds",
        ):
            setattr(out, name, getattr(out, name) + getattr(one, name))
        out.failures.update(one.failures)
    return out


@dg.asset(
    partitions_def=BATCHES,
    deps=[topics, generator_model],
    group_name="synthetic",
    op_tags=steps.tags("eval"),
    kinds={"parquet", "vllm", "python"},
    code_version=GENERATE_CODE_VERSION,
    check_specs=[decontamination_check_spec("synthetic_exercises")],
    description="phi-1's CodeExercises: a function with a docstring and its solution, then assert tests "
    "for it, generated per seeded draw and kept only if the tests pass in the evaluation sandbox.",
)
def synthetic_exercises(
    context: dg.AssetExecutionContext,
    config: ExerciseConfig,
    store: ArtifactStore,
    llm: LLMEngine,
    profile: ProfileResource,
    encoder: EncoderResource,
    decontamination: DecontaminationResource,
) -> dg.MaterializeResult:
    n = config.draws_per_batch or profile.get().sizes.exercises_per_batch
    generator = _current(store, "generator_model")
    topic_list, topics_version = _topic_list(store)
    scanner = _user_error("synthetic_exercises", lambda: decontamination.get(encoder))
    prompts = templates.load_all()
    limits = _user_error(
        "synthetic_exercises", lambda: sandbox.Limits(timeout_s=config.timeout_s, memory_mb=config.memory_mb)
    )
    inputs = {
        "model": generator["data_version"],
        "topics": topics_version,
        "decontamination": scanner.version,
        "config": {**config.model_dump(exclude={"workers"}), "n": n},
    }

    ran: dict[str, Any] = {}  # what this run generated (see _finish)

    def build(out):
        draws = topic_space.draw(topic_list, n, config.seed, _batch_index(context.partition_key), "ex")
        requests = generate.exercise_requests(
            draws,
            prompts["exercise"],
            prompts["exercise_example"],
            samples=config.samples,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
        )
        model = model_ref(generator, store, llm, f"{profile.get().phi_home}/models")
        gen = llm.generate(model, requests, log=context.log, desc=f"exercises {context.partition_key}")
        functions, failed = generate.exercise_functions(
            draws, gen.results, prompts["exercise_example"], config.samples
        )
        tests = generate.test_requests(requests, functions, max_tokens=config.test_max_tokens)
        gen_tests = llm.generate(model, tests, log=context.log, desc=f"exercise tests {context.partition_key}")
        runnable, failed = generate.exercise_candidates(
            functions, gen_tests.results, prompts["exercise_example"], failed
        )
        context.log.info(
            f"exercises: {len(runnable)} of {draws.height * config.samples} samples parse; "
            f"running their tests in the sandbox"
        )
        verdicts = sandbox.run_programs(
            [ex.runnable() for _, ex in runnable], limits, workers=config.workers or None, progress=True
        )
        kept, failed = generate.exercise_rows(
            runnable, verdicts, failed, _model_fields(generator), prompts["exercise"].sha256
        )
        clean, removed, decon = _decontaminate(
            kept, scanner, is_code=True, set_name="exercises", desc="decontaminate exercises"
        )
        failed = pl.concat([failed, generate.failures_frame(removed)])
        kinds = {k: sum(v.kind == k for v in verdicts) for k in sandbox.VERDICTS}
        seconds = [v.duration_s for v in verdicts]
        return _finish(
            out,
            GENERATE_CODE_VERSION,
            clean,
            failed,
            draws.height * config.samples,
            {
                "llm": _combined(gen.stats, gen_tests.stats).metadata(),
                **decon,
                "verdicts": kinds,
                "sandbox_seconds_total": round(sum(seconds), 2),
                "isolation": sandbox.isolation(),
            },
            ran,
        )

    outcome = materialize_versioned(
        context, store, code_version=GENERATE_CODE_VERSION, inputs=inputs, build=build
    )
    meta = outcome.metadata
    return _generation_result(
        store,
        outcome,
        "synthetic_exercises",
        scanner.version,
        llm,
        ran,
        {
            "sandbox_verdicts": dg.MetadataValue.json(meta["verdicts"]),
            **{f"num_{k}": v for k, v in meta["verdicts"].items()},
            "sandbox_isolation": dg.MetadataValue.json(meta["isolation"]),
            "sandbox_seconds_total": meta["sandbox_seconds_total"],
        },
    )


# --- web rewrites -------------------------------------------------------------------------------


class RewriteConfig(dg.Config):
    docs_per_batch: int = 0  # 0: the profile's size (ci 3, local 12)
    high_threshold: float = 3.0  # educational score of the "high" bucket (question-answer pairs)
    medium_threshold: float = 2.0  # "medium" from here; below is "low" (both rewritten as textbook)
    max_doc_chars: int = 3000  # the start of each document the model reads
    max_tokens: int = 0  # 0: the profile's size (ci 160, local 320)
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
        scores = pl.read_parquet(_file(store, corpus, stages.SCORES)).filter(
            pl.col("decision") != "contaminated"
        )
        mine = scores.filter(
            pl.Series([generate.in_batch(i, batch, num_batches) for i in scores["id"]], dtype=pl.Boolean)
        )
        if mine.height:
            docs = stages.read_rows(_file(store, shard, stages.DOCS), mine.select("row"))
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


@dg.asset(
    partitions_def=BATCHES,
    deps=[dg.AssetDep(filtered_web_corpus, partition_mapping=dg.AllPartitionMapping()), generator_model],
    group_name="synthetic",
    op_tags=steps.tags("llm-client"),
    kinds={"parquet", "vllm"},
    code_version=GENERATE_CODE_VERSION,
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
    generator = _current(store, "generator_model")
    buckets = _user_error(
        "rewritten_web", lambda: generate.Buckets(config.high_threshold, config.medium_threshold)
    )
    rules = _user_error("rewritten_web", lambda: generate.TextRules(config.min_words))
    scanner = _user_error("rewritten_web", lambda: decontamination.get(encoder))
    prompts = templates.load_all()
    styles = {"qa": prompts["rewrite_qa"], "textbook": prompts["rewrite_textbook"]}
    corpora = _shards(context, store, "web", "rewritten_web")
    inputs = {
        "model": generator["data_version"],
        "corpus": [(k, m["data_version"]) for k, m in corpora],
        "decontamination": scanner.version,
        "config": {**config.model_dump(), "n": n, "max_tokens": max_tokens},
    }

    ran: dict[str, Any] = {}  # what this run generated (see _finish)

    def build(out):
        batch, num_batches = _batch_index(context.partition_key), len(BATCHES.get_partition_keys())
        available = _rewrite_sources(store, corpora, buckets, batch, num_batches)
        docs = available.head(n) if available.height else available
        if not docs.height:
            context.log.warning(f"rewritten_web[{context.partition_key}]: no web documents in this batch")
            empty = pl.DataFrame(schema=generate.REWRITE_SCHEMA)
            return _finish(
                out,
                GENERATE_CODE_VERSION,
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
            docs, gen.results, rules, styles, _model_fields(generator), config.max_copied
        )
        clean, removed, decon = _decontaminate(
            kept, scanner, is_code=False, set_name="rewrites", desc="decontaminate rewrites"
        )
        failed = pl.concat([failed, generate.failures_frame(removed)])
        return _finish(
            out,
            GENERATE_CODE_VERSION,
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

    outcome = materialize_versioned(
        context, store, code_version=GENERATE_CODE_VERSION, inputs=inputs, build=build
    )
    return _generation_result(
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


# --- the corpus training reads ------------------------------------------------------------------


class SyntheticCorpusConfig(dg.Config):
    min_similarity: float = 0.7  # MinHash near-duplicate threshold within each set
    max_repeated_openings: float = 0.5  # diversity check: share of documents sharing their first 5 words
    min_distinct_3grams: float = 0.3  # diversity check: distinct / total word trigrams


def _dedup_set(name: str, frame: pl.DataFrame, min_similarity: float) -> tuple[pl.DataFrame, list[dict]]:
    if not frame.height:
        return frame, []
    decisions = gates.fuzzy_dedup(frame["id"].to_list(), frame["text"].to_list(), min_similarity=min_similarity)
    keep = decisions["keep"].to_list()
    removed = [
        generate.failure(name, row["id"], f"{kind}_duplicate", f"survivor {survivor}", row["text"])
        for row, k, survivor, kind in zip(
            frame.iter_rows(named=True), keep, decisions["survivor_id"], decisions["cluster_kind"], strict=True
        )
        if not k
    ]
    return frame.filter(pl.Series(keep, dtype=pl.Boolean)), removed


def _build_corpus(context, store: ArtifactStore, batches: dict, config: SyntheticCorpusConfig, out) -> dict:
    summary, removed_all, diversity, coverage, content = {}, [], {}, {}, []
    for name, found in batches.items():
        frames = [pl.read_parquet(_file(store, m, KEPT)) for _, m in found]
        frame = (
            pl.concat(frames, how="vertical_relaxed")
            if frames
            else pl.DataFrame(schema={"id": pl.String, "text": pl.String})
        )
        candidates = sum(m["metadata"]["funnel"]["candidates"] for _, m in found)
        kept, removed = _dedup_set(name, frame.sort("id"), config.min_similarity)
        _write(kept, out / f"{name}.parquet")
        content.append(kept.rows())
        removed_all += removed
        diversity[name] = gates.diversity(kept["text"].to_list())
        summary[name] = {
            "batches": len(found),
            "candidates": candidates,
            "generated_kept": frame.height,
            "duplicates_removed": len(removed),
            "documents": kept.height,
            "tokens": int(kept["num_tokens"].sum()) if kept.height else 0,
        }
        context.log.info(f"synthetic_corpus: {name}: {summary[name]}")
        if name == "textbooks":
            coverage["textbooks"] = {
                c: gates.coverage(kept, c, u)
                for c, u in (("audience", topic_space.AUDIENCES), ("format", topic_space.FORMATS))
            }
            coverage["textbooks"]["topic"] = {"distinct": kept["topic"].n_unique() if kept.height else 0}
        if name == "exercises":
            coverage["exercises"] = {
                "audience": gates.coverage(kept, "audience", topic_space.AUDIENCES),
                "topic": {"distinct": kept["topic"].n_unique() if kept.height else 0},
            }
        if name == "rewrites":
            coverage["rewrites"] = {"bucket": gates.coverage(kept, "bucket", generate.BUCKETS)}
    _write(generate.failures_frame(removed_all), out / "duplicates.parquet")
    return {"summary": summary, "diversity": diversity, "coverage": coverage, "content": stable_hash(content)}


@dg.asset(
    deps=[synthetic_textbooks, synthetic_exercises, rewritten_web],
    group_name="synthetic",
    op_tags=steps.tags("light"),
    kinds={"parquet"},
    code_version=CORPUS_CODE_VERSION,
    check_specs=[
        dg.AssetCheckSpec(
            "diverse",
            asset="synthetic_corpus",
            description="Each set's distinct word-trigram ratio and repeated openings within limits.",
        ),
        dg.AssetCheckSpec(
            "covers_seed_space",
            asset="synthetic_corpus",
            description="Textbooks cover every audience and format.",
        ),
    ],
    description="Every batch of the synthetic sets, fuzzy-deduplicated within each set (textbooks.parquet, "
    "exercises.parquet, rewrites.parquet), with diversity and coverage measures: what training reads.",
)
def synthetic_corpus(
    context: dg.AssetExecutionContext, config: SyntheticCorpusConfig, store: ArtifactStore
) -> dg.MaterializeResult:
    batches = {
        name: _materialized(context, store, asset, BATCHES.get_partition_keys(), "synthetic_corpus")
        for name, asset in SETS.items()
    }
    inputs = {
        "batches": {n: [(k, m["data_version"]) for k, m in b] for n, b in batches.items()},
        "config": config.model_dump(),
    }

    def build(out):
        meta = _build_corpus(context, store, batches, config, out)
        return Built(stable_hash([CORPUS_CODE_VERSION, meta["content"]]), meta)

    outcome = materialize_versioned(
        context,
        store,
        code_version=CORPUS_CODE_VERSION,
        inputs=inputs,
        build=build,
    )
    meta = outcome.metadata
    summary, diversity, coverage = meta["summary"], meta["diversity"], meta["coverage"]
    worst = {
        n: d
        for n, d in diversity.items()
        if d["num_docs"] > 1
        and (
            d["repeated_openings"] > config.max_repeated_openings
            or d["distinct_3grams"] < config.min_distinct_3grams
        )
    }
    uncovered = {
        c: [u for u, k in v["counts"].items() if not k]
        for c, v in coverage.get("textbooks", {}).items()
        if "counts" in v
    }
    uncovered = {c: u for c, u in uncovered.items() if u}
    rows = [
        [
            n,
            s["batches"],
            s["candidates"],
            s["generated_kept"],
            s["duplicates_removed"],
            s["documents"],
            s["tokens"],
            diversity[n]["distinct_3grams"],
            diversity[n]["repeated_openings"],
        ]
        for n, s in summary.items()
    ]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "dagster/row_count": sum(s["documents"] for s in summary.values()),
            **{f"num_{n}": s["documents"] for n, s in summary.items()},
            **{f"tokens_{n}": s["tokens"] for n, s in summary.items()},
            "sets": md_table(
                [
                    "set",
                    "batches",
                    "candidates",
                    "verified/valid",
                    "duplicates",
                    "documents",
                    "tokens",
                    "distinct 3-grams",
                    "repeated openings",
                ],
                rows,
            ),
            "diversity": dg.MetadataValue.json(diversity),
            "coverage": dg.MetadataValue.json(coverage),
            "tokens_by_set": plots.bar_plot(
                list(summary), [s["tokens"] for s in summary.values()], "synthetic tokens per set", "", "tokens"
            ),
            "artifact": store.uri(store.version_path("synthetic_corpus", None, outcome.data_version)),
            "skipped": outcome.skipped,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="diverse",
                passed=not worst,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"failing_sets": dg.MetadataValue.json(worst)},
            ),
            dg.AssetCheckResult(
                check_name="covers_seed_space",
                passed=not uncovered,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"uncovered": dg.MetadataValue.json(uncovered)},
            ),
        ],
    )


SYNTHETIC_ASSETS = [topics, synthetic_textbooks, synthetic_exercises, rewritten_web, synthetic_corpus]
