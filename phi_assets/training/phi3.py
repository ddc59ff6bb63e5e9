"""The phi-3 family (phi-3, phi-3.5, phi-4 dense and phi-3.5-MoE) in PyTorch, with the weight names of
transformers' ``Phi3ForCausalLM`` and of the phi-3.5-MoE checkpoint (``PhimoeForCausalLM``).

Shapes come from ``phi3_configs.Phi3Config``. Two block layouts:

- dense: pre-norm RMSNorm blocks, a fused ``qkv_proj`` (grouped-query attention, no biases), a fused
  ``gate_up_proj`` SwiGLU MLP (``up * silu(gate)``), rotary on the first ``rotary_dim`` dimensions of each
  head (rotate-half layout), an optional sliding window, tied or untied embeddings;
- mixture of experts (``cfg.moe``): LayerNorm (``eps = rms_norm_eps``, with bias) everywhere, biased
  ``q_proj/k_proj/v_proj/o_proj``, ``block_sparse_moe.gate`` (the router) and ``block_sparse_moe.experts[E]``
  with ``w1`` (gate), ``w3`` (up), ``w2`` (down), routed top-2 by sparsemixer (transformers' ``sparsemixer``
  and ``PhimoeMultiplier``: deterministic in eval, Gumbel sampling with its own backward in training),
  dropless, and a biased LM head.

Rotary scaling follows transformers' ``modeling_rope_utils``: ``default``; ``yarn`` (NTK-by-parts,
``_compute_yarn_parameters``); ``longrope`` (``short_factor`` while the longest position + 1 is within
``original_max_position_embeddings``, ``long_factor`` past it, as ``dynamic_rope_update`` switches). cos and
sin are scaled by ``cfg.attention_factor``. One deviation: transformers 5.19's ``PhimoeRotaryEmbedding``
never passes the sequence length to the longrope init, so it uses the short factors at every length; here
both layouts switch to the long factors, as the dense model, phi-3.5-MoE's own code and vLLM do.

``state_dict()`` names are the checkpoint's names (``hf_state_dict()`` drops the tied ``lm_head.weight``),
so ``hf_state_dict()`` saved as ``model.safetensors`` next to ``json(cfg.hf_config())`` as ``config.json``
loads with ``AutoModelForCausalLM.from_pretrained`` (transformers converts the MoE names on load) and in
vLLM. After each forward ``model.aux_loss`` holds the Switch Transformer load-balancing loss over the
router logits (training forwards of the MoE layout; 0 otherwise) for the trainer to add times
``cfg.router_aux_loss_coef``, and ``router_stats()`` reports the experts' load since the last reset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from phi_assets.training.attention import attend
from phi_assets.training.phi3_configs import Phi3Config

TOP_K = 2  # sparsemixer routes every token to two experts


# -- rotary ---------------------------------------------------------------------------------------------


def inv_freq(
    cfg: Phi3Config, seq_len: int | None = None, device: torch.device | None = None
) -> tuple[torch.Tensor, float]:
    """(inverse frequencies (rotary_dim / 2,), cos/sin scale) for sequences of ``seq_len`` positions."""
    dim = cfg.rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    if cfg.rope_type == "default":
        return 1.0 / (cfg.rope_theta**exponents), 1.0
    if cfg.rope_type == "yarn":  # the divisors config.json writes for it (Phi3Config.yarn_factors)
        divisors = cfg.yarn_factors()
    else:
        long = seq_len is not None and seq_len > cfg.original_max_position_embeddings
        divisors = cfg.long_factor if long else cfg.short_factor
    factors = torch.tensor(divisors, dtype=torch.float32, device=device)
    return 1.0 / (factors * cfg.rope_theta**exponents), cfg.attention_factor


def rotary_tables(cfg: Phi3Config, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (batch, seq, rotary_dim) in float32, scaled by the attention factor. LongRoPE picks
    its factors from the longest position (max + 1 > original: long), as transformers does."""
    seq_len = int(positions.max()) + 1 if cfg.rope_type == "longrope" else None
    frequencies, scale = inv_freq(cfg, seq_len, positions.device)
    freqs = positions[..., None].float() * frequencies
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scale, emb.sin() * scale


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, heads, seq, head_dim); the first ``cos.shape[-1]`` dimensions rotate."""
    dim = cos.shape[-1]
    rot, rest = x[..., :dim], x[..., dim:]
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return torch.cat((rot * cos + _rotate_half(rot) * sin, rest), dim=-1)


# -- blocks ---------------------------------------------------------------------------------------------


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return F.dropout(x, p, training=True) if training and p > 0 else x  # p = 0 draws no random numbers


class RMSNorm(nn.Module):
    """transformers' ``Phi3RMSNorm``: normalised in float32, scaled by ``weight`` in the input dtype."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Phi3Attention(nn.Module):
    """Grouped-query attention: a fused unbiased ``qkv_proj`` (dense) or biased q/k/v projections (MoE)."""

    def __init__(self, cfg: Phi3Config):
        super().__init__()
        self.cfg = cfg
        h, q, kv = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.sizes = (q, kv, kv)
        if cfg.moe:
            self.q_proj = nn.Linear(h, q)
            self.k_proj = nn.Linear(h, kv)
            self.v_proj = nn.Linear(h, kv)
        else:
            self.qkv_proj = nn.Linear(h, q + 2 * kv, bias=False)
        self.o_proj = nn.Linear(q, h, bias=cfg.moe)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor | None
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        if self.cfg.moe:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
        q, k, v = (t.view(batch, seq, -1, self.cfg.head_dim).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        dropout = self.cfg.attention_dropout if self.training else 0.0
        out = attend(q, k, v, dropout=dropout, cu_seqlens=cu_seqlens, window=self.cfg.sliding_window)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class Phi3MLP(nn.Module):
    def __init__(self, cfg: Phi3Config):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class PhimoeMultiplier(torch.autograd.Function):
    """sparsemixer's routing-weight gradient (transformers' ``PhimoeMultiplier``, Heun's third-order
    estimate): forward ``multiplier * mask_for_one``, backward into the router scores only."""

    @staticmethod
    def forward(ctx, scores, multiplier, selected, masked_gates, mask_for_one):
        ctx.save_for_backward(multiplier, selected, masked_gates)
        return multiplier * mask_for_one

    @staticmethod
    def backward(ctx, grad_at_output):
        multiplier, selected, masked_gates = ctx.saved_tensors
        grad_at_output = grad_at_output * multiplier
        grad_at_scores = masked_gates * grad_at_output.mul(-1)
        grad_at_scores.scatter_add_(dim=-1, index=selected, src=grad_at_output)
        return grad_at_scores, None, None, None, None


def _sparsemixer_pick(
    scores: torch.Tensor, candidates: torch.Tensor, jitter_eps: float, training: bool, second: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One of sparsemixer's two picks among ``candidates`` (``scores`` with earlier picks at -inf):
    (multiplier (tokens, 1), expert (tokens, 1))."""
    with torch.no_grad():
        threshold, max_ind = candidates.max(dim=-1, keepdim=True)
        factor = scores.abs().clamp(min=threshold)
        far = ((threshold - scores) / factor) > (2 * jitter_eps)
    masked = candidates.masked_fill(far, float("-inf"))
    if training:  # Gumbel sampling
        noise = torch.empty_like(masked, memory_format=torch.legacy_contiguous_format).exponential_().log()
        selected = (masked - noise).max(dim=-1)[1].unsqueeze(-1)
    else:
        selected = max_ind
    gates = torch.softmax(masked, dim=-1)
    multiplier = gates.gather(dim=-1, index=selected)
    if not training:
        return multiplier, selected
    top, top_ind = gates.max(dim=-1, keepdim=True)
    coin = torch.rand_like(top)
    if second:
        coin = coin.uniform_()  # transformers draws twice here: the same random stream
    mask_for_one = torch.logical_or(selected == top_ind, coin > 0.75)
    mask_for_one = torch.add(0.3333, mask_for_one, alpha=0.6667).type_as(gates)
    return PhimoeMultiplier.apply(scores, multiplier, selected, gates, mask_for_one), selected


def sparsemixer(scores: torch.Tensor, jitter_eps: float, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``sparsemixer`` (top 2): (routing weights (tokens, 2), experts (tokens, 2))."""
    first, selected = _sparsemixer_pick(scores, scores, jitter_eps, training, second=False)
    rest = torch.scatter(scores, -1, selected, float("-inf"))
    second, selected_second = _sparsemixer_pick(scores, rest, jitter_eps, training, second=True)
    return torch.cat((first, second), dim=-1), torch.cat((selected, selected_second), dim=-1)


def load_balancing_loss(
    router_logits: list[torch.Tensor], num_experts: int, top_k: int = TOP_K
) -> torch.Tensor:
    """transformers' ``load_balancing_loss_func`` (Switch Transformer eqs. 4-6, no padding mask):
    ``num_experts * sum_e f_e * P_e``, f the share of top-k assignments, P the mean router probability,
    both pooled over the layers' tokens."""
    tokens = torch.zeros(num_experts, dtype=torch.float32, device=router_logits[0].device)
    probs = torch.zeros_like(tokens)
    rows = 0
    for logits in router_logits:
        weights = torch.softmax(logits, dim=-1)
        _, selected = torch.topk(weights, top_k, dim=-1)
        tokens = tokens + torch.bincount(selected.reshape(-1), minlength=num_experts).float()
        probs = probs + weights.float().sum(dim=0)
        rows += weights.shape[0]
    return torch.sum((tokens / rows) * (probs / rows)) * num_experts


class PhimoeExpert(nn.Module):
    """One SwiGLU expert: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, cfg: Phi3Config):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.w3 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class PhimoeSparseMoeBlock(nn.Module):
    """Router (``gate``) and experts, dropless: every token reaches both of its experts."""

    def __init__(self, cfg: Phi3Config):
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(PhimoeExpert(cfg) for _ in range(cfg.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(output like x, router logits (tokens, experts), chosen experts (tokens, 2))."""
        shape = x.shape
        jitter = self.cfg.input_jitter_noise
        if self.training and jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - jitter, 1.0 + jitter)
        flat = x.reshape(-1, shape[-1])
        logits = self.gate(flat)
        weights, selected = sparsemixer(logits, self.cfg.router_jitter_noise, self.training)
        out = torch.zeros_like(flat)
        experts = torch.arange(len(self.experts), device=selected.device)
        hits = (selected == experts[:, None, None]).transpose(1, 2)  # (experts, 2, tokens)
        for expert, hit in zip(self.experts, hits, strict=True):  # hit: (2, tokens), transformers' order
            pick, token = torch.where(hit)
            routed = expert(flat[token]) * weights[token, pick, None]  # every expert runs (DDP sees all)
            out.index_add_(0, token, routed.to(out.dtype))
        return out.view(shape), logits, selected


class Phi3DecoderLayer(nn.Module):
    def __init__(self, cfg: Phi3Config):
        super().__init__()
        self.cfg = cfg
        if cfg.moe:
            self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
            self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        else:
            self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Phi3Attention(cfg)
        if cfg.moe:
            self.block_sparse_moe = PhimoeSparseMoeBlock(cfg)
        else:
            self.mlp = Phi3MLP(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(hidden states, router logits, chosen experts); the last two None in the dense layout."""
        p = self.cfg.resid_pdrop
        x = x + _dropout(self.self_attn(self.input_layernorm(x), cos, sin, cu_seqlens), p, self.training)
        h = self.post_attention_layernorm(x)
        if not self.cfg.moe:
            return x + _dropout(self.mlp(h), p, self.training), None, None
        out, logits, selected = self.block_sparse_moe(h)
        return x + _dropout(out, p, self.training), logits, selected


class Phi3Model(nn.Module):
    def __init__(self, cfg: Phi3Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Phi3DecoderLayer(cfg) for _ in range(cfg.num_layers))
        if cfg.moe:
            self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        else:
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# -- the model ------------------------------------------------------------------------------------------


class Phi3ForCausalLM(nn.Module):
    """``forward(input_ids, position_ids=None, cu_seqlens=None) -> logits (batch, seq, vocab)``, either
    layout (``cfg.moe``). ``aux_loss``: the last forward's load-balancing loss (0 for dense / eval)."""

    def __init__(self, cfg: Phi3Config):
        super().__init__()
        if cfg.moe and cfg.rotary_dim != cfg.head_dim:
            raise ValueError("the phi-3.5-MoE layout rotates whole heads: partial_rotary_factor must be 1.0")
        self.cfg = cfg
        self.model = Phi3Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=cfg.moe)
        self.gradient_checkpointing = False
        self.apply(self._init)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if cfg.moe:  # vLLM 0.32's PhiMoE loads lm_head.bias but never adds it: kept at 0, served as trained
            self.lm_head.bias.requires_grad_(False)
        self.aux_loss = torch.zeros(())
        self._expert_counts: torch.Tensor | None = None  # (layers, experts) int64, not in state_dict

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
        x = _dropout(self.model.embed_tokens(input_ids), self.cfg.embd_pdrop, self.training)
        router_logits, chosen = [], []
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training:  # routing returned, so counted once
                x, logits, selected = torch.utils.checkpoint.checkpoint(
                    layer, x, cos, sin, cu_seqlens, use_reentrant=False
                )
            else:
                x, logits, selected = layer(x, cos, sin, cu_seqlens)
            if logits is not None:
                router_logits.append(logits)
                chosen.append(selected)
        self._record_routing(router_logits, chosen, x.device)
        return self.lm_head(self.model.norm(x))

    def _record_routing(self, router_logits: list, chosen: list, device: torch.device) -> None:
        if not router_logits:
            self.aux_loss = torch.zeros((), device=device)
            return
        if self.training:
            self.aux_loss = load_balancing_loss(router_logits, self.cfg.num_experts)
        else:
            self.aux_loss = torch.zeros((), device=device)
        with torch.no_grad():
            counts = torch.stack(
                [torch.bincount(s.reshape(-1), minlength=self.cfg.num_experts) for s in chosen]
            ).long()
            previous = self._expert_counts
            self._expert_counts = counts if previous is None else previous.to(counts.device) + counts

    def router_stats(self, reset: bool = True) -> dict:
        """Expert load over the forwards (training and eval) since the last reset: ``tokens_per_expert``
        (token assignments, per layer per expert), ``load_cv`` (population std / mean of the experts'
        load, averaged over layers) and ``dropped`` (the share of assignments dropped: 0, dropless)."""
        if not self.cfg.moe:
            return {"tokens_per_expert": [], "load_cv": 0.0, "dropped": 0.0}
        counts = self._expert_counts
        if counts is None:
            counts = torch.zeros(self.cfg.num_layers, self.cfg.num_experts, dtype=torch.long)
        load = counts.double()
        mean = load.mean(dim=1)
        cv = torch.where(mean > 0, load.std(dim=1, unbiased=False) / mean.clamp(min=1e-12), 0.0)
        if reset:
            self._expert_counts = None
        return {"tokens_per_expert": counts.tolist(), "load_cv": float(cv.mean()), "dropped": 0.0}

    def num_params(self) -> int:
        """Unique parameters (a tied LM head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def active_params(self) -> int:
        """Parameters one token passes through: all but the experts it is not routed to."""
        if not self.cfg.moe:
            return self.num_params()
        per_expert = sum(p.numel() for p in self.model.layers[0].block_sparse_moe.experts[0].parameters())
        return self.num_params() - self.cfg.num_layers * (self.cfg.num_experts - TOP_K) * per_expert

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x the active non-embedding parameters (the LM head's matmul counts,
        tied or not; the input embedding's lookup does not) plus 12 * layers * hidden * seq for attention
        (PaLM appendix B)."""
        n = self.active_params()
        if not self.cfg.tie_word_embeddings:
            n -= self.model.embed_tokens.weight.numel()
        return 6 * n + 12 * self.cfg.num_layers * self.cfg.hidden_size * seq_len

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the checkpoint's names, contiguous; a tied ``lm_head.weight`` left out (the
        checkpoint on disk has only ``model.embed_tokens.weight``)."""
        state = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
        if self.cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        return state

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Loads what ``hf_state_dict`` wrote (a tied ``lm_head.weight``, present or not, is the
        embedding); missing or unknown names are an error."""
        state = dict(state)
        if self.cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        missing, unexpected = self.load_state_dict(state, strict=False)
        if self.cfg.tie_word_embeddings:
            missing = [name for name in missing if name != "lm_head.weight"]
        if missing or unexpected:
            raise KeyError(
                f"checkpoint does not match {self.cfg.architecture}: missing {missing}, unexpected {unexpected}"
            )


def build(cfg: Phi3Config) -> Phi3ForCausalLM:
    """The model for ``cfg``, dense or mixture of experts."""
    return Phi3ForCausalLM(cfg)
