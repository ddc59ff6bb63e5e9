"""The tokenizer: a byte-level BPE trained with Hugging Face ``tokenizers``, or an existing one.

phi-1 used a byte-level BPE (CodeGen's) with ``<|endoftext|>`` between documents; ``train_bpe``
builds the same kind from an iterator of texts (streamed: the trainer counts words as it goes),
and ``save`` writes a standard Hugging Face tokenizer directory (``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``) that ``transformers.AutoTokenizer`` and
vLLM load. ``copy_pretrained`` takes an existing Hugging Face tokenizer directory instead.
Byte-level BPE is lossless: ``decode(encode(text)) == text`` for every string.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOT = "<|endoftext|>"
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Loaded:
    """A tokenizer ready to encode documents, with the separator id between them."""

    tokenizer: Tokenizer
    eot_id: int
    vocab_size: int

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65,536), else uint32: half the disk and page cache."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def train_bpe(
    texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2, length: int | None = None
) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenization, all 256 bytes in the alphabet, so no
    text is ever unknown) with ``<|endoftext|>`` as id 0."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + {EOT}), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def save(tok: Tokenizer, out: Path, *, model_max_length: int = 2048) -> None:
    """A Hugging Face tokenizer directory: ``<|endoftext|>`` is bos, eos, unk and pad (as phi-1's)."""
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,  # decode returns exactly the encoded text
        "add_bos_token": False,
        "add_eos_token": False,
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=1))


def copy_pretrained(src: Path, out: Path) -> None:
    """Copy an existing Hugging Face tokenizer directory (it must hold ``tokenizer.json``)."""
    if not (src / "tokenizer.json").is_file():
        raise ValueError(f"pretrained tokenizer {src}: no tokenizer.json there (a fast tokenizer is needed)")
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.is_file() and (path.name in HF_FILES or path.name in ("vocab.json", "merges.txt")):
            shutil.copyfile(path, out / path.name)


def _separator(tok: Tokenizer, directory: Path) -> int:
    """``<|endoftext|>`` when the vocabulary has it, else the configured eos token."""
    eot = tok.token_to_id(EOT)
    if eot is not None:
        return eot
    config = directory / "tokenizer_config.json"
    eos = json.loads(config.read_text()).get("eos_token") if config.is_file() else None
    eos = eos.get("content") if isinstance(eos, dict) else eos
    eos_id = tok.token_to_id(eos) if eos else None
    if eos_id is None:
        raise ValueError(f"tokenizer {directory}: neither {EOT} nor an eos token to separate documents")
    return eos_id


def load(directory: Path) -> Loaded:
    """The tokenizer of a directory written by ``save`` or ``copy_pretrained``."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"tokenizer directory {directory}: tokenizer.json is missing")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    tok.encode_special_tokens = True  # a literal "<|endoftext|>" in a document is text, not a separator
    return Loaded(tok, _separator(tok, Path(directory)), tok.get_vocab_size(with_added_tokens=True))


def encode_documents(loaded: Loaded, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lengths): the texts' token ids, each document followed by the separator (documents
    joined with ``<|endoftext|>``), flat; ``lengths`` counts each document's ids with its separator.
    ``encode_batch_fast`` runs in the tokenizers' Rust thread pool."""
    encoded = [e.ids for e in loaded.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=loaded.dtype, count=int(lengths.sum()))
    ids = np.insert(flat, np.cumsum(lengths), loaded.eot_id)  # one separator after each document
    return ids, lengths + 1
