"""Data mixture: the mixture weights (phi-4's table, the epoch cap) and the search over mixtures.

Pure functions on small hand-made token counts and losses: no corpus, no model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from phi_assets.mixture import search
from phi_assets.mixture import weights as mix

# --- weights -------------------------------------------------------------------------------------

TOKENS = {
    "filtered_code": 1000,
    "filtered_web": 500,
    "synthetic_textbooks": 300,
    "synthetic_exercises": 100,
    "rewritten_web": 0,
}
# phi-4 shares of the present categories, over .20 + .15 + .40 = .75; synthetic split 3:1 by tokens
DEFAULT = {
    "filtered_code": 0.20 / 0.75,
    "filtered_web": 0.15 / 0.75,
    "synthetic_textbooks": 0.40 * 3 / 4 / 0.75,
    "synthetic_exercises": 0.40 * 1 / 4 / 0.75,
    "rewritten_web": 0.0,
}


def test_default_weights_renormalise_the_phi4_table_over_present_sources():
    got = mix.default_weights(TOKENS)
    assert got == pytest.approx(DEFAULT)
    assert got == pytest.approx(
        {
            "filtered_code": 4 / 15,
            "filtered_web": 1 / 5,
            "synthetic_textbooks": 2 / 5,
            "synthetic_exercises": 2 / 15,
            "rewritten_web": 0.0,
        }
    )
    assert list(got) == list(TOKENS) and sum(got.values()) == pytest.approx(1)


def test_default_weights_need_tokens_and_a_weighted_category():
    with pytest.raises(ValueError, match="no source has any tokens"):
        mix.default_weights({"filtered_code": 0})
    with pytest.raises(ValueError, match="has a weight in the table"):
        mix.default_weights({"my_source": 10})


def test_epochs_are_weight_times_budget_over_tokens():
    got = mix.epochs(DEFAULT, TOKENS, 10_000)
    assert got == pytest.approx(
        {
            "filtered_code": (4 / 15) * 10_000 / 1000,
            "filtered_web": (1 / 5) * 10_000 / 500,
            "synthetic_textbooks": (2 / 5) * 10_000 / 300,
            "synthetic_exercises": (2 / 15) * 10_000 / 100,
            "rewritten_web": 0.0,
        }
    )


CAP_CASES = [
    # textbooks and exercises over 16 epochs: they keep 16 * tokens / budget, code and web share the
    # remaining .68 as 4:3
    pytest.param(
        DEFAULT,
        TOKENS,
        20_000,
        {
            "filtered_code": 0.68 * 4 / 7,
            "filtered_web": 0.68 * 3 / 7,
            "synthetic_textbooks": 16 * 300 / 20_000,
            "synthetic_exercises": 16 * 100 / 20_000,
            "rewritten_web": 0.0,
        },
        id="two-capped",
    ),
    # x is capped at .16; its excess pushes y (15 epochs) past the cap at .32; z takes the rest
    pytest.param(
        {"x": 0.5, "y": 0.3, "z": 0.2},
        {"x": 100, "y": 200, "z": 10_000},
        10_000,
        {"x": 0.16, "y": 0.32, "z": 0.52},
        id="cascade",
    ),
    # nothing over the cap: unchanged
    pytest.param(DEFAULT, TOKENS, 10_000, DEFAULT, id="under-the-cap"),
]


@pytest.mark.parametrize("weights, counts, budget, expected", CAP_CASES)
def test_cap_epochs_moves_the_excess_to_the_uncapped_sources(weights, counts, budget, expected):
    got = mix.cap_epochs(weights, counts, budget, 16)
    assert got == pytest.approx(expected)
    assert sum(got.values()) == pytest.approx(1)
    before, after = mix.epochs(weights, counts, budget), mix.epochs(got, counts, budget)
    assert max(after.values()) <= 16 + 1e-9
    for s in weights:
        if before[s] > 16:
            assert after[s] == pytest.approx(16)
    free = [s for s in weights if weights[s] > 0 and after[s] < 16 - 1e-9]
    for s in free:
        for t in free:
            assert got[s] * weights[t] == pytest.approx(got[t] * weights[s])  # proportions kept


def test_cap_epochs_says_when_the_budget_cannot_be_met():
    with pytest.raises(ValueError, match="a budget of 32,000 tokens needs at least 2,000 unique tokens"):
        mix.cap_epochs(DEFAULT, TOKENS, 32_000, 16)  # the sources hold 1,900: 16 epochs give 30,400
    exactly = mix.cap_epochs(DEFAULT, TOKENS, 30_400, 16)  # every source at the cap
    assert mix.epochs(exactly, TOKENS, 30_400) == pytest.approx(
        {
            "filtered_code": 16,
            "filtered_web": 16,
            "synthetic_textbooks": 16,
            "synthetic_exercises": 16,
            "rewritten_web": 0,
        }
    )


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"nope": 1.0, "filtered_code": 1.0}, "unknown sources \\['nope'\\]"),
        ({"filtered_code": -0.1, "filtered_web": 1.0}, "must be >= 0"),
        ({"filtered_code": math.nan, "filtered_web": 1.0}, "must be >= 0"),
        ({"rewritten_web": 0.5, "filtered_code": 0.5}, "\\['rewritten_web'\\] have weight but no tokens"),
        ({"filtered_code": 0.0, "filtered_web": 0.0}, "sum to 0"),
        ({}, "sum to 0"),
    ],
)
def test_normalise_refuses_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        mix.normalise(weights, TOKENS)


def test_normalise_fills_missing_sources_with_zero():
    got = mix.normalise({"filtered_code": 3, "filtered_web": 1}, TOKENS)
    assert got == {
        "filtered_code": 0.75,
        "filtered_web": 0.25,
        "synthetic_textbooks": 0.0,
        "synthetic_exercises": 0.0,
        "rewritten_web": 0.0,
    }


def test_table_accounts_for_each_source():
    requested = {"filtered_code": 0.5, "filtered_web": 0.5}
    got = mix.table(requested, DEFAULT, TOKENS, 10_000)
    assert got.columns == [
        "source",
        "category",
        "requested_weight",
        "weight",
        "unique_tokens",
        "tokens_seen",
        "epochs",
    ]
    assert got["source"].to_list() == list(DEFAULT)
    assert got["category"].to_list() == [mix.CATEGORY[s] for s in DEFAULT]
    assert got["requested_weight"].to_list() == [0.5, 0.5, 0.0, 0.0, 0.0]
    assert got["unique_tokens"].to_list() == list(TOKENS.values())
    assert got["tokens_seen"].to_list() == [2667, 2000, 4000, 1333, 0]  # round(weight * 10,000)
    assert got["epochs"].to_list() == pytest.approx(list(mix.epochs(DEFAULT, TOKENS, 10_000).values()))


# --- search --------------------------------------------------------------------------------------

PRIOR = {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}


def test_priors_are_uniform_or_token_shares():
    counts = {"a": 300, "b": 100, "c": 0}
    assert search.prior_of(counts, "uniform") == pytest.approx({"a": 0.5, "b": 0.5})
    assert search.prior_of(counts, "tokens") == pytest.approx({"a": 0.75, "b": 0.25})
    with pytest.raises(ValueError, match="prior must be one of"):
        search.prior_of(counts, "flat")
    with pytest.raises(ValueError, match="no source has training tokens"):
        search.prior_of({"a": 0}, "uniform")


def test_sampled_mixtures_are_seeded_distributions():
    mixtures = [search.sample_mixture(PRIOR, i, seed=7) for i in range(8)]
    assert mixtures == [search.sample_mixture(PRIOR, i, seed=7) for i in range(8)]
    for m in mixtures:
        assert sorted(m) == ["a", "b", "c"]
        assert sum(m.values()) == pytest.approx(1) and min(m.values()) >= 0
    assert len({tuple(m.values()) for m in mixtures}) == 8
    assert search.sample_mixture(PRIOR, 0, seed=8) != mixtures[0]


def linear_loss(m):
    return 3 - 1.0 * m["a"] + 0.5 * m["b"] + 0.0 * m["c"]


@pytest.fixture(scope="module")
def fitted():
    mixtures = [search.sample_mixture(PRIOR, i, seed=0) for i in range(12)]
    return mixtures, search.fit(mixtures, [linear_loss(m) for m in mixtures])


def test_fit_recovers_a_linear_loss(fitted):
    mixtures, model = fitted
    assert model.sources == ["a", "b", "c"]
    assert model.spearman > 0.9
    assert model.mae < 0.01
    x = np.array([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    np.testing.assert_allclose(model.predict(x), [3 - 0.2 + 0.15, 3 - 0.9 + 0.025], atol=0.01)


def test_propose_favours_the_source_that_lowers_the_loss(fitted):
    _, model = fitted
    plenty = {"a": 10**9, "b": 10**9, "c": 10**9}
    got, predicted = search.propose(model, PRIOR, plenty, 10**6, 16, num_candidates=400, top_k=10, seed=0)
    assert sorted(got) == ["a", "b", "c"] and sum(got.values()) == pytest.approx(1)
    assert got["a"] == max(got.values()) and got["b"] == min(got.values())
    assert predicted == pytest.approx(linear_loss(got), abs=0.01)


def test_propose_respects_the_epoch_cap(fitted):
    _, model = fitted
    scarce = {"a": 1000, "b": 10**9, "c": 10**9}  # a holds 16 epochs at weight 16 * 1000 / 10**6 = .016
    got, _ = search.propose(model, PRIOR, scarce, 10**6, 16, num_candidates=400, top_k=10, seed=0)
    assert sum(got.values()) == pytest.approx(1)
    assert got["a"] <= 0.016 + 1e-9
    assert mix.epochs(got, scarce, 10**6)["a"] <= 16 + 1e-6
    assert got["c"] > got["b"]  # with a capped, c (no effect) beats b (raises the loss)


def test_propose_refuses_other_sources(fitted):
    _, model = fitted
    with pytest.raises(ValueError, match="the proxies covered"):
        search.propose(
            model, {"a": 0.5, "b": 0.5}, {"a": 10, "b": 10}, 10, 16, num_candidates=4, top_k=1, seed=0
        )


def test_fit_needs_three_mixtures_and_known_regressor():
    mixtures = [search.sample_mixture(PRIOR, i, seed=0) for i in range(3)]
    with pytest.raises(ValueError, match="at least 3 finished proxies, got 2"):
        search.fit(mixtures[:2], [1.0, 2.0])
    with pytest.raises(ValueError, match="regressor must be one of"):
        search.fit(mixtures, [1.0, 2.0, 3.0], kind="forest")


def test_target_loss_averages_the_target_sources():
    val = {"a": 1.0, "b": 2.0, "c": 6.0}
    assert search.target_loss(val, ["a", "b"]) == pytest.approx(1.5)
    assert search.target_loss(val, []) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="\\['d'\\] have no validation loss"):
        search.target_loss(val, ["a", "d"])
    with pytest.raises(ValueError, match="no validation loss"):
        search.target_loss({}, [])
