"""Function-preserving expansion of a trained model into a wider and deeper one: phi-2's scaled knowledge
transfer from phi-1.5, in the manner of Net2Net (Chen et al., arXiv:1511.05641) and bert2BERT (Chen et
al., arXiv:2110.07143).

``expand(state, cfg, width, layers)`` takes a checkpoint's weights (``model.export_state``'s names) and its
config, and returns the weights and config of a model ``width`` times as wide with ``layers`` blocks that
computes the same logits.

**Width.** Every unit of every hidden dimension (the residual width, the heads, the MLP) is copied ``width``
times: new unit ``j`` is old unit ``j mod n``, so a vector ``x`` becomes ``[x, x, ...]``. A weight's output
rows are tiled; its input columns are split between the copies, copy ``c`` of input unit ``i`` getting
``alpha[c, i] * W[:, i]`` with ``sum_c alpha[c, i] = 1``, so the sum over the copies is the old product. The
shares are drawn around ``1 / width`` (``split_noise``), not equal: equal shares would give the copies equal
gradients forever, and the wider model would train as the small one (Net2Net §2.1 adds noise for this).
Heads keep their size (``head_dim``) and are duplicated, the grouped-query kv heads too: query head ``j``
still reads kv head ``j // group`` and ``(j // group) mod kv == (j mod heads) // group``. Fused projections
are tiled per section (``qkv_proj``: q, k, v; ``gate_up_proj``: gate, up). LayerNorm and RMSNorm see the
same mean and variance over the copied vector, so their weights are tiled too. Embeddings are tiled per
column; the LM head's columns are split. Tied embeddings cannot be both, so they are an error, as is the
mixture-of-experts layout (its router would need the same treatment per expert; not supported).

**Depth.** The new blocks are copies of the blocks before them (each original block is followed by its
copies, ``layer_sources``) with the projections that write into the residual stream zeroed (attention's
``dense`` / ``o_proj`` and the MLP's ``fc2`` / ``down_proj``, biases too): each adds nothing, so it is the
identity until training moves those projections (their gradients are not zero: the copied inputs are live).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from phi_assets.training.configs import PhiConfig
from phi_assets.training.phi3_configs import Phi3Config

if TYPE_CHECKING:  # torch is imported where weights are expanded: the asset that plans a run needs only shapes
    import torch

# The projections that write into the residual stream: zeroed in an inserted block.
RESIDUAL_WRITERS = ("self_attn.dense.", "self_attn.o_proj.", "mlp.fc2.", "mlp.down_proj.")


def expanded_config(cfg: PhiConfig | Phi3Config, width: int, layers: int) -> PhiConfig | Phi3Config:
    """``cfg`` ``width`` times as wide (heads of the same size) with ``layers`` blocks; an error names what
    cannot be expanded exactly."""
    if width < 1:
        raise ValueError(f"width must be a whole factor >= 1, got {width}")
    if layers < cfg.num_layers:
        raise ValueError(f"layers must be at least the model's {cfg.num_layers}, got {layers}")
    wide = {
        "hidden_size": cfg.hidden_size * width,
        "intermediate_size": cfg.intermediate_size * width,
        "num_heads": cfg.num_heads * width,
        "num_layers": layers,
    }
    if isinstance(cfg, Phi3Config):
        if cfg.moe:
            raise ValueError("expanding a mixture-of-experts model is not supported (the dense layout only)")
        if cfg.tie_word_embeddings and width > 1:
            raise ValueError(
                "tied embeddings cannot be widened exactly: the embedding's columns must be copied and the LM "
                "head's split; untie them (tie_word_embeddings=False) or expand depth only (width=1)"
            )
        wide["num_kv_heads"] = cfg.num_kv_heads * width
    return replace(cfg, **wide)


def layer_sources(old: int, new: int) -> list[tuple[int, bool]]:
    """For each new block, (the old block it copies, whether it is an inserted identity copy); the extra
    blocks are spread evenly, each after the block it copies."""
    sources = [i * old // new for i in range(new)]
    return [(s, i > 0 and sources[i - 1] == s) for i, s in enumerate(sources)]


def _shares(n: int, width: int, noise: float, gen: torch.Generator) -> torch.Tensor:
    """(width, n) shares, each column summing to 1, drawn uniformly in ``(1 +- noise) / width`` before
    normalising."""
    import torch

    raw = 1 + noise * (2 * torch.rand(width, n, generator=gen, dtype=torch.float64) - 1)
    return raw / raw.sum(0, keepdim=True)


def _tile(t: torch.Tensor, width: int, sections: list[int] | None = None) -> torch.Tensor:
    """``t``'s rows (dimension 0) copied ``width`` times, each section separately."""
    import torch

    parts = t.split(sections, 0) if sections else [t]
    return torch.cat([p.repeat(width, *[1] * (t.dim() - 1)) for p in parts], 0)


def _split(w: torch.Tensor, width: int, noise: float, gen: torch.Generator) -> torch.Tensor:
    """``w``'s input columns (dimension 1) split between ``width`` copies (shares summing to 1 per column)."""
    import torch

    alpha = _shares(w.shape[1], width, noise, gen)
    return torch.cat([(w.double() * alpha[c]).to(w.dtype) for c in range(width)], 1)


def _sections(name: str, cfg: PhiConfig | Phi3Config) -> list[int] | None:
    if name.endswith("qkv_proj.weight"):
        kv = cfg.num_kv_heads * cfg.head_dim
        return [cfg.num_heads * cfg.head_dim, kv, kv]
    if name.endswith("gate_up_proj.weight"):
        return [cfg.intermediate_size, cfg.intermediate_size]
    return None


def _widen(name: str, t: torch.Tensor, cfg, width: int, noise: float, gen: torch.Generator) -> torch.Tensor:
    if width == 1:
        return t.clone()
    if name == "model.embed_tokens.weight":
        return t.repeat(1, width)  # (vocab, hidden): every token's vector copied
    if name == "lm_head.bias":
        return t.clone()
    if name == "lm_head.weight":
        return _split(t, width, noise, gen)
    if t.dim() == 1:  # norms' weights and biases, projections' biases: along their output
        return _tile(t, width)
    if t.dim() != 2:
        raise ValueError(f"{name}: cannot expand a weight of shape {tuple(t.shape)}")
    return _split(_tile(t, width, _sections(name, cfg)), width, noise, gen)


def expand(
    state: dict[str, torch.Tensor],
    cfg: PhiConfig | Phi3Config,
    width: int = 2,
    layers: int | None = None,
    *,
    split_noise: float = 0.5,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], PhiConfig | Phi3Config]:
    """(the expanded weights, their config): ``width`` times as wide, ``layers`` blocks (default: as many as
    ``cfg``). ``split_noise`` in [0, 1): how far the copies' shares may stray from ``1 / width``."""
    import torch

    if not 0 <= split_noise < 1:
        raise ValueError(f"split_noise must be in [0, 1), got {split_noise}")
    layers = cfg.num_layers if layers is None else layers
    new_cfg = expanded_config(cfg, width, layers)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in state.items():
        if name.startswith("model.layers."):
            index, rest = name[len("model.layers."):].split(".", 1)
            blocks.setdefault(int(index), {})[rest] = t
        else:
            out[name] = _widen(name, t, cfg, width, split_noise, gen)
    if sorted(blocks) != list(range(cfg.num_layers)):
        raise ValueError(f"the weights hold blocks {sorted(blocks)}, the config {cfg.num_layers}")
    for i, (source, inserted) in enumerate(layer_sources(cfg.num_layers, layers)):
        for rest, t in blocks[source].items():
            wide = _widen(f"model.layers.{source}.{rest}", t, cfg, width, split_noise, gen)
            out[f"model.layers.{i}.{rest}"] = torch.zeros_like(wide) if (
                inserted and rest.startswith(RESIDUAL_WRITERS)
            ) else wide
    return out, new_cfg


def default_layers(layers: int) -> int:
    """The expanded model's blocks when none are asked for: half as many again, at least one more
    (phi-1.5's 24 -> phi-2's 32 is a third more)."""
    return layers + max(1, layers // 2)


def steps_to_reach(losses: Sequence[float], target: float) -> int | None:
    """The first step (1-based) at which the mean loss of the last twentieth of the run's steps (single
    steps are noisy; the first full window is the earliest) is at or below ``target``; ``None`` if the run
    never gets there."""
    window = max(1, len(losses) // 20)
    total = sum(losses[:window - 1])
    for i in range(window - 1, len(losses)):
        total += losses[i] - (losses[i - window] if i >= window else 0.0)
        if total / window <= target:
            return i + 1
    return None
