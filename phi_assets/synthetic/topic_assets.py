"""``topics``: the seed topics of the synthetic sets, the curated list plus topics mined from
clusters of the filtered corpora (the clustering and naming are in ``topics.py``)."""

import random

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common.code_version import code_version
from phi_assets.common.store import file_uri, user_error
from phi_assets.common.tables import md_table
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.curation import stages
from phi_assets.curation.assets import corpus_shards, filtered_code_corpus, filtered_web_corpus
from phi_assets.curation.edu import excerpt
from phi_assets.ingest.schema import SOURCES
from phi_assets.synthetic import topics as topic_space
from resources import ArtifactStore, ProfileResource
from resources.curation import EncoderResource

TOPICS_CODE_VERSION = code_version(__name__, "topics")


class TopicsConfig(dg.Config):
    clusters_per_source: int = 0  # 0: the profile's size (ci 4, local 12)
    max_docs_per_source: int = 500  # documents embedded per corpus for clustering (a seeded sample)
    max_doc_chars: int = 1500
    seed: int = 0


def _corpus_texts(store: ArtifactStore, shards: list[tuple[str, dict]], limit: int, seed: int) -> list[str]:
    texts = []
    for _, manifest in shards:
        texts += pl.read_parquet(file_uri(store, manifest, stages.DOCS), columns=["text"])["text"].to_list()
    if len(texts) > limit:  # a seeded sample, in corpus order
        keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
        texts = [texts[i] for i in keep]
    return texts


def _build_topics(context, store: ArtifactStore, corpora: dict, enc, curated: list[str], k: int,
                  config: TopicsConfig, out) -> Built:
    mined = []
    for source, shards in corpora.items():
        texts = _corpus_texts(store, shards, config.max_docs_per_source, config.seed)
        excerpts = [excerpt(t, config.max_doc_chars) for t in texts]
        if len(excerpts) >= 2:
            embeddings = enc.encode(excerpts, desc=f"embed filtered_{source}_corpus")
            mined += topic_space.cluster_topics(excerpts, embeddings, k, config.seed, f"cluster:{source}")
        context.log.info(f"topics: {len(texts)} {source} documents")
    table = topic_space.topic_table(curated, mined)
    table.write_parquet(out / "topics.parquet", compression="zstd")
    origins = dict(sorted(table.group_by("origin").len().iter_rows()))
    return Built(
        stable_hash([TOPICS_CODE_VERSION, table.rows()]),
        {
            "num_topics": table.height,
            "by_origin": origins,
            "mined": table.filter(pl.col("origin") != "curated").rows(named=True),
        },
    )


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
    curated = user_error("topics", topic_space.curated_topics)
    corpora = {s: corpus_shards(context, store, s, "topics") for s in SOURCES}
    enc = encoder.get()
    inputs = {
        "corpora": {s: [(k, m["data_version"]) for k, m in shards] for s, shards in corpora.items()},
        "encoder": enc.version,
        "k": k,
        "config": config.model_dump(),
    }
    outcome = materialize_versioned(
        context,
        store,
        code_version=TOPICS_CODE_VERSION,
        inputs=inputs,
        build=lambda out: _build_topics(context, store, corpora, enc, curated, k, config, out),
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
            "artifact": store.uri(file_uri(store, outcome.manifest, "topics.parquet")),
            "skipped": outcome.skipped,
        },
    )
