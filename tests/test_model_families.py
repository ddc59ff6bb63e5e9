"""Model families in the training chain: the family table in docs/models.md, how a preset or
PHI_MODEL_FAMILY picks a family's recipes, midtraining's context extensions (RoPE base, YaRN, LongRoPE),
and the mixture of experts trained by the trainer (load-balancing loss, router statistics)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from phi_assets.common.profiles import MODEL_FAMILIES, SCALES, Sizes, load_profile
from phi_assets.mixture.tokens import TokenShard
from phi_assets.training import configs, phi3_configs, trainer
from resources import ProfileResource
from tests.support import training_data

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {"code": 0.7, "web": 0.3}


def _table() -> dict[str, dict[str, str]]:
    """docs/models.md's family table: shape -> column -> cell."""
    text = (ROOT / "docs" / "models.md").read_text()
    section = text[text.index("## The family table") : text.index("## Choosing a family")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()]
    rows = [r for r in rows if len(r) > 5 and not set(r[0]) <= {"-"}]
    header, body = rows[0], rows[1:]
    return {r[0].strip("`"): dict(zip(header, r, strict=True)) for r in body}


def test_the_family_table_in_the_docs_matches_the_configs():
    """Every named shape has a row whose layers, width, heads, kv heads, head dim, vocab, context and
    parameters (to the printed precision) are the config's: the docs cannot drift from the code."""
    table = _table()
    named = {n: configs.RECIPES[n]() for n in ("phi1", "phi1_small", "phi1_5", "phi2", *phi3_configs.MODELS)}
    assert set(table) == set(named)
    for name, cfg in named.items():
        row = table[name]
        kv = getattr(cfg, "num_kv_heads", cfg.num_heads)
        assert int(row["layers"]) == cfg.num_layers and int(row["width"]) == cfg.hidden_size, name
        assert row["MLP"].split()[0] == str(cfg.intermediate_size), name
        assert (int(row["heads"]), int(row["kv heads"]), int(row["head dim"])) == (
            cfg.num_heads,
            kv,
            cfg.head_dim,
        )
        assert int(row["vocab"]) == cfg.vocab_size and int(row["context"]) == cfg.max_position_embeddings, name
        printed = re.match(r"([\d.]+)([BM])", row["parameters"])
        count = cfg.param_count() if hasattr(cfg, "param_count") else None
        if count is None:
            with torch.device("meta"):
                from phi_assets.training import model as phi

                count = phi.build(cfg).num_params()
        scale = 1e9 if printed.group(2) == "B" else 1e6
        assert round(count / scale, len(printed.group(1).partition(".")[2])) == float(printed.group(1)), name
        if getattr(cfg, "rope_type", "default") == "longrope":
            assert "LongRoPE" in row["rotary"], name


def test_a_preset_or_the_environment_picks_the_family_and_its_recipes(monkeypatch):
    """ci trains the phi-3 family, the demo phi-1's; PHI_MODEL_FAMILY overrides the preset; each family maps
    the preset's pretraining recipe to its own at the same scale, and a bad name is refused by name."""
    assert SCALES["ci"].model_family == "phi3" and SCALES["demo"].model_family == "phi1"
    assert set(configs.FAMILIES) == set(MODEL_FAMILIES)
    env = {"PHI_PROFILE": "ci", "PHI_MODEL_FAMILY": "phi3_moe"}
    assert load_profile(env).sizes.model_family == "phi3_moe"
    # the assets read the profile through the resource, which carries the family to every step
    assert ProfileResource.from_profile(load_profile(env)).get().sizes.model_family == "phi3_moe"
    assert ProfileResource.from_profile(load_profile({"PHI_PROFILE": "ci"})).get().sizes.model_family == "phi3"
    assert configs.family_recipe("phi3_moe", "debug") == "phi3_5_moe_debug"
    assert configs.family_recipe("phi4", "phi1_pretrain") == "phi4_pretrain"
    assert configs.family_recipe("phi1", "debug") == "debug"
    for family in MODEL_FAMILIES:  # every mapped recipe exists and builds its config
        for recipe in configs.FAMILIES[family].values():
            assert configs.TRAIN_RECIPES[recipe]().model_config(512).vocab_size == 512
    with pytest.raises(ValueError, match="model family must be one of"):
        Sizes(model_family="phi5")
    with pytest.raises(ValueError, match="'phi5'"):
        configs.family_recipe("phi5", "debug")


def test_midtraining_extends_each_family_its_own_way():
    """phi-3 midtrains with LongRoPE from the parent's length (short factors 1, long factors from 1 to the
    extension), YaRN on request, phi-4 and phi-1 by a higher RoPE base; LongRoPE on a phi-1 model is refused."""
    base = replace_model(configs.phi3_debug(), seq_len=64)
    mid = configs.midtrain(base)
    cfg = mid.model_config(512)
    assert (cfg.rope_type, cfg.original_max_position_embeddings, cfg.max_position_embeddings) == (
        "longrope",
        64,
        256,
    )
    assert set(cfg.short_factor) == {1.0} and cfg.long_factor[-1] == pytest.approx(4.0)
    assert min(cfg.long_factor) >= 1.0 and cfg.rope_scaling()["long_factor"] == list(cfg.long_factor)
    yarn = configs.midtrain(base, extension="yarn").model_config(512)
    assert yarn.rope_type == "yarn" and yarn.rope_factor == 4.0 and yarn.attention_factor > 1
    assert configs.midtrain(configs.phi4_debug()).model_config(512).rope_theta == 250_000
    assert [configs.default_extension(m) for m in ("phi4", "phi4_mini", "phi3_5_moe", "phi2")] == [
        "rope_theta",
        "longrope",
        "longrope",
        "rope_theta",
    ]
    assert configs.midtrain(configs.debug()).model_config(512).rope_theta == 250_000
    with pytest.raises(ValueError, match="needs a phi-3 family model"):
        configs.midtrain(configs.debug(), extension="longrope").model_config(512)
    with pytest.raises(ValueError, match="extension must be one of"):
        configs.midtrain(base, extension="ntk")


def replace_model(cfg: trainer.TrainConfig, **kw) -> trainer.TrainConfig:
    from dataclasses import replace

    return replace(cfg, **kw)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, list[TokenShard]]:
    paths = training_data.stdlib_shards(tmp_path_factory.mktemp("families"))
    return {name: [TokenShard.open(p) for p in found] for name, found in paths.items()}


def _moe(**overrides) -> trainer.TrainConfig:
    return trainer.TrainConfig(
        model="phi3_5_moe_debug",
        seq_len=32,
        micro_batch_size=4,
        global_batch_size=8,
        max_steps=12,
        warmup_steps=2,
        checkpoint_every=6,
        threads=1,
        lr=3e-3,
        overrides=overrides,
    )


def test_the_mixture_of_experts_trains_with_its_load_balancing_loss(shards, tmp_path):
    """The MoE model learns through the trainer; the load-balancing loss is part of what it minimises (its
    coefficient at 0 gives other weights); every layer's router statistics count two experts per token."""
    logs = []
    model = trainer.train(_moe(), shards, WEIGHTS, tmp_path / "a", log=logs.append)
    assert sum(e.loss for e in logs[-3:]) < sum(e.loss for e in logs[:3])
    plain = trainer.train(_moe(router_aux_loss_coef=0.0), shards, WEIGHTS, tmp_path / "b")
    gate = "model.layers.0.block_sparse_moe.gate.weight"
    assert not torch.equal(model.state_dict()[gate], plain.state_dict()[gate])
    stats = model.router_stats()
    tokens = 12 * 8 * 32  # steps x sequences x length
    assert [sum(layer) for layer in stats["tokens_per_expert"]] == [2 * tokens] * model.cfg.num_layers
    assert stats["dropped"] == 0.0 and stats["load_cv"] >= 0


def test_a_longrope_midtraining_run_trains_past_the_original_context(shards, tmp_path):
    """Pretrained on the phi-3 blocks at 32 tokens, midtrained at 64 with LongRoPE from 32: the model's
    rotary factors are the long ones beyond 32 positions (its logits there differ from the same weights with
    the short factors), and validation loss is finite at both lengths."""
    from dataclasses import replace

    from phi_assets.training import model as phi

    base = trainer.TrainConfig(
        model="phi3_mini_debug",
        seq_len=32,
        micro_batch_size=4,
        global_batch_size=8,
        max_steps=6,
        warmup_steps=1,
        threads=1,
        lr=3e-3,
        checkpoint_every=6,
    )
    from safetensors.torch import save_file

    parent = trainer.train(base, shards, WEIGHTS, tmp_path / "pre")
    mid = replace(configs.midtrain(base), max_steps=4, checkpoint_every=4)
    pre_export = tmp_path / "pre_export"
    pre_export.mkdir()
    save_file(
        {k: v.contiguous() for k, v in phi.export_state(parent).items()}, pre_export / "model.safetensors"
    )
    vocab = next(iter(shards["code"])).stats.vocab_size
    model = trainer.train_on(
        mid, lambda: trainer.mixture_loader(mid, shards, WEIGHTS), vocab, tmp_path / "mid", init=pre_export
    ).eval()
    assert model.cfg.rope_type == "longrope" and model.cfg.original_max_position_embeddings == 32
    short_only = phi.build(replace(model.cfg, long_factor=model.cfg.short_factor)).eval()
    short_only.load_state_dict(model.state_dict())
    ids = torch.randint(0, vocab, (1, 48))
    with torch.no_grad():
        assert not torch.allclose(model(ids), short_only(ids), atol=1e-4)  # past 32: the long factors
        assert torch.allclose(model(ids[:, :32]), short_only(ids[:, :32]), atol=1e-6)  # within: the short
    for n in (32, 64):
        assert torch.isfinite(torch.tensor(trainer.validation_loss(model, shards, WEIGHTS, n)))


@pytest.mark.parametrize("extension", ["yarn", "longrope"])
def test_an_extended_export_loads_in_transformers_with_our_logits(extension, tmp_path):
    """A phi-3 model midtrained with YaRN or LongRoPE exports rope_scaling in phi-3.5's LongRoPE format
    (YaRN as equal short and long divisors with its attention factor), which transformers loads and applies
    as we do, within and past the original context."""
    import json
    from dataclasses import replace

    import transformers
    from safetensors.torch import save_file

    from phi_assets.training import model as phi

    cfg = configs.midtrain(replace(configs.phi3_debug(), seq_len=64), extension=extension).model_config(300)
    torch.manual_seed(0)
    ours = phi.build(cfg).eval()
    save_file({k: v.contiguous() for k, v in phi.export_state(ours).items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(cfg.hf_config()))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert hf.config.rope_parameters["original_max_position_embeddings"] == 64
    for length in (40, 200):
        ids = torch.randint(0, 300, (1, length))
        with torch.no_grad():
            assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-5, length


@pytest.mark.slow  # torchrun with 2 processes, DeepSpeed
@pytest.mark.parametrize("backend", ["torch", "deepspeed"])
def test_the_mixture_of_experts_trains_on_two_ranks_with_ddp_and_deepspeed_zero2(tmp_path, backend):
    """phi-3.5-MoE's blocks through the same trainer on two CPU ranks (gloo): DDP (an expert no token of a
    micro-batch chose has no gradient, which DDP is told to expect) and DeepSpeed ZeRO stage 2; the loss falls,
    the export loads in our model, and the summary carries the experts' load."""
    import json
    import subprocess

    from safetensors.torch import load_file

    from phi_assets.training import model as phi
    from tests.support.processes import free_port

    data = training_data.make(tmp_path / "data")
    train = {"model": "phi3_5_moe_debug", "max_steps": 6, "checkpoint_every": 6, "lr": 3e-3, "backend": backend}
    config = training_data.write(data.config("pretrain", tmp_path / "out", train), tmp_path / "pretrain.json")
    command = training_data.torchrun(
        2, free_port(), "-m", "phi_assets.training.entrypoint", "--config", str(config)
    )
    env = training_data.child_env(DS_ACCELERATOR="cpu")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[-1]["loss"] < rows[0]["loss"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["router"]["tokens_per_expert"]) == 2  # one row per layer
    vocab = json.loads((tmp_path / "out" / "hf" / "config.json").read_text())["vocab_size"]
    cfg = trainer.TrainConfig(**{**training_data.SHAPE, **train}).model_config(vocab)
    assert cfg.moe and cfg.hf_config()["architectures"] == ["PhiMoEForCausalLM"]
    phi.load_export(phi.build(cfg), load_file(tmp_path / "out" / "hf" / "model.safetensors"))
