"""``stages.score_shard`` as it was before it was batched (the whole shard at once): the reference that
tests/test_step_memory.py and benchmarks/step_memory.py compare the batched step with."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl

from phi_assets.curation import edu, stages
from phi_assets.ingest.schema import DOC_COLUMNS


def score_whole_shard(docs_path, keep_rows, num_in, source, model, head, threshold, encoder, decontaminator,
                      max_chars, out):
    """``stages.score_shard`` as it was before batching: the whole shard at once."""
    docs = stages.read_rows(docs_path, keep_rows)
    texts = docs["text"].to_list()
    is_code = source == "code"
    flagged = decontaminator.scan(texts, is_code=is_code, desc=f"decontaminate {source}")
    embeddings = encoder.encode([edu.excerpt(t, max_chars) for t in texts], desc=f"embed {source}")
    scores = model.score(embeddings, head)
    decision = np.where(scores >= threshold, "kept", "below_threshold").astype(object)
    decision[flagged["row"].to_numpy()] = "contaminated"
    scored = docs.select("row", "id", "uri").with_columns(
        edu_score=pl.Series(scores, dtype=pl.Float32), decision=pl.Series(decision.tolist(), dtype=pl.String))
    kept = docs.filter(pl.Series(decision == "kept"))
    kept.select(DOC_COLUMNS).write_parquet(out / stages.DOCS, compression="zstd")
    scored.write_parquet(out / stages.SCORES, compression="zstd")
    picked = flagged["row"].cast(pl.UInt32)
    listed = flagged.with_columns(id=docs["id"].gather(picked), uri=docs["uri"].gather(picked))
    listed.write_parquet(out / stages.CONTAMINATED, compression="zstd")
    counts = Counter(decision.tolist())
    funnel = {"in": num_in, "dedup_removed": num_in - len(docs), "contaminated": counts["contaminated"],
              "below_threshold": counts["below_threshold"], "kept": counts["kept"]}
    recheck = decontaminator.scan(pl.read_parquet(out / stages.DOCS, columns=["text"])["text"].to_list(),
                                  is_code=is_code)

    def examples(descending: bool) -> list[dict]:
        best = scored.with_columns(text=docs["text"]).sort("edu_score", "id", descending=[descending, False])
        return [{"edu_score": round(float(r["edu_score"]), 2), "uri": r["uri"],
                 "text": stages.preview(r["text"])} for r in best.head(5).iter_rows(named=True)]

    return {"funnel": funnel, "threshold": threshold, "head": head, "recheck_flagged": len(recheck),
            "score_hist": np.histogram(scores, bins=stages.SCORE_BINS, range=(0, 5))[0].tolist(),
            "contaminated": listed.select("id", "uri", "benchmark", "task_id", "method", "score")
            .rows(named=True), "top": examples(True), "bottom": examples(False)}
