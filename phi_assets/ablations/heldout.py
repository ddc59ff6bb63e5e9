"""Held-out benchmark-aligned sets: the loss a model gives the reference solution of each benchmark problem.

Pass@1 of a model of a few million parameters is 0 whatever its data, so at demo size the ablations
read the benchmarks through the loss instead: for each HumanEval problem the prompt (signature and
docstring) followed by its canonical solution, for each MBPP test-split problem (task ids 11-510)
phi-1's prompt (the statement and its first test) followed by the reference program. Only the
solution's tokens (and the ``<|endoftext|>`` after it) are scored; the prompt is context. The set's
loss is the mean over all its scored tokens (token-weighted), so a long solution counts for its length.
A sequence longer than the model's context keeps the end of its prompt and the start of its solution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from phi_assets.evaluation.harness import Problem
from phi_assets.mixture.tokenizer import Loaded

SETS = ("humaneval", "mbpp")


@dataclass(frozen=True)
class ScoredSet:
    """Token sequences and which of their targets are scored: ``inputs[i]`` predicts ``targets[i]``."""

    name: str
    inputs: list[np.ndarray]  # (len,) int64 each
    targets: list[np.ndarray]
    scored: list[np.ndarray]  # (len,) bool: the solution's positions

    @property
    def num_scored(self) -> int:
        return int(sum(m.sum() for m in self.scored))


def encode(name: str, problems: Sequence[Problem], loaded: Loaded, seq_len: int) -> ScoredSet:
    """The problems as (prompt, reference) sequences of at most ``seq_len`` inputs, scored on the reference."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 to hold a prompt token and a solution token, got {seq_len}")
    inputs, targets, scored = [], [], []
    for p in problems:
        context = loaded.tokenizer.encode(p.prompt).ids
        solution = loaded.tokenizer.encode(p.reference).ids + [loaded.eot_id]
        if not context or not solution:
            raise ValueError(f"{name} {p.task_id}: an empty prompt or solution after tokenization")
        solution = solution[:seq_len]  # at least one context token stays
        context = context[-(seq_len + 1 - len(solution)) :]
        ids = np.array(context + solution, dtype=np.int64)
        mask = np.zeros(len(ids) - 1, dtype=bool)
        mask[len(context) - 1 :] = True  # the targets that are solution tokens
        inputs.append(ids[:-1])
        targets.append(ids[1:])
        scored.append(mask)
    return ScoredSet(name, inputs, targets, scored)


def solutions_text(problems: Sequence[Problem]) -> list[str]:
    """The documents of the contamination canary: each problem's prompt and reference, as one file would
    hold them (what a contaminated crawl contains)."""
    return [p.prompt + p.reference for p in problems]
