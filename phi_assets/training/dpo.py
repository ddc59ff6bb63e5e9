"""Direct preference optimisation (Rafailov et al., 2023) against a frozen reference model.

A preference is (prompt, chosen, rejected). ``DPOLoader`` yields batches whose first half holds the
chosen completions and second half the rejected ones, in the same order, with the loss masked to
the completions (as SFT). ``dpo_loss(reference, beta)`` returns the trainer's ``loss_fn``:
``-log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))``, averaged over pairs;
the reference runs without gradients and never changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from phi_assets.mixture.loader import Batch
from phi_assets.mixture.tokenizer import Loaded
from phi_assets.training.sft import IGNORE, Example, SFTLoader, encode_pairs


def encode_preferences(
    loaded: Loaded, triples: Sequence[tuple[str, str, str]]
) -> list[tuple[Example, Example]]:
    chosen = encode_pairs(loaded, [(p, c) for p, c, _ in triples])
    rejected = encode_pairs(loaded, [(p, r) for p, _, r in triples])
    return list(zip(chosen, rejected, strict=True))


def _trainable(e: Example, seq_len: int) -> bool:
    """The same rule as SFTLoader's: at least one completion token to predict inside the window (an
    empty answer has none)."""
    return e.num_prompt < min(len(e.ids), seq_len + 1) - 1


class DPOLoader:
    """``batch_size`` pairs per batch: rows [chosen..., rejected...]; deterministic and resumable."""

    def __init__(
        self,
        pairs: Sequence[tuple[Example, Example]],
        seq_len: int,
        batch_size: int,
        pad_id: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        # a pair is trained only when both answers have a token inside the window, so the two halves
        # stay aligned (row i of the chosen half and row i of the rejected half are one pair)
        kept = [(c, r) for c, r in pairs if _trainable(c, seq_len) and _trainable(r, seq_len)]
        if not kept:
            raise ValueError(f"no preference pair has both answers inside the {seq_len}-token window")
        self.dropped = len(pairs) - len(kept)
        self.chosen = SFTLoader([c for c, _ in kept], seq_len, batch_size, pad_id, seed, rank, world_size)
        self.rejected = SFTLoader([r for _, r in kept], seq_len, batch_size, pad_id, seed, rank, world_size)

    def next_batch(self) -> Batch:
        c, r = self.chosen.next_batch(), self.rejected.next_batch()  # same seed: the same pairs, in order
        return Batch(
            torch.cat([torch.from_numpy(c.input_ids), torch.from_numpy(r.input_ids)]).numpy(),
            torch.cat([torch.from_numpy(c.labels), torch.from_numpy(r.labels)]).numpy(),
            c.sources + r.sources,
        )

    def epochs(self) -> dict[str, float]:
        return self.chosen.epochs()

    def sequences_seen(self) -> int:
        """Pairs drawn so far by all ranks together."""
        return self.chosen.sequences_seen()

    def state_dict(self) -> dict:
        return self.chosen.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.chosen.load_state_dict(state)
        self.rejected.load_state_dict(state)


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(rows,): the summed log-probability of each row's unmasked labels."""
    mask = labels != IGNORE
    logp = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, labels.clamp(min=0)[..., None])[..., 0]
    return (logp * mask).sum(dim=1)


def dpo_loss(reference: torch.nn.Module, beta: float = 0.1):
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)

    def loss_fn(logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = sequence_logprobs(reference(input_ids), labels)
        pol = sequence_logprobs(logits, labels)
        half = len(pol) // 2
        margin = (pol[:half] - ref[:half]) - (pol[half:] - ref[half:])
        return -F.logsigmoid(beta * margin).mean()

    return loss_fn


def preference_accuracy(
    model: torch.nn.Module, reference: torch.nn.Module, loader: DPOLoader, pairs: int
) -> float:
    """Share of (up to ``pairs``) pairs whose implicit reward prefers the chosen answer: the policy's
    log-ratio to the reference is higher on the chosen completion than on the rejected one."""
    device = next(model.parameters()).device
    model.eval()
    wins, seen = 0, 0
    with torch.no_grad():
        while seen < pairs:
            b = loader.next_batch()
            ids, labels = torch.from_numpy(b.input_ids).to(device), torch.from_numpy(b.labels).to(device)
            ratio = sequence_logprobs(model(ids), labels) - sequence_logprobs(reference(ids), labels)
            half = len(ratio) // 2
            take = min(half, pairs - seen)
            wins += int((ratio[:half] > ratio[half:])[:take].sum())
            seen += take
    return wins / max(pairs, 1)
