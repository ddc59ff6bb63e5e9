"""RegMix-style mixture search (Liu et al., 2024): mixtures -> proxy losses -> regression -> proposal.

1. ``sample_mixture`` draws proxy ``i``'s weights from a Dirichlet around a prior (uniform over the
   sources, or their token shares), with a concentration that cycles through ``SCALES`` so some
   mixtures are near the prior and some are dominated by one or two sources.
2. Each proxy is trained on its mixture (``proxy.py``) and reports validation loss per source; the
   target is the mean over ``target`` sources.
3. ``fit`` regresses target loss on the weights (ridge: the linear model RegMix compares against;
   or gradient-boosted trees when there are many proxies) and measures it leave-one-out.
4. ``propose`` scores many candidate mixtures from the same distribution, each first brought under
   the epoch cap of the real run (``weights.cap_epochs``), and averages the best ``top_k``
   (RegMix averages its top 100) into the proposed mixture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from phi_assets.mixture import weights as mix

SCALES = (0.5, 1.0, 2.0, 4.0)  # Dirichlet concentration per source, cycled over proxies
PRIORS = ("uniform", "tokens")
REGRESSORS = ("linear", "gbm")


def prior_of(tokens: Mapping[str, int], kind: str) -> dict[str, float]:
    if kind not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {kind!r}")
    present = {s: n for s, n in tokens.items() if n > 0}
    if not present:
        raise ValueError("no source has training tokens")
    if kind == "uniform":
        return {s: 1 / len(present) for s in present}
    total = sum(present.values())
    return {s: n / total for s, n in present.items()}


def _dirichlet(
    rng: np.random.Generator, prior: np.ndarray, scale: float, size: int | None = None
) -> np.ndarray:
    alpha = np.maximum(prior * scale * len(prior), 1e-3)
    return rng.dirichlet(alpha, size=size)


def sample_mixture(prior: Mapping[str, float], index: int, seed: int) -> dict[str, float]:
    """Proxy ``index``'s mixture: a function of (prior, index, seed) only, so proxies fan out."""
    names = sorted(prior)
    rng = np.random.default_rng([seed, index])
    w = _dirichlet(rng, np.array([prior[s] for s in names]), SCALES[index % len(SCALES)])
    return dict(zip(names, (float(x) for x in w), strict=True))


@dataclass
class Fit:
    sources: list[str]
    model: object
    loo_predictions: list[float]
    spearman: float  # leave-one-out rank correlation of predicted and observed loss
    mae: float

    def predict(self, mixtures: np.ndarray) -> np.ndarray:
        return self.model.predict(mixtures)


def _regressor(kind: str):
    if kind == "linear":
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1e-4)
    if kind == "gbm":
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(n_estimators=200, max_depth=2, learning_rate=0.05, random_state=0)
    raise ValueError(f"regressor must be one of {REGRESSORS}, got {kind!r}")


def fit(mixtures: Sequence[Mapping[str, float]], losses: Sequence[float], kind: str = "linear") -> Fit:
    """Regress loss on mixture weights; leave-one-out predictions say how far to trust it."""
    from scipy.stats import spearmanr

    if len(mixtures) < 3:
        raise ValueError(f"mixture search needs at least 3 finished proxies, got {len(mixtures)}")
    sources = sorted({s for m in mixtures for s in m})
    x = np.array([[m.get(s, 0.0) for s in sources] for m in mixtures])
    y = np.asarray(losses, dtype=np.float64)
    loo = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        loo.append(float(_regressor(kind).fit(x[keep], y[keep]).predict(x[i : i + 1])[0]))
    rho = spearmanr(loo, y).statistic if np.ptp(y) > 0 else float("nan")
    return Fit(sources, _regressor(kind).fit(x, y), loo, float(rho), float(np.mean(np.abs(np.array(loo) - y))))


def propose(
    model: Fit,
    prior: Mapping[str, float],
    tokens: Mapping[str, int],
    budget: int,
    max_epochs: float,
    *,
    num_candidates: int,
    top_k: int,
    seed: int,
) -> tuple[dict[str, float], float]:
    """The mean of the ``top_k`` candidates with the lowest predicted loss, and its prediction."""
    names = sorted(prior)
    if names != model.sources:
        raise ValueError(f"the proxies covered {model.sources} but the sources with tokens are {names}")
    rng = np.random.default_rng([seed, 2**31 - 1])
    per_scale = max(num_candidates // len(SCALES), 1)
    p = np.array([prior[s] for s in names])
    raw = np.concatenate([_dirichlet(rng, p, scale, per_scale) for scale in SCALES])
    capped = np.array(
        [
            [w[s] for s in names]
            for w in (
                mix.cap_epochs(dict(zip(names, row, strict=True)), tokens, budget, max_epochs) for row in raw
            )
        ]
    )
    predicted = model.predict(capped)
    best = np.argsort(predicted)[: max(1, min(top_k, len(predicted)))]
    mean = capped[best].mean(axis=0)
    mean = mean / mean.sum()
    return dict(zip(names, (float(x) for x in mean), strict=True)), float(model.predict(mean[None])[0])


def target_loss(val_loss: Mapping[str, float], target: Sequence[str]) -> float:
    """Mean validation loss over ``target`` sources (all with validation documents when empty)."""
    chosen = list(target) or sorted(val_loss)
    missing = [s for s in chosen if s not in val_loss]
    if missing or not chosen:
        raise ValueError(f"target sources {missing or chosen} have no validation loss; have {sorted(val_loss)}")
    return float(np.mean([val_loss[s] for s in chosen]))
