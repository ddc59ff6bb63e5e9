"""A slice of the graph against a real S3-compatible server, on the ``k8s`` profile's store layout.

moto's S3 server runs on loopback in a process of its own (tests/support/object_store.py). The artifact
store and the landing area are ``s3://`` URIs (``PHI_ARTIFACT_ROOT``, ``PHI_LANDING_ROOT``, which the
``k8s`` profile requires), reached through s3fs, and the resources are those ``build_resources`` makes for
``PHI_PROFILE=k8s`` at the ``ci`` scale's sizes. For two code shards landed in the bucket, every step from
ingest to tokens is materialized through Dagster's Python API, one dynamic partition per shard:
``raw_code_shards`` -> ``quality_filtered_code_shards`` -> ``dedup_code_buckets`` -> ``dedup_code_shingles``
-> ``dedup_code_pairs`` -> ``dedup_code`` -> ``filtered_code_corpus`` -> ``tokenized_filtered_code``.

Two things of the ``k8s`` profile cannot run here and are left as on ``ci``, nothing mocked:
- the executor: on k8s each step is a Kubernetes Job; ``dg.materialize`` runs the steps in this process;
- the LLM (a vLLM server on k8s): ``filtered_code_corpus`` reads an ``edu_classifier`` version and
  ``tokenized_filtered_code`` a ``tokenizer`` version, which come from LLM annotations, too slow to make
  here. The versions the ci demo home holds (``demo_run``) are copied into the bucket as they are (the same
  data versions and files, each manifest last), and the slice reads them from there.

The shards hold documents of the demo's own code shards whose classifier decision is clear (scores at
least ``MARGIN`` from the threshold), the demo's planted HumanEval file, an exact copy across the shards
and a data file the quality filter drops. The slice is then materialized again from the same landing files
and seeds on a local directory store (the ``ci`` profile): every data version must be the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi_assets.curation import lsh
from phi_assets.curation.assets import filtered_code_corpus
from phi_assets.curation.dedup_assets import (
    BUCKETS,
    dedup_code,
    dedup_code_buckets,
    dedup_code_pairs,
    dedup_code_shingles,
)
from phi_assets.curation.filter_assets import quality_filtered_code_shards
from phi_assets.ingest import readers
from phi_assets.ingest.assets import raw_code_shards
from phi_assets.mixture.token_assets import TOKENIZED_ASSETS
from resources import ArtifactStore, build_resources, load_profile
from tests.support.files import landing, write_jsonl
from tests.support.homes import use_ci_home
from tests.support.object_store import S3Server, s3_server

BUCKET = "phi-graph"
SHARDS = ("stdlib-a.jsonl", "stdlib-b.jsonl")
DEMO_SHARDS = ("embedded:stdlib-00", "embedded:stdlib-01")
SEEDS = ("edu_classifier", "tokenizer")  # made from LLM annotations upstream: copied from the demo home
MARGIN = 0.1  # how far from the threshold a chosen document's demo score is
TOKENS = TOKENIZED_ASSETS["filtered_code"]
PER_SHARD = (raw_code_shards, quality_filtered_code_shards, dedup_code_shingles, filtered_code_corpus, TOKENS)
PER_BUCKET = (dedup_code_buckets, dedup_code_pairs)
DATA_FILE = {"text": "id,name,score\n1,ada,3\n2,bob,5\n3,cy,4\n", "path": "scores.csv"}


def _current_dir(store: ArtifactStore, asset: str, partition: str | None) -> Path:
    return Path(store.version_path(asset, partition, store.current_version(asset, partition)))


def _demo_documents(demo: ArtifactStore) -> pl.DataFrame:
    """id, text, uri, decision and num_tokens (0 when not kept) of the demo's code documents that its
    classifier scored clearly above or below the threshold, shortest first."""
    frames = []
    for key in DEMO_SHARDS:
        scored = pl.read_parquet(_current_dir(demo, "filtered_code_corpus", key) / "scores.parquet")
        raw = pl.read_parquet(
            _current_dir(demo, "raw_code_shards", key) / "docs.parquet", columns=["id", "text"]
        )
        tokens = pl.read_parquet(
            _current_dir(demo, TOKENS.key.to_user_string(), key) / "tokens/documents.parquet"
        )
        frames.append(scored.join(raw, on="id").join(tokens, on="id", how="left"))
    threshold = demo.current_manifest("filtered_code_corpus", DEMO_SHARDS[0])["inputs"]["config"]["threshold"]
    docs = pl.concat(frames).filter((pl.col("edu_score") - threshold).abs() >= MARGIN)
    return docs.select("id", "text", "uri", "decision", pl.col("num_tokens").fill_null(0)).sort(
        pl.col("text").str.len_bytes(), "id"
    )


def _landing_rows(demo_home: Path, docs: pl.DataFrame) -> tuple[dict[str, list[dict]], pl.DataFrame]:
    """The two shards' JSONL rows, and the demo documents among them. Every row names its path, so no
    document depends on where its shard landed."""
    kept = docs.filter(pl.col("decision") == "kept").head(4)
    below = docs.filter(pl.col("decision") == "below_threshold").head(2)
    assert kept.height == 4 and below.height == 2, "the demo's classifier kept or dropped too few documents"
    k, b = kept.to_dicts(), below.to_dicts()
    (planted,) = [
        json.loads(line) for line in (demo_home / "landing/code/planted.jsonl").read_text().splitlines()
    ]

    def row(doc: dict) -> dict:
        return {"text": doc["text"], "path": doc["uri"]}

    rows = {
        SHARDS[0]: [row(k[0]), row(k[1]), row(b[0])],
        # an exact copy of a document of the other shard, the HumanEval task, a data file
        SHARDS[1]: [row(k[2]), row(k[0]), {**planted, "path": "planted.py"}, row(b[1]), row(k[3]), DATA_FILE],
    }
    return rows, pl.concat([kept, below])


def _land(fs, landing_root: str, rows: dict[str, list[dict]]) -> None:
    for key, records in rows.items():
        fs.pipe_file(f"{landing_root}/code/{key}", "".join(json.dumps(r) + "\n" for r in records).encode())


def _seed(demo: ArtifactStore, target: ArtifactStore) -> dict[str, str]:
    """The demo's current ``SEEDS`` versions copied into ``target``: files first, the manifest last, then
    CURRENT (as a commit writes them). Their data versions."""
    versions = {}
    for asset in SEEDS:
        version = demo.current_version(asset, None)
        source = Path(demo.version_path(asset, None, version))
        files = sorted(p for p in source.rglob("*") if p.is_file())
        for path in sorted(files, key=lambda p: p.name == "_manifest.json"):
            dest = f"{target.version_path(asset, None, version)}/{path.relative_to(source).as_posix()}"
            if target.is_local:
                Path(dest).parent.mkdir(parents=True, exist_ok=True)
            target.fs.put_file(str(path), dest)
        target.set_current(asset, None, version)
        versions[asset] = version
    return versions


def _steps() -> list[tuple[list[dg.AssetsDefinition], str | None]]:
    """(assets of one run, its partition) in graph order; each run's assets share its partition."""
    buckets = BUCKETS.get_partition_keys()
    return [
        *(([raw_code_shards, quality_filtered_code_shards], key) for key in SHARDS),
        *(([dedup_code_buckets], key) for key in buckets),
        *(([dedup_code_shingles], key) for key in SHARDS),
        *(([dedup_code_pairs], key) for key in buckets),
        ([dedup_code], None),
        *(([filtered_code_corpus, TOKENS], key) for key in SHARDS),
    ]


def _materialize(profile) -> dict[tuple[str, str | None], dict]:
    """The slice on ``profile``'s store with its resources, in a fresh Dagster instance: each
    materialization's metadata by (asset, partition). Fails on a failed step or check."""
    resources, events = build_resources(profile), {}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("code_shards", list(SHARDS))
        for assets, key in _steps():
            result = dg.materialize(assets, partition_key=key, instance=instance, resources=resources)
            assert result.success
            checks = result.get_asset_check_evaluations()
            assert all(c.passed for c in checks), checks
            for event in result.get_asset_materialization_events():
                m = event.materialization
                events[(m.asset_key.to_user_string(), m.partition)] = {
                    k: v.value for k, v in m.metadata.items()
                }
    return events


def _expected() -> set[tuple[str, str | None]]:
    buckets = BUCKETS.get_partition_keys()
    return {
        *((a.key.to_user_string(), k) for a in PER_SHARD for k in SHARDS),
        *((a.key.to_user_string(), k) for a in PER_BUCKET for k in buckets),
        ("dedup_code", None),
    }


def _versions(store: ArtifactStore, done) -> dict[tuple[str, str | None], str]:
    return {(asset, key): store.current_version(asset, key) for asset, key in done}


def _on_server(server: S3Server, store: ArtifactStore, versions: dict) -> None:
    """Every version's CURRENT, manifest and files, listed through a fresh s3fs filesystem (no cache)."""
    fs = server.filesystem()
    listed = {p: info["size"] for p, info in fs.find(f"{BUCKET}/artifacts", detail=True).items()}
    for (asset, key), version in versions.items():
        where = store.version_path(asset, key, version)
        assert fs.cat_file(f"{store.partition_path(asset, key)}/CURRENT").decode() == version
        manifest = json.loads(fs.cat_file(f"{where}/_manifest.json"))
        assert (manifest["asset"], manifest["partition"], manifest["data_version"]) == (asset, key, version)
        assert manifest["files"], (asset, key)
        for name, size in manifest["files"].items():
            assert listed.get(f"{where}/{name}") == size, (asset, key, name)


def _reconcile(store: ArtifactStore, fs) -> dict[str, pl.DataFrame]:
    """Per shard: read = kept + dropped at every stage, and the tokens are the filtered corpus's documents;
    the tokenized documents (id, num_tokens) of each shard, read from the bucket."""
    out = {}
    for key in SHARDS:
        raw = store.current_manifest("raw_code_shards", key)["metadata"]["stats"]
        assert raw["num_read"] == raw["num_written"] + raw["num_rejected"]
        quality = store.current_manifest("quality_filtered_code_shards", key)["metadata"]["funnel"]
        assert quality["in"] == raw["num_written"] == quality["kept"] + sum(quality["dropped"].values())
        corpus = store.current_manifest("filtered_code_corpus", key)
        funnel = corpus["metadata"]["funnel"]
        assert funnel["in"] == quality["kept"]
        assert funnel["in"] == sum(
            funnel[k] for k in ("dedup_removed", "contaminated", "below_threshold", "kept")
        )
        tokens = store.current_manifest(TOKENS.key.to_user_string(), key)
        with fs.open(f"{_current_dir(store, 'filtered_code_corpus', key)}/docs.parquet") as f:
            kept_ids = pl.read_parquet(f, columns=["id"])["id"].to_list()
        with fs.open(f"{_current_dir(store, TOKENS.key.to_user_string(), key)}/tokens/documents.parquet") as f:
            documents = pl.read_parquet(f)
        assert tokens["inputs"]["documents"] == corpus["data_version"]
        assert documents["id"].to_list() == kept_ids and len(kept_ids) == funnel["kept"]
        assert tokens["metadata"]["num_docs"] == funnel["kept"]
        assert tokens["metadata"]["num_tokens"] == documents["num_tokens"].sum()
        out[key] = documents
    return out


def _use_k8s(monkeypatch: pytest.MonkeyPatch, home: Path, artifacts: str, landing: str):
    """The ``k8s`` profile at the ``ci`` scale, its artifact root and landing area at ``s3://`` URIs."""
    monkeypatch.setenv("PHI_PROFILE", "k8s")
    monkeypatch.setenv("PHI_SCALE", "ci")
    monkeypatch.setenv("PHI_HOME", str(home))
    monkeypatch.setenv("PHI_ARTIFACT_ROOT", artifacts)
    monkeypatch.setenv("PHI_LANDING_ROOT", landing)
    for var in ("DAGSTER_HOME", "PHI_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    return load_profile()


def _on_local_store(monkeypatch, home: Path, demo: ArtifactStore, rows: dict[str, list[dict]]):
    """The slice on a ``ci`` home at ``home`` from the same landing files and seeds: its current
    versions, and the seeds' versions."""
    use_ci_home(monkeypatch, home)
    profile = load_profile()
    for key, records in rows.items():
        write_jsonl(landing(profile, "code") / key, records)
    store = ArtifactStore(root=profile.artifact_root)
    seeds = _seed(demo, store)
    return _versions(store, _materialize(profile)), seeds


def _totals(store: ArtifactStore) -> dict[str, int]:
    """Documents dropped over both shards: by the quality filter, then by each step of the filtered corpus."""
    totals = {"quality_dropped": 0, "dedup_removed": 0, "contaminated": 0, "below_threshold": 0}
    for key in SHARDS:
        dropped = store.current_manifest("quality_filtered_code_shards", key)["metadata"]["funnel"]["dropped"]
        totals["quality_dropped"] += sum(dropped.values())
        funnel = store.current_manifest("filtered_code_corpus", key)["metadata"]["funnel"]
        for step in ("dedup_removed", "contaminated", "below_threshold"):
            totals[step] += funnel[step]
    return totals


def _cluster_texts(server: S3Server, store: ArtifactStore, tmp_path: Path) -> list[tuple]:
    """(shard, is_survivor, text) of ``dedup_code``'s ``cluster_texts`` view: its database fetched from the
    bucket, the shards it names read through the server."""
    fs, db = server.filesystem(), tmp_path / "clusters.duckdb"
    fs.get_file(f"{_current_dir(store, 'dedup_code', None)}/clusters.duckdb", str(db))
    with duckdb.connect(str(db)) as con:
        con.register_filesystem(fs)
        return sorted(con.execute("SELECT shard, is_survivor, text FROM cluster_texts").fetchall())


@pytest.mark.slow  # the demo home, and the slice materialized twice
def test_the_slice_from_ingest_to_tokens_runs_on_s3_as_on_a_local_store(demo_run, tmp_path, monkeypatch):
    demo = ArtifactStore(root=str(demo_run["home"] / "artifacts"))
    rows, chosen = _landing_rows(demo_run["home"], _demo_documents(demo))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))  # local copies of remote versions land here
    home = tmp_path / "phi"
    with s3_server() as server:
        profile = _use_k8s(monkeypatch, home, f"{server.bucket(BUCKET)}/artifacts", f"s3://{BUCKET}/landing")
        store = ArtifactStore(root=profile.artifact_root)
        _land(server.filesystem(), f"{BUCKET}/landing", rows)
        seeds = _seed(demo, store)
        events = _materialize(profile)
        assert set(events) == _expected() and not any(e["skipped"] for e in events.values())
        versions = _versions(store, events)
        _on_server(server, store, {**versions, **{(a, None): v for a, v in seeds.items()}})
        tokenized = pl.concat(_reconcile(store, server.filesystem()).values())
        totals, clusters = _totals(store), _cluster_texts(server, store, tmp_path)
    assert not home.exists()  # nothing was written to the local home: no artifacts, no catalog, no landing
    for asset in SEEDS:  # read from the bucket: copied from there to local disk
        assert (tmp_path / "tmp" / "phi-artifacts" / asset / seeds[asset]).is_dir()

    # the data file dropped by the quality filter, the copy by dedup, the HumanEval task as contaminated;
    # of the demo's documents the ones it kept, each once, with the demo's token counts
    assert totals == {"quality_dropped": 1, "dedup_removed": 1, "contaminated": 1, "below_threshold": 2}
    kept = chosen.filter(pl.col("decision") == "kept")
    assert sorted(tokenized.rows()) == sorted(kept.select("id", "num_tokens").rows())
    copied = kept["text"][0]  # the shortest kept document is in both shards: one cluster, one survivor
    assert [(shard, text) for shard, _, text in clusters] == [(SHARDS[0], copied), (SHARDS[1], copied)]
    assert sorted(survivor for _, survivor, _ in clusters) == [False, True]

    # the same slice on a local directory store from the same landing files and seeds: the same versions
    assert _on_local_store(monkeypatch, tmp_path / "local", demo, rows) == (versions, seeds)


@pytest.mark.slow  # starts an S3 server process
def test_a_jsonl_shard_reads_from_an_s3_server_as_from_a_local_file(tmp_path):
    """An s3fs file has no ``readline(size)``; the JSONL reader bounds lines with it (readers._open)."""
    data = b'{"text": "first"}\r\n\n{"text": "' + b"x" * 300 + b'"}\nnot json\n{"text": "last"}'
    options = readers.ReaderOptions(max_record_bytes=100)
    local = tmp_path / "shard.jsonl"
    local.write_bytes(data)
    with s3_server() as server:
        uri = f"{server.bucket('phi-landing')}/shard.jsonl"
        server.filesystem().pipe_file(uri, data)
        remote = list(readers.read_jsonl(uri, options))
    expected = list(readers.read_jsonl(str(local), options))
    assert [type(i).__name__ for i in expected] == ["Record", "Rejected", "Rejected", "Record"]
    strip = lambda items: [{**vars(i), "uri": i.uri.rsplit("/", 1)[1]} for i in items]  # noqa: E731
    assert strip(remote) == strip(expected)


@pytest.mark.slow  # starts an S3 server process
def test_the_cluster_texts_view_reads_shards_on_an_object_store(tmp_path):
    """``dedup_*``'s ``cluster_texts`` view over shards at ``s3://`` URIs, made and read through the store's
    fsspec filesystem (DuckDB has no S3 of its own without httpfs)."""
    db = tmp_path / "clusters.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(
            "CREATE TABLE cluster_members AS SELECT 'c' AS cluster_id, 'a' AS shard, 1::BIGINT AS row, "
            "'i2' AS id, true AS is_survivor"
        )
    with s3_server() as server:
        fs = server.filesystem()
        docs = f"{server.bucket('phi-dedup')}/docs.parquet"
        with fs.open(docs, "wb") as f:
            pq.write_table(pa.table({"id": ["i1", "i2"], "text": ["one", "two"]}), f)
        lsh.add_cluster_texts(db, {"a": docs}, fs)
        with duckdb.connect(str(db)) as con:
            con.register_filesystem(fs)
            rows = con.execute(
                "SELECT cluster_id, shard, row, id, is_survivor, text FROM cluster_texts"
            ).fetchall()
    assert rows == [("c", "a", 1, "i2", True, "two")]
