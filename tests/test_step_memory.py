"""Bounded memory per step: ingest's expectations, scoring with decontamination, and tokenization stream a
shard in batches sized from ``memory_budget_mb`` (benchmarks/step_memory.py measures their peaks; the
filter step's tests are in test_curation_assets.py). Here each runs on a small shard with batches forced
small, in more than one batch, and must give what one batch gives (scoring: what the step gave before it
was batched, ``tests/support/score_before.py``)."""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi_assets.common.benchmarks import load_eval_tasks
from phi_assets.common.decontaminate import Decontaminator
from phi_assets.common.embeddings import Encoder
from phi_assets.curation import classifier as clf
from phi_assets.curation import edu, stages
from phi_assets.curation.assets import FilteredCorpusConfig
from phi_assets.ingest.assets import ShardConfig
from phi_assets.ingest.batches import DEFAULT_MEMORY_BUDGET_MB, Batches
from phi_assets.ingest.expectations import VALIDATE_MEMORY, validate_docs
from phi_assets.ingest.schema import DOC_COLUMNS, DOC_SCHEMA, doc_id
from phi_assets.mixture import tokens
from phi_assets.mixture.token_assets import TokenizeConfig
from phi_assets.mixture.tokenizer import load
from tests.support.mixture import paragraphs_of, stdlib_corpus, train_tokenizer, write_parquet
from tests.support.score_before import score_whole_shard

ONE_BATCH = Batches(text_bytes=1 << 40, rows=1 << 20)


def test_every_step_defaults_to_a_2_gb_budget_it_can_meet():
    for config in (ShardConfig(), FilteredCorpusConfig(), TokenizeConfig()):
        assert config.memory_budget_mb == DEFAULT_MEMORY_BUDGET_MB == 2048
    for memory, source in [(VALIDATE_MEMORY, None), (stages.SCORE_MEMORY, "code"), (stages.SCORE_MEMORY, "web"),
                           (tokens.TOKENIZE_MEMORY, None)]:
        limits = memory.batches(2048, source)
        assert memory.baseline_mb + memory.factor(source) * limits.text_bytes / 2**20 <= 2048
        assert limits.text_bytes >= 32 << 20  # batches big enough to amortise the per-batch work
        with pytest.raises(ValueError, match=f"memory_budget_mb=256 is too small for the .*{memory.step} step"):
            memory.batches(256, source)


# --- ingest: the Great Expectations suite -----------------------------------------------------------

def test_expectations_in_batches_report_what_one_batch_reports(tmp_path):
    rows = [{"id": doc_id(f"x = {i}\n"), "text": f"x = {i}\n" * (i % 7 + 1), "source": "code", "uri": f"u{i}",
             "license": None, "meta": "{}"} for i in range(40)]
    rows[3]["text"] = None  # one violation of each kind, in different batches
    rows[11]["source"] = "forum"
    rows[25]["text"] = "y" * 500
    rows[37]["id"] = rows[2]["id"]
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=DOC_SCHEMA.remove_metadata()
                                        .set(1, pa.field("text", pa.string()))), path, row_group_size=16)
    one = validate_docs(path, max_chars=100, limits=ONE_BATCH)
    small = validate_docs(path, max_chars=100, limits=Batches(text_bytes=120, rows=6))
    default = validate_docs(path, max_chars=100)  # the 2048 MB budget: a small shard is one batch
    assert one.batches == default.batches == 1 and small.batches >= len(rows) / 6
    assert small.outcomes == one.outcomes == default.outcomes and small.failures() == one.failures()
    failed = {(o.expectation, o.column): o.unexpected_count for o in small.outcomes if not o.success}
    assert failed == {
        ("expect_column_values_to_not_be_null", "text"): 1,
        ("expect_column_values_to_be_in_set", "source"): 1,
        ("expect_column_value_lengths_to_be_between", "text"): 1,
        ("expect_column_values_to_be_unique", "id"): 2,
    }
    counted = {o.expectation: o.element_count for o in small.outcomes}
    assert counted["expect_column_values_to_be_in_set"] == len(rows)  # every row judged once


# --- scoring and decontamination -----------------------------------------------------------------

class _Renamer(ast.NodeTransformer):
    """Every non-builtin name renamed and docstrings dropped: only decontamination's pass 2 sees it."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def new(self, name: str) -> str:
        return name if hasattr(builtins, name) else self.names.setdefault(name, f"v{len(self.names)}")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.name = self.new(node.name)
        if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            node.body = node.body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self.new(node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self.new(node.arg)
        return node


@pytest.fixture(scope="module")
def encoder() -> Iterator[Encoder]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few short texts a call: on a busy machine more threads mostly wait
    yield Encoder(batch_size=2)  # chunks of 16 excerpts: they straddle the batches below
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def decontaminator(mbpp_path: Path, encoder: Encoder) -> Decontaminator:
    return Decontaminator(load_eval_tasks(mbpp_path), encoder=encoder)


@pytest.fixture(scope="module")
def scored_shard(tmp_path_factory, decontaminator: Decontaminator, encoder: Encoder):
    """A quality-filtered shard of 30 code documents, two of them planted benchmark problems (verbatim in
    one batch, renamed in another), its dedup survivors, and a classifier trained on its excerpts."""
    by_id = {t.task_id: t for t in decontaminator.tasks}
    texts = list(dict.fromkeys(p for p in paragraphs_of(stdlib_corpus()) if len(p) > 300))[:28]
    texts.insert(4, "import os\n\n\n" + by_id["HumanEval/0"].code + "\n\nprint(os.sep)\n")
    texts.insert(21, "import os\n\n\n" + ast.unparse(_Renamer().visit(ast.parse(by_id["HumanEval/12"].code))))
    path = tmp_path_factory.mktemp("scored") / "docs.parquet"
    pl.DataFrame({"id": [doc_id(t) for t in texts], "text": texts, "source": "code",
                  "uri": [f"file:///doc{i}.py" for i in range(len(texts))], "license": None, "meta": "{}"},
                 schema=dict.fromkeys(DOC_COLUMNS, pl.String)).write_parquet(path)
    keep = pl.DataFrame({"row": range(len(texts)), "id": [doc_id(t) for t in texts]},
                        schema={"row": pl.Int64, "id": pl.String}).filter(~pl.col("row").is_in([2, 9]))
    embeddings = encoder.encode([edu.excerpt(t, 200) for t in texts])
    model = clf.train(embeddings, np.arange(len(texts)) % 6, clf.ClassifierConfig(num_trees=10),
                      encoder.version)
    return str(path), keep, model


def _same_files(out: Path, ref: Path, names: tuple[str, ...]) -> None:
    for name in names:
        assert pl.read_parquet(out / name).equals(pl.read_parquet(ref / name)), name
        assert pq.read_schema(out / name).equals(pq.read_schema(ref / name), check_metadata=True), name


# The linear head's scores move with any change of an embedding's bits (the excerpts embedded in other
# company than one encode of them all would give); the forest's mostly do not.
@pytest.mark.parametrize("head", clf.HEADS)
def test_scoring_in_batches_writes_what_the_whole_shard_step_wrote(tmp_path, scored_shard, encoder,
                                                                     decontaminator, head):
    docs_path, keep, model = scored_shard
    args = (docs_path, keep, 30, "code", model, head, 2.5, encoder, decontaminator, 200)
    (tmp_path / "ref").mkdir()
    ref = score_whole_shard(*args, tmp_path / "ref")
    funnel = ref["funnel"]
    assert funnel["contaminated"] == 2 and funnel["kept"] and funnel["below_threshold"]  # a mixed shard
    assert {r["method"] for r in ref["contaminated"]} == {"ngram", "embedding"}  # both passes find one
    for name, limits in [("one", ONE_BATCH), ("small", Batches(text_bytes=4_000, rows=5))]:
        (tmp_path / name).mkdir()
        lines: list[str] = []
        got = stages.score_shard(*args, tmp_path / name, limits=limits, progress=lines.append)
        scoring = [line for line in lines if ": batch " in line]
        assert len(scoring) == 1 if name == "one" else len(scoring) >= 6  # 28 survivors, 5 rows a batch
        assert got == ref
        _same_files(tmp_path / name, tmp_path / "ref", (stages.DOCS, stages.SCORES, stages.CONTAMINATED))


def test_scoring_without_survivors_writes_empty_files_of_the_same_schema(tmp_path, scored_shard, encoder,
                                                                         decontaminator):
    docs_path, keep, model = scored_shard
    args = (docs_path, keep.clear(), 30, "code", model, "forest", 2.5, encoder, decontaminator, 200)
    for name in ("ref", "got"):
        (tmp_path / name).mkdir()
    ref = score_whole_shard(*args, tmp_path / "ref")
    assert stages.score_shard(*args, tmp_path / "got") == ref and ref["funnel"]["dedup_removed"] == 30
    _same_files(tmp_path / "got", tmp_path / "ref", (stages.DOCS, stages.SCORES, stages.CONTAMINATED))


def test_scoring_refuses_survivors_the_shard_does_not_have(tmp_path, scored_shard, encoder, decontaminator):
    docs_path, keep, model = scored_shard
    for wrong in (pl.concat([keep, keep.head(1)]), keep.with_columns(row=pl.col("row") + 5)):
        with pytest.raises(ValueError, match="the shard changed after dedup ran"):
            stages.score_shard(docs_path, wrong, 30, "code", model, "forest", 2.5, encoder, decontaminator,
                               200, tmp_path)


@pytest.mark.parametrize("head", clf.HEADS)
def test_scores_chunk_by_chunk_are_those_of_all_at_once(scored_shard, head):
    """What batching the scores rests on: a row's score does not depend on the rows scored with it."""
    model = scored_shard[2]
    vectors = np.random.default_rng(0).normal(size=(1000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    whole = model.score(vectors, head)
    for step in (16, 128, 512):
        parts = np.concatenate([model.score(vectors[i : i + step], head) for i in range(0, len(vectors), step)])
        assert parts.tobytes() == whole.tobytes(), step


# --- tokenization ------------------------------------------------------------------------------------

def test_tokenization_in_batches_writes_the_same_token_shard(tmp_path):
    corpus = stdlib_corpus()
    loaded = load(train_tokenizer(corpus, tmp_path / "tok"))
    texts = paragraphs_of(corpus)
    path = write_parquet(tmp_path / "docs.parquet", [f"d{i:04d}" for i in range(len(texts))], texts)
    keep = tokens.hash_partition(1, 2)
    shards: dict[str, list[int]] = {}
    for name, limits in [("one", ONE_BATCH), ("rows", None), ("small", Batches(text_bytes=20_000, rows=1024))]:
        done: list[int] = []
        tokens.write_shard(tokens.read_documents(str(path), keep=keep, limits=limits), loaded, tmp_path / name,
                           "v", progress=lambda docs, _tokens, done=done: done.append(docs))
        shards[name] = done
    # about 1,100 documents, 1,024 a batch by default; 300 KB of text, 20 KB a batch
    assert len(shards["one"]) == 1 and len(shards["rows"]) == 2 and len(shards["small"]) >= 10
    assert sum(shards["small"]) == sum(shards["rows"]) == sum(shards["one"]) < len(texts)
    for name in ("rows", "small"):
        for file in (tokens.TOKENS, tokens.OFFSETS, tokens.META):
            assert (tmp_path / name / file).read_bytes() == (tmp_path / "one" / file).read_bytes(), (name, file)
        assert pl.read_parquet(tmp_path / name / tokens.DOCUMENTS).equals(
            pl.read_parquet(tmp_path / "one" / tokens.DOCUMENTS))
