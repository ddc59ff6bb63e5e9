"""Curation assets (group ``curation``): keep only textbook-quality data.

Per shard (one dynamic partition per raw shard, one pod per shard on Kubernetes):
``quality_filtered_{code,web}_shards`` (heuristic filters + MinHash signatures) and
``filtered_{code,web}_corpus`` (classifier scores, threshold, decontamination with a blocking
check). Fanning in over all shards of a source: ``dedup_{code,web}``. Over both sources:
``edu_annotations`` (LLM rubric scores on a sample) and ``edu_classifier``. The work itself lives in
``phi_assets.curation.stages`` and the modules it calls.
"""

from dataclasses import asdict
from typing import Any

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common.automation import ON_NEW_DATA, ON_NEW_PARTITIONS
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, local_copy, materialized, user_error
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.curation import classifier as clf
from phi_assets.curation import (
    edu,
    heuristics,
    minhash,
    stages,
)
from phi_assets.curation.checks import decontamination_check_result, decontamination_check_spec
from phi_assets.curation.metadata import (
    annotation_metadata,
    classifier_metadata,
    corpus_metadata,
    dedup_metadata,
    filter_metadata,
)
from phi_assets.ingest.assets import PARTITIONS, raw_code_shards, raw_web_shards
from phi_assets.ingest.schema import SOURCES
from phi_assets.models.assets import generator_model, model_ref
from resources import ArtifactStore, ProfileResource
from resources.curation import DecontaminationResource, EncoderResource
from resources.llm import LLMEngine

RAW = {"code": raw_code_shards, "web": raw_web_shards}
FILTER_CODE_VERSION = code_version(__name__, "quality_filtered_asset")
DEDUP_CODE_VERSION = code_version(__name__, "dedup_asset")
ANNOTATE_CODE_VERSION = code_version(__name__, "edu_annotations")
CLASSIFIER_CODE_VERSION = code_version(__name__, "edu_classifier")
CORPUS_CODE_VERSION = code_version(__name__, "filtered_corpus_asset")


class QualityFilterConfig(dg.Config):
    rules: dict[str, Any] = {}  # overrides of WebFilterConfig / CodeFilterConfig fields
    shingle_words: int = 5  # MinHash (FineWeb): 5-word shingles, 14 bands x 8 rows
    num_bands: int = 14
    rows_per_band: int = 8
    minhash_seed: int = 1


def _filters(source: str, rules: dict[str, Any]):
    config = heuristics.CodeFilterConfig if source == "code" else heuristics.WebFilterConfig
    unknown = sorted(set(rules) - set(config.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"unknown {source} filter setting(s) {unknown}; known: {sorted(config.__dataclass_fields__)}"
        )
    return config(**rules)


def quality_filtered_asset(source: str) -> dg.AssetsDefinition:
    name = f"quality_filtered_{source}_shards"

    @dg.asset(
        name=name,
        partitions_def=PARTITIONS[source],
        deps=[RAW[source]],
        group_name="curation",
        op_tags=steps.tags("shard"),
        code_version=FILTER_CODE_VERSION,
        automation_condition=ON_NEW_DATA,
        kinds={"parquet", "polars"},
        description=f"Raw {source} documents that pass the heuristic quality filters (every drop "
        "has a reason), with the MinHash signatures dedup reads.",
    )
    def _asset(
        context: dg.AssetExecutionContext, config: QualityFilterConfig, store: ArtifactStore
    ) -> dg.MaterializeResult:
        raw = current(store, f"raw_{source}_shards", context.partition_key)
        filters = user_error(name, lambda: _filters(source, config.rules))
        signature = user_error(
            name,
            lambda: minhash.MinHashConfig(
                config.shingle_words, config.num_bands, config.rows_per_band, config.minhash_seed
            ),
        )
        inputs = {"raw": raw["data_version"], "filters": asdict(filters), "minhash": asdict(signature)}
        outcome = materialize_versioned(
            context,
            store,
            code_version=FILTER_CODE_VERSION,
            inputs=inputs,
            build=lambda out: Built(
                stable_hash([FILTER_CODE_VERSION, inputs]),
                stages.filter_shard(file_uri(store, raw, "docs.parquet"), source, filters, signature, out),
            ),
        )
        context.log.info(f"{name}[{context.partition_key}]: {outcome.metadata['funnel']}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.data_version),
            metadata={
                **filter_metadata(outcome.metadata, store.uri(file_uri(store, outcome.manifest, stages.DOCS))),
                "skipped": outcome.skipped,
            },
        )

    return _asset


def _shard_files(
    context: dg.AssetExecutionContext, store: ArtifactStore, source: str
) -> tuple[list[stages.ShardFiles], list[dict]]:
    """The current quality-filtered shards of ``source`` and the MinHash settings each was signed with."""
    asset, shards, settings = f"quality_filtered_{source}_shards", [], []
    keys = sorted(context.instance.get_dynamic_partitions(PARTITIONS[source].name))
    for key, manifest in materialized(context, store, asset, keys, "dedup"):
        shards.append(
            stages.ShardFiles(
                key,
                manifest["data_version"],
                file_uri(store, manifest, stages.DOCS),
                file_uri(store, manifest, stages.MINHASH),
            )
        )
        settings.append(manifest["inputs"]["minhash"])
    return shards, settings


def _persisted(store: ArtifactStore, shard: stages.ShardFiles) -> dict[str, str]:
    """A shard's files as kept in the dedup manifest: relative to the artifact root (readers
    ``store.resolve`` them), so a copied home reads its own files."""
    return {**asdict(shard), "docs": store.relative(shard.docs), "minhash": store.relative(shard.minhash)}


def _signature_config(shards: list[stages.ShardFiles], settings: list[dict]) -> minhash.MinHashConfig:
    seen = {stable_hash(setting): shard.shard for shard, setting in zip(shards, settings, strict=True)}
    if len(seen) > 1:
        raise ValueError(
            f"shards {sorted(seen.values())} were signed with different MinHash settings; "
            "materialize all quality-filtered shards with the same settings"
        )
    return minhash.MinHashConfig(**settings[0])


def dedup_asset(source: str) -> dg.AssetsDefinition:
    name, upstream = f"dedup_{source}", f"quality_filtered_{source}_shards"

    @dg.asset(
        name=name,
        deps=[upstream],
        group_name="curation",
        op_tags=steps.tags("heavy"),
        code_version=DEDUP_CODE_VERSION,
        automation_condition=ON_NEW_PARTITIONS,
        kinds={"duckdb"},
        description=f"Exact and MinHash-LSH near-duplicate clusters over all {source} "
        "shards; one deterministic survivor each; clusters in DuckDB.",
    )
    def _asset(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        shards, settings = _shard_files(context, store, source)
        if not shards:
            raise dg.Failure(description=f"{name}: no {upstream} partition is materialized yet")
        signature = user_error(name, lambda: _signature_config(shards, settings))
        inputs = {"shards": [(s.shard, s.data_version) for s in shards], "minhash": asdict(signature)}
        outcome = materialize_versioned(
            context,
            store,
            code_version=DEDUP_CODE_VERSION,
            inputs=inputs,
            build=lambda out: Built(
                stable_hash([DEDUP_CODE_VERSION, inputs]),
                {
                    **stages.dedup_source(shards, signature, out),
                    "shards": [_persisted(store, s) for s in shards],
                },
            ),
        )
        db = file_uri(store, outcome.manifest, stages.CLUSTER_DB)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.data_version),
            metadata={**dedup_metadata(outcome.metadata, db), "skipped": outcome.skipped},
        )

    return _asset


quality_filtered_code_shards = quality_filtered_asset("code")
quality_filtered_web_shards = quality_filtered_asset("web")
dedup_code = dedup_asset("code")
dedup_web = dedup_asset("web")


class AnnotationConfig(dg.Config):
    docs_per_source: int = 0  # 0: the profile's size (ci 48, local 200)
    max_doc_chars: int = 1500  # the start of each document the annotator reads
    max_tokens: int = 16  # the score comes first (the answer is prefilled with "Educational score:")
    seed: int = 0


def _annotate(
    context, llm: LLMEngine, model, dedups: dict, store: ArtifactStore, n: int, config: AnnotationConfig, out
) -> dict:
    frames, llm_stats = [], {}
    for source in SOURCES:
        prompt, manifest = edu.load_prompt(source), dedups[source]
        docs_paths = {s["shard"]: store.resolve(s["docs"]) for s in manifest["metadata"]["shards"]}
        sample = stages.annotation_sample(
            pl.read_parquet(file_uri(store, manifest, stages.DECISIONS)), docs_paths, n, config.seed
        )
        requests = [
            edu.build_request(prompt, t, max_chars=config.max_doc_chars, max_tokens=config.max_tokens)
            for t in sample["text"]
        ]
        gen = llm.generate(model, requests, log=context.log, desc=f"annotate {source}")
        frames.append(
            stages.annotations_frame(
                source,
                sample,
                [r.text for r in gen.results],
                [r.error for r in gen.results],
                prompt,
                config.max_doc_chars,
            )
        )
        llm_stats[source] = gen.stats.metadata()
    annotations = pl.concat(frames)
    annotations.write_parquet(out / "annotations.parquet", compression="zstd")
    summary = {
        s: {
            "status": stages.status_counts(annotations.filter(pl.col("source") == s)),
            "labels": [
                annotations.filter((pl.col("source") == s) & (pl.col("score") == k)).height for k in range(6)
            ],
        }
        for s in SOURCES
    }
    return {
        "summary": summary,
        "llm": llm_stats,
        "max_doc_chars": config.max_doc_chars,
        "examples": annotations.head(6).select("source", "uri", "answer", "score", "status").rows(named=True),
    }


@dg.asset(
    deps=[dedup_code, dedup_web, generator_model],
    group_name="curation",
    op_tags=steps.tags("llm-client"),
    kinds={"parquet"},
    code_version=ANNOTATE_CODE_VERSION,
    description="A sample of deduplicated documents scored 0-5 for educational value by the generator "
    "LLM with the rubric prompts in phi_assets/curation/prompts/.",
)
def edu_annotations(
    context: dg.AssetExecutionContext,
    config: AnnotationConfig,
    store: ArtifactStore,
    llm: LLMEngine,
    profile: ProfileResource,
) -> dg.MaterializeResult:
    generator = current(store, "generator_model")
    dedups = {s: current(store, f"dedup_{s}") for s in SOURCES}
    n = config.docs_per_source or profile.get().sizes.edu_annotations_per_source
    inputs = {
        "model": generator["data_version"],
        "dedup": {s: m["data_version"] for s, m in dedups.items()},
        "prompts": {s: edu.load_prompt(s).sha256 for s in SOURCES},
        "config": {**config.model_dump(), "n": n},
    }

    def build(out):
        model = model_ref(generator, store, llm, f"{profile.get().phi_home}/models")
        return Built(
            stable_hash([ANNOTATE_CODE_VERSION, inputs]),
            _annotate(context, llm, model, dedups, store, n, config, out),
        )

    outcome = materialize_versioned(
        context, store, code_version=ANNOTATE_CODE_VERSION, inputs=inputs, build=build
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            **annotation_metadata(outcome.metadata, file_uri(store, outcome.manifest, "annotations.parquet")),
            "skipped": outcome.skipped,
        },
    )


class ClassifierTrainConfig(dg.Config):
    threshold: float = 3.0  # F1 is reported for "score >= threshold" (FineWeb-Edu: 3)
    test_fraction: float = 0.25
    num_trees: int = 200
    ridge_alpha: float = 1.0
    seed: int = 0


def _train(store: ArtifactStore, annotations: dict, encoder, config: clf.ClassifierConfig, out) -> dict:
    frame = pl.read_parquet(file_uri(store, annotations, "annotations.parquet")).filter(
        pl.col("score").is_not_null()
    )
    reports = {}
    for source in SOURCES:
        part = frame.filter(pl.col("source") == source)
        embeddings = encoder.encode(part["excerpt"].to_list(), desc=f"embed {source} annotations")
        try:
            model = clf.train(embeddings, part["score"].to_numpy(), config, encoder.version)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e
        model.save(out / source)
        reports[source] = model.report
    return {
        "reports": reports,
        "max_doc_chars": annotations["metadata"]["max_doc_chars"],
        "encoder_version": encoder.version,
        "threshold": config.threshold,
    }


@dg.asset(
    deps=[edu_annotations],
    group_name="curation",
    op_tags=steps.tags("heavy"),
    code_version=CLASSIFIER_CODE_VERSION,
    kinds={"scikitlearn"},
    description="Educational-value classifiers (random forest as phi-1, linear head "
    "as FineWeb-Edu) on all-MiniLM-L6-v2 embeddings, one per source.",
)
def edu_classifier(
    context: dg.AssetExecutionContext,
    config: ClassifierTrainConfig,
    store: ArtifactStore,
    encoder: EncoderResource,
) -> dg.MaterializeResult:
    annotations = current(store, "edu_annotations")
    settings = user_error("edu_classifier", lambda: clf.ClassifierConfig(**config.model_dump()))
    enc = encoder.get()
    inputs = {"annotations": annotations["data_version"], "encoder": enc.version, "config": asdict(settings)}
    outcome = materialize_versioned(
        context,
        store,
        code_version=CLASSIFIER_CODE_VERSION,
        inputs=inputs,
        build=lambda out: Built(
            stable_hash([CLASSIFIER_CODE_VERSION, inputs]),
            user_error("edu_classifier", lambda: _train(store, annotations, enc, settings, out)),
        ),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={**classifier_metadata(outcome.metadata), "skipped": outcome.skipped},
    )


class FilteredCorpusConfig(dg.Config):
    threshold: float = 3.0  # keep documents whose educational score is at least this
    head: str = "forest"  # "forest" (phi-1) or "linear" (FineWeb-Edu)


def _dedup_rows(store: ArtifactStore, source: str, key: str, shard_version: str):
    dedup_manifest = current(store, f"dedup_{source}")
    used = {s["shard"]: s["data_version"] for s in dedup_manifest["metadata"]["shards"]}
    if used.get(key) != shard_version:
        raise dg.Failure(
            description=f"dedup_{source} has not seen quality_filtered_{source}_shards[{key}] "
            f"version {shard_version}; materialize dedup_{source} first"
        )
    return stages.survivors(pl.read_parquet(file_uri(store, dedup_manifest, stages.DECISIONS)), key)


def filtered_corpus_asset(source: str) -> dg.AssetsDefinition:
    name, upstream = f"filtered_{source}_corpus", f"quality_filtered_{source}_shards"

    @dg.asset(
        name=name,
        partitions_def=PARTITIONS[source],
        group_name="curation",
        op_tags=steps.tags("shard"),
        kinds={"parquet"},
        deps=[upstream, f"dedup_{source}", edu_classifier],
        code_version=CORPUS_CODE_VERSION,
        automation_condition=ON_NEW_DATA,
        check_specs=[decontamination_check_spec(name)],
        description=f"Deduplicated {source} documents the classifier scores at or above the threshold, "
        "with HumanEval/MBPP-contaminated documents removed and listed.",
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: FilteredCorpusConfig,
        store: ArtifactStore,
        encoder: EncoderResource,
        decontamination: DecontaminationResource,
    ) -> dg.MaterializeResult:
        key = context.partition_key
        shard, classifier = current(store, upstream, key), current(store, "edu_classifier")
        keep_rows = _dedup_rows(store, source, key, shard["data_version"])
        scanner = user_error(name, lambda: decontamination.get(encoder))
        if config.head not in clf.HEADS:
            raise dg.Failure(description=f"{name}: head={config.head!r}; choose one of {clf.HEADS}")
        inputs = {
            "shard": shard["data_version"],
            "survivors": stable_hash(keep_rows["id"].to_list()),
            "classifier": classifier["data_version"],
            "decontamination": scanner.version,
            "config": config.model_dump(),
        }

        def build(out):
            model = clf.EduClassifier.load(local_copy(store, classifier, source))
            return Built(
                stable_hash([CORPUS_CODE_VERSION, inputs]),
                stages.score_shard(
                    file_uri(store, shard, stages.DOCS),
                    keep_rows,
                    shard["metadata"]["funnel"]["kept"],
                    source,
                    model,
                    config.head,
                    config.threshold,
                    encoder.get(),
                    scanner,
                    classifier["metadata"]["max_doc_chars"],
                    out,
                ),
            )

        outcome = materialize_versioned(
            context, store, code_version=CORPUS_CODE_VERSION, inputs=inputs, build=build
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.data_version),
            metadata={
                **corpus_metadata(outcome.metadata, file_uri(store, outcome.manifest, stages.DOCS)),
                "skipped": outcome.skipped,
            },
            check_results=[decontamination_check_result(name, outcome.metadata, scanner.version)],
        )

    return _asset


filtered_code_corpus = filtered_corpus_asset("code")
filtered_web_corpus = filtered_corpus_asset("web")


def corpus_shards(context, store: ArtifactStore, source: str, reader: str) -> list[tuple[str, dict]]:
    """(shard, manifest) of every materialized shard of ``filtered_{source}_corpus``, for ``reader``."""
    keys = sorted(context.instance.get_dynamic_partitions(PARTITIONS[source].name))
    return materialized(context, store, f"filtered_{source}_corpus", keys, reader)


CURATION_ASSETS = [
    quality_filtered_code_shards,
    quality_filtered_web_shards,
    dedup_code,
    dedup_web,
    edu_annotations,
    edu_classifier,
    filtered_code_corpus,
    filtered_web_corpus,
]
