"""The training data loader: weighted sampling of sources, packing into fixed-length sequences.

Each sequence of a batch comes from one source, drawn with the mixture weights; it is filled
with ``seq_len + 1`` consecutive tokens of that source's documents (phi-1 packs documents joined by
``<|endoftext|>`` without masking; ``document_boundaries=True`` adds per-document position ids and
flash-attn ``cu_seqlens`` for masked attention). A source is read document by document in an
order shuffled per epoch (shards shuffled, then documents within a shard).

Memory is proportional to the shards being read, not to the corpus: opening a source reads each
shard's split index (``tokens.SplitIndex``, memory-mapped ``split.bin``) with one binary search,
which gives the shard's documents and tokens in the split, and keeps per shard only those counts; the
list of a shard's documents in the split, and its shuffled order, are built when the loader reaches
that shard and dropped when it moves to the next; the pages of a shard it has finished are unmapped
after the batch (``TokenShard.release``), so a long run's resident memory stays at the shards being read.

Deterministic and resumable: the batches are a function of (seed, data, weights, shapes), and
``state_dict()`` (JSON: the RNG state plus each source's epoch, shard, document and offset) put in
a checkpoint and passed to ``load_state_dict`` continues with exactly the batches an uninterrupted
loader would have produced. With ``world_size > 1`` every rank plans the whole global batch (from
document offsets only) and reads just its rows, so all ranks stay in step.

A source can be a **view** of its shards: ``filters`` gives it a function of the shard index that returns a
boolean mask over that shard's documents (the data ablations read "documents the classifier scored >= 3" out
of the raw shards this way, without writing the tokens again). The split is decided before the mask, by the
document's id as always, so a document is in the same split in every view; a view's counts are computed
shard by shard when it is opened (one mask in memory at a time) and its documents when the loader reaches
the shard.

The ``val`` split holds a stable ``val_fraction`` of each source's documents: those whose split score
(``tokens.split_scores``, a hash of the document id stored in the shard) is below it, so the same
documents whatever the sharding; when none is but the source has two documents or more, the one of
lowest score. The ``train`` split is the rest. Shards written before ``split.bin`` (format 1) still
load: their scores are computed when the source is opened, hashing every id (the loader's time and
memory before the index: a float and an index per document, kept on the shard).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from phi_assets.mixture.tokens import TokenShard, split_scores

SPLITS = ("train", "val", "all")
STATE_VERSION = 1


@dataclass(frozen=True)
class LoaderConfig:
    seq_len: int
    batch_size: int  # sequences per global batch (all ranks together)
    seed: int = 0
    split: str = "train"
    val_fraction: float = 0.01
    document_boundaries: bool = False
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {self.seq_len}, {self.batch_size}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.rank < self.world_size or self.batch_size % self.world_size:
            raise ValueError(
                f"rank {self.rank} of world_size {self.world_size} with batch_size {self.batch_size}: "
                "need 0 <= rank < world_size and batch_size divisible by world_size"
            )


@dataclass
class Batch:
    input_ids: np.ndarray  # (rows, seq_len) int64
    labels: np.ndarray  # (rows, seq_len) int64: input_ids shifted left by one
    sources: list[str]  # the source of each row
    position_ids: np.ndarray | None = None  # (rows, seq_len): 0 at each document start
    cu_seqlens: np.ndarray | None = None  # (segments + 1,) int32 over the flattened rows (flash-attn varlen)


def _stable_int(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def split_documents(ids_per_shard: list[list[str]], val_fraction: float) -> list[np.ndarray]:
    """Per shard, a boolean mask of the validation documents (stable under re-sharding)."""
    return _split_masks([split_scores(ids) for ids in ids_per_shard], val_fraction)


def _split_masks(scores: list[np.ndarray], val_fraction: float) -> list[np.ndarray]:
    masks = [s < val_fraction for s in scores]
    total = sum(len(s) for s in scores)
    if val_fraction > 0 and total >= 2 and not any(m.any() for m in masks):
        shard = min((k for k in range(len(scores)) if len(scores[k])), key=lambda k: scores[k].min())
        masks[shard][int(scores[shard].argmin())] = True
    return masks


def _validation(shards: list[TokenShard], val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Per shard, how many of its documents are in the validation split (the first of its split index)
    and their tokens: one binary search each. When none scores below ``val_fraction`` but the shards
    hold two documents or more, the document of lowest score is (the first shard's on a tie)."""
    count, tokens = np.zeros(len(shards), dtype=np.int64), np.zeros(len(shards), dtype=np.int64)
    lowest, first = np.full(len(shards), np.inf), np.zeros(len(shards), dtype=np.int64)
    for k, shard in enumerate(shards):
        if shard.num_docs:
            index = shard.split_index()
            count[k] = index.below(val_fraction)
            tokens[k] = index.tokens_of_first(int(count[k]))
            lowest[k], first[k] = index.score[0], index.tokens[0]
    if val_fraction > 0 and sum(s.num_docs for s in shards) >= 2 and not count.any():
        k = int(np.argmin(lowest))
        count[k], tokens[k] = 1, first[k]
    return count, tokens


class Source:
    """One source's documents in one split, read in a per-epoch shuffled order."""

    def __init__(self, name: str, shards: list[TokenShard], split: str, val_fraction: float, seed: int,
                 keep: Callable[[int], np.ndarray] | None = None):
        self.name, self.shards, self.split, self.seed, self.keep = name, shards, split, seed, keep
        docs = np.array([s.num_docs for s in shards], dtype=np.int64)
        tokens = np.array([s.stats.num_tokens for s in shards], dtype=np.int64)
        self._val = np.zeros(len(shards), dtype=np.int64)  # shard k's val documents: split_index().doc[:n]
        if split != "all":
            self._val, val_tokens = _validation(shards, val_fraction)
            docs, tokens = (
                (self._val, val_tokens) if split == "val" else (docs - self._val, tokens - val_tokens)
            )
        if keep is not None:  # a view: count what the mask leaves, a shard at a time
            for k, shard in enumerate(shards):
                chosen = self.documents(k)
                docs[k] = len(chosen)
                tokens[k] = int((shard.offsets[chosen + 1] - shard.offsets[chosen]).sum()) if len(chosen) else 0
                shard.release()
        self.counts = docs  # the split's documents in each shard
        self.num_tokens = int(tokens.sum())
        self._key = _stable_int(name) % 2**32  # orders depend on the source's name, not its position
        self._order_key: tuple | None = None
        self._shards_epoch: int | None = None
        self._done: list[int] = []  # shards finished since the last release_done

    def documents(self, shard: int) -> np.ndarray:
        """The split's documents of ``shard``, ascending; built when asked (the loader asks for the
        shard it reaches), from the shard's split index."""
        num_docs = self.shards[shard].num_docs
        if self.split == "all":
            chosen = np.arange(num_docs)
        else:
            val = np.sort(np.array(self.shards[shard].split_index().doc[: self._val[shard]]))
            if self.split == "val":
                chosen = val
            else:
                train = np.ones(num_docs, dtype=bool)
                train[val] = False
                chosen = np.flatnonzero(train)
        if self.keep is None:
            return chosen
        mask = np.asarray(self.keep(shard), dtype=bool)
        if mask.shape != (num_docs,):
            raise ValueError(f"source {self.name}: the filter of shard {shard} ({self.shards[shard].path}) "
                             f"has {mask.shape} entries, the shard {num_docs} documents")
        return chosen[mask[chosen]]

    def _shard_order(self, epoch: int) -> np.ndarray:
        if self._shards_epoch != epoch:
            rng = np.random.default_rng([self.seed, self._key, epoch])
            self._shards, self._shards_epoch = rng.permutation(len(self.shards)), epoch
        return self._shards

    def _doc_order(self, epoch: int, shard: int) -> np.ndarray:
        key = (epoch, shard)
        if self._order_key != key:  # one shard's documents in memory at a time
            rng = np.random.default_rng([self.seed, self._key, epoch, shard + 1])
            self._order, self._order_key = rng.permutation(self.documents(shard)), key
        return self._order

    def take(self, cursor: dict, n: int) -> list[tuple[int, int, int]]:
        """Spans (shard, start, end) of the next ``n`` tokens; advances ``cursor``."""
        spans: list[tuple[int, int, int]] = []
        while n > 0:
            shard = int(self._shard_order(cursor["epoch"])[cursor["shard"]])
            if cursor["doc"] >= self.counts[shard]:  # next shard, or next epoch
                self._done.append(shard)
                cursor.update(shard=cursor["shard"] + 1, doc=0, offset=0)
                if cursor["shard"] >= len(self.shards):
                    cursor.update(epoch=cursor["epoch"] + 1, shard=0)
                continue
            order = self._doc_order(cursor["epoch"], shard)
            offsets = self.shards[shard].offsets
            doc = int(order[cursor["doc"]])
            start = int(offsets[doc]) + cursor["offset"]
            end = min(int(offsets[doc + 1]), start + n)
            spans.append((shard, start, end))
            n -= end - start
            if end == offsets[doc + 1]:
                cursor.update(doc=cursor["doc"] + 1, offset=0)
            else:
                cursor["offset"] += end - start
        return spans

    def read(self, spans: list[tuple[int, int, int]]) -> np.ndarray:
        return np.concatenate([self.shards[k].tokens[a:b] for k, a, b in spans]).astype(np.int64)

    def release_done(self) -> None:
        """Unmap the pages of the shards ``take`` has moved past (once the batch that ends them is read)."""
        for shard in self._done:
            self.shards[shard].release()
        self._done.clear()


class MixtureLoader:
    """Batches of packed sequences drawn from ``sources`` with ``weights`` (see the module doc)."""

    def __init__(
        self,
        sources: Mapping[str, list[TokenShard]],
        weights: Mapping[str, float],
        config: LoaderConfig,
        filters: Mapping[str, Callable[[int], np.ndarray]] | None = None,
    ):
        self.config = config
        active = {s: w for s, w in weights.items() if w > 0}
        missing = sorted(set(active) - set(sources))
        if missing or not active or abs(sum(weights.values()) - 1) > 1e-6:
            raise ValueError(f"weights {dict(weights)} must sum to 1 over known sources (unknown: {missing})")
        self.names = sorted(active)
        self.p = np.array([active[s] for s in self.names]) / sum(active.values())
        filters = filters or {}
        self.sources = {
            s: Source(s, list(sources[s]), config.split, config.val_fraction, config.seed, filters.get(s))
            for s in self.names
        }
        empty = [s for s, src in self.sources.items() if src.num_tokens == 0]
        if empty:
            raise ValueError(f"sources {empty} have weight but no tokens in the {config.split!r} split")
        self._fingerprint = _stable_int(
            STATE_VERSION,
            self.names,
            self.p.tolist(),
            [self.sources[s].num_tokens for s in self.names],
            config.seq_len,
            config.batch_size,
            config.seed,
            config.split,
            config.val_fraction,
        )
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.rng = np.random.default_rng(self.config.seed)
        self.cursors = {s: {"epoch": 0, "shard": 0, "doc": 0, "offset": 0} for s in self.names}

    def num_tokens(self) -> dict[str, int]:
        return {s: src.num_tokens for s, src in self.sources.items()}

    def epochs(self) -> dict[str, float]:
        """Passes over each source so far (fractional)."""
        out = {}
        for s, c in self.cursors.items():
            src = self.sources[s]
            done = int(src.counts[src._shard_order(c["epoch"])[: c["shard"]]].sum())
            out[s] = c["epoch"] + (done + c["doc"]) / max(int(src.counts.sum()), 1)
        return out

    def sequences_seen(self) -> int:
        """Sequences drawn so far by all ranks together (every rank plans each global batch)."""
        return self.step * self.config.batch_size

    def next_batch(self) -> Batch:
        cfg = self.config
        picks = self.rng.choice(len(self.names), size=cfg.batch_size, p=self.p)
        plans = [
            (self.names[i], self.sources[self.names[i]].take(self.cursors[self.names[i]], cfg.seq_len + 1))
            for i in picks
        ]
        per_rank = cfg.batch_size // cfg.world_size
        mine = plans[cfg.rank * per_rank : (cfg.rank + 1) * per_rank]
        rows = np.stack([self.sources[name].read(spans) for name, spans in mine])
        for source in self.sources.values():
            source.release_done()
        self.step += 1
        batch = Batch(rows[:, :-1], rows[:, 1:], [name for name, _ in mine])
        if cfg.document_boundaries:
            batch.position_ids, batch.cu_seqlens = _boundaries([spans for _, spans in mine], cfg.seq_len)
        return batch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "fingerprint": self._fingerprint,
            "step": self.step,
            "rng": self.rng.bit_generator.state,
            "cursors": {s: dict(c) for s, c in self.cursors.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION or state.get("fingerprint") != self._fingerprint:
            raise ValueError(
                "loader state was saved with other data, weights, shapes, seed or split; resume needs "
                "the same ones (start a new run to change them)"
            )
        self.step = int(state["step"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.cursors = {s: dict(c) for s, c in state["cursors"].items()}


def _boundaries(plans: list[list[tuple[int, int, int]]], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Position ids restarting at 0 at every document start inside a row, and cu_seqlens of those
    segments over the flattened inputs (each span of a plan lies in one document, and every span
    but a row's first starts one)."""
    positions = np.zeros((len(plans), seq_len), dtype=np.int64)
    lengths: list[int] = []
    for r, spans in enumerate(plans):
        pos = 0
        for _, a, b in spans:
            n = min(b - a, seq_len - pos)  # the last input token is dropped (it is only a label)
            if n <= 0:
                break
            positions[r, pos : pos + n] = np.arange(n)
            lengths.append(n)
            pos += n
    return positions, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
