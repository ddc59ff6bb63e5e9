"""Supervised finetuning data: (prompt, completion) pairs with the loss on completions only.

phi-1's finetuning step trains on CodeExercises: a function signature and docstring (the prompt)
and its body (the completion). ``encode_pairs`` tokenizes each pair as ``prompt + completion +
<|endoftext|>``; ``SFTLoader`` yields ``Batch``es like the mixture loader's, one example per row,
padded (or cut) to ``seq_len + 1`` tokens, with labels ``-100`` (ignored by the loss) on the prompt
and the padding. Deterministic and resumable the same way: a per-epoch shuffle from the seed, and a
JSON state of (epoch, position).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from phi_assets.mixture.loader import Batch
from phi_assets.mixture.tokenizer import Loaded

IGNORE = -100


@dataclass(frozen=True)
class Example:
    ids: np.ndarray  # prompt + completion + separator
    num_prompt: int  # tokens of the prompt (no loss on them)


def encode_pairs(loaded: Loaded, pairs: Sequence[tuple[str, str]]) -> list[Example]:
    out = []
    for prompt, completion in pairs:
        p = loaded.tokenizer.encode(prompt).ids
        c = loaded.tokenizer.encode(completion).ids
        out.append(Example(np.array(p + c + [loaded.eot_id], dtype=np.int64), len(p)))
    return out


class SFTLoader:
    def __init__(
        self,
        examples: Sequence[Example],
        seq_len: int,
        batch_size: int,
        pad_id: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        """``batch_size`` rows per rank; every rank walks the same global order (``batch_size *
        world_size`` rows per step) and keeps its own slice of it."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size
        if not examples:
            raise ValueError("no finetuning examples")
        trainable = [e for e in examples if e.num_prompt < min(len(e.ids), seq_len + 1) - 1]
        if not trainable:
            raise ValueError(f"every example's prompt fills the {seq_len}-token window; raise seq_len")
        self.examples, self.seq_len, self.batch_size, self.pad_id, self.seed = (
            trainable,
            seq_len,
            batch_size,
            pad_id,
            seed,
        )
        self.reset()

    def reset(self) -> None:
        self.epoch, self.position = 0, 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def next_batch(self) -> Batch:
        width, mine = self.seq_len + 1, range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        rows = np.full((self.batch_size, width), self.pad_id, dtype=np.int64)
        labels = np.full((self.batch_size, width), IGNORE, dtype=np.int64)
        for g in range(self.batch_size * self.world_size):
            if self.position >= len(self.examples):
                self.epoch, self.position = self.epoch + 1, 0
            index = int(self._order(self.epoch)[self.position])
            self.position += 1
            if g not in mine:
                continue
            r, e = g - mine.start, self.examples[index]
            n = min(len(e.ids), width)
            rows[r, :n] = e.ids[:n]
            labels[r, e.num_prompt : n] = e.ids[e.num_prompt : n]
        return Batch(rows[:, :-1], labels[:, 1:], ["sft"] * self.batch_size)

    def epochs(self) -> dict[str, float]:
        return {"sft": self.epoch + self.position / len(self.examples)}

    def sequences_seen(self) -> int:
        """Rows drawn so far by all ranks together (every rank walks the same global order)."""
        return self.epoch * len(self.examples) + self.position

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "num_examples": len(self.examples)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_examples") != len(self.examples):
            raise ValueError("finetuning loader state was saved over other examples")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
