"""Means, intervals and paired differences over seeds: what ``ablation_report`` says and how sure it is.

With a handful of seeds the interval is Student's t: ``mean +- t(0.975, n-1) * sd / sqrt(n)``. A paired
difference subtracts the baseline's number from the arm's for the **same seed** (same initialisation,
same batch order where the data allow), which removes the seed's own luck from the comparison. An arm
beats the baseline on a loss "beyond noise" when the whole interval of its paired difference is below 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

LEVEL = 0.95


def interval(values: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """Mean and the two-sided t interval of ``values`` (lo = hi = mean for a single value, flagged n=1)."""
    n = len(values)
    if n == 0:
        raise ValueError("an interval needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": 1}
    # imported here: scipy.stats takes most of a second, and every step of the graph loads this module
    from scipy import stats as st

    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(st.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def paired(arm: Mapping[int, float], baseline: Mapping[int, float]) -> dict[str, float] | None:
    """The interval of ``arm[seed] - baseline[seed]`` over the seeds both have (None: no common seed)."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        return None
    return {**interval([arm[s] - baseline[s] for s in seeds]), "seeds": len(seeds)}


def verdict(baseline: str, diff: dict | None, lower_is_better: bool = True) -> str:
    """In plain words, whether a paired difference (arm - ``baseline``) is better beyond noise: the whole
    interval on the better side of 0."""
    if diff is None:
        return f"no seed in common with {baseline}"
    d, lo, hi, n = diff["mean"], diff["lo"], diff["hi"], diff["seeds"]
    numbers = f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}] over {n} seed{'s' if n != 1 else ''}"
    if n < 2:
        return f"cannot tell with one seed ({numbers})"
    better, worse = (hi < 0, lo > 0) if lower_is_better else (lo > 0, hi < 0)
    if better:
        return f"beats {baseline} beyond noise ({numbers})"
    if worse:
        return f"worse than {baseline} beyond noise ({numbers})"
    return f"not distinguishable from {baseline} ({numbers})"


def verdict_line(arm: str, baseline: str, diffs: dict[str, dict | None]) -> str:
    """One line per arm: each main metric's verdict (losses: lower is better; pass@k: higher)."""
    parts = [f"{m} {verdict(baseline, d, lower_is_better=not m.endswith('@1'))}" for m, d in diffs.items()]
    return f"{arm}: " + "; ".join(parts)
