"""``transferred_checkpoint`` on the ci profile: what the demo's graph trained (``demo_run``), the
comparison with random init it records, its config's checks, and the training entrypoint's ``expand``."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import torch
from safetensors.torch import load_file

from phi_assets.training import entrypoint
from phi_assets.training import model as phi
from phi_assets.training.configs import TrainConfig
from phi_assets.training.pretraining import TransferConfig, _transfer_config
from resources import ArtifactStore


@pytest.fixture(scope="module")
def store(demo_run) -> ArtifactStore:
    return ArtifactStore(root=str(demo_run["home"] / "artifacts"))


def _current(store: ArtifactStore, asset: str) -> tuple[dict, Path]:
    manifest = store.current_manifest(asset, None)
    assert manifest is not None, f"{asset} was not materialized by the demo"
    return manifest, Path(store.version_path(asset, None, manifest["data_version"]))


def test_transferred_model_reaches_the_target_sooner_than_random_init(store, demo_run):
    """The acceptance race in the ci preset: both runs reach a loss 5% below the small model's final loss
    (a trailing mean), the expanded one in fewer steps; the counts are in the metadata and the demo's output."""
    manifest, _ = _current(store, "transferred_checkpoint")
    report = manifest["metadata"]["transfer"]
    parent, _ = _current(store, "pretrained_checkpoint")
    assert report["target_loss"] == pytest.approx(0.95 * report["small_final_loss"])
    assert report["steps_to_target"] is not None and report["baseline_steps_to_target"] is not None
    assert report["steps_to_target"] < report["baseline_steps_to_target"], report
    assert manifest["inputs"]["parent"] == parent["data_version"]
    assert "transferred_checkpoint (the pretrained model widened and deepened" in demo_run["first"]
    steps, baseline = report["steps_to_target"], report["baseline_steps_to_target"]
    assert f"expanded {steps} steps, random init {baseline} steps" in demo_run["first"]


def test_expanded_model_starts_where_the_small_one_ended(store):
    """Function preservation end to end: the training process's expanded model has the small model's
    validation loss on the same batches before its first step; the export is wider and deeper."""
    manifest, version = _current(store, "transferred_checkpoint")
    report = manifest["metadata"]["transfer"]
    for length, small in report["small_val_loss"].items():
        assert report["expanded_initial_val_loss"][length] == pytest.approx(small, abs=1e-5)
    parent, parent_dir = _current(store, "pretrained_checkpoint")
    big, small = (json.loads((d / "hf" / "config.json").read_text()) for d in (version, parent_dir))
    expand = manifest["inputs"]["expand"]
    assert big["hidden_size"] == expand["width"] * small["hidden_size"]
    assert big["num_attention_heads"] == expand["width"] * small["num_attention_heads"]
    assert big["num_hidden_layers"] == expand["layers"] > small["num_hidden_layers"]
    assert manifest["metadata"]["num_params"] > parent["metadata"]["num_params"]
    assert len(manifest["metadata"]["baseline_loss"]) == len(manifest["metadata"]["loss"])
    assert not (version / "baseline" / "hf").exists()  # the baseline's curve is kept, not its weights


def test_transfer_config_expands_the_parents_recipe():
    """The run trains the parent's recipe at the expanded shape for the token budget; what cannot be
    expanded exactly fails naming the asset and the reason."""
    train = TrainConfig(model="phi3_mini_debug", seq_len=64, global_batch_size=8, micro_batch_size=8)
    parent = {"inputs": {"train": {**train.__dict__, "betas": list(train.betas)}}}
    cfg, expand = _transfer_config(parent, TransferConfig(), 1024, 64 * 8 * 100)
    small = train.model_config(1024)
    big = cfg.model_config(1024)
    assert (big.hidden_size, big.num_heads, big.num_kv_heads) == (
        2 * small.hidden_size, 2 * small.num_heads, 2 * small.num_kv_heads)
    assert big.num_layers == expand["layers"] == 3 and cfg.max_steps == 100 and cfg.lr == train.lr
    tied = TrainConfig(model="phi4_mini_debug")
    with pytest.raises(dg.Failure, match="transferred_checkpoint.*tied embeddings"):
        _transfer_config({"inputs": {"train": {**tied.__dict__, "betas": list(tied.betas)}}},
                         TransferConfig(), 1024, 1000)


def test_entrypoint_expand_writes_the_expanded_init(tmp_path):
    """``expand`` in a run's config: the parent is expanded into ``out/expanded`` with the run's shape;
    a shape that does not match the run's overrides, or ``expand`` without ``init``, is an error."""
    train = TrainConfig(model="debug_tiny")
    parent = tmp_path / "parent"
    parent.mkdir()
    torch.manual_seed(0)
    small = phi.build(train.model_config(1024))
    from safetensors.torch import save_file

    save_file(phi.export_state(small), parent / "model.safetensors")
    spec = {"width": 2, "layers": 3, "split_noise": 0.5, "seed": 0, "parent_overrides": {}}
    wide = TrainConfig(model="debug_tiny", overrides={"hidden_size": 128, "intermediate_size": 512,
                                                      "num_heads": 4, "num_layers": 3})
    world = entrypoint._world()
    target = entrypoint._expanded(parent, spec, wide, tmp_path / "run", 1024, world)
    big = phi.load_export(phi.build(wide.model_config(1024)), load_file(target / "model.safetensors"))
    ids = torch.randint(0, 1024, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(big.eval()(ids), small.eval()(ids), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="but the run trains"):
        entrypoint._expanded(parent, {**spec, "layers": 4}, wide, tmp_path / "other", 1024, world)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"stage": "pretrain", "tokenizer": "t", "out": "o", "sources": {},
                                  "weights": {}, "expand": spec}))
    with pytest.raises(ValueError, match="expand needs init"):
        entrypoint.load_config(config)


def test_entrypoint_expand_keeps_the_copy_another_node_renamed_first(tmp_path, monkeypatch):
    """On a run directory two nodes share, the second node's rename fails on the first one's finished copy:
    it keeps that copy (the same seeded expansion) and leaves no temporary directory behind."""
    train = TrainConfig(model="debug_tiny")
    parent = tmp_path / "parent"
    parent.mkdir()
    from safetensors.torch import save_file

    save_file(phi.export_state(phi.build(train.model_config(1024))), parent / "model.safetensors")
    spec = {"width": 1, "layers": 3, "split_noise": 0.5, "seed": 0, "parent_overrides": {}}
    deep = TrainConfig(model="debug_tiny", overrides={"num_layers": 3})
    world = entrypoint._world()
    out = tmp_path / "run"
    first = entrypoint._expanded(parent, spec, deep, out, 1024, world)
    written = (first / "model.safetensors").read_bytes()
    real_is_file = Path.is_file
    calls = []

    def not_yet(path):  # the other node's copy appears between this node's check and its rename
        calls.append(path)
        return real_is_file(path) and len(calls) > 1

    monkeypatch.setattr(Path, "is_file", not_yet)
    assert entrypoint._expanded(parent, spec, deep, out, 1024, world) == first
    monkeypatch.undo()
    assert (first / "model.safetensors").read_bytes() == written
    assert sorted(p.name for p in out.iterdir()) == ["expanded"]
