"""The Phi models' shapes and the training recipes' configurations: plain dataclasses, no torch.

Every asset module that names a recipe or a model shape imports this module, not the trainer, so loading
the code location (every ``dagster asset materialize`` and every UI start) does not import torch. The
trainer (``trainer.py``) and the model (``model.py``) re-export what is here.

Model shapes (``PhiConfig``) are functions deriving from each other: ``phi1()`` (1.3B), ``phi1_small()``
(350M), ``phi1_5()``, ``phi2()`` (2.7B) and ``debug_tiny()`` for CPU. Training recipes (``TrainConfig``)
likewise: ``phi1_pretrain()`` (the phi-1 paper: lr 1e-3, 750 warmup steps, weight decay 0.1, global batch
1024 x 2048), ``phi1_finetune()`` (lr 1e-4, 50 warmup steps, weight decay 0.01, global batch 256),
``phi1_5_pretrain()`` (lr 2e-4, no warmup, global batch 2048), ``debug()`` for CPU, and the DPO recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from phi_assets.training import phi3_configs

BACKENDS = ("torch", "deepspeed")  # torch: DDP under torchrun; deepspeed: ZeRO (distributed.py)


@dataclass(frozen=True)
class PhiConfig:
    vocab_size: int = 51200
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_layers: int = 24
    num_heads: int = 32
    max_position_embeddings: int = 2048
    rotary_dim: int = 32
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    eos_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if not 0 < self.rotary_dim <= self.head_dim or self.rotary_dim % 2:
            raise ValueError(
                f"rotary_dim must be even and in (0, head_dim={self.head_dim}], got {self.rotary_dim}"
            )
        for name in ("embd_pdrop", "resid_pdrop", "attention_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def hf_config(self) -> dict:
        """``config.json`` for transformers' PhiForCausalLM (and vLLM)."""
        return {
            "architectures": ["PhiForCausalLM"],
            "model_type": "phi",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "partial_rotary_factor": self.rotary_dim / self.head_dim,
            "rope_theta": self.rope_theta,
            "hidden_act": "gelu_new",
            "layer_norm_eps": self.layer_norm_eps,
            "resid_pdrop": self.resid_pdrop,
            "embd_pdrop": self.embd_pdrop,
            "attention_dropout": self.attention_dropout,
            "qk_layernorm": False,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": False,
            "bos_token_id": self.eos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        }


def phi1() -> PhiConfig:
    """phi-1 (1.3B): 24 layers, 2048 hidden, 8192 MLP, 32 heads of 64, rotary 32; dropout 0.1."""
    return PhiConfig()


def phi1_small() -> PhiConfig:
    """phi-1-small (350M): 20 layers, 1024 hidden, 4096 MLP, 16 heads."""
    return replace(phi1(), hidden_size=1024, intermediate_size=4096, num_layers=20, num_heads=16)


def phi1_5() -> PhiConfig:
    """phi-1.5: phi-1's architecture."""
    return phi1()


def phi2() -> PhiConfig:
    """phi-2 (2.7B): 32 layers, 2560 hidden, 10240 MLP, 32 heads of 80, rotary 32."""
    return replace(phi1(), hidden_size=2560, intermediate_size=10240, num_layers=32)


def debug_tiny(vocab_size: int = 1024) -> PhiConfig:
    """A few hundred thousand parameters: trains on CPU in seconds."""
    return replace(
        phi1(),
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_layers=2,
        num_heads=2,  # heads of 32: vLLM's CPU attention has no kernel for 16
        rotary_dim=16,
        max_position_embeddings=256,
    )


RECIPES = {
    "phi1": phi1,
    "phi1_small": phi1_small,
    "phi1_5": phi1_5,
    "phi2": phi2,
    "debug_tiny": debug_tiny,
    **phi3_configs.MODELS,  # phi-3, phi-3.5, phi-4 dense and phi-3.5-MoE (phi3_configs.py)
    **phi3_configs.DEBUG,
}
EXTENSIONS = ("rope_theta", "yarn", "longrope")  # midtraining's context extension (``midtrain``)


SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")  # fp16 with a dynamic loss scaler (torch.amp.GradScaler)
EXPORT_DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "debug_tiny"  # a recipe of model.RECIPES
    seq_len: int = 128
    micro_batch_size: int = 8  # sequences per forward pass, per rank
    global_batch_size: int = 8  # sequences per optimizer step, all ranks together
    max_steps: int = 100
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the decay ends at lr * min_lr_ratio
    warmup_steps: int = 10
    schedule: str = "cosine"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-7
    grad_clip: float = 1.0
    precision: str = "fp32"
    activation_checkpointing: bool = False
    dropout: bool = True  # the recipe's dropout (off: deterministic forward passes)
    seed: int = 0
    checkpoint_every: int = 50
    document_boundaries: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default)
    backend: str = "torch"  # torch (DDP under torchrun) or deepspeed (ZeRO zero_stage)
    zero_stage: int = 2
    ds_config: dict = field(default_factory=dict)  # DeepSpeed config keys over the derived ones
    export_dtype: str = "fp32"  # the Hugging Face export's weights: fp32 or bf16
    overrides: dict = field(default_factory=dict)  # model config fields, e.g. {"rope_theta": 250000}

    def __post_init__(self) -> None:
        if self.model not in RECIPES:
            raise ValueError(f"model must be one of {sorted(RECIPES)}, got {self.model!r}")
        if self.backend not in BACKENDS or self.zero_stage not in (0, 1, 2):
            raise ValueError(
                f"backend in {BACKENDS} and zero_stage in 0-2, got {self.backend!r}, {self.zero_stage}"
            )
        if self.schedule not in SCHEDULES or self.precision not in PRECISIONS:
            raise ValueError(
                f"schedule in {SCHEDULES} and precision in {PRECISIONS}, got "
                f"{self.schedule!r}, {self.precision!r}"
            )
        for name in ("seq_len", "micro_batch_size", "global_batch_size", "max_steps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} must be a multiple of micro_batch_size "
                f"{self.micro_batch_size}"
            )
        if self.export_dtype not in EXPORT_DTYPES:
            raise ValueError(f"export_dtype must be one of {EXPORT_DTYPES}, got {self.export_dtype!r}")
        if not self.lr > 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got {self.lr}, "
                f"{self.warmup_steps}, {self.min_lr_ratio}"
            )

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step, all ranks together (whatever the world size)."""
        return self.seq_len * self.global_batch_size

    def grad_accum(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each of ``world_size`` ranks."""
        per_pass = self.micro_batch_size * world_size
        if self.global_batch_size % per_pass:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size} x world_size {world_size}: choose a micro-batch or a world size "
                "that divides it"
            )
        return self.global_batch_size // per_pass

    def model_config(self, vocab_size: int) -> PhiConfig | phi3_configs.Phi3Config:
        """The model's shape: the named one at this vocabulary, positions for ``seq_len`` at least, the
        recipe's overrides (``rope_scaling``: the context extension ``midtrain`` asked for)."""
        cfg = RECIPES[self.model]()
        overrides = dict(self.overrides)
        scaling = overrides.pop("rope_scaling", None)
        cfg = replace(
            cfg,
            **{
                "vocab_size": vocab_size,
                "max_position_embeddings": max(cfg.max_position_embeddings, self.seq_len),
                **overrides,
            },
        )
        if scaling is not None:
            cfg = extended(cfg, scaling["type"], int(scaling["original"]), int(scaling["target"]))
        if not self.dropout:
            cfg = replace(cfg, embd_pdrop=0.0, resid_pdrop=0.0, attention_dropout=0.0)
        return cfg


def extended(cfg, method: str, original: int, target: int):
    """``cfg`` with rotary scaling from ``original`` to ``target`` positions: ``yarn`` (factor target /
    original) or ``longrope`` (``phi3_configs.with_longrope``'s factors); the phi-3 family only."""
    if not isinstance(cfg, phi3_configs.Phi3Config):
        raise ValueError(
            f"{method} context extension needs a phi-3 family model; phi-1/phi-2 shapes extend by rope_theta"
        )
    if method == "longrope":
        return phi3_configs.with_longrope(cfg, original, target)
    if method == "yarn":
        return replace(
            cfg,
            rope_type="yarn",
            rope_factor=target / original,
            original_max_position_embeddings=original,
            max_position_embeddings=target,
        )
    raise ValueError(f"rope scaling type must be yarn or longrope, got {method!r}")


def debug() -> TrainConfig:
    return TrainConfig()


def phi1_pretrain() -> TrainConfig:
    """phi-1 (Gunasekar et al. 2023, "Textbooks Are All You Need", section 2.3): AdamW, lr 1e-3 after
    750 warmup steps, weight decay 0.1, a global batch of 1024 sequences of 2048 tokens, 36k steps
    (the paper's checkpoint was taken at 24k steps, about 8 passes over its 7B tokens)."""
    return TrainConfig(
        model="phi1",
        seq_len=2048,
        micro_batch_size=8,
        global_batch_size=1024,
        max_steps=36_000,
        lr=1e-3,
        warmup_steps=750,
        weight_decay=0.1,
        precision="bf16",
        checkpoint_every=1000,
    )


def phi1_finetune() -> TrainConfig:
    """phi-1 on CodeExercises: lr 1e-4, 50 warmup steps, weight decay 0.01, global batch 256, 6k steps."""
    return replace(
        phi1_pretrain(), global_batch_size=256, max_steps=6000, lr=1e-4, warmup_steps=50, weight_decay=0.01
    )


def phi1_5_pretrain() -> TrainConfig:
    """phi-1.5: lr 2e-4, no warmup, weight decay 0.1, global batch 2048 x 2048."""
    return replace(
        phi1_pretrain(), model="phi1_5", global_batch_size=2048, lr=2e-4, warmup_steps=0, max_steps=72_000
    )


def debug_finetune() -> TrainConfig:
    """Finetuning on CPU: phi-1's finetuning shape (lower lr, short warmup, light decay) at debug scale."""
    return replace(debug(), lr=5e-4, warmup_steps=5, weight_decay=0.01)


def debug_dpo() -> TrainConfig:
    """DPO on CPU: a small constant lr after a short warmup, no dropout (policy and reference see the
    same forward pass)."""
    return replace(debug(), lr=1e-4, warmup_steps=2, weight_decay=0.0, schedule="constant", dropout=False)


def phi_dpo() -> TrainConfig:
    """DPO at scale: phi-1's finetuning shape with a much lower lr and no dropout."""
    return replace(phi1_finetune(), lr=5e-7, warmup_steps=10, schedule="linear", dropout=False, max_steps=1000)


# --- the phi-3 family's recipes ------------------------------------------------------------------------


def phi3_debug() -> TrainConfig:
    """The debug recipe on phi-3-mini's blocks (RMSNorm, GQA-capable fused qkv, SwiGLU) at CPU size."""
    return replace(debug(), model="phi3_mini_debug")


def phi3_5_moe_debug() -> TrainConfig:
    """The debug recipe on phi-3.5-MoE's blocks (4 experts, top-2 sparsemixer routing) at CPU size."""
    return replace(debug(), model="phi3_5_moe_debug")


def phi4_debug() -> TrainConfig:
    """The debug recipe on phi-4's blocks (40:10 grouped-query attention, no sliding window) at CPU size."""
    return replace(debug(), model="phi4_debug")


# A LongRoPE shape pretrained at its original 4K context, before midtraining extends it.
_AT_4K = {"rope_type": "default", "short_factor": (), "long_factor": (), "max_position_embeddings": 4096}


def phi4_pretrain() -> TrainConfig:
    """phi-4 (Abdin et al. 2024, "Phi-4 Technical Report", section 3): about 10T tokens at 4K context,
    linear warmup and decay to a peak lr of 3e-4, constant weight decay 0.1, global batch 5760 sequences;
    rope_theta 10K here and 250K after midtraining (``midtrain``: 4K -> 16K, lr / 10, 250B tokens)."""
    return TrainConfig(
        model="phi4",
        seq_len=4096,
        micro_batch_size=4,
        global_batch_size=5760,
        max_steps=423_855,  # 10e12 / (5760 x 4096)
        lr=3e-4,
        min_lr_ratio=0.0,
        warmup_steps=2000,  # the report gives a linear warmup, not its length
        schedule="linear",
        weight_decay=0.1,
        precision="bf16",
        dropout=False,
        checkpoint_every=1000,
        overrides={
            "rope_theta": 10_000.0,
            "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096,
        },
    )


def phi3_mini_pretrain() -> TrainConfig:
    """phi-3-mini (Abdin et al. 2024, "Phi-3 Technical Report"): 3.3T tokens at 4K context in bf16. The
    report does not give the optimizer's settings; these are phi-4's (``phi4_pretrain``) at phi-3-mini's
    shape, 1024 sequences of 4096 per step."""
    return replace(
        phi4_pretrain(),
        model="phi3_mini",
        global_batch_size=1024,
        max_steps=786_796,  # 3.3e12 / (1024 x 4096)
        overrides={},
    )


def phi3_medium_pretrain() -> TrainConfig:
    """phi-3-medium (Phi-3 report: 4.8T tokens, like phi-3-small) at phi-3-mini's recipe."""
    return replace(phi3_mini_pretrain(), model="phi3_medium", micro_batch_size=2, max_steps=1_144_410)


def phi3_5_mini_pretrain() -> TrainConfig:
    """phi-3.5-mini (model card: 3.4T tokens) at 4K with plain RoPE, extended by LongRoPE in midtraining."""
    return replace(
        phi3_mini_pretrain(),
        model="phi3_5_mini",
        max_steps=810_638,  # 3.4e12 / (1024 x 4096)
        overrides=_AT_4K,
    )


def phi4_mini_pretrain() -> TrainConfig:
    """phi-4-mini (model card: 5T tokens) at 4K with plain RoPE, extended by LongRoPE in midtraining."""
    return replace(
        phi3_mini_pretrain(),
        model="phi4_mini",
        max_steps=1_192_093,  # 5e12 / (1024 x 4096)
        overrides=_AT_4K,
    )


def phi3_5_moe_pretrain() -> TrainConfig:
    """phi-3.5-MoE (model card: 4.9T tokens on 512 H100s at 4K context, LongRoPE to 128K after); the
    optimizer settings are not published: phi-3-mini's recipe, the router's load-balancing loss on."""
    return replace(
        phi3_mini_pretrain(),
        model="phi3_5_moe",
        max_steps=1_168_336,  # 4.9e12 / (1024 x 4096)
        micro_batch_size=2,
        overrides=_AT_4K,
    )


TRAIN_RECIPES = {
    "debug": debug,
    "debug_finetune": debug_finetune,
    "debug_dpo": debug_dpo,
    "phi_dpo": phi_dpo,
    "phi1_pretrain": phi1_pretrain,
    "phi1_finetune": phi1_finetune,
    "phi1_5_pretrain": phi1_5_pretrain,
    "phi3_debug": phi3_debug,
    "phi3_5_moe_debug": phi3_5_moe_debug,
    "phi4_debug": phi4_debug,
    "phi3_mini_pretrain": phi3_mini_pretrain,
    "phi3_medium_pretrain": phi3_medium_pretrain,
    "phi3_5_mini_pretrain": phi3_5_mini_pretrain,
    "phi4_mini_pretrain": phi4_mini_pretrain,
    "phi3_5_moe_pretrain": phi3_5_moe_pretrain,
    "phi4_pretrain": phi4_pretrain,
}

# The model families a preset or PHI_MODEL_FAMILY picks (Sizes.model_family): each family's pretraining
# recipe in place of the phi-1 family's recipe of the same scale (the preset's pretrain_recipe). Finetuning
# and DPO keep their recipes: a child trains its parent's model.
FAMILIES = {
    "phi1": {},
    "phi3": {"debug": "phi3_debug", "phi1_pretrain": "phi3_mini_pretrain"},
    "phi3_moe": {"debug": "phi3_5_moe_debug", "phi1_pretrain": "phi3_5_moe_pretrain"},
    "phi4": {"debug": "phi4_debug", "phi1_pretrain": "phi4_pretrain"},
}


def family_recipe(family: str, recipe: str) -> str:
    """The pretraining recipe of ``family`` at the scale of the phi-1 family's ``recipe``."""
    if family not in FAMILIES:
        raise ValueError(f"model family must be one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family].get(recipe, recipe)


def default_extension(model: str) -> str:
    """How a model's family extends its context by default: LongRoPE for phi-3 / phi-3.5 / phi-4-mini (as
    they shipped), a higher RoPE base for phi-1 / phi-2 and phi-4 (as phi-4 midtrained 4K -> 16K)."""
    cfg = RECIPES[model]()
    if isinstance(cfg, phi3_configs.Phi3Config) and model not in ("phi4", "phi4_debug"):  # phi-4-mini: LongRoPE
        return "longrope"
    return "rope_theta"


def midtrain(
    base: TrainConfig,
    rope_theta: float = 250_000.0,
    seq_len_factor: int = 2,
    lr_factor: float = 0.1,
    extension: str = "",
) -> TrainConfig:
    """Context extension, longer sequences at a lower peak learning rate. ``extension`` (empty: the
    model's ``default_extension``): ``rope_theta`` (phi-4: a higher RoPE base), ``yarn`` or ``longrope``
    (rotary scaling from the parent's sequence length, which the model was trained on, to the new length
    or the model's positions, whichever is more; recorded in the export's config.json ``rope_scaling``)."""
    extension = extension or default_extension(base.model)
    if extension not in EXTENSIONS:
        raise ValueError(f"extension must be one of {EXTENSIONS}, got {extension!r}")
    seq_len = base.seq_len * seq_len_factor
    if extension == "rope_theta":
        change = {"rope_theta": rope_theta}
    else:
        positions = max(RECIPES[base.model]().max_position_embeddings, seq_len)
        change = {"rope_scaling": {"type": extension, "original": base.seq_len, "target": positions}}
    return replace(base, seq_len=seq_len, lr=base.lr * lr_factor, overrides={**base.overrides, **change})
