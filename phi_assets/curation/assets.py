"""Curation assets (group ``curation``): keep only textbook-quality data.

Per shard (one dynamic partition per raw shard, one pod per shard on Kubernetes):
``quality_filtered_{code,web}_shards`` (``filter_assets.py``: heuristic filters, MinHash signatures,
LSH band slices) and ``filtered_{code,web}_corpus`` (classifier scores, threshold, decontamination
with a blocking check). Dedup in stages (``dedup_assets.py``): ``dedup_{code,web}_buckets`` per
(band group, hash range), ``dedup_{code,web}_shingles`` per shard, ``dedup_{code,web}_pairs`` per
(band group, hash range), then ``dedup_{code,web}`` over the confirmed pairs. Over both sources:
``edu_annotations`` (LLM rubric scores on a sample) and ``edu_classifier``. The work itself lives in
``phi_assets.curation.stages``, ``lsh`` and the modules they call.
"""

from dataclasses import asdict

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common.automation import ON_NEW_DATA
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, local_copy, materialized, user_error
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.curation import classifier as clf
from phi_assets.curation import edu, lsh, stages
from phi_assets.curation.checks import decontamination_check_result, decontamination_check_spec
from phi_assets.curation.dedup_assets import (
    DEDUP_ASSETS,
    dedup_code,
    dedup_web,
    filtered_shards,
    shard_record,
)
from phi_assets.curation.filter_assets import (
    PARTITIONS,
    quality_filtered_code_shards,
    quality_filtered_web_shards,
)
from phi_assets.curation.metadata import (
    annotation_metadata,
    classifier_metadata,
    corpus_metadata,
)
from phi_assets.ingest.schema import SOURCES
from phi_assets.models.assets import generator_model, model_ref
from resources import ArtifactStore, ProfileResource
from resources.curation import DecontaminationResource, EncoderResource
from resources.llm import LLMEngine

ANNOTATE_CODE_VERSION = code_version(__name__, "edu_annotations")
CLASSIFIER_CODE_VERSION = code_version(__name__, "edu_classifier")
CORPUS_CODE_VERSION = code_version(__name__, "filtered_corpus_asset")




class AnnotationConfig(dg.Config):
    docs_per_source: int = 0  # 0: the profile's size (ci 32, demo 80)
    max_doc_chars: int = 1500  # the start of each document the annotator reads
    # One token is generated (after the prefill "Educational score: ", the digit) with its top-k logprobs:
    # the labels' share of them is the document's label distribution (edu.label_distribution).
    top_logprobs: int = edu.TOP_LOGPROBS
    seed: int = 0


def _sample(context, store: ArtifactStore, source: str, n: int, seed: int) -> pl.DataFrame:
    """A seeded sample of ``source``'s dedup survivors (shard, row, id, uri, text), each shard read
    through its own removal list (``lsh.sample_survivors``: a bottom-n merge, 2n rows held)."""
    shards, _ = filtered_shards(context, store, source, "edu_annotations")
    entries = [(s.shard, s.docs, shard_record(store, source, s.shard, s.version)[1]) for s in shards]
    chosen = lsh.sample_survivors(entries, n, seed)
    docs = {s.shard: s.docs for s in shards}
    fs = None if store.is_local else store.fs
    return lsh.read_sample(chosen, docs, fs)


def _annotate(
    context, llm: LLMEngine, model, store: ArtifactStore, n: int, config: AnnotationConfig, out
) -> dict:
    frames, llm_stats = [], {}
    for source in SOURCES:
        prompt = edu.load_prompt(source)
        sample = _sample(context, store, source, n, config.seed)
        requests = [
            edu.build_request(prompt, t, max_chars=config.max_doc_chars, logprobs=config.top_logprobs)
            for t in sample["text"]
        ]
        gen = llm.generate(model, requests, log=context.log, desc=f"annotate {source}")
        frames.append(
            stages.annotations_frame(
                source,
                sample,
                [r.text for r in gen.results],
                [r.error for r in gen.results],
                [edu.read_result(r) for r in gen.results],
                prompt,
                config.max_doc_chars,
            )
        )
        llm_stats[source] = gen.stats.metadata()
    annotations = pl.concat(frames)
    annotations.write_parquet(out / "annotations.parquet", compression="zstd")
    parts = {s: annotations.filter(pl.col("source") == s) for s in SOURCES}
    return {
        "summary": {
            s: {"status": stages.status_counts(part), **edu.summarize(part)} for s, part in parts.items()
        },
        "llm": llm_stats,
        "max_doc_chars": config.max_doc_chars,
        "examples": annotations.head(6)
        .select("source", "uri", "answer", "label", pl.col("expected_score", "label_mass").round(3), "status")
        .rows(named=True),
    }


@dg.asset(
    deps=[dedup_code, dedup_web, generator_model],
    group_name="curation",
    op_tags=steps.tags("llm-client"),
    kinds={"parquet"},
    code_version=ANNOTATE_CODE_VERSION,
    description="A sample of deduplicated documents with the generator LLM's distribution over the "
    "educational-value labels 0-5 (next-token log-probabilities after the rubric prompts in "
    "phi_assets/curation/prompts/): label probabilities, expected score, label, entropy.",
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
            _annotate(context, llm, model, store, n, config, out),
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
    threshold: float = 3.0  # F1 is reported for "expected score >= threshold" (FineWeb-Edu: 3)
    test_fraction: float = 0.25
    num_trees: int = 200
    ridge_alpha: float = 1.0
    seed: int = 0


def _train(store: ArtifactStore, annotations: dict, encoder, config: clf.ClassifierConfig, out) -> dict:
    """Both heads per source on every annotated document with status ok: the forest on its label
    (argmax), the linear head on its expected score."""
    frame = pl.read_parquet(file_uri(store, annotations, "annotations.parquet"))
    frame = frame.filter(pl.col("status") == "ok")
    reports = {}
    for source in SOURCES:
        part = frame.filter(pl.col("source") == source)
        embeddings = encoder.encode(part["excerpt"].to_list(), desc=f"embed {source} annotations")
        try:
            model = clf.train(embeddings, part["label"].to_numpy(), config, encoder.version,
                              expected_scores=part["expected_score"].to_numpy())
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
    description="Educational-value classifiers on all-MiniLM-L6-v2 embeddings, one per source: a random "
    "forest on the annotated labels (phi-1) and a linear head on the expected scores (FineWeb-Edu).",
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
    # Peak memory of the step, whatever the shard size: the shard is scanned, scored and written in
    # batches sized from it (stages.SCORE_MEMORY). Not an input of the data version: outputs do not
    # depend on it.
    memory_budget_mb: int = 2048


def dedup_survivors(store: ArtifactStore, source: str, key: str, shard: dict) -> tuple[pl.DataFrame, str]:
    """The shard's dedup survivors (row, id), from its own removal list only, and that list's digest."""
    record, removal = shard_record(store, source, key, shard["data_version"])
    rows = user_error(f"filtered_{source}_corpus", lambda: lsh.survivor_rows(
        file_uri(store, shard, stages.DOCS), removal))
    return rows, record["digest"]


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
        keep_rows, removals = dedup_survivors(store, source, key, shard)
        scanner = user_error(name, lambda: decontamination.get(encoder))
        if config.head not in clf.HEADS:
            raise dg.Failure(description=f"{name}: head={config.head!r}; choose one of {clf.HEADS}")
        inputs = {
            "shard": shard["data_version"],
            "removals": removals,  # this shard's removal list only: other shards' changes do not re-run it
            "classifier": classifier["data_version"],
            "decontamination": scanner.version,
            "config": config.model_dump(exclude={"memory_budget_mb"}),
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
                    memory_budget_mb=config.memory_budget_mb,
                    progress=context.log.info,
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
    *DEDUP_ASSETS,
    edu_annotations,
    edu_classifier,
    filtered_code_corpus,
    filtered_web_corpus,
]
