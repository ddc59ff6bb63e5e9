"""The phi-1 / phi-1.5 / phi-2 architecture, with Hugging Face ``PhiForCausalLM``'s weight names.

Each block computes attention and MLP in parallel from one LayerNorm (GPT-J style):
``x + dropout(attn(ln(x))) + dropout(mlp(ln(x)))``. Attention has biased q/k/v/dense projections
and rotary embeddings on the first ``rotary_dim`` dimensions of each head (32 of 64 in phi-1,
rotate-half layout); the MLP is fc1 -> gelu_new (tanh) -> fc2; the LM head is untied and biased.
Module and parameter names equal transformers' ``PhiForCausalLM``, so ``state_dict()`` saved as
``model.safetensors`` next to ``hf_config()`` as ``config.json`` loads there and in vLLM.

Named configs (``PhiConfig``: ``phi1()`` (1.3B), ``phi1_small()`` (350M), ``phi1_5()``, ``phi2()`` (2.7B)
and ``debug_tiny()`` for CPU) are in ``configs.py``, which imports no torch; this module re-exports them.

``build(cfg)`` makes the model of any family from its config: ``PhiForCausalLM`` for a ``PhiConfig``, the
phi-3 family's (``phi3.py``: phi-3, phi-3.5, phi-4 dense and phi-3.5-MoE) for a ``Phi3Config``.
``export_state`` / ``load_export`` give and take the weights as the Hugging Face checkpoint names them
(tied embeddings once, experts one by one), which is what ``model.safetensors`` holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from phi_assets.training.attention import attend
from phi_assets.training.configs import (  # the shapes live there (no torch); re-exported
    RECIPES,  # noqa: F401
    PhiConfig,  # noqa: F401
    debug_tiny,  # noqa: F401
    phi1,  # noqa: F401
    phi1_5,  # noqa: F401
    phi1_small,  # noqa: F401
    phi2,  # noqa: F401
)


def build(cfg) -> nn.Module:
    """The model for ``cfg``: a ``PhiConfig`` (phi-1, phi-1.5, phi-2) or a ``Phi3Config`` (the phi-3 family)."""
    if isinstance(cfg, PhiConfig):
        return PhiForCausalLM(cfg)
    from phi_assets.training import phi3

    return phi3.build(cfg)


def export_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights under the names of the Hugging Face checkpoint (``model.safetensors``)."""
    return model.hf_state_dict() if hasattr(model, "hf_state_dict") else model.state_dict()


def load_export(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load what ``export_state`` wrote (a parent checkpoint) into ``model``; every weight must match."""
    if hasattr(model, "load_hf_state_dict"):
        model.load_hf_state_dict(state)
    else:
        model.load_state_dict(state)
    return model


def rotary_tables(cfg: PhiConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (batch, seq, rotary_dim), in float32."""
    inv_freq = 1.0 / (
        cfg.rope_theta ** (torch.arange(0, cfg.rotary_dim, 2, dtype=torch.float32) / cfg.rotary_dim)
    )
    freqs = positions[..., None].float() * inv_freq.to(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """x: (batch, heads, seq, head_dim); only the first ``rotary_dim`` dimensions rotate."""
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return torch.cat((rot * cos + _rotate_half(rot) * sin, rest), dim=-1)


class PhiAttention(nn.Module):
    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(cfg.hidden_size, cfg.hidden_size) for _ in range(3))
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        heads, dim = self.cfg.num_heads, self.cfg.head_dim
        q, k, v = (
            p(x).view(batch, seq, heads, dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = (apply_rotary(t, cos, sin, self.cfg.rotary_dim) for t in (q, k))
        dropout = self.cfg.attention_dropout if self.training else 0.0
        out = attend(q, k, v, dropout=dropout, cu_seqlens=cu_seqlens)  # (batch, heads, seq, dim)
        return self.dense(out.transpose(1, 2).reshape(batch, seq, heads * dim))


class PhiMLP(nn.Module):
    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # gelu_new


class PhiDecoderLayer(nn.Module):
    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = PhiAttention(cfg)
        self.mlp = PhiMLP(cfg)
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.input_layernorm(x)
        return x + self.resid_dropout(self.self_attn(h, cos, sin, cu_seqlens)) + self.resid_dropout(self.mlp(h))


class PhiModel(nn.Module):
    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_dropout = nn.Dropout(cfg.embd_pdrop)
        self.layers = nn.ModuleList(PhiDecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class PhiForCausalLM(nn.Module):
    """``forward(input_ids, position_ids=None, cu_seqlens=None) -> logits (batch, seq, vocab)``."""

    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.cfg = cfg
        self.model = PhiModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.gradient_checkpointing = False
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, seq = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        cos, sin = rotary_tables(self.cfg, position_ids)
        x = self.model.embed_dropout(self.model.embed_tokens(input_ids))
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, cu_seqlens, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cu_seqlens)
        return self.lm_head(self.model.final_layernorm(x))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N for the weights plus 12 * layers * hidden * seq for attention
        (PaLM appendix B; the MFU formula in docs/training.md)."""
        n = self.num_params() - self.model.embed_tokens.weight.numel()
        return 6 * n + 12 * self.cfg.num_layers * self.cfg.hidden_size * seq_len
