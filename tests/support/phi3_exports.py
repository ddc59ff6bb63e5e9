"""Tiny phi-3-family checkpoints in Hugging Face format, for the tests that load them in transformers and vLLM.

``export_debug_model(cfg, out_dir, seed)`` writes ``model.safetensors`` (a seeded random init), ``config.json``
(exactly ``cfg.hf_config()``) and a byte-level BPE tokenizer (``<|endoftext|>`` = id 0 = the debug shapes' eos).
The weights come from our model (``phi_assets.training.model.build(cfg)``, ``export_state``): the names the
trainer's exports carry.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

from phi_assets.training.phi3_configs import Phi3Config

TOKENIZER_VOCAB = 512  # at most the debug shapes' 1024 ids: every id the tokenizer makes is in the model's


def build_state_dict(cfg: Phi3Config, seed: int) -> tuple[dict, str]:
    """(Hugging Face state dict, which builder made it) for ``cfg`` at a seeded random init."""
    import torch

    from phi_assets.training import model as phi

    torch.manual_seed(seed)
    return phi.export_state(phi.build(cfg)), "phi_assets.training.model.build"


def save_state_dict(state: dict, cfg: Phi3Config, out_dir: Path) -> None:
    """``state`` as ``out_dir/model.safetensors`` (float32, contiguous; the tied LM head left out, as
    transformers saves it)."""
    import torch
    from safetensors.torch import save_file

    tensors = {
        k: v.detach().to(torch.float32).contiguous().clone()
        for k, v in state.items()
        if not (cfg.tie_word_embeddings and k == "lm_head.weight")
    }
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


@cache
def _tokenizer():
    from phi_assets.mixture import tokenizer as tk

    texts = [Path(os.__file__).parent.joinpath(n).read_text() for n in ("textwrap.py", "string.py")]
    return tk.train_bpe(iter(texts), TOKENIZER_VOCAB)


def export_debug_model(cfg: Phi3Config, out_dir: Path, seed: int = 0) -> str:
    """A Hugging Face directory for ``cfg`` at ``out_dir``; returns which builder made the weights."""
    from phi_assets.mixture import tokenizer as tk

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state, builder = build_state_dict(cfg, seed)
    save_state_dict(state, cfg, out_dir)
    (out_dir / "config.json").write_text(json.dumps(cfg.hf_config()))
    tk.save(_tokenizer(), out_dir, model_max_length=cfg.max_position_embeddings)
    return builder
