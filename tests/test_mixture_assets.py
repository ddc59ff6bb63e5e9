"""The mixture assets on the ci profile: what ``make demo``'s program produced (``demo_run``), plus
re-materializations of ``mixture_weights`` with other configurations on a copy of its home."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from phi_assets.mixture import tokenizer as tk
from phi_assets.mixture import weights as mix
from phi_assets.mixture.token_assets import SUBDIR, TOKEN_SOURCES, TOKENIZER_SUBDIR
from phi_assets.mixture.tokens import TokenShard
from resources import ArtifactStore, load_profile
from tests.support.dagster_runs import step_error

# The demo ran on ci; this process may have another profile (partition sets are read at import).
PROXY_KEYS = [f"proxy-{i:03d}" for i in range(load_profile({"PHI_PROFILE": "ci"}).sizes.mixture_proxies)]
CODE = "def add(a, b):\n\treturn a  +  b  # sum, naïve 😀\r\n"


@pytest.fixture(scope="module")
def store(demo_run) -> ArtifactStore:
    return ArtifactStore(root=str(demo_run["home"] / "artifacts"))


@pytest.fixture(scope="module")
def shard_keys(demo_run) -> dict[str, list[str]]:
    with dg.DagsterInstance.from_config(str(demo_run["home"] / "dagster")) as instance:
        return {name: s.keys(instance) for name, s in TOKEN_SOURCES.items()}


def _version(store: ArtifactStore, asset: str, key: str | None = None) -> Path:
    return Path(store.version_path(asset, key, store.current_version(asset, key)))


def test_tokenizer_is_a_standard_directory_that_transformers_and_vllm_load(store):
    from transformers import AutoTokenizer
    from vllm.tokenizers import get_tokenizer

    directory = _version(store, "tokenizer") / TOKENIZER_SUBDIR
    ours = tk.load(directory)
    hf = AutoTokenizer.from_pretrained(str(directory))
    served = get_tokenizer(str(directory))
    assert ours.vocab_size == hf.vocab_size == 1024  # the ci profile's size
    assert hf.eos_token_id == ours.eot_id == served.eos_token_id == hf.convert_tokens_to_ids(tk.EOT)
    ids = hf.encode(CODE, add_special_tokens=False)
    assert ids == served.encode(CODE, add_special_tokens=False) == ours.tokenizer.encode(CODE).ids
    assert hf.decode(ids) == served.decode(ids) == CODE


@pytest.mark.parametrize("name", ["filtered_code", "filtered_web"])
def test_tokenized_shards_reconcile_with_their_corpus_shards(store, shard_keys, name):
    """Per shard: the same documents in the same order, every token accounted for, and each
    document decodes back to its corpus text followed by the separator."""
    loaded = tk.load(_version(store, "tokenizer") / TOKENIZER_SUBDIR)
    source = TOKEN_SOURCES[name]
    assert len(shard_keys[name]) >= 2
    for key in shard_keys[name]:
        corpus = pl.read_parquet(_version(store, source.upstream.key.to_user_string(), key) / "docs.parquet")
        shard = TokenShard.open(_version(store, source.asset, key) / SUBDIR)
        assert shard.ids() == corpus["id"].to_list()
        assert (
            shard.num_docs == corpus.height and shard.offsets[-1] == len(shard.tokens) == shard.stats.num_tokens
        )
        assert shard.tokens.dtype == np.uint16
        manifest = store.current_manifest(source.asset, key)
        assert manifest["metadata"]["num_tokens"] == shard.stats.num_tokens
        for i in range(min(corpus.height, 3)):
            doc = shard.document(i)
            assert doc[-1] == loaded.eot_id and loaded.eot_id not in doc[:-1]
            assert loaded.tokenizer.decode(doc[:-1].tolist()) == corpus["text"][i]


@pytest.mark.parametrize("name", ["synthetic_textbooks", "synthetic_exercises", "rewritten_web"])
def test_synthetic_batches_split_the_deduplicated_set(store, name):
    """The hash batches of a synthetic set are disjoint and together hold exactly its documents."""
    source = TOKEN_SOURCES[name]
    corpus = pl.read_parquet(_version(store, "synthetic_corpus") / f"{source.corpus_set}.parquet")
    ids: list[str] = []
    for key in source.partitions.get_partition_keys():
        ids += TokenShard.open(_version(store, source.asset, key) / SUBDIR).ids()
    assert sorted(ids) == sorted(corpus["id"].to_list())


def _latest(instance: dg.DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_mixture_weights_table_accounts_for_every_source_and_its_checks_passed(store, demo_run):
    manifest = store.current_manifest("mixture_weights", None)
    mixture = json.loads((_version(store, "mixture_weights") / "mixture.json").read_text())
    tokens, weights, budget = mixture["tokens"], mixture["weights"], mixture["token_budget"]
    assert set(weights) == set(mix.SOURCES) and budget == 200_000 and mixture["origin"] == "phi4"
    assert sum(weights.values()) == pytest.approx(1) and min(weights.values()) >= 0
    for name, shards in mixture["shards"].items():  # the tokens counted are the shards listed
        counted = sum(
            store.read_manifest(s["asset"], s["partition"], s["data_version"])["metadata"]["num_tokens"]
            for s in shards
        )
        assert counted == tokens[name]
    table = pl.read_parquet(_version(store, "mixture_weights") / "table.parquet")
    for row in table.iter_rows(named=True):
        source = row["source"]
        if tokens[source]:
            assert row["epochs"] == pytest.approx(weights[source] * budget / tokens[source])
        else:  # a set whose candidates all failed (a tiny model's luck): no weight, never repeated
            assert weights[source] == 0 and row["epochs"] == 0
        assert row["epochs"] <= mixture["max_epochs"] + 1e-9
    assert manifest["metadata"]["requested"] == mix.default_weights(tokens)
    with dg.DagsterInstance.from_config(str(demo_run["home"] / "dagster")) as instance:
        meta = _latest(instance, "mixture_weights")
        for check in ("weights_sum_to_one", "epochs_within_cap"):
            key = dg.AssetCheckKey(dg.AssetKey("mixture_weights"), check)
            [record] = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
            assert record.event.dagster_event.event_specific_data.passed, check
    assert all(f"| {s} |" in meta["mixture"] for s in mix.SOURCES)  # the table the UI shows
    assert "mixture_weights (phi-4's table" in demo_run["first"]


def test_mixture_search_trained_its_proxies_and_proposes_a_valid_mixture(store, demo_run):
    assert len(PROXY_KEYS) >= 6
    proxies = [store.current_manifest("mixture_proxies", k)["metadata"] for k in PROXY_KEYS]
    assert len({json.dumps(p["mixture"], sort_keys=True) for p in proxies}) == len(proxies)
    assert all(p["train_loss"][-1] < p["train_loss"][0] for p in proxies)
    search = store.current_manifest("mixture_search", None)["metadata"]
    assert len(search["rows"]) == len(proxies)
    proposal, tokens = search["proposal"], proxies[0]["tokens"]
    assert sum(proposal.values()) == pytest.approx(1) and min(proposal.values()) >= 0
    assert all(w * search["token_budget"] / tokens[s] <= 16 + 1e-6 for s, w in proposal.items())
    assert np.isfinite(search["predicted_loss"]) and -1 <= search["spearman"] <= 1
    assert f"mixture_search over {len(PROXY_KEYS)} proxies" in demo_run["first"]


def _weights(run_config: dict, demo_home: Path) -> tuple[dg.ExecuteInProcessResult, dict]:
    """Materialize mixture_weights alone on the copied home (dynamic partitions as in the demo)."""
    from phi_assets.ingest.assets import PARTITIONS
    from phi_assets.mixture.assets import mixture_weights
    from resources import build_resources, load_profile

    instance = dg.DagsterInstance.ephemeral()
    with dg.DagsterInstance.from_config(str(demo_home / "dagster")) as demo:
        for pdef in PARTITIONS.values():
            instance.add_dynamic_partitions(pdef.name, demo.get_dynamic_partitions(pdef.name))
    result = dg.materialize(
        [mixture_weights],
        run_config={"ops": {"mixture_weights": {"config": run_config}}},
        resources=build_resources(load_profile()),
        instance=instance,
        raise_on_error=False,
    )
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    return result, checks


def test_weights_from_the_search_take_its_proposal(home_copy, demo_run):
    store = ArtifactStore(root=str(home_copy / "artifacts"))
    result, checks = _weights({"weights_from": "search"}, demo_run["home"])
    assert result.success and checks == {"weights_sum_to_one": True, "epochs_within_cap": True}
    manifest = store.current_manifest("mixture_weights", None)
    search = store.current_manifest("mixture_search", None)
    assert manifest["metadata"]["origin"] == f"search:{search['data_version']}"
    for source, weight in search["metadata"]["proposal"].items():
        assert manifest["metadata"]["weights"][source] == pytest.approx(weight)


def test_explicit_weights_and_an_uncapped_mixture_fail_the_check(home_copy, demo_run):
    store = ArtifactStore(root=str(home_copy / "artifacts"))
    result, checks = _weights({"weights_from": "explicit", "weights": {"filtered_code": 1.0}}, demo_run["home"])
    assert result.success and all(checks.values())
    meta = store.current_manifest("mixture_weights", None)["metadata"]
    assert meta["weights"]["filtered_code"] == 1.0 and sum(meta["weights"].values()) == 1.0
    [code] = [r for r in meta["table"] if r["source"] == "filtered_code"]
    assert code["epochs"] == pytest.approx(200_000 / meta["tokens"]["filtered_code"])

    result, checks = _weights({"enforce_cap": False}, demo_run["home"])  # phi-4 table as is: tiny sources
    assert checks["weights_sum_to_one"] and checks["epochs_within_cap"] is False

    result, _ = _weights({"weights_from": "explicit", "weights": {"books": 1.0}}, demo_run["home"])
    assert not result.success and "unknown sources ['books']" in step_error(result)


def test_a_pretrained_tokenizer_directory_can_replace_training(home_copy, smol_dir):
    """``pretrained`` copies an existing Hugging Face tokenizer (SmolLM2's here); its
    ``<|endoftext|>`` separates documents and its 49,152 ids still fit uint16."""
    from phi_assets.mixture.token_assets import tokenizer
    from resources import build_resources, load_profile

    result = dg.materialize(
        [tokenizer],
        run_config={"ops": {"tokenizer": {"config": {"pretrained": str(smol_dir)}}}},
        resources=build_resources(load_profile()),
        instance=dg.DagsterInstance.ephemeral(),
    )
    [event] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert meta["origin"] == str(smol_dir) and meta["vocab_size"] == 49152 and meta["dtype"] == "uint16"
    store = ArtifactStore(root=str(home_copy / "artifacts"))
    loaded = tk.load(_version(store, "tokenizer") / TOKENIZER_SUBDIR)
    assert loaded.tokenizer.id_to_token(loaded.eot_id) == tk.EOT
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(CODE).ids) == CODE

    result = dg.materialize(
        [tokenizer],
        run_config={"ops": {"tokenizer": {"config": {"pretrained": str(home_copy)}}}},
        resources=build_resources(load_profile()),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success and f"pretrained tokenizer {home_copy}: no tokenizer.json" in step_error(result)


def test_token_shards_on_an_object_store_open_from_one_local_copy(tmp_path, monkeypatch):
    """The k8s profile keeps versions on an object store (here fsspec's in-memory one): a shard
    committed there is copied to local disk once and memory-mapped with the same tokens."""
    import tempfile
    import uuid

    from phi_assets.mixture import tokens
    from phi_assets.mixture.token_assets import open_shards

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    texts = ["def f():\n    return 1\n", "plain words here", "x = [1, 2, 3]"]
    loaded = tk.load(_tiny_tokenizer(tmp_path / "tok", texts))
    store = ArtifactStore(root=f"memory://phi-{uuid.uuid4().hex}/artifacts")
    with store.stage("tokenized_filtered_code", "shard-0") as staging:
        stats = tokens.write_shard(iter([(["a", "b", "c"], texts)]), loaded, staging.path / SUBDIR, "t")
        staging.commit("v1", {"asset": "tokenized_filtered_code", "partition": "shard-0"})
    manifest = store.read_manifest("tokenized_filtered_code", "shard-0", "v1")
    [shard] = open_shards(store, {"filtered_code": [("shard-0", manifest)]})["filtered_code"]
    assert str(shard.path).startswith(str(tmp_path / "tmp")) and shard.ids() == ["a", "b", "c"]
    assert shard.stats == stats and loaded.tokenizer.decode(shard.document(1)[:-1].tolist()) == texts[1]
    [again] = open_shards(store, {"filtered_code": [("shard-0", manifest)]})["filtered_code"]
    assert again.path == shard.path


def _tiny_tokenizer(out: Path, texts: list[str]) -> Path:
    tk.save(tk.train_bpe(iter(texts * 5), 300), out)
    return out
