"""``synthetic_corpus``: every batch of the three synthetic sets, fuzzy-deduplicated within each set
(``gates.py``), with diversity and coverage measures and checks: what training reads."""

from typing import Any

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common import plots
from phi_assets.common.code_version import code_version
from phi_assets.common.store import file_uri, materialized
from phi_assets.common.tables import md_table
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.synthetic import gates, generate
from phi_assets.synthetic import topics as topic_space
from phi_assets.synthetic.batches import BATCHES, KEPT, SETS, write_parquet
from phi_assets.synthetic.rewrite_assets import rewritten_web
from phi_assets.synthetic.textbook_assets import synthetic_exercises, synthetic_textbooks
from resources import ArtifactStore

CORPUS_CODE_VERSION = code_version(__name__, "synthetic_corpus")


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


def _build_corpus(context, store: ArtifactStore, found_sets: dict, config: SyntheticCorpusConfig, out) -> dict:
    summary, removed_all, diversity, coverage, content = {}, [], {}, {}, []
    for name, found in found_sets.items():
        frames = [pl.read_parquet(file_uri(store, m, KEPT)) for _, m in found]
        frame = (
            pl.concat(frames, how="vertical_relaxed")
            if frames
            else pl.DataFrame(schema={"id": pl.String, "text": pl.String})
        )
        candidates = sum(m["metadata"]["funnel"]["candidates"] for _, m in found)
        kept, removed = _dedup_set(name, frame.sort("id"), config.min_similarity)
        write_parquet(kept, out / f"{name}.parquet")
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
    write_parquet(generate.failures_frame(removed_all), out / "duplicates.parquet")
    return {"summary": summary, "diversity": diversity, "coverage": coverage, "content": stable_hash(content)}


def _corpus_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    summary, diversity = meta["summary"], meta["diversity"]
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
    return {
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
        "coverage": dg.MetadataValue.json(meta["coverage"]),
        "tokens_by_set": plots.bar_plot(
            list(summary), [s["tokens"] for s in summary.values()], "synthetic tokens per set", "", "tokens"
        ),
    }


def _corpus_checks(meta: dict[str, Any], config: SyntheticCorpusConfig) -> list[dg.AssetCheckResult]:
    diversity, coverage = meta["diversity"], meta["coverage"]
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
    return [
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
    ]


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
    found_sets = {
        name: materialized(context, store, asset, BATCHES.get_partition_keys(), "synthetic_corpus")
        for name, asset in SETS.items()
    }
    inputs = {
        "batches": {n: [(k, m["data_version"]) for k, m in b] for n, b in found_sets.items()},
        "config": config.model_dump(),
    }

    def build(out):
        meta = _build_corpus(context, store, found_sets, config, out)
        return Built(stable_hash([CORPUS_CODE_VERSION, meta["content"]]), meta)

    outcome = materialize_versioned(
        context,
        store,
        code_version=CORPUS_CODE_VERSION,
        inputs=inputs,
        build=build,
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            **_corpus_metadata(outcome.metadata),
            "artifact": store.uri(store.version_path("synthetic_corpus", None, outcome.data_version)),
            "skipped": outcome.skipped,
        },
        check_results=_corpus_checks(outcome.metadata, config),
    )
