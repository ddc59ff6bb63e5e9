"""What the three batch-partitioned generating assets share (``synthetic_textbooks``,
``synthetic_exercises``, ``rewritten_web``): the batch partitions and a batch's files, the
decontamination gate every batch passes, writing and describing a batch, and the asset's result.
``synthetic_corpus`` reads the batches through the same names."""

from typing import Any

import dagster as dg
import polars as pl

from phi_assets.common import plots
from phi_assets.common.store import current, file_uri
from phi_assets.common.tables import md_table
from phi_assets.common.versioning import Built, stable_hash
from phi_assets.curation.checks import decontamination_check_result
from phi_assets.curation.edu import excerpt
from phi_assets.synthetic import gates, generate
from resources import ArtifactStore, load_profile
from resources.llm import LLMEngine

SIZES = load_profile().sizes
BATCHES = dg.StaticPartitionsDefinition([f"batch-{i:03d}" for i in range(SIZES.synthetic_batches)])
KEPT, FAILED = "docs.parquet", "failures.parquet"
SETS = {"textbooks": "synthetic_textbooks", "exercises": "synthetic_exercises", "rewrites": "rewritten_web"}
PREVIEW_CHARS = 400


def batch_index(key: str) -> int:
    return int(key.rsplit("-", 1)[1])


def write_parquet(frame: pl.DataFrame, path) -> None:
    frame.write_parquet(path, compression="zstd")


def _content_version(code_version: str, kept: pl.DataFrame, failed: pl.DataFrame) -> str:
    """Hash of what was produced (not of how long it took), so a rerun from the cache matches."""
    return stable_hash([code_version, kept.rows(), failed.select("candidate_id", "reason").rows()])


def model_fields(generator: dict) -> dict[str, str]:
    return {"model": generator["metadata"]["model"]["name"], "model_version": generator["data_version"]}


def _preview(text: str) -> str:
    return excerpt(text, PREVIEW_CHARS).replace("\n", " ")


def topic_list(store: ArtifactStore) -> tuple[list[str], str]:
    manifest = current(store, "topics")
    return pl.read_parquet(file_uri(store, manifest, "topics.parquet"))["topic"].to_list(), manifest[
        "data_version"
    ]


def decontaminate(kept: pl.DataFrame, scanner, *, is_code: bool, set_name: str, desc: str):
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


def finish(
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
    write_parquet(kept, out / KEPT)
    write_parquet(failed, out / FAILED)
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
        "artifact": store.uri(file_uri(store, outcome.manifest, KEPT)),
        "failures": store.uri(file_uri(store, outcome.manifest, FAILED)),
        "skipped": outcome.skipped,
    }


def generation_result(
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
