"""Judge-guided preference pairs (phi_assets/training/judging.py) and the DPO pair mix (dpo_assets.py).

The judge here is scripted (a function of the request it is shown), so what is kept can be asserted exactly;
the asset runs the same ``resolve`` on the replies of the engine's judge model (tests/test_training_assets.py
checks that run's counts on the ci graph)."""

import polars as pl
import pytest

from phi_assets.training import judging
from phi_assets.training.dpo_assets import mix_counts, mix_pairs

PROMPTS = [judging.OpenPrompt(f"request/{i}", "requests", f"Explain topic {i}.") for i in range(3)]
ANSWERS = [["short", "a longer answer", "the longest answer of all"], ["one", "one", ""], ["x", "yy"]]


def _shown(request) -> tuple[str, str]:
    """The answers a judge request shows as A and B."""
    user = request.messages[1][1]
    a = user.split("Answer A:\n", 1)[1].split("\n\nAnswer B:\n", 1)[0]
    b = user.split("Answer B:\n", 1)[1].split("\n\nWhich answer", 1)[0]
    return a, b


def _judged(judge, max_pairs: int = 3):
    """A scripted judge's replies, as the engine returns them: continuations of the prefilled ``Verdict:``."""
    items = judging.comparisons(PROMPTS, ANSWERS, max_pairs)
    replies = [judge(*_shown(r)) for item in items for r in item.requests(64)]
    return items, *judging.resolve(items, replies, prefilled=True)


def test_a_judge_that_always_prefers_position_a_yields_no_pairs():
    items, rows, stats = _judged(lambda a, b: " A\nScores: A=8 B=2\nRationale: the first is better.")
    assert items and judging.preference_rows(rows) == []
    assert stats.kept == 0 and stats.disagreed == stats.compared == len(items)
    assert stats.agreement_rate == 0.0 and stats.first_position_rate == 1.0 and stats.tie_rate == 0.0
    assert {r["outcome"] for r in rows} == {"disagreed"}


def test_an_order_consistent_judge_keeps_every_pair_with_its_scores():
    def longer(a, b):  # prefers the longer answer wherever it is shown; scores are the lengths
        return f" {'A' if len(a) > len(b) else 'B'}\nScores: A={min(len(a), 10)} B={min(len(b), 10)}\n" \
               "Rationale: more detail."

    items, rows, stats = _judged(longer)
    pairs = judging.preference_rows(rows)
    # prompt 0: 3 distinct answers -> 3 pairs; prompt 1: one distinct non-empty answer -> none; prompt 2: 1
    assert len(items) == stats.compared == stats.kept == len(pairs) == 4
    assert stats.agreement_rate == 1.0 and stats.first_position_rate == 0.5
    for p in pairs:
        assert len(p["chosen"]) > len(p["rejected"])
        assert p["score_chosen"] == min(len(p["chosen"]), 10)
        assert p["score_rejected"] == min(len(p["rejected"]), 10)
        assert p["prompt"] == "Explain topic 0.\n\n" or p["prompt"] == "Explain topic 2.\n\n"
        assert p["rationale_ab"] == p["rationale_ba"] == "more detail."
    assert stats.by_source == {"requests": 4}


def test_ties_and_unreadable_verdicts_are_dropped_and_counted():
    replies = iter(["Verdict: tie", "Verdict: tie",  # a tie in both orders
                    "Verdict: A", "I cannot decide",  # one unreadable verdict
                    "Scores: A=2 B=9", "Scores: A=9 B=2",  # scores alone, consistent: the second answer wins
                    "Verdict: tie", "Verdict: B"])  # a tie against a preference: they disagree
    items = judging.comparisons(PROMPTS, ANSWERS, 3)
    rows, stats = judging.resolve(items, [next(replies) for _ in range(2 * len(items))])
    assert [r["outcome"] for r in rows] == ["tie", "unparsed", "kept", "disagreed"]
    assert stats.compared == stats.kept + stats.ties + stats.disagreed + stats.unparsed == 4
    assert stats.verdicts == {"A": 2, "B": 2, "tie": 3, "none": 1}
    assert stats.tie_rate == 3 / 7 and stats.agreement_rate == 2 / 3
    kept = judging.preference_rows(rows)
    assert [(k["chosen"], k["rejected"]) for k in kept] == [("the longest answer of all", "a longer answer")]
    with pytest.raises(ValueError, match="need 8 replies"):
        judging.resolve(items, ["Verdict: A"])


@pytest.mark.parametrize(("reply", "winner", "scores"), [
    ("Rationale: clearer.\nScores: A=7 B=3\nVerdict: A", "A", (7, 3)),
    ("**Verdict:** b", "B", (None, None)),
    ("Verdict: Answer B is clearer", "B", (None, None)),
    ("Verdict = TIE", "tie", (None, None)),
    ("Scores: A=4 B=4", "tie", (4, 4)),
    ("Scores: A=12 B=3", None, (None, None)),  # out of range: not a score
    ("Both answers are fine.", None, (None, None)),
    (None, None, (None, None)),
])
def test_parse_verdict(reply, winner, scores):
    verdict = judging.parse_verdict(reply)
    assert verdict.winner == winner and (verdict.score_a, verdict.score_b) == scores


def test_a_prefilled_reply_is_read_with_its_prefill():
    assert judging.parse_verdict(" tie\nScores: A=5 B=5", prefilled=True).winner == "tie"
    assert judging.parse_verdict(" B", prefilled=True).winner == "B"
    assert judging.parse_verdict(" B", prefilled=False).winner is None
    assert judging.parse_verdict(None, prefilled=True).winner is None


def test_the_two_requests_of_a_comparison_swap_the_answers():
    item = judging.Comparison(PROMPTS[0], "first answer", "second answer")
    one, two = item.requests(32)
    assert _shown(one) == ("first answer", "second answer") and _shown(two) == ("second answer", "first answer")
    assert one.messages[0][0] == "system" and "Verdict" in one.messages[0][1]
    assert one.prefilled and one.messages[-1] == ("assistant", judging.PREFILL)
    assert one.sampling.temperature == 0.0 and one.sampling.max_tokens == 32


def test_candidate_pairs_skip_duplicates_and_empty_answers_and_cap():
    assert judging.candidate_pairs(["a", "b", "a", " ", "c"], 10) == [(0, 1), (0, 4), (1, 4)]
    assert judging.candidate_pairs(["a", "b", "c"], 2) == [(0, 1), (0, 2)]
    assert judging.candidate_pairs(["same", "same"], 5) == []


def test_prompt_sources(tmp_path):
    textbooks = [{"id": "t1", "topic": "recursion", "audience": "beginners"},
                 {"id": "t2", "topic": "recursion", "audience": "beginners"},
                 {"id": "t3", "topic": "hashing", "audience": "students"}]
    got = judging.textbook_prompts(textbooks, 5)
    assert [p.prompt for p in got] == ["Explain recursion to beginners in a short paragraph.",
                                       "Explain hashing to students in a short paragraph."]
    rewrites = [{"id": "r1", "text": "Question: What is a closure in Python?\nAnswer: ...\n\n**Question 2:** "
                                     "Why are tuples immutable?\nAnswer: ...\nQuestion: short?"}]
    assert [p.prompt for p in judging.rewrite_prompts(rewrites, 5)] == ["What is a closure in Python?",
                                                                        "Why are tuples immutable?"]
    assert len(judging.rewrite_prompts(rewrites, 1)) == 1
    path = tmp_path / "requests.txt"
    path.write_text("# a comment\n\nExplain loops.\nExplain lists.\n")
    assert [(p.id, p.prompt) for p in judging.request_prompts(path, 5)] == [("request/0", "Explain loops."),
                                                                            ("request/1", "Explain lists.")]
    shipped = judging.request_prompts(judging.REQUESTS_FILE, 1000)
    assert len(shipped) >= 30 and len({p.prompt for p in shipped}) == len(shipped)


def test_mix_counts_meet_the_share_with_all_of_the_scarcer_kind():
    assert mix_counts(30, 10, 0.25) == (30, 10)
    assert mix_counts(100, 10, 0.25) == (30, 10)  # judged is scarce: all 10, verified cut to 3x
    assert mix_counts(6, 100, 0.25) == (6, 2)  # verified is scarce
    assert mix_counts(6, 100, 0.0) == (6, 0) and mix_counts(6, 100, 1.0) == (0, 100)
    assert mix_counts(6, 0, 0.5) == (6, 0) and mix_counts(0, 4, 0.5) == (0, 4)  # one kind alone
    with pytest.raises(ValueError, match="judged_share"):
        mix_counts(1, 1, 1.5)


def test_mix_pairs_samples_each_kind_down_reproducibly():
    def frame(kind: str, n: int) -> pl.DataFrame:
        return pl.DataFrame({"prompt": [f"{kind}{i}" for i in range(n)], "chosen": ["c"] * n,
                             "rejected": ["r"] * n})

    mixed = mix_pairs(frame("v", 100), frame("j", 10), 0.25, seed=3)
    assert mixed.group_by("kind").len().sort("kind").rows() == [("judged", 10), ("verified", 30)]
    assert mixed.equals(mix_pairs(frame("v", 100), frame("j", 10), 0.25, seed=3))
    assert not mixed.equals(mix_pairs(frame("v", 100), frame("j", 10), 0.25, seed=4))
    assert mixed.filter(pl.col("kind") == "verified")["prompt"].n_unique() == 30  # without replacement


def test_open_prompts_read_the_corpus_files_a_batch_at_a_time(tmp_path):
    """The asset reads its prompt sources from the synthetic corpus in bounded batches and stops once it has
    enough: the same prompts as the whole files give, across more rows than one batch holds."""
    from phi_assets.training.judged_assets import PROMPT_READS, JudgedPairsConfig, open_prompts
    from resources import ArtifactStore

    n = PROMPT_READS.rows * 2 + 5
    textbooks = [{"id": f"t{i}", "topic": f"topic {i % 700}", "audience": "students", "text": "x" * 50}
                 for i in range(n)]
    rewrites = [{"id": f"r{i}", "text": f"Question: What does function number {i} return?\nAnswer: ..."}
                for i in range(n)]
    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    with store.stage("synthetic_corpus", None) as staging:
        pl.DataFrame(textbooks).write_parquet(staging.path / "textbooks.parquet")
        pl.DataFrame(rewrites).write_parquet(staging.path / "rewrites.parquet")
        staging.commit("v1", {"asset": "synthetic_corpus", "partition": None})
    corpus = store.read_manifest("synthetic_corpus", None, "v1")
    for limit in (3, 700, n + 1):
        got = open_prompts(store, corpus, JudgedPairsConfig(sources=["textbooks", "rewrites"]), limit)
        assert got == judging.textbook_prompts(textbooks, limit) + judging.rewrite_prompts(rewrites, limit)
    assert len(open_prompts(store, corpus, JudgedPairsConfig(sources=["textbooks"]), n + 1)) == 700
