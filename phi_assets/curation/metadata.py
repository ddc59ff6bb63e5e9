"""Dagster metadata for the curation assets: funnels, plots, example tables, the classifier report."""

from __future__ import annotations

from typing import Any

import dagster as dg

from phi_assets.common import plots
from phi_assets.common.tables import md_table
from phi_assets.curation.classifier import HEADS
from phi_assets.curation.edu import STATUSES

KEEP_LINE = 3.0  # drawn on the expected-score histograms: the classifier's default keep threshold (FineWeb-Edu)
VERSION_EXEMPT = "Dagster metadata of the curation assets: funnels, plots, tables (formatting)"


def filter_metadata(build: dict[str, Any], docs_uri: str) -> dict[str, Any]:
    funnel = build["funnel"]
    dropped = dict(sorted(funnel["dropped"].items(), key=lambda kv: -kv[1]))
    labels, values = ["in", "kept", *dropped], [funnel["in"], funnel["kept"], *dropped.values()]
    return {
        "dagster/row_count": funnel["kept"],
        "num_in": funnel["in"],
        "num_kept": funnel["kept"],
        "num_dropped": funnel["in"] - funnel["kept"],
        "dropped_by_rule": dg.MetadataValue.json(dropped),
        "funnel": plots.bar_plot(labels, values, "quality filter funnel", "", "documents"),
        "dropped_examples": md_table(
            ["reason", "detail", "uri"], [list(r.values()) for r in build["dropped_examples"]]
        ),
        "artifact": docs_uri,
    }


def dedup_metadata(build: dict[str, Any], db_uri: str) -> dict[str, Any]:
    largest = [[r["cluster_id"], r["cluster_kind"], r["len"]] for r in build["largest_clusters"]]
    query = (
        f"```sql\n-- duckdb {db_uri}\nSELECT * FROM cluster_members WHERE cluster_id = "
        f"'{largest[0][0] if largest else '...'}';\nSELECT cluster_id, shard, row, is_survivor, left(text, 80) "
        "FROM cluster_texts LIMIT 20;\n```"
    )
    return {
        "num_docs": build["num_docs"],
        "num_kept": build["num_kept"],
        "num_exact_removed": build["num_exact_removed"],
        "num_near_removed": build["num_near_removed"],
        "num_clusters": build["num_clusters"],
        "num_shards": build["num_shards"],
        "confirmed_pairs": build["num_pairs"],
        "component_rounds": build["component_rounds"],
        "largest_clusters": md_table(["cluster_id", "kind", "size"], largest),
        "cluster_db": dg.MetadataValue.path(db_uri),
        "query": dg.MetadataValue.md(query),
    }


def _mean(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def annotation_metadata(build: dict[str, Any], path: str) -> dict[str, Any]:
    summary = build["summary"]
    rows = [
        [
            s,
            sum(v["status"].values()),
            *(v["status"].get(k, 0) for k in STATUSES),
            v["labels"],
            _mean(v["mean_expected_score"]),
            _mean(v["mean_entropy"]),
            _mean(v["mean_label_mass"]),
        ]
        for s, v in summary.items()
    ]
    labels = [f"{s} {k}" for s in summary for k in range(6)]
    counts = [n for v in summary.values() for n in v["labels"]]
    llm = {
        f"{key}_{source}": value
        for source, stats in build["llm"].items()
        for key, value in stats.items()
        if key in ("llm_requests", "llm_cache_hits", "llm_generated_tokens", "llm_tokens_per_s", "llm_failures")
    }
    return {
        "dagster/row_count": sum(r[1] for r in rows),
        **{f"num_{status}": sum(v["status"].get(status, 0) for v in summary.values()) for status in STATUSES},
        **{f"mean_expected_score_{s}": v["mean_expected_score"] for s, v in summary.items()},
        **{f"mean_entropy_{s}": v["mean_entropy"] for s, v in summary.items()},
        **{f"mean_label_mass_{s}": v["mean_label_mass"] for s, v in summary.items()},
        "annotations": md_table(
            ["source", "annotated", *STATUSES, "labels 0..5 (argmax)", "mean expected score",
             "mean entropy (nats)", "mean label mass"],
            rows,
        ),
        "label_distribution": plots.bar_plot(labels, counts, "annotated labels (argmax)", "", "documents"),
        **{
            f"expected_score_histogram_{s}": plots.score_histogram(
                v["expected_score_hist"], 0, 5, KEEP_LINE, f"{s}: expected educational scores (status ok)"
            )
            for s, v in summary.items()
        },
        "examples": md_table(
            ["source", "uri", "answer", "label", "expected score", "label mass", "status"],
            [list(r.values()) for r in build["examples"]],
        ),
        "artifact": path,
        **llm,
    }


def _confusion(matrix: list[list[int]]) -> str:
    head = "| label \\ predicted | " + " | ".join(str(k) for k in range(6)) + " |\n|" + "---|" * 7
    return (
        head
        + "\n"
        + "\n".join(f"| **{k}** | " + " | ".join(str(n) for n in row) + " |" for k, row in enumerate(matrix))
    )


def classifier_metadata(build: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"encoder_version": build["encoder_version"], "threshold": build["threshold"]}
    rows, confusions = [], []
    for source, report in build["reports"].items():
        for head in HEADS:
            m = report["heads"][head]
            rows.append(
                [
                    source,
                    head,
                    report["num_train"],
                    report["num_test"],
                    f"{m['f1_at_threshold']:.3f} [{m['f1_ci_low']:.3f}, {m['f1_ci_high']:.3f}]",
                    f"{m['macro_f1']:.3f}",
                    f"{m['accuracy']:.3f}",
                ]
            )
            out[f"{source}_{head}_f1_at_3"] = m["f1_at_threshold"]
            out[f"{source}_{head}_f1_ci"] = [m["f1_ci_low"], m["f1_ci_high"]]
            out[f"{source}_{head}_macro_f1"] = m["macro_f1"]
            confusions.append(
                f"**{source} / {head}** (rows: annotated, columns: predicted)\n\n{_confusion(m['confusion'])}"
            )
    out["report"] = md_table(
        ["source", "head", "train", "test", f"F1@{build['threshold']:g} [95% bootstrap CI]", "macro-F1",
         "accuracy"],
        rows,
    )
    out["confusion_matrices"] = dg.MetadataValue.md("\n\n".join(confusions))
    warnings = [f"{source}: {r['warning']}" for source, r in build["reports"].items() if r.get("warning")]
    out["warnings"] = dg.MetadataValue.md("\n".join(f"- {w}" for w in warnings) or "none")
    return out


def corpus_metadata(build: dict[str, Any], docs_uri: str) -> dict[str, Any]:
    funnel = build["funnel"]
    examples = {
        key: md_table(["score", "uri", "text"], [[r["edu_score"], r["uri"], r["text"]] for r in build[key]])
        for key in ("top", "bottom")
    }
    scored = funnel["in"] - funnel["dedup_removed"]
    return {
        "dagster/row_count": funnel["kept"],
        "funnel": dg.MetadataValue.json(funnel),
        "num_scored": scored,
        "kept_fraction": round(funnel["kept"] / scored, 4) if scored else 0.0,
        "threshold": build["threshold"],
        "head": build["head"],
        "score_histogram": plots.score_histogram(
            build["score_hist"], 0, 5, build["threshold"], f"educational scores ({build['head']})"
        ),
        "top_examples": examples["top"],
        "bottom_examples": examples["bottom"],
        "contaminated": md_table(
            ["id", "uri", "benchmark", "task_id", "method", "score"],
            [list(r.values()) for r in build["contaminated"]],
        ),
        "artifact": docs_uri,
    }
