"""phi_assets/training/transfer.py: the function-preserving expansion (Net2Net / bert2BERT) of every dense
model layout, in fp32: the same logits before training, copies that diverge once trained, and clear errors
for what cannot be expanded exactly."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from phi_assets.training import model as phi
from phi_assets.training import transfer
from phi_assets.training.configs import debug_tiny
from phi_assets.training.phi3_configs import DEBUG
from tests.support.models import perturbed_model

DENSE = {"phi1": debug_tiny(), **{n: f() for n, f in DEBUG.items() if not f().moe}}


def _trained_like(cfg, seed: int = 0):
    """A model whose every weight, bias and norm is moved off its init (a wrong tiling or split then shows as
    an error of order 1; fp32 rounding over the wider sums stays near 1e-6 at this scale)."""
    return perturbed_model(cfg, 0.05, seed)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids)


# (model, width factor, blocks added); a tied model is widened in test_tied_embeddings_cannot_be_widened
CASES = [
    (name, width, extra)
    for name, cfg in sorted(DENSE.items())
    for width, extra in [(2, 0), (1, 2), (2, 1)]
    if width == 1 or not getattr(cfg, "tie_word_embeddings", False)
] + [("phi1", 3, 2), ("phi3_mini_debug", 3, 2)]


@pytest.mark.parametrize(("name", "width", "extra_layers"), CASES)
def test_expanded_model_gives_the_same_logits(name, width, extra_layers):
    cfg = DENSE[name]
    small = _trained_like(cfg)
    state, big_cfg = transfer.expand(phi.export_state(small), cfg, width, cfg.num_layers + extra_layers)
    big = phi.load_export(phi.build(big_cfg), state)
    assert big_cfg.hidden_size == width * cfg.hidden_size and big_cfg.head_dim == cfg.head_dim
    assert big_cfg.num_layers == cfg.num_layers + extra_layers
    assert big.num_params() > small.num_params() or (width, extra_layers) == (1, 0)
    ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_logits(big, ids), _logits(small, ids), rtol=0, atol=1e-5)


def test_gqa_heads_are_duplicated_with_their_kv_groups():
    """phi-3-small-like grouping (4 queries per kv head) doubled: every query head still reads its kv head."""
    cfg = replace(DEBUG["phi3_mini_debug"](), num_heads=8, num_kv_heads=2, hidden_size=256,
                  intermediate_size=512)
    small = _trained_like(cfg)
    state, big_cfg = transfer.expand(phi.export_state(small), cfg, 2)
    assert (big_cfg.num_heads, big_cfg.num_kv_heads) == (16, 4)
    ids = torch.randint(0, cfg.vocab_size, (1, 24), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(_logits(phi.load_export(phi.build(big_cfg), state), ids), _logits(small, ids),
                               rtol=0, atol=1e-5)


def test_copies_get_unequal_shares_and_diverge_in_training():
    """Asymmetric splits: the copies of a unit get different gradients, so one step makes them differ;
    with equal shares (split_noise 0) they would stay equal."""
    cfg = debug_tiny()
    small = _trained_like(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))

    def fc1_copies_after_a_step(noise: float) -> tuple[torch.Tensor, torch.Tensor]:
        state, big_cfg = transfer.expand(phi.export_state(small), cfg, 2, split_noise=noise)
        big = phi.load_export(phi.build(big_cfg), state).train()
        opt = torch.optim.SGD(big.parameters(), lr=0.5)
        logits = big(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()
        w = big.model.layers[0].mlp.fc1.weight.detach()
        return w[: cfg.intermediate_size], w[cfg.intermediate_size :]

    first, second = fc1_copies_after_a_step(0.5)
    assert (first - second).abs().max() > 1e-4
    first, second = fc1_copies_after_a_step(0.0)
    torch.testing.assert_close(first, second)


def test_inserted_blocks_are_copies_with_zeroed_residual_writers():
    cfg = DEBUG["phi3_mini_debug"]()
    small = _trained_like(cfg)
    state, _ = transfer.expand(phi.export_state(small), cfg, 1, 4)
    assert transfer.layer_sources(2, 4) == [(0, False), (0, True), (1, False), (1, True)]
    for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        assert not state[f"model.layers.1.{name}"].any() and not state[f"model.layers.3.{name}"].any()
        assert state[f"model.layers.2.{name}"].any()
    torch.testing.assert_close(state["model.layers.1.self_attn.qkv_proj.weight"],
                               state["model.layers.0.self_attn.qkv_proj.weight"])


def test_tied_embeddings_cannot_be_widened():
    cfg = replace(DEBUG["phi3_mini_debug"](), tie_word_embeddings=True)
    small = _trained_like(cfg)
    with pytest.raises(ValueError, match="tied embeddings cannot be widened"):
        transfer.expand(phi.export_state(small), cfg, 2)
    state, big_cfg = transfer.expand(phi.export_state(small), cfg, 1, 3)  # depth alone keeps them tied
    ids = torch.randint(0, cfg.vocab_size, (1, 16))
    torch.testing.assert_close(_logits(phi.load_export(phi.build(big_cfg), state), ids), _logits(small, ids),
                               rtol=0, atol=1e-5)


def test_what_cannot_be_expanded_is_named():
    moe = next(f() for f in DEBUG.values() if f().moe)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        transfer.expanded_config(moe, 2, moe.num_layers)
    with pytest.raises(ValueError, match="layers must be at least"):
        transfer.expanded_config(debug_tiny(), 2, 1)
    with pytest.raises(ValueError, match="width must be"):
        transfer.expanded_config(debug_tiny(), 0, 2)
    with pytest.raises(ValueError, match="split_noise"):
        transfer.expand({}, debug_tiny(), 2, split_noise=1.0)


def test_steps_to_reach_counts_full_windows_of_the_loss():
    """A twentieth of the run is averaged, and no earlier than the first full window: one lucky batch at the
    start does not count as reaching the target."""
    losses = [1.0] + [5.0] * 39 + [2.0] * 40  # 80 steps: windows of 4
    assert transfer.steps_to_reach(losses, 3.0) == 43  # (5 + 5 + 2 + 2) / 4 = 3.5 at 42, 2.75 at 43
    assert transfer.steps_to_reach(losses, 1.5) is None
    assert transfer.steps_to_reach([4.0, 3.0, 2.0], 3.0) == 2  # window 1: each step on its own
