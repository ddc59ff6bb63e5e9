"""The phi-3 family model (phi_assets/training/phi3.py): logits equal transformers' Phi3ForCausalLM /
PhimoeForCausalLM on exported checkpoints, rotary scaling, sliding window, packed documents, parameter
counts, sparsemixer routing and its auxiliary loss, and a short training run."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from phi_assets.training import attention, phi3
from phi_assets.training.phi3_configs import DEBUG, MODELS, PUBLISHED_ACTIVE_PARAMS, PUBLISHED_PARAMS
from tests.support.models import perturbed_model

LONGROPE = [name for name in DEBUG if DEBUG[name]().rope_type == "longrope"]


def _model(cfg, seed: int = 0) -> phi3.Phi3ForCausalLM:
    """A model with weights far enough from init (std ~0.1, norms off 1) that layout mistakes show."""
    return perturbed_model(cfg, 0.1, seed)


def _export(model, path) -> None:
    save_file(model.hf_state_dict(), path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(model.cfg.hf_config()))


def _transformers(path, **kwargs):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()


def _long_rope_for(hf, seq: int) -> None:
    """transformers 5.19's PhimoeRotaryEmbedding calls the longrope init without the sequence length, so
    it keeps the short factors at every length (Phi3RotaryEmbedding, phi-3.5-MoE's own code and vLLM
    switch); hand it the length so it switches like the dense model."""
    if hf.config.model_type == "phimoe":
        hf.model.rotary_emb.rope_init_fn = functools.partial(ROPE_INIT_FUNCTIONS["longrope"], seq_len=seq)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(DEBUG))
def test_exported_checkpoint_gives_transformers_the_same_logits(name, tmp_path):
    """Our export loads in transformers with the same fp32 logits (1e-5), long factors past 128 too."""
    # AutoModelForCausalLM.from_pretrained on hf_state_dict + config.json; at 200 tokens LongRoPE's long
    # factors and the sliding window (64) both act, and short-only factors give other logits there.
    cfg = DEBUG[name]()
    ours = _model(cfg)
    _export(ours, tmp_path)
    hf = _transformers(tmp_path)
    assert type(hf).__name__ == {"PhiMoEForCausalLM": "PhimoeForCausalLM"}.get(
        cfg.architecture, cfg.architecture
    )
    torch.manual_seed(1)
    lengths = (40, 200) if cfg.rope_type == "longrope" else (40,)
    for seq in lengths:
        ids = torch.randint(0, cfg.vocab_size, (2, seq))
        _long_rope_for(hf, seq)
        with torch.no_grad():
            logits = ours(ids)
            assert logits.abs().max() > 1.0  # not a near-zero output every layout passes
            assert _max_diff(logits, hf(ids).logits) <= 1e-5, seq
    if cfg.rope_type == "longrope":  # the long factors were used at 200: short-only weights differ there
        short_only = phi3.build(replace(cfg, long_factor=cfg.short_factor)).eval()
        short_only.load_hf_state_dict(ours.hf_state_dict())
        with torch.no_grad():
            assert _max_diff(short_only(ids), logits) > 1e-2


@pytest.mark.parametrize("name", list(DEBUG))
def test_hf_state_dict_round_trips_into_our_class(name, tmp_path):
    """hf_state_dict written to safetensors loads back via load_hf_state_dict to identical logits."""
    # a tied head is left out of the file; a missing tensor is an error
    cfg = DEBUG[name]()
    ours = _model(cfg)
    _export(ours, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert ("lm_head.weight" in state) != cfg.tie_word_embeddings
    back = phi3.build(cfg).eval()
    back.load_hf_state_dict(state)
    ids = torch.randint(0, cfg.vocab_size, (1, 30))
    with torch.no_grad():
        assert torch.equal(back(ids), ours(ids))
    state.pop("model.norm.weight")
    with pytest.raises(KeyError, match="model.norm.weight"):
        back.load_hf_state_dict(state)


@pytest.mark.parametrize("name", list(MODELS))
def test_named_shapes_have_the_published_parameter_counts(name):
    """Meta-device num_params() equals param_count() and the Hub's count within 1% (MoE active: 6.6B)."""
    cfg = MODELS[name]()
    with torch.device("meta"):
        model = phi3.build(cfg)
    assert model.num_params() == cfg.param_count()
    assert abs(model.num_params() / PUBLISHED_PARAMS[name] - 1) < 0.01
    assert model.active_params() == cfg.param_count(active=True)
    if name in PUBLISHED_ACTIVE_PARAMS:
        assert abs(model.active_params() / PUBLISHED_ACTIVE_PARAMS[name] - 1) < 0.01
    embed = cfg.vocab_size * cfg.hidden_size
    weights = model.active_params() - (0 if cfg.tie_word_embeddings else embed)
    assert model.flops_per_token(2048) == 6 * weights + 12 * cfg.num_layers * cfg.hidden_size * 2048


@pytest.mark.parametrize("name", ["phi3_medium_debug", "phi3_5_moe_debug"])
def test_packed_documents_get_their_own_logits(name):
    """Packed documents (cu_seqlens, restarted positions) each get the logits they get alone."""
    # three documents in two rows, 4 query heads on 2 kv heads, a window of 16 shorter than two of them;
    # unmasked, the second document sees the first
    cfg = replace(DEBUG[name](), sliding_window=16, num_kv_heads=2)
    model = _model(cfg, seed=2)
    docs = [torch.randint(0, cfg.vocab_size, (1, n)) for n in (20, 4, 24)]
    packed = torch.cat(docs, dim=1).view(2, 24)
    positions = torch.cat([torch.arange(20), torch.arange(4), torch.arange(24)]).view(2, 24)
    with torch.no_grad():
        joint = model(packed, position_ids=positions, cu_seqlens=torch.tensor([0, 20, 24, 48]))
        assert _max_diff(joint[0, :20], model(docs[0])[0]) <= 1e-5
        assert _max_diff(joint[0, 20:], model(docs[1])[0]) <= 1e-5
        assert _max_diff(joint[1], model(docs[2])[0]) <= 1e-5
        assert _max_diff(model(packed)[0, 20:], model(docs[1])[0]) > 1e-3


@pytest.mark.parametrize("name", ["phi3_medium_debug", "phi3_5_moe_debug"])
def test_sliding_window_and_kv_groups_equal_transformers(name, tmp_path):
    """A sliding window of 16 over 48 tokens (4 q / 2 kv heads) gives transformers' eager logits."""
    # windows 15 and 17 do not (a key exactly 16 back is out, as its mask has it), nor does no window;
    # 2 kv heads because the debug shapes' single kv head cannot tell head orders apart
    cfg = replace(DEBUG[name](), sliding_window=16, num_kv_heads=2)
    ours = _model(cfg, seed=3)
    _export(ours, tmp_path)
    hf = _transformers(tmp_path, attn_implementation="eager")
    ids = torch.randint(0, cfg.vocab_size, (2, 48))
    unwindowed = phi3.build(replace(cfg, sliding_window=None)).eval()
    unwindowed.load_hf_state_dict(ours.hf_state_dict())
    for window in (15, 17):  # off by one either way is caught
        shifted = phi3.build(replace(cfg, sliding_window=window)).eval()
        shifted.load_hf_state_dict(ours.hf_state_dict())
        with torch.no_grad():
            assert _max_diff(shifted(ids), hf(ids).logits) > 1e-3
    with torch.no_grad():
        logits = ours(ids)
        assert _max_diff(logits, hf(ids).logits) <= 1e-5
        assert _max_diff(logits, unwindowed(ids)) > 1e-3


def test_attend_takes_fewer_kv_heads_and_a_window():
    """attend with GQA (6 q / 2 kv), a window of 5 and 2 documents equals softmax under the mask."""
    # the explicit mask: key j visible to query i when i - 5 < j <= i, in the same document
    torch.manual_seed(4)
    q = torch.randn(1, 6, 20, 8)
    k, v = torch.randn(1, 2, 20, 8), torch.randn(1, 2, 20, 8)
    i, j = torch.arange(20)[:, None], torch.arange(20)[None, :]
    doc = (torch.arange(20) >= 12).long()
    mask = (j <= i) & (i - j < 5) & (doc[:, None] == doc[None, :])
    scores = q @ k.repeat_interleave(3, dim=1).transpose(-1, -2) / 8**0.5
    expected = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v.repeat_interleave(3, dim=1)
    got = attention.attend(q, k, v, cu_seqlens=torch.tensor([0, 12, 20]), window=5)
    assert _max_diff(got, expected) <= 1e-5
    assert _max_diff(attention.attend(q, k, v, window=20), attention.attend(q, k, v)) == 0


@pytest.mark.skipif(
    not torch.cuda.is_available() or attention.flash_attn_kernels() is None,
    reason="flash-attn runs only on CUDA with the flash-attn package (install .[gpu] on a GPU machine)",
)
def test_flash_attn_and_sdpa_agree_on_kv_groups_window_and_documents(monkeypatch):
    """On CUDA, flash-attn and SDPA agree in bf16 with GQA, a sliding window and packed documents."""
    torch.manual_seed(9)
    q = torch.randn(2, 6, 64, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(2, 2, 64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    cu = torch.tensor([0, 40, 64, 100, 128], device="cuda", dtype=torch.int32)
    for kwargs in ({}, {"window": 16}, {"cu_seqlens": cu}, {"cu_seqlens": cu, "window": 16}):
        out = {}
        for name in ("flash", "sdpa"):
            monkeypatch.setenv("PHI_ATTENTION", name)
            out[name] = attention.attend(q, k, v, **kwargs).float()
        assert _max_diff(out["flash"], out["sdpa"]) <= 2e-2, kwargs
    assert _max_diff(out["sdpa"], attention.attend(q, k, v, cu_seqlens=cu).float()) > 1e-2  # the window acts


def test_yarn_frequencies_equal_transformers():
    """Our YaRN inverse frequencies and attention factor equal transformers' _compute_yarn_parameters."""
    cfg = replace(DEBUG["phi4_debug"](), rope_type="yarn", rope_factor=4.0, original_max_position_embeddings=64)
    llama = transformers.LlamaConfig(
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": cfg.rope_theta,
        },
    )
    expected, factor = ROPE_INIT_FUNCTIONS["yarn"](llama)
    ours, our_factor = phi3.inv_freq(cfg)
    assert torch.allclose(ours, expected, rtol=1e-6, atol=0) and our_factor == pytest.approx(factor)
    assert not torch.allclose(ours, phi3.inv_freq(replace(cfg, rope_type="default"))[0])


def test_moe_training_forward_and_backward_equal_transformers(tmp_path):
    """Seeded training-mode MoE forward/backward equal transformers' logits, aux_loss, router grads."""
    # Gumbel-sampled sparsemixer and PhimoeMultiplier backward; a jitter_eps of 0.3 leaves several
    # experts in reach of each pick, so the sampling and its random stream matter
    cfg = replace(DEBUG["phi3_5_moe_debug"](), router_jitter_noise=0.3)
    ours = _model(cfg, seed=5)
    _export(ours, tmp_path)
    hf = _transformers(tmp_path).train()
    ours.train()
    ids = torch.randint(0, cfg.vocab_size, (2, 32))
    torch.manual_seed(6)
    logits = ours(ids)
    torch.manual_seed(6)
    out = hf(ids, output_router_logits=True)
    assert _max_diff(logits, out.logits) <= 1e-5
    assert ours.aux_loss.item() == pytest.approx(out.aux_loss.item(), rel=1e-6)
    (logits.square().mean() + ours.aux_loss).backward()
    (out.logits.square().mean() + out.aux_loss).backward()
    for i, layer in enumerate(ours.model.layers):
        ours_grad, hf_grad = layer.block_sparse_moe.gate.weight.grad, hf.model.layers[i].mlp.router.weight.grad
        assert ours_grad.abs().max() > 0
        assert _max_diff(ours_grad, hf_grad) <= 1e-5 * max(1.0, hf_grad.abs().max().item())


def test_moe_aux_loss_router_stats_and_deterministic_eval():
    """MoE aux_loss (>0, reaches the router), router_stats counts and reset, deterministic eval."""
    # counts: 2 assignments per token per layer, once with gradient checkpointing; eval aux_loss 0;
    # a dense model reports aux_loss 0 and no experts
    cfg = DEBUG["phi3_5_moe_debug"]()
    model = _model(cfg, seed=7).train()
    model.gradient_checkpointing = True
    ids = torch.randint(0, cfg.vocab_size, (2, 24))
    model(ids)
    assert torch.isfinite(model.aux_loss) and model.aux_loss.item() > 0
    model.aux_loss.backward()
    assert model.model.layers[0].block_sparse_moe.gate.weight.grad.abs().sum() > 0
    stats = model.router_stats()
    assert [sum(layer) for layer in stats["tokens_per_expert"]] == [2 * 48] * cfg.num_layers
    assert stats["dropped"] == 0.0 and stats["load_cv"] >= 0
    assert model.router_stats()["tokens_per_expert"] == [[0] * cfg.num_experts] * cfg.num_layers
    model.eval()
    with torch.no_grad():
        first, second = model(ids), model(ids)
    assert torch.equal(first, second) and model.aux_loss.item() == 0
    assert sum(map(sum, model.router_stats(reset=False)["tokens_per_expert"])) == 2 * 2 * 48 * cfg.num_layers
    dense = _model(DEBUG["phi3_mini_debug"]()).train()
    dense(ids)
    assert dense.aux_loss.item() == 0 and dense.router_stats()["tokens_per_expert"] == []


@pytest.mark.parametrize("name", ["phi4_mini_debug", "phi3_5_moe_debug"])
def test_thirty_adamw_steps_lower_the_loss(name):
    """30 AdamW steps on one repeated batch (the MoE with its weighted aux loss) at least halve the loss."""
    cfg = DEBUG[name]()
    torch.manual_seed(8)
    model = phi3.build(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, cfg.vocab_size, (2, 33))
    losses = []
    for _ in range(30):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        (loss + cfg.router_aux_loss_coef * model.aux_loss).backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
