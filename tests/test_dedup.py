"""Exact and MinHash-LSH deduplication: signatures, clusters, survivors and the DuckDB cluster file."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi_assets.curation import dedup
from phi_assets.curation.dedup import ShardSignatures, deduplicate, write_cluster_db
from phi_assets.curation.minhash import (
    EMPTY_SIGNATURE,
    MinHashConfig,
    normalize,
    read_signatures,
    shard_signatures,
    signatures,
    signatures_table,
)
from phi_assets.ingest.schema import doc_id

VOCAB = ["".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=7)) for i in range(3000)]


def text(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(words)) + "."


def edit(base: str, changes: int, seed: int, offset: int = 0) -> str:
    """``base`` with ``changes`` words replaced, far apart from each other."""
    words = base.split()
    rng = random.Random(seed)
    for i in range(changes):
        words[((i + 1) * len(words) // (changes + 1) + offset) % len(words)] = rng.choice(VOCAB).upper()
    return " ".join(words)


def shard(name: str, texts: list[str]) -> ShardSignatures:
    return ShardSignatures(name, [doc_id(t) for t in texts], signatures(texts))


def by_doc(result: dedup.DedupResult) -> dict[tuple[str, str], tuple]:
    """Decisions keyed by (shard, id), which is unique per shard, so row order does not matter."""
    return {(r["shard"], r["id"]): (r["cluster_id"], r["cluster_kind"], r["keep"], r["survivor_shard"],
                                    r["survivor_id"]) for r in result.decisions.iter_rows(named=True)}


def test_config_and_input_validation() -> None:
    for field in ("shingle_words", "num_bands", "rows_per_band"):
        with pytest.raises(ValueError, match=field):
            MinHashConfig(**{field: 0})
    with pytest.raises(ValueError, match="seed"):
        MinHashConfig(seed=-1)
    with pytest.raises(ValueError, match="rows_per_band"):
        MinHashConfig(rows_per_band=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        signatures(["ok", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_bytes"):
        signatures(["ok"], batch_bytes=0)
    good = shard("a", ["one two three"])
    with pytest.raises(ValueError, match="unique"):
        deduplicate([good, good])
    with pytest.raises(ValueError, match="shape"):
        deduplicate([ShardSignatures("b", ["x"], np.zeros((1, 7), np.uint32))])
    with pytest.raises(ValueError, match="min_similarity"):
        deduplicate([good], min_similarity=1.5)


def test_normalize_and_signature_edge_cases() -> None:
    assert normalize("Hello,  WORLD!\n3.14 and 1,000 x_y") == "hello world 0 and 0 x y"
    assert normalize("Café RÉSUMÉ naïve") == "cafe resume naive"
    texts = ["", "!!! ...", "Too short", "too  SHORT!", "a b c d e f g h", text(1), "Ünïcode wörds, 3.5"]
    sigs = signatures(texts)
    assert sigs.shape == (len(texts), 112) and sigs.dtype == np.uint32
    assert (sigs[0] == EMPTY_SIGNATURE).all() and (sigs[1] == EMPTY_SIGNATURE).all()
    assert (sigs[2] == sigs[3]).all() and not (sigs[2] == EMPTY_SIGNATURE).all()  # one whole-text shingle
    # Batching is invisible: one document per batch gives the same signatures.
    assert (signatures(texts, batch_bytes=1) == sigs).all()
    assert (signatures(texts[5:6])[0] == sigs[5]).all()


def test_signatures_identical_across_processes() -> None:
    texts = [text(7), "Ünïcode wörds, 3.5 déjà vu", "short one", ""]
    code = ("import hashlib; from phi_assets.curation.minhash import signatures; "
            f"print(hashlib.sha256(signatures({texts!r}).tobytes()).hexdigest())")
    root = Path(__file__).resolve().parents[1]
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=root, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
               for seed in ("1", "2")}
    assert digests == {hashlib.sha256(signatures(texts).tobytes()).hexdigest()}


def test_exact_duplicates_across_shards() -> None:
    dup = text(10)
    a, b = shard("a", [text(11), dup]), shard("b", [dup, text(12)])
    result = deduplicate([a, b])
    rows = result.decisions.filter(id=doc_id(dup)).sort("shard").to_dicts()
    assert [r["keep"] for r in rows] == [True, False]  # same id: the smaller shard name survives
    assert {r["cluster_kind"] for r in rows} == {"exact"} and {r["cluster_id"] for r in rows} == {doc_id(dup)}
    assert rows[1]["survivor_shard"] == "a" and rows[1]["survivor_row"] == 1
    assert (result.num_docs, result.num_kept, result.num_exact_removed, result.num_near_removed,
            result.num_clusters) == (4, 3, 1, 0, 1)
    assert result.reconciles


def test_near_duplicates_cluster_and_different_docs_do_not() -> None:
    base = text(20)
    near = edit(base, 3, seed=1)
    others = [text(100 + i) for i in range(20)]
    result = deduplicate([shard("s", [base, *others[:10]]), shard("t", [near, *others[10:]])])
    d = result.decisions
    pair = d.filter(d["id"].is_in([doc_id(base), doc_id(near)]))
    assert pair["cluster_id"].n_unique() == 1 and pair["cluster_id"][0] is not None
    assert set(pair["cluster_kind"]) == {"near"} and pair["keep"].sum() == 1
    assert d.filter(d["id"].is_in([doc_id(t) for t in others]))["cluster_id"].null_count() == len(others)
    assert (result.num_clusters, result.num_near_removed, result.num_exact_removed) == (1, 1, 0)
    # A heavily edited copy (about half of its shingles differ) is not a near duplicate.
    far = deduplicate([shard("s", [base, edit(base, 30, seed=2)])])
    assert far.num_clusters == 0 and far.reconciles


def test_survivors_and_cluster_ids_do_not_depend_on_order() -> None:
    base, other = text(30), text(31)
    groups = {
        "x": [base, text(32), edit(other, 2, 5), "!!!"],
        "y": [edit(base, 2, 3), other, text(33), "???"],
        "z": [base, edit(base, 4, 4), text(34), other],
    }
    first = deduplicate([shard(k, v) for k, v in groups.items()])
    rng = random.Random(0)
    for _ in range(3):
        names = list(groups)
        rng.shuffle(names)
        shuffled = [shard(k, rng.sample(groups[k], len(groups[k]))) for k in names]
        again = deduplicate(shuffled)
        assert by_doc(again) == by_doc(first)
    # Clusters: base x2 + two edits (4 docs), other x2 + one edit (3 docs); which removals count as
    # exact depends on whether the survivor is a copy or an edit, i.e. on the ids.
    assert first.num_clusters == 2 and first.num_exact_removed + first.num_near_removed == 5
    assert first.decisions["cluster_kind"].drop_nulls().unique().to_list() == ["near"]
    survivors = first.decisions.filter("keep", first.decisions["cluster_id"].is_not_null())
    assert sorted(survivors["cluster_id"]) == sorted(survivors["id"])  # cluster_id = survivor's id
    # Punctuation-only texts have no words: no near match between "!!!" and "???".
    assert first.decisions.filter(id=doc_id("!!!"))["cluster_id"][0] is None
    assert first.reconciles


def test_chains_are_split_around_the_survivor() -> None:
    # a ~ b and b ~ c at Jaccard ~0.79 (LSH finds each link with probability ~0.9), a ~ c at ~0.62.
    # Fixture: the first seed where plain LSH links all three and the survivor is an end (a or c).
    for seed in range(100):
        a = text(seed)
        b = edit(a, 7, seed)
        c = edit(b, 7, seed + 1, offset=15)
        chain = [shard("s", [a, b, c])]
        plain = deduplicate(chain, min_similarity=None)
        if plain.num_near_removed == 2 and min(map(doc_id, (a, b, c))) != doc_id(b):
            break
    assert plain.num_clusters == 1
    split = deduplicate(chain)  # min_similarity=0.7: the far end of the chain is not removed
    assert split.num_near_removed == 1 and split.num_kept == 2 and split.reconciles
    sigs = chain[0].sigs
    for r in split.decisions.filter(~pl.col("keep")).iter_rows(named=True):
        assert np.mean(sigs[r["row"]] == sigs[r["survivor_row"]]) >= 0.7


def test_signature_files_round_trip(tmp_path: Path) -> None:
    texts = [text(40), text(41), "short", ""]
    docs = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": [doc_id(t) for t in texts], "text": texts}), docs)
    table = shard_signatures(docs, batch_rows=3)
    pq.write_table(table, tmp_path / "minhash.parquet")
    ids, sigs = read_signatures(tmp_path / "minhash.parquet", MinHashConfig())
    assert ids == [doc_id(t) for t in texts] and (sigs == signatures(texts)).all()
    with pytest.raises(ValueError, match="computed with"):
        read_signatures(tmp_path / "minhash.parquet", MinHashConfig(seed=2))
    with pytest.raises(ValueError, match="shape"):
        signatures_table(ids, sigs[:, :10])


def cluster_fixture(tmp_path: Path) -> tuple[dedup.DedupResult, dict[str, str], dict[str, str]]:
    base = text(50)
    groups = {"s0": [base, text(51), edit(base, 3, 1)], "s1": [text(52), base]}
    paths, shards = {}, []
    for name, texts in groups.items():
        paths[name] = str(tmp_path / f"{name}.parquet")
        pq.write_table(pa.table({"id": [doc_id(t) for t in texts], "text": texts}), paths[name])
        pq.write_table(shard_signatures(paths[name]), tmp_path / f"{name}.minhash.parquet")
        shards.append(ShardSignatures.read(name, tmp_path / f"{name}.minhash.parquet"))
    texts_by_id = {doc_id(t): t for ts in groups.values() for t in ts}
    return deduplicate(shards), paths, texts_by_id


def test_cluster_db_answers_members_and_texts(tmp_path: Path) -> None:
    result, paths, texts_by_id = cluster_fixture(tmp_path)
    db = write_cluster_db(result, tmp_path / "out" / "clusters.duckdb", docs_paths=paths)
    assert [p.name for p in db.parent.iterdir()] == ["clusters.duckdb"]
    with duckdb.connect(str(db), read_only=True) as con:
        (cluster_id, kind, size), = con.execute("SELECT cluster_id, kind, size FROM clusters").fetchall()
        assert (kind, size) == ("near", 3)
        members = con.execute("SELECT shard, row, id, is_survivor FROM cluster_members WHERE cluster_id = ?",
                              [cluster_id]).fetchall()
        assert len(members) == 3 and [m[3] for m in members] == [True, False, False]
        texts = con.execute("SELECT id, text FROM cluster_texts WHERE cluster_id = ?", [cluster_id]).fetchall()
        assert len(texts) == 3 and all(texts_by_id[i] == t for i, t in texts)
        assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == result.num_docs == 5
        assert con.execute("SELECT num_kept FROM summary").fetchone()[0] == result.num_kept == 3


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, paths, _ = cluster_fixture(tmp_path)
    target = tmp_path / "db" / "clusters.duckdb"

    def boom(*args: object) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(dedup, "_create_views", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_cluster_db(result, target, docs_paths=paths)
    assert list(target.parent.iterdir()) == []
    target.write_bytes(b"previous")  # an earlier file survives a failed rewrite untouched
    with pytest.raises(RuntimeError, match="interrupted"):
        write_cluster_db(result, target)
    assert target.read_bytes() == b"previous" and list(target.parent.iterdir()) == [target]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="s1"):
        write_cluster_db(result, target, docs_paths={"s0": paths["s0"]})
