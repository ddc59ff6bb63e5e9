"""The curation assets end to end on the ci profile, with the real LLM, encoder and decontaminator.

Planted in landing shards before ``make demo``'s program runs (``demo_run`` in conftest, what it plants in
tests/support/demo_home.py): an English article in two web files (an exact copy across shards) plus a
near-copy, and a HumanEval task inside an otherwise ordinary code file. Each test checks one property of
what the run produced.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import dagster as dg
import duckdb
import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi_assets.curation import edu, heuristics, minhash, stages
from phi_assets.curation.classifier import EduClassifier
from phi_assets.curation.filter_assets import QualityFilterConfig
from phi_assets.ingest.batches import Batches
from phi_assets.ingest.schema import DOC_COLUMNS, DOC_SCHEMA, doc_id
from resources import ArtifactStore
from tests.support.files import PROSE

SHARDS = {
    "code": ["embedded:stdlib-00", "embedded:stdlib-01", "planted.jsonl"],
    "web": [
        "article-a.jsonl",
        "article-b.jsonl",
        "embedded:pkgdocs-00",
        "embedded:pkgdocs-01",
        "embedded:pydoc-topics",
    ],
}


@pytest.fixture(scope="module")
def run(demo_run):
    """What the demo (tests/conftest.py ``demo_run``) materialized, read back from the store and
    the Dagster instance it used."""
    home = demo_run["home"]
    store = ArtifactStore(root=str(home / "artifacts"))
    out = {"store": store, "task_id": demo_run["task_id"], "meta": {}, "checks": {}}
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        for source, keys in SHARDS.items():
            for asset in (f"quality_filtered_{source}_shards", f"filtered_{source}_corpus"):
                for key in keys:
                    out["meta"][f"{asset}[{key}]"] = _metadata(instance, asset, key)
            check = dg.AssetCheckKey(dg.AssetKey(f"filtered_{source}_corpus"), "decontaminated")
            out["checks"][source] = instance.event_log_storage.get_asset_check_execution_history(
                check, limit=100
            )
        for asset in ("dedup_code", "dedup_web", "edu_annotations", "edu_classifier"):
            out["meta"][asset] = _metadata(instance, asset)
    return out


def _metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict:
    event = (
        instance.get_latest_materialization_event(dg.AssetKey(asset))
        if partition is None
        else next(
            e
            for e in instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
            if e.partition_key == partition
        )
    )
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_filter_funnels_reconcile_with_the_raw_shards(run):
    for source, keys in SHARDS.items():
        for key in keys:
            meta = run["meta"][f"quality_filtered_{source}_shards[{key}]"]
            assert meta["num_in"] == meta["num_kept"] + sum(meta["dropped_by_rule"].values())
            raw = run["store"].current_manifest(f"raw_{source}_shards", key)["metadata"]["stats"]["num_written"]
            assert meta["num_in"] == raw and meta["num_kept"] > 0


def test_dedup_clusters_the_planted_copies_and_is_queryable(run):
    meta = run["meta"]["dedup_web"]
    assert meta["num_exact_removed"] + meta["num_near_removed"] >= 2
    assert meta["num_docs"] == meta["num_kept"] + meta["num_exact_removed"] + meta["num_near_removed"]
    with duckdb.connect(meta["cluster_db"], read_only=True) as con:
        rows = con.execute(
            "SELECT cluster_id, shard, is_survivor, text FROM cluster_texts "
            "WHERE text LIKE 'Plants make their own food%' ORDER BY shard, row"
        ).fetchall()
    assert len(rows) == 3 and len({r[0] for r in rows}) == 1  # one cluster: the copy and the near copy
    assert sum(r[2] for r in rows) == 1  # one survivor


def test_annotations_are_label_distributions_from_real_engine_output(run):
    manifest = run["store"].current_manifest("edu_annotations", None)
    where = run["store"].version_path("edu_annotations", None, manifest["data_version"])
    frame = pl.read_parquet(f"{where}/annotations.parquet")
    assert set(frame["source"]) == {"code", "web"} and set(frame["status"]) <= set(edu.STATUSES)
    ok = frame.filter(pl.col("status") == "ok")
    assert ok.height >= 16 and ok["probs"].null_count() == 0
    for probs, expected, label in ok.select("probs", "expected_score", "label").iter_rows():
        assert sum(probs) == pytest.approx(1.0)
        assert expected == pytest.approx(sum(k * p for k, p in enumerate(probs))) and probs[label] == max(probs)
    assert frame.filter(pl.col("status") != "ok")["expected_score"].null_count() == len(frame) - ok.height
    meta = run["meta"]["edu_annotations"]
    assert meta["num_ok"] == ok.height
    assert meta["num_ok"] + meta["num_no_label"] + meta["num_llm_error"] == len(frame)
    assert meta["llm_requests_code"] == frame.filter(pl.col("source") == "code").height
    assert meta["mean_expected_score_code"] == pytest.approx(
        ok.filter(pl.col("source") == "code")["expected_score"].mean(), abs=1e-4)


def test_classifier_reports_f1_and_scores_with_the_stored_model(run):
    meta = run["meta"]["edu_classifier"]
    for source in ("code", "web"):
        for head in ("forest", "linear"):
            assert 0.0 <= meta[f"{source}_{head}_f1_at_3"] <= 1.0
            low, high = meta[f"{source}_{head}_f1_ci"]
            assert 0.0 <= low <= meta[f"{source}_{head}_f1_at_3"] <= high <= 1.0
            assert 0.0 <= meta[f"{source}_{head}_macro_f1"] <= 1.0
    assert "label \\ predicted" in meta["confusion_matrices"]
    manifest = run["store"].current_manifest("edu_classifier", None)
    model = EduClassifier.load(
        Path(run["store"].version_path("edu_classifier", None, manifest["data_version"])) / "code"
    )
    assert model.report == manifest["metadata"]["reports"]["code"]


def test_filtered_corpora_reconcile_and_pass_the_decontamination_check(run):
    for source, keys in SHARDS.items():
        for key in keys:
            funnel = run["meta"][f"filtered_{source}_corpus[{key}]"]["funnel"]
            assert funnel["in"] == (
                funnel["dedup_removed"] + funnel["contaminated"] + funnel["below_threshold"] + funnel["kept"]
            )
    assert run["meta"]["filtered_web_corpus[article-b.jsonl]"]["funnel"]["dedup_removed"] >= 1


def test_planted_benchmark_task_is_removed_and_listed(run):
    meta = run["meta"]["filtered_code_corpus[planted.jsonl]"]
    assert meta["funnel"]["contaminated"] == 1 and meta["funnel"]["kept"] == 0
    assert run["task_id"] in meta["contaminated"]
    manifest = run["store"].current_manifest("filtered_code_corpus", "planted.jsonl")
    where = run["store"].version_path("filtered_code_corpus", "planted.jsonl", manifest["data_version"])
    listed = pl.read_parquet(f"{where}/contaminated.parquet")
    assert listed["task_id"].to_list() == [run["task_id"]]
    assert [r["task_id"] for r in manifest["metadata"]["contaminated"]] == [run["task_id"]]


def test_decontamination_check_ran_and_passed_on_every_shard(run):
    for source, records in run["checks"].items():
        assert len(records) >= len(SHARDS[source])  # one evaluation per materialized shard (twice: rerun)
        for record in records:
            evaluation = record.event.dagster_event.event_specific_data
            assert record.status.value == "SUCCEEDED" and evaluation.passed, source


# --- the filter step in batches (stages.filter_shard), without Dagster -----------------------------

STDLIB = Path(textwrap.__file__).parent


def _raw_shard(path: str, texts: list[str], uris: list[str], row_group_size: int = 7) -> str:
    """A raw docs.parquet as ingest writes it (DOC_SCHEMA), in small row groups."""
    rows = {
        "id": [doc_id(t) for t in texts], "text": texts, "source": ["code"] * len(texts), "uri": uris,
        "license": [None] * len(texts), "meta": ["{}"] * len(texts),
    }
    with fsspec.open(path, "wb") as f:
        pq.write_table(pa.table(rows, schema=DOC_SCHEMA), f, row_group_size=row_group_size, compression="zstd")
    return path


def _code_texts() -> tuple[list[str], list[str]]:
    """Stdlib modules (mostly kept) and files each code rule drops, interleaved."""
    files = sorted(STDLIB.glob("*.py"))[:36]
    texts = [f.read_text(encoding="utf-8") for f in files]
    uris = [f"file:///{f.name}" for f in files]
    bad = [("a,b\n1,2\n", "file:///table.csv"), ("# auto-generated file\nx = 1\n" * 3, "file:///gen.py"),
           ("x = '" + "a" * 2000 + "'\n", "file:///long.py"), ("pass\n", "file:///short.py"),
           ("   \n", "file:///blank.py"), ("# " + "é" * 40 + "\n" + "y = 1\n" * 9, "file:///accents.py")]
    for i, (text, uri) in enumerate(bad):
        texts.insert(5 * i + 2, text)
        uris.insert(5 * i + 2, uri)
    return texts, uris


def _web_texts() -> tuple[list[str], list[str]]:
    texts = [f"{PROSE}\n\nThis is entry number {i} of the town's archive." for i in range(14)]
    texts[3], texts[7], texts[11] = "too short", "- item\n" * 90, PROSE + "\n\n" + PROSE
    return texts, [f"https://example.org/{i}" for i in range(len(texts))]


def _whole_shard(docs_path: str, source: str, filters, config: minhash.MinHashConfig, out: Path) -> dict:
    """The filter step as it was before batching, the whole shard at once: the reference."""
    docs = pl.read_parquet(docs_path, columns=list(DOC_COLUMNS))
    filtered = heuristics.filter_documents(docs, source, filters)
    kept = filtered.filter(pl.col("drop_reason").is_null()).select(DOC_COLUMNS)
    dropped = filtered.filter(pl.col("drop_reason").is_not_null()).select(
        "id", "uri", pl.col("drop_reason").alias("reason"), pl.col("drop_detail").alias("detail")
    )
    out.mkdir()
    kept.write_parquet(out / "docs.parquet", compression="zstd")
    dropped.write_parquet(out / "dropped.parquet", compression="zstd")
    sigs = minhash.signatures(kept["text"].to_list(), config)
    pq.write_table(minhash.signatures_table(kept["id"].to_list(), sigs, config), out / "minhash.parquet",
                   compression="zstd")
    examples = [
        {"reason": r["reason"], "detail": r["detail"], "uri": r["uri"]}
        for r in dropped.unique("reason", keep="first", maintain_order=True).head(12).iter_rows(named=True)
    ]
    return {"funnel": heuristics.funnel(filtered), "dropped_examples": examples}


def _same_outputs(out: Path, ref: Path) -> None:
    """The three files hold the same rows in the same order, with the same schema (metadata included)."""
    for name in stages.DOCS, stages.DROPPED, stages.MINHASH:
        assert pl.read_parquet(out / name).equals(pl.read_parquet(ref / name)), name
        assert pq.read_schema(out / name).equals(pq.read_schema(ref / name), check_metadata=True), name


def _outputs(out: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(out / f"{name}.parquet") for name in ("docs", "dropped", "minhash")}


def _run_filter(tmp_path: Path, name: str, docs_path: str, source: str, filters, limits=None, **kw):
    out = tmp_path / name
    out.mkdir()
    lines: list[str] = []
    result = stages.filter_shard(docs_path, source, filters, minhash.MinHashConfig(), out, limits=limits,
                                 progress=lines.append, **kw)
    return out, result, lines


@pytest.mark.parametrize("source", ["code", "web"])
def test_filter_shard_in_batches_writes_what_the_whole_shard_step_wrote(tmp_path, source):
    texts, uris = _code_texts() if source == "code" else _web_texts()
    docs_path = _raw_shard(str(tmp_path / "raw.parquet"), texts, uris)
    filters = heuristics.CodeFilterConfig() if source == "code" else heuristics.WebFilterConfig()
    ref = _whole_shard(docs_path, source, filters, minhash.MinHashConfig(), tmp_path / "ref")
    assert ref["funnel"]["kept"] >= 5 and len(ref["funnel"]["dropped"]) >= 3  # a mixed shard
    small = Batches(text_bytes=30_000, rows=4)
    for name, limits in [("one", Batches(1 << 30, 1 << 20)), ("small", small)]:
        out, result, lines = _run_filter(tmp_path, name, docs_path, source, filters, limits)
        assert (len(lines) == 1) if name == "one" else (len(lines) >= len(texts) / 4)
        _same_outputs(out, tmp_path / "ref")
        assert result == ref
        ids, sigs = minhash.read_signatures(out / "minhash.parquet", minhash.MinHashConfig())
        assert ids == _outputs(out)["docs"]["id"].to_list() and sigs.shape == (len(ids), 112)  # row i = doc i


def test_filter_batches_bound_what_is_held(tmp_path, monkeypatch):
    texts, uris = _code_texts()
    docs_path = _raw_shard(str(tmp_path / "raw.parquet"), texts, uris)
    seen: list[tuple[int, int]] = []
    judge = heuristics.filter_documents

    def spy(docs, source, config=None):
        seen.append((docs.height, int(docs["text"].str.len_bytes().sum())))
        return judge(docs, source, config)

    monkeypatch.setattr(stages.heuristics, "filter_documents", spy)
    limits = Batches(text_bytes=20_000, rows=3)
    out, result, lines = _run_filter(tmp_path, "tiny", docs_path, "code", heuristics.CodeFilterConfig(), limits)
    assert len(lines) == len(seen) >= len(texts) / 3 and "batch 1:" in lines[0]
    assert all(rows <= 3 and (size <= 20_000 or rows == 1) for rows, size in seen)
    assert any(rows == 1 and size > 20_000 for rows, size in seen)  # a big document alone still fits
    assert sum(rows for rows, _ in seen) == len(texts)
    funnel = result["funnel"]
    got = _outputs(out)
    assert funnel["in"] == len(texts) == funnel["kept"] + sum(funnel["dropped"].values())
    assert got["docs"].height == got["minhash"].height == funnel["kept"]
    assert got["dropped"].height == sum(funnel["dropped"].values())
    assert dict(got["dropped"]["reason"].value_counts().iter_rows()) == funnel["dropped"]
    assert f"{len(texts):,} documents read" in lines[-1] and f"{funnel['kept']:,} kept" in lines[-1]


@pytest.mark.parametrize("source", ["code", "web"])
def test_filter_batches_follow_the_memory_budget(source):
    budget = QualityFilterConfig().memory_budget_mb
    assert budget == stages.DEFAULT_MEMORY_BUDGET_MB == 2048
    default = stages.FILTER_MEMORY.batches(budget, source)
    factor = stages.FILTER_PEAK_PER_TEXT_BYTE[source]
    assert stages.FILTER_BASELINE_MB + factor * default.text_bytes / 2**20 <= budget
    assert default.text_bytes >= 32 << 20  # batches big enough to amortise the per-batch work
    assert stages.FILTER_MEMORY.batches(8192, source).text_bytes > 4 * default.text_bytes
    with pytest.raises(ValueError, match="memory_budget_mb=256 is too small"):
        stages.FILTER_MEMORY.batches(256, source)


def test_filter_shard_reads_a_budgeted_shard_from_a_uri(tmp_path):
    """The asset passes store URIs (memory://, s3://): read through fsspec, same result."""
    texts, uris = _web_texts()
    docs_path = _raw_shard(f"memory://phi-{uuid.uuid4().hex}/raw/docs.parquet", texts, uris)
    out, result, lines = _run_filter(tmp_path, "uri", docs_path, "web", None, memory_budget_mb=1024)
    local = _raw_shard(str(tmp_path / "raw.parquet"), texts, uris)
    ref = _whole_shard(local, "web", None, minhash.MinHashConfig(), tmp_path / "ref")
    assert len(lines) == 1 and result == ref
    _same_outputs(out, tmp_path / "ref")


@pytest.mark.parametrize("case", ["empty", "all dropped"])
def test_filter_shard_writes_valid_empty_outputs(tmp_path, case):
    texts = [] if case == "empty" else ["a,b\n1,2\n", "3,4\n5,6\n", "x,y\n"]
    uris = [f"file:///t{i}.csv" for i in range(len(texts))]
    docs_path = _raw_shard(str(tmp_path / "raw.parquet"), texts, uris)
    ref = _whole_shard(docs_path, "code", None, minhash.MinHashConfig(), tmp_path / "ref")
    out, result, lines = _run_filter(tmp_path, "out", docs_path, "code", None, Batches(10, 1))
    assert len(lines) == len(texts)
    assert result == ref and result["funnel"] == {
        "in": len(texts), "kept": 0, "dropped": {"code_data_extension": len(texts)} if texts else {}}
    _same_outputs(out, tmp_path / "ref")
    got = _outputs(out)
    assert got["docs"].columns == list(DOC_COLUMNS)
    assert got["dropped"].columns == ["id", "uri", "reason", "detail"]
    assert got["docs"].height == 0 and got["dropped"].height == len(texts)
    assert minhash.read_signatures(out / "minhash.parquet", minhash.MinHashConfig())[0] == []
