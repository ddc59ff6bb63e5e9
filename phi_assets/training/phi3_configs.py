"""The phi-3 family's shapes (phi-3, phi-3.5, phi-4 dense and phi-3.5-MoE): plain dataclasses, no torch.

``Phi3Config`` describes both block layouts transformers has for the family:

- dense (``num_experts == 0``): ``Phi3ForCausalLM``. Pre-norm llama-style blocks: RMSNorm, a fused
  ``qkv_proj`` with grouped-query attention, a fused ``gate_up_proj`` SwiGLU MLP, no biases, rotary on the
  first ``partial_rotary_factor`` of each head, optional sliding window, tied or untied embeddings;
- mixture of experts (``num_experts > 0``): ``PhimoeForCausalLM`` (phi-3.5-MoE). LayerNorm, separate
  biased q/k/v/o projections, ``num_experts`` SwiGLU experts (w1 gate, w3 up, w2 down) behind a linear
  router with sparsemixer top-2 routing, a biased LM head.

Rotary scaling (``rope_type``): ``default`` (plain RoPE at ``rope_theta``), ``yarn`` (NTK-by-parts
interpolation by ``rope_factor`` with YaRN's attention factor) or ``longrope`` (per-dimension
``short_factor`` / ``long_factor``, the long ones used past ``original_max_position_embeddings``), written
into ``config.json``'s ``rope_scaling`` as phi-3.5 ships it, so transformers and vLLM apply the same.

Named shapes, each from its model card / ``config.json`` on the Hugging Face Hub (published sizes in
``PUBLISHED_PARAMS``, which a test holds the shapes to within 1%):

- ``phi3_mini``: microsoft/Phi-3-mini-4k-instruct (Abdin et al. 2024, "Phi-3 Technical Report"): 3.8B,
  32 layers, 3072 wide, 32 heads, 4K context, 32064 vocab, sliding window 2047;
- ``phi3_medium``: microsoft/Phi-3-medium-4k-instruct: 14B, 40 layers, 5120 wide, 40 heads, 10 kv heads;
- ``phi3_5_mini``: microsoft/Phi-3.5-mini-instruct: phi-3-mini's shape with LongRoPE to 128K;
- ``phi3_5_moe``: microsoft/Phi-3.5-MoE-instruct: 16 experts x 3.8B-class blocks, top-2, 41.9B total,
  6.6B active, LongRoPE to 128K;
- ``phi4``: microsoft/phi-4 (Abdin et al. 2024, "Phi-4 Technical Report"): 14.7B, phi-3-medium's blocks,
  100352 vocab, 16K context after midtraining at rope_theta 250000, no sliding window;
- ``phi4_mini``: microsoft/Phi-4-mini-instruct: 3.8B, 24 heads with 8 kv heads, partial rotary 0.75,
  tied embeddings, 200064 vocab, LongRoPE to 128K.

``<name>_debug`` keeps each shape's features (GQA ratio, partial rotary, tying, rope type, experts) at a
width that trains on CPU in seconds and that vLLM's CPU kernels serve (heads of 32).

LongRoPE's factors are the output of an evolutionary search per model (Ding et al. 2024) that this
project does not run; ``longrope_factors`` gives the search's starting point (NTK-by-parts: the
low-frequency dimensions interpolated by the extension factor, the high-frequency ones kept), and a recipe
with searched factors passes them as ``short_factor`` / ``long_factor`` overrides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

ROPE_TYPES = ("default", "yarn", "longrope")


@dataclass(frozen=True)
class Phi3Config:
    vocab_size: int = 32064
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    max_position_embeddings: int = 4096
    original_max_position_embeddings: int = 4096  # the pretraining context (rope scaling's reference)
    partial_rotary_factor: float = 1.0
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0  # yarn: the extension factor (longrope: max / original positions)
    short_factor: tuple[float, ...] = ()  # longrope: one factor per rotary frequency
    long_factor: tuple[float, ...] = ()
    rms_norm_eps: float = 1e-5
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    eos_token_id: int = 0
    # mixture of experts (phi-3.5-MoE); 0 experts: the dense block
    num_experts: int = 0
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.01  # Switch Transformer load-balancing loss weight
    router_jitter_noise: float = 0.01  # sparsemixer's jitter epsilon
    input_jitter_noise: float = 0.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} must divide hidden_size {self.hidden_size} and be a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )
        if self.rotary_dim < 2 or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ValueError(
                f"partial_rotary_factor {self.partial_rotary_factor} gives rotary_dim {self.rotary_dim}: "
                f"it must be even and in [2, head_dim={self.head_dim}]"
            )
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type must be one of {ROPE_TYPES}, got {self.rope_type!r}")
        if self.rope_type == "longrope":
            for name in ("short_factor", "long_factor"):
                if len(getattr(self, name)) != self.rotary_dim // 2:
                    raise ValueError(
                        f"longrope {name} needs rotary_dim / 2 = {self.rotary_dim // 2} factors, got "
                        f"{len(getattr(self, name))}"
                    )
        if self.rope_type == "yarn" and not self.rope_factor >= 1:
            raise ValueError(f"yarn rope_factor must be >= 1, got {self.rope_factor}")
        if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok must be in [1, {self.num_experts}], got {self.num_experts_per_tok}"
            )
        if self.num_experts and self.num_experts_per_tok != 2:
            raise ValueError("phi-3.5-MoE's sparsemixer routes to exactly 2 experts (num_experts_per_tok=2)")
        for name in ("embd_pdrop", "resid_pdrop", "attention_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def moe(self) -> bool:
        return self.num_experts > 0

    @property
    def architecture(self) -> str:
        """config.json's architecture: microsoft/Phi-3.5-MoE-instruct's name (vLLM's; transformers picks its
        PhimoeForCausalLM from ``model_type``), or Phi3ForCausalLM."""
        return "PhiMoEForCausalLM" if self.moe else "Phi3ForCausalLM"

    @property
    def attention_factor(self) -> float:
        """The scale on cos/sin: YaRN's 0.1 ln(s) + 1, LongRoPE's sqrt(1 + ln(s) / ln(original))."""
        scale = self.max_position_embeddings / self.original_max_position_embeddings
        if self.rope_type == "yarn":
            return 0.1 * math.log(self.rope_factor) + 1.0 if self.rope_factor > 1 else 1.0
        if self.rope_type == "longrope" and scale > 1:
            return math.sqrt(1 + math.log(scale) / math.log(self.original_max_position_embeddings))
        return 1.0

    def yarn_factors(self) -> tuple[float, ...]:
        """YaRN's per-frequency divisors (transformers' ``_compute_yarn_parameters``, beta_fast 32, beta_slow
        1): 1 for frequencies that turn more than 32 times over the original context, ``rope_factor`` for
        those that turn less than once, a linear ramp of the inverse frequency between."""
        dim, base, original = self.rotary_dim, self.rope_theta, self.original_max_position_embeddings

        def correction(rotations: float) -> float:
            return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = max(math.floor(correction(32)), 0), min(math.ceil(correction(1)), dim - 1)
        high = high + 0.001 if low == high else high
        ramp = [min(max((i - low) / (high - low), 0.0), 1.0) for i in range(dim // 2)]
        return tuple(1.0 / ((1 - (1 - r)) / self.rope_factor + (1 - r)) for r in ramp)

    def rope_scaling(self) -> dict | None:
        """``config.json``'s ``rope_scaling`` in phi-3.5's LongRoPE format, which transformers' Phi3 and
        Phimoe and vLLM all read: longrope's own factors, or YaRN's divisors as both the short and the long
        factors with YaRN's attention factor (transformers' Phi3 config turns a ``yarn`` entry into an
        unloadable longrope one). ``attention_factor`` is transformers', the two mscales vLLM's."""
        if self.rope_type == "default":
            return None
        short, long = (
            (self.short_factor, self.long_factor)
            if self.rope_type == "longrope"
            else (self.yarn_factors(),) * 2
        )
        scale = self.attention_factor
        return {
            "type": "longrope",
            "rope_type": "longrope",
            "short_factor": list(short),
            "long_factor": list(long),
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "attention_factor": scale,
            "short_mscale": scale,
            "long_mscale": scale,
        }

    def hf_config(self) -> dict:
        """``config.json`` for transformers' Phi3ForCausalLM / PhimoeForCausalLM (and vLLM)."""
        config = {
            "architectures": [self.architecture],
            "model_type": "phimoe" if self.moe else "phi3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling(),
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "sliding_window": self.sliding_window,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.eos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        }
        if self.moe:
            config |= {
                "num_local_experts": self.num_experts,
                "num_experts_per_tok": self.num_experts_per_tok,
                "router_aux_loss_coef": self.router_aux_loss_coef,
                "router_jitter_noise": self.router_jitter_noise,
                "input_jitter_noise": self.input_jitter_noise,
                "attention_bias": True,
                "lm_head_bias": True,
            }
        else:
            config |= {
                "partial_rotary_factor": self.partial_rotary_factor,
                "resid_pdrop": self.resid_pdrop,
                "embd_pdrop": self.embd_pdrop,
            }
        return config

    def param_count(self, active: bool = False) -> int:
        """Parameters, from the shape alone (``active``: the experts one token passes through)."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h + (self.vocab_size if self.moe else 0)
        if self.moe:
            attn = 2 * (h * h + h) + 2 * (h * kv + kv)
            experts = self.num_experts_per_tok if active else self.num_experts
            mlp = experts * 3 * h * self.intermediate_size + h * self.num_experts
            norms = 4 * h
        else:
            attn = h * (h + 2 * kv) + h * h
            mlp = 3 * h * self.intermediate_size
            norms = 2 * h
        final_norm = 2 * h if self.moe else h
        return embed + head + self.num_layers * (attn + mlp + norms) + final_norm


def longrope_factors(rotary_dim: int, original: int, target: int, base: float = 10000.0) -> tuple[tuple, tuple]:
    """LongRoPE (short, long) factors extending ``original`` positions to ``target``: short all 1 (the
    original context is unchanged), long the NTK-by-parts start of LongRoPE's search: dimensions that turn
    less than once over ``original`` positions interpolate by target / original, those that turn more than
    32 times keep their frequency, a linear ramp between."""
    scale = target / original
    factors = []
    for i in range(rotary_dim // 2):
        wavelength = 2 * math.pi * base ** (2 * i / rotary_dim)
        rotations = original / wavelength
        ramp = min(max((32 - rotations) / (32 - 1), 0.0), 1.0)  # 1 below one turn, 0 above 32
        factors.append(round(1.0 + (scale - 1.0) * ramp, 6))
    return tuple(1.0 for _ in factors), tuple(factors)


def with_longrope(cfg: Phi3Config, original: int, target: int) -> Phi3Config:
    """``cfg`` extended from ``original`` to ``target`` positions with LongRoPE's starting factors."""
    short, long = longrope_factors(cfg.rotary_dim, original, target, cfg.rope_theta)
    return replace(
        cfg,
        rope_type="longrope",
        short_factor=short,
        long_factor=long,
        original_max_position_embeddings=original,
        max_position_embeddings=target,
    )


def phi3_mini() -> Phi3Config:
    """Phi-3-mini (3.8B): 32 layers, 3072 wide, 8192 MLP, 32 heads of 96, 4K context, sliding window 2047."""
    return Phi3Config(sliding_window=2047, eos_token_id=32000)


def phi3_medium() -> Phi3Config:
    """Phi-3-medium (14B): 40 layers, 5120 wide, 17920 MLP, 40 heads of 128 with 10 kv heads."""
    return replace(
        phi3_mini(), hidden_size=5120, intermediate_size=17920, num_layers=40, num_heads=40, num_kv_heads=10
    )


def phi3_5_mini() -> Phi3Config:
    """Phi-3.5-mini (3.8B): phi-3-mini's blocks with LongRoPE from 4K to 128K positions."""
    return replace(with_longrope(phi3_mini(), 4096, 131072), sliding_window=262144)


def phi3_5_moe() -> Phi3Config:
    """Phi-3.5-MoE (41.9B, 6.6B active): 32 layers, 4096 wide, 32 heads with 8 kv heads, 16 experts of
    6400, top-2 sparsemixer routing, LongRoPE from 4K to 128K."""
    base = Phi3Config(
        hidden_size=4096,
        intermediate_size=6400,
        num_kv_heads=8,
        num_experts=16,
        num_experts_per_tok=2,
        sliding_window=131072,
        eos_token_id=32000,
    )
    return with_longrope(base, 4096, 131072)


def phi4() -> Phi3Config:
    """phi-4 (14.7B): phi-3-medium's blocks, 100352 vocab, 16K context at rope_theta 250000 (midtrained
    from 4K), no sliding window."""
    return replace(
        phi3_medium(),
        vocab_size=100352,
        max_position_embeddings=16384,
        original_max_position_embeddings=16384,
        rope_theta=250000.0,
        sliding_window=None,
        eos_token_id=100265,
    )


def phi4_mini() -> Phi3Config:
    """Phi-4-mini (3.8B): 32 layers, 3072 wide, 24 heads of 128 with 8 kv heads, rotary on 3/4 of each
    head, tied embeddings, 200064 vocab, LongRoPE from 4K to 128K."""
    base = replace(
        phi3_mini(),
        vocab_size=200064,
        num_heads=24,
        num_kv_heads=8,
        partial_rotary_factor=0.75,
        tie_word_embeddings=True,
        sliding_window=262144,
        eos_token_id=199999,
    )
    return with_longrope(base, 4096, 131072)


def debug_of(cfg: Phi3Config, vocab_size: int = 1024) -> Phi3Config:
    """``cfg``'s features at CPU size: 2 layers, heads of 32 (vLLM's CPU attention kernels), the same
    query/kv head ratio, rotary fraction, tying, rope type and expert count, 256 positions."""
    ratio = cfg.num_heads // cfg.num_kv_heads  # queries per kv head: kept
    heads = ratio * 2 if ratio <= 2 else ratio
    kv = heads // ratio
    head_dim = 64 if cfg.partial_rotary_factor < 1 else 32  # 3/4 of 64 rotates: 48 dimensions
    small = replace(
        cfg,
        vocab_size=vocab_size,
        hidden_size=heads * head_dim,
        intermediate_size=2 * heads * head_dim,
        num_layers=2,
        num_heads=heads,
        num_kv_heads=kv,
        max_position_embeddings=256,
        original_max_position_embeddings=256,
        sliding_window=None if cfg.sliding_window is None else 64,
        num_experts=4 if cfg.moe else 0,
        rope_type="default",
        short_factor=(),
        long_factor=(),
        eos_token_id=0,
    )
    if cfg.rope_type == "longrope":
        return with_longrope(small, 128, 256)
    return small


MODELS = {
    "phi3_mini": phi3_mini,
    "phi3_medium": phi3_medium,
    "phi3_5_mini": phi3_5_mini,
    "phi3_5_moe": phi3_5_moe,
    "phi4": phi4,
    "phi4_mini": phi4_mini,
}


def _debug(name: str, vocab_size: int = 1024) -> Phi3Config:
    return debug_of(MODELS[name](), vocab_size)


DEBUG = {f"{name}_debug": partial(_debug, name) for name in MODELS}

# Parameters as the Hugging Face Hub lists each checkpoint (safetensors metadata); the shapes above must
# match within 1% (tests/test_phi3_model.py).
PUBLISHED_PARAMS = {
    "phi3_mini": 3_821_079_552,
    "phi3_medium": 13_960_238_080,
    "phi3_5_mini": 3_821_079_552,
    "phi3_5_moe": 41_873_153_344,
    "phi4": 14_659_507_200,
    "phi4_mini": 3_836_021_760,
}
PUBLISHED_ACTIVE_PARAMS = {"phi3_5_moe": 6.6e9}  # the model card's active parameters per token
