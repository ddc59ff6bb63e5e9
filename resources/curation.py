"""Curation resources: the sentence encoder and the benchmark decontaminator.

Both are loaded once per process (a step, a pod, or the whole ``make demo`` process) and shared
by every asset that asks for the same settings: loading the encoder and embedding the benchmark
tasks costs seconds, scanning a shard much less.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from phi_assets.common.decontaminate import Decontaminator
    from phi_assets.common.embeddings import Encoder


@functools.lru_cache(maxsize=4)
def _encoder(model: str, batch_size: int) -> Encoder:
    from phi_assets.common.embeddings import Encoder

    return Encoder(model or None, batch_size=batch_size)


@functools.lru_cache(maxsize=4)
def _decontaminator(mbpp_path: str, settings: tuple, model: str, batch_size: int) -> Decontaminator:
    from phi_assets.common.benchmarks import load_eval_tasks
    from phi_assets.common.decontaminate import DecontamConfig, Decontaminator

    config = DecontamConfig(**dict(settings))
    encoder = _encoder(model, batch_size) if config.use_embeddings else None
    return Decontaminator(load_eval_tasks(mbpp_path), config, encoder)


class EncoderResource(dg.ConfigurableResource):
    """Sentence embeddings for the classifier and decontamination (default all-MiniLM-L6-v2)."""

    model: str = ""  # a local sentence-transformers directory; "" = the bundled all-MiniLM-L6-v2
    batch_size: int = 64

    def get(self) -> Encoder:
        return _encoder(self.model, self.batch_size)


class DecontaminationResource(dg.ConfigurableResource):
    """Flags documents that contain HumanEval or MBPP tasks (``phi_assets.common.decontaminate``)."""

    # the MBPP jsonl (974 tasks); "": $PHI_MBPP_PATH, else the copy downloaded from the Hugging Face Hub
    # (phi_assets/common/mbpp_source.py)
    mbpp_path: str = ""
    use_embeddings: bool = True  # the code-only embedding-similarity pass (phi-1)
    ngram: int = 13

    def resolved_mbpp_path(self) -> str:
        """The MBPP file every consumer reads (``mbpp_source.resolve_mbpp``); a ``ValueError`` that says
        how to provide it when there is none."""
        from phi_assets.common.mbpp_source import resolve_mbpp

        return str(resolve_mbpp(self.mbpp_path))

    def get(self, encoder: EncoderResource) -> Decontaminator:
        settings = (("use_embeddings", self.use_embeddings), ("ngram", self.ngram))
        return _decontaminator(self.resolved_mbpp_path(), settings, encoder.model, encoder.batch_size)
