"""Ablation arms: named data recipes over the token sources.

An arm is a set of weights over **bases** (what the data is made of) and, for the curated bases, a
view of the raw shards:

- ``raw_code`` / ``raw_web``: the raw shards (``tokenized_raw_{code,web}``: exact duplicates removed,
  decontaminated), every document;
- ``curated_code`` / ``curated_web``: the same raw tokens, only the documents that passed the heuristic
  filters and near-duplicate removal (the documents ``filtered_{source}_corpus`` scored), optionally only
  those the classifier scored at or above ``min_edu``;
- ``synthetic_textbooks`` / ``synthetic_exercises`` / ``rewritten_web``: the synthetic token sources;
- ``mixture``: the mixture the checkpoints train on (``mixture_weights``: its sources and weights);
- ``benchmark_solutions``: the HumanEval and MBPP reference solutions themselves: a contamination canary,
  never in the default arms. An arm that trains on it must show a much lower benchmark loss, which proves
  the metric can see an effect.

Reading the curated documents out of the raw tokens keeps every arm on the same tokenization of the same
documents: arms differ only in which documents they read. Weights are shares of the training tokens;
every arm of a report trains on the same number of tokens, so a small base is repeated (the partition
reports its epochs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

BASES = (
    "raw_code",
    "raw_web",
    "curated_code",
    "curated_web",
    "synthetic_textbooks",
    "synthetic_exercises",
    "rewritten_web",
    "mixture",
    "benchmark_solutions",
)
BASELINE = "raw"
CANARY = "benchmark_canary"


@dataclass(frozen=True)
class Arm:
    name: str
    weights: dict[str, float]  # base -> share of the training tokens (renormalised)
    min_edu: float | None = None  # curated bases: keep documents the classifier scored at or above this
    description: str = ""
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(BASES))
        if unknown or not self.weights:
            raise ValueError(f"arm {self.name!r}: unknown bases {unknown}; choose from {BASES}")
        if any(w <= 0 for w in self.weights.values()):
            raise ValueError(f"arm {self.name!r}: every weight must be > 0, got {self.weights}")
        if "|" in self.name or not self.name:
            raise ValueError(f"arm name {self.name!r} must be non-empty and without '|'")
        if self.min_edu is not None and not any(b.startswith("curated_") for b in self.weights):
            raise ValueError(f"arm {self.name!r}: min_edu applies to curated bases, and it has none")

    @property
    def shares(self) -> dict[str, float]:
        total = sum(self.weights.values())
        return {b: w / total for b, w in sorted(self.weights.items())}

    @property
    def uses_mixture(self) -> bool:
        return "mixture" in self.weights


def _edu(k: int, **extra: float) -> Arm:
    rest = sum(extra.values())
    return Arm(
        f"edu>={k}" + "".join(f"+{n.removeprefix('synthetic_')}" for n in extra),
        {"curated_code": 1.0 - rest, **extra},
        min_edu=float(k),
        description=f"code the classifier scored >= {k}" + "".join(f", {n} {w:.0%}" for n, w in extra.items()),
    )


# phi-1 Figure 2.1's three bars are raw, edu>=3 and edu>=3+textbooks; the others separate the steps.
# +textbooks: phi-1's CodeTextbook is ~6B filtered code and ~1B synthetic textbook tokens (~14%).
ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm(
            BASELINE,
            {"raw_code": 1.0},
            description="raw code shards (exact duplicates removed, decontaminated)",
        ),
        Arm(
            "heuristics+dedup",
            {"curated_code": 1.0},
            description="code after the heuristic filters and near-dedup",
        ),
        _edu(2),
        _edu(3),
        _edu(4),
        _edu(3, synthetic_textbooks=0.15),
        _edu(3, synthetic_textbooks=0.1, synthetic_exercises=0.1),
        Arm("phi4_mix", {"mixture": 1.0}, description="the checkpoints' mixture (mixture_weights)"),
        Arm(
            CANARY,
            {"raw_code": 0.5, "benchmark_solutions": 0.5},
            description="contamination canary: half of the tokens are the benchmarks' own solutions",
        ),
    )
}


def arm(name: str) -> Arm:
    if name not in ARMS:
        raise ValueError(f"ablation arm {name!r} is not one of {sorted(ARMS)}")
    return ARMS[name]


def parse_arms(names: str) -> list[str]:
    """A preset's comma-separated arm list, checked; the baseline comes first."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    for n in chosen:
        arm(n)
    if BASELINE not in chosen:
        raise ValueError(
            f"ablation arms {chosen} must include the baseline {BASELINE!r} (differences are against it)"
        )
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"ablation arms {chosen} name an arm twice")
    return [BASELINE] + [n for n in chosen if n != BASELINE]
