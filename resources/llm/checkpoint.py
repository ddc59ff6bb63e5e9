"""Serving a trained checkpoint: the one home for how training (policy samples for preference pairs) and
evaluation (HumanEval / MBPP completions) run a checkpoint's Hugging Face export through the LLM engine.

- ``checkpoint_engine``: the profile's engine for an export: float32, a context no longer than the
  checkpoint's positions, and the profile's checkpoint backend (on the cluster, a vLLM server of its own).
- ``checkpoint_model``: the export's model reference: its local directory, or its URI for a server to copy.
- ``COMPLETION_STOPS``: where a sampled program completion ends (where the judged program's next part would
  start); training samples MBPP-style prompts with them and evaluation completes MBPP with the same.
"""

from __future__ import annotations

import json
from pathlib import Path

from resources.llm.engine import LLMEngine
from resources.llm.types import ModelRef

COMPLETION_STOPS = ("\nassert ", "\nprint(", "\nif __name__", '\n"""', "\n```", "\n# Test", "\n<|endoftext|>")


def checkpoint_engine(llm: LLMEngine, hf: Path, backend: str | None = None) -> LLMEngine:
    """The profile's engine for the export in ``hf``: float32, ``max_model_len`` capped at the checkpoint's
    ``max_position_embeddings``, ``checkpoint_backend`` when the profile sets one (``backend`` overrides both:
    an export not yet stored is served where it is, ``vllm``)."""
    positions = json.loads((Path(hf) / "config.json").read_text())["max_position_embeddings"]
    fields = {name: getattr(llm, name) for name in type(llm).model_fields}
    return type(llm)(**{**fields, "backend": backend or llm.checkpoint_backend or llm.backend,
                        "max_model_len": min(llm.max_model_len, positions), "dtype": "float32"})


def checkpoint_model(engine: LLMEngine, name: str, version: str, hf: Path, uri: str) -> ModelRef:
    """The checkpoint's model reference: its local export ``hf``, or, for a cluster vLLM server that copies it
    itself, the export's store ``uri``."""
    path = uri if engine.backend == "k8s-vllm" else str(hf)
    return engine.model_for(name, version, path)
