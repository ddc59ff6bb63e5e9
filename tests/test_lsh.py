"""Dedup in stages (phi_assets/curation/lsh.py): bands per shard, buckets per (band group, hash range)
confirmed on exact Jaccard, clusters over confirmed pairs, removals per shard."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi_assets.curation import lsh, lsh_pairs, minhash
from phi_assets.ingest.schema import doc_id

CONFIG = minhash.MinHashConfig()
WORDS = ["".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for i in range(3000)]


def _doc(rng: random.Random, n: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _edit(rng: random.Random, text: str, changes: int) -> str:
    words = text.split()
    for _ in range(changes):
        words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words)


def corpus(seed: int = 0, shards: int = 5, per_shard: int = 40) -> dict[str, list[str]]:
    """Shards of random documents with planted clusters: exact copies, near copies (1-2 words of 60
    changed: Jaccard ~0.85-0.95) and far copies (12 changed: below 0.7), spread over shards."""
    rng = random.Random(seed)
    out = {f"shard-{i:02d}": [_doc(rng) for _ in range(per_shard)] for i in range(shards)}
    keys = sorted(out)
    for c in range(12):
        original = out[keys[c % shards]][c]
        for k in range(1 + c % 3):
            target = out[keys[(c + k + 1) % shards]]
            target[(c * 7 + k) % per_shard] = original if k == 0 else _edit(rng, original, k)
        out[keys[(c + 2) % shards]][(c * 5 + 3) % per_shard] = _edit(rng, original, 12)
    out[keys[0]][-1] = "!!! ???"  # no words: exact matching only
    out[keys[1]][-1] = "!!! ???"
    return out


def write_shard(root: Path, key: str, texts: list[str], layout: lsh.BucketLayout) -> tuple[str, str]:
    folder = root / key
    folder.mkdir(parents=True)
    ids = [doc_id(t) for t in texts]
    pq.write_table(pa.table({"id": ids, "text": texts}), folder / "docs.parquet", row_group_size=7)
    lsh.write_bands(ids, minhash.signatures(texts, CONFIG), CONFIG, layout, folder)
    return str(folder / "docs.parquet"), str(folder)


def run_staged(
    shards: dict[str, list[str]], layout: lsh.BucketLayout, root: Path, order=None, min_similarity: float = 0.7
) -> dict:
    files = {k: write_shard(root / "shards", k, shards[k], layout) for k in (order or sorted(shards))}
    pair_files, stats = lsh_pairs.run_local(
        files, layout, CONFIG, min_similarity, root
    )  # arrival order, as given
    out = root / "dedup"
    out.mkdir()
    result = lsh.cluster(pair_files, list(files), out)
    removed = {
        shard: pl.read_parquet(out / r["file"]).sort("row").rows() for shard, r in result["removals"].items()
    }
    return {"result": result, "removed": removed, "buckets": stats, "files": files, "out": out}


def brute_force(shards: dict[str, list[str]], min_similarity: float) -> set[tuple]:
    """Every pair of documents with the same id or exact shingle Jaccard >= min_similarity."""
    docs = [(s, r, t) for s in sorted(shards) for r, t in enumerate(shards[s])]
    sets = minhash.shingle_sets([t for _, _, t in docs], CONFIG)
    found = set()
    for i in range(len(docs)):
        for j in range(i + 1, len(docs)):
            same = docs[i][2] == docs[j][2]
            if same or lsh_pairs.jaccard(sets[i], sets[j]) >= min_similarity:
                found.add((docs[i][:2], docs[j][:2]))
    return found


def test_partitioned_buckets_give_the_single_process_clusters_in_any_arrival_order(tmp_path):
    shards = corpus()
    single = run_staged(shards, lsh.BucketLayout(1, 1), tmp_path / "single")
    order = sorted(shards)
    random.Random(3).shuffle(order)
    split = run_staged(shards, lsh.BucketLayout(3, 4), tmp_path / "split", order=order)
    assert split["removed"] == single["removed"] and single["removed"]
    assert split["result"]["num_clusters"] == single["result"]["num_clusters"] > 0
    assert (
        sum(b["candidates"] for b in split["buckets"].values()) >= single["buckets"]["g00-r000"]["candidates"]
    )


def test_every_similar_pair_is_clustered_and_no_dissimilar_pair_is_linked(tmp_path):
    """Recall and precision against brute force over all pairs: the planted near copies (Jaccard well
    above 0.7) are all in one cluster with their original, exact copies are removed as exact, the far
    copies (Jaccard < 0.7) and the two different texts without words stay."""
    shards = corpus()
    staged = run_staged(shards, lsh.BucketLayout(2, 3), tmp_path)
    db = pl.read_database("SELECT * FROM cluster_members", _duck(staged["out"]))
    cluster_of = {(r["shard"], r["row"]): r["cluster_id"] for r in db.iter_rows(named=True)}
    expected = brute_force(shards, 0.7)
    assert expected
    for a, b in expected:
        assert a in cluster_of and cluster_of[a] == cluster_of.get(b), (a, b)
    pairs = pl.read_database("SELECT * FROM pairs", _duck(staged["out"]))
    assert pairs["similarity"].min() >= 0.7
    texts = {(s, r): t for s in shards for r, t in enumerate(shards[s])}
    sets = dict(zip(texts, minhash.shingle_sets(list(texts.values()), CONFIG), strict=True))
    for p in pairs.iter_rows(named=True):  # the similarity stored is the exact one
        exact = (
            1.0
            if p["u_id"] == p["v_id"]
            else lsh_pairs.jaccard(sets[(p["u_shard"], p["u_row"])], sets[(p["v_shard"], p["v_row"])])
        )
        assert p["similarity"] == pytest.approx(exact, abs=1e-6)
    kinds = {row[3] for rows in staged["removed"].values() for row in rows}  # (row, id, cluster_id, kind, ...)
    assert kinds == {"exact", "near"}


def test_candidates_below_the_threshold_are_counted_and_dropped(tmp_path):
    shards = corpus()
    strict = run_staged(shards, lsh.BucketLayout(1, 1), tmp_path / "strict", min_similarity=0.99)
    loose = run_staged(shards, lsh.BucketLayout(1, 1), tmp_path / "loose", min_similarity=0.7)
    s, lo = strict["buckets"]["g00-r000"], loose["buckets"]["g00-r000"]
    assert s["candidates"] == lo["candidates"] and s["confirmed"] < lo["confirmed"]
    assert s["candidates"] == s["confirmed"] + s["below_threshold"]
    assert sum(len(r) for r in strict["removed"].values()) < sum(len(r) for r in loose["removed"].values())


def test_survivor_is_the_smallest_id_and_survivors_reconcile(tmp_path):
    shards = corpus()
    staged = run_staged(shards, lsh.BucketLayout(2, 2), tmp_path)
    members = pl.read_database("SELECT * FROM cluster_members", _duck(staged["out"]))
    for cid, group in members.group_by("cluster_id"):
        survivor = group.filter(pl.col("is_survivor"))
        assert survivor.height == 1
        assert survivor["id"][0] == group.sort("id", "shard", "row")["id"][0] == cid[0]
    total = kept = 0
    for shard, (docs, _) in staged["files"].items():
        removal = (
            staged["out"] / staged["result"]["removals"][shard]["file"]
            if shard in staged["result"]["removals"]
            else None
        )
        rows = lsh.survivor_rows(docs, str(removal) if removal else None)
        total += len(shards[shard])
        kept += rows.height
    removed = staged["result"]["num_exact_removed"] + staged["result"]["num_near_removed"]
    assert total == kept + removed and removed == sum(len(r) for r in staged["removed"].values())


def test_a_new_shard_changes_only_the_partitions_it_has_slices_in(tmp_path):
    """With 15 bands over many ranges, a one-document shard has slices in at most 15 of them; the
    other partitions' inputs (their slice digests) are unchanged, so their steps skip."""
    layout = lsh.BucketLayout(15, 8)
    shards = corpus(shards=3, per_shard=20)
    before = {k: write_shard(tmp_path / "a", k, shards[k], layout) for k in shards}
    new_docs, new_bands = write_shard(tmp_path / "a", "shard-new", [_doc(random.Random(9))], layout)

    def inputs(files):
        out = {}
        for key in layout.keys():
            g, r = layout.parse(key)
            out[key] = sorted(
                (
                    s,
                    [
                        x[2]
                        for x in lsh.partition_slices(
                            lsh.read_slice_index(f"{b}/{lsh.bands_file(g)}"), layout, g, r, 14
                        )
                    ],
                )
                for s, (_, b) in files.items()
            )
        return {k: [x for x in v if x[1]] for k, v in out.items()}

    old, new = inputs(before), inputs({**before, "shard-new": (new_docs, new_bands)})
    touched = [k for k in layout.keys() if old[k] != new[k]]
    assert 1 <= len(touched) <= 15 < len(layout.keys())
    written = lsh.write_bands(
        [doc_id("x y z")], minhash.signatures(["x y z"], CONFIG), CONFIG, layout, tmp_path / "a" / "shard-new"
    )
    bitmap = lsh.touched(written, layout)
    assert sum(lsh.touches(bitmap, i) for i in range(len(layout.keys()))) == 15


def test_removals_name_their_shard_and_a_changed_shard_is_an_error(tmp_path):
    shards = corpus()
    staged = run_staged(shards, lsh.BucketLayout(1, 2), tmp_path)
    shard, info = next(iter(staged["result"]["removals"].items()))
    docs = staged["files"][shard][0]
    pq.write_table(pa.table({"id": ["x" * 32], "text": ["changed"]}), docs)
    with pytest.raises(ValueError, match="the shard changed after dedup ran"):
        lsh.survivor_rows(docs, str(staged["out"] / info["file"]))


def test_sample_survivors_equals_sampling_everything_at_once(tmp_path):
    shards = corpus()
    staged = run_staged(shards, lsh.BucketLayout(1, 1), tmp_path)
    inputs, frames = [], []
    for shard, (docs, _) in staged["files"].items():
        info = staged["result"]["removals"].get(shard)
        removal = str(staged["out"] / info["file"]) if info else None
        inputs.append((shard, docs, removal))
        frames.append(lsh.survivor_rows(docs, removal).with_columns(pl.lit(shard).alias("shard")))
    from phi_assets.curation import edu

    whole = edu.sample_documents(pl.concat(frames).select("shard", "row", "id"), 17, seed=4)
    assert lsh.sample_survivors(inputs, 17, seed=4).sort("id").rows() == whole.sort("id").rows()


def test_band_hashes_depend_on_the_band_values_only():
    sigs = np.array([[1, 2, 3, 4], [1, 2, 3, 5], [9, 9, 3, 4]], dtype=np.uint32)
    b0, b1 = lsh.band_hashes(sigs, 0, 2), lsh.band_hashes(sigs, 1, 2)
    assert b0[0] == b0[1] != b0[2] and b1[0] == b1[2] != b1[1]
    assert b0[0] != b1[0]  # the band index is part of the hash


def _duck(out: Path):
    import duckdb

    return duckdb.connect(str(out / lsh.CLUSTER_DB), read_only=True)


def test_texts_are_read_once_per_shard_and_each_partition_gets_exactly_its_rows(tmp_path, monkeypatch):
    """The confirmation is a shuffle: every candidate row's text is read once, by its own shard's
    step (not once per bucket partition that names it), and batch i of a shard's shingle sets holds
    exactly the rows bucket partition i wants from it."""
    shards, layout = corpus(), lsh.BucketLayout(3, 2)
    files = {k: write_shard(tmp_path / "shards", k, shards[k], layout) for k in sorted(shards)}
    read: dict[str, list[int]] = {}
    real_take = lsh.take_rows

    def counting(path, rows, columns, fs=None):
        read.setdefault(path, []).extend(rows.tolist())
        return real_take(path, rows, columns, fs)

    monkeypatch.setattr(lsh, "take_rows", counting)
    lsh_pairs.run_local(files, layout, CONFIG, 0.7, tmp_path)
    for shard, (docs, _) in files.items():
        wanted = [lsh.wanted_rows(str(tmp_path / "buckets" / k / lsh.WANTED), shard) for k in layout.keys()]
        union = np.unique(np.concatenate(wanted))
        assert sorted(read.get(docs, [])) == union.tolist()  # each candidate row once, nothing else
        path = str(tmp_path / "shingles" / shard / lsh_pairs.SHINGLES)
        for index, rows in enumerate(wanted):
            batch = lsh_pairs.read_batch(path, index)
            assert batch.column("row").to_pylist() == rows.tolist()
            ids = batch.column("id").to_pylist()
            assert ids == [doc_id(shards[shard][r]) for r in rows.tolist()]
    assert sum(len(v) for v in read.values()) < sum(
        len(lsh.wanted_rows(str(tmp_path / "buckets" / k / lsh.WANTED), s))
        for k in layout.keys()
        for s in files
    )  # rows several partitions want were still read once


def test_sets_made_for_other_candidates_are_an_error_naming_the_shard(tmp_path):
    shards, layout = corpus(), lsh.BucketLayout(1, 1)
    files = {k: write_shard(tmp_path / "shards", k, shards[k], layout) for k in sorted(shards)}
    lsh_pairs.run_local(files, layout, CONFIG, 0.7, tmp_path / "run")
    candidates = pq.read_table(tmp_path / "run" / "buckets" / "g00-r000" / lsh.CANDIDATES)
    victim = candidates["u_shard"][0].as_py()
    stale = tmp_path / "stale"
    stale.mkdir()
    lsh_pairs.write_shingles(files[victim][0], [np.empty(0, np.int64)], CONFIG, stale)  # wanted nothing

    def read_sets(shard):
        path = stale if shard == victim else tmp_path / "run" / "shingles" / shard
        return lsh_pairs.read_batch(str(path / lsh_pairs.SHINGLES), 0)

    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=f"shingle sets of shard {victim} lack"):
        lsh_pairs.confirm_candidates(candidates, read_sets, 0.7, tmp_path / "out")
    with pytest.raises(ValueError, match="written for another bucket layout"):
        lsh_pairs.read_batch(str(stale / lsh_pairs.SHINGLES), 1)


def test_wanted_rows_found_across_many_batches(tmp_path, monkeypatch):
    """With a few rows per batch of ``wanted.arrow``, each shard still gets exactly its rows (the
    batches it reads are chosen from the first and last shard the footer lists)."""
    shards, layout = corpus(), lsh.BucketLayout(1, 1)
    files = {k: write_shard(tmp_path / "shards", k, shards[k], layout) for k in sorted(shards)}
    lsh_pairs.run_local(files, layout, CONFIG, 0.7, tmp_path / "whole")
    monkeypatch.setattr(lsh, "WANTED_BATCH_ROWS", 5)
    lsh_pairs.run_local(files, layout, CONFIG, 0.7, tmp_path / "small")
    for shard in files:
        a, b = (
            lsh.wanted_rows(str(tmp_path / r / "buckets" / "g00-r000" / lsh.WANTED), shard)
            for r in ("whole", "small")
        )
        assert len(a) and a.tolist() == b.tolist()
    assert (
        lsh.wanted_rows(str(tmp_path / "small" / "buckets" / "g00-r000" / lsh.WANTED), "no-such-shard").size
        == 0
    )


def test_confirmation_in_small_chunks_gives_the_same_pairs(tmp_path):
    shards, layout = corpus(), lsh.BucketLayout(1, 1)
    files = {k: write_shard(tmp_path / "shards", k, shards[k], layout) for k in sorted(shards)}
    lsh_pairs.run_local(files, layout, CONFIG, 0.7, tmp_path / "run")
    candidates = pq.read_table(tmp_path / "run" / "buckets" / "g00-r000" / lsh.CANDIDATES)
    (tmp_path / "chunked").mkdir()
    stats = lsh_pairs.confirm_candidates(
        candidates,
        lambda s: lsh_pairs.read_batch(str(tmp_path / "run" / "shingles" / s / lsh_pairs.SHINGLES), 0),
        0.7,
        tmp_path / "chunked",
        chunk_pairs=3,
    )
    whole = pq.read_table(tmp_path / "run" / "pairs" / "g00-r000" / lsh.PAIRS)
    assert stats["candidates"] > 3 and pq.read_table(tmp_path / "chunked" / lsh.PAIRS).equals(whole)
