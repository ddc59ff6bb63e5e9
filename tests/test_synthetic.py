"""Synthetic data: seeding, prompt files, parsing and validation, gates (no LLM in this file)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from phi_assets.synthetic import exercises, gates, generate, templates
from phi_assets.synthetic import topics as topic_space
from resources.llm.types import Completion, Result

GOOD = '''def add(a: int, b: int) -> int:
    """Return the sum of a and b."""
    return a + b


assert add(1, 2) == 3
assert add(-1, 1) == 0
'''


# --- prompts and seeds ---------------------------------------------------------------------------


def test_prompt_files_have_their_fields_and_render_once():
    prompts = templates.load_all()
    assert {"topic", "audience", "format"} <= prompts["textbook"].fields
    text = prompts["textbook"].render(topic="sets {audience}", audience="researchers", format="tutorial")
    assert "sets {audience}" in text and "researchers" in text  # a value is never substituted again
    with pytest.raises(ValueError, match="needs \\['format'\\]"):
        prompts["textbook"].render(topic="x", audience="y")


def test_missing_prompt_or_placeholder_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="nothing.md does not exist"):
        templates.load("nothing", tmp_path)
    (tmp_path / "p.md").write_text("no placeholder here")
    with pytest.raises(ValueError, match=r"p\.md has no placeholder for \['document'\]"):
        templates.load("p", tmp_path, needs=("document",))


def test_curated_topics_load_and_duplicates_are_refused(tmp_path):
    curated = topic_space.curated_topics()
    assert len(curated) >= 50 and len(set(curated)) == len(curated)
    (tmp_path / "t.txt").write_text("# comment\nrecursion\nsets\nrecursion\n")
    with pytest.raises(ValueError, match=r"duplicate topics \['recursion'\]"):
        topic_space.curated_topics(tmp_path / "t.txt")


def test_draws_are_seeded_cover_the_seed_space_and_extend_as_a_prefix():
    topics = [f"topic {i}" for i in range(30)]
    a = topic_space.draw(topics, 16, seed=3, batch=1, prefix="tb")
    assert a.equals(topic_space.draw(topics, 16, seed=3, batch=1, prefix="tb"))
    assert not a.equals(topic_space.draw(topics, 16, seed=3, batch=2, prefix="tb"))
    # 16 draws cover all 4 x 4 (audience, format) pairs exactly once
    assert a.select("audience", "format").unique().height == 16
    assert set(a["audience"]) == set(topic_space.AUDIENCES) and set(a["format"]) == set(topic_space.FORMATS)
    longer = topic_space.draw(topics, 24, seed=3, batch=1, prefix="tb")
    assert longer.head(16).equals(a)  # more draws extend the batch: the cache answers the prefix
    assert a["seed"].n_unique() == 16 and a["draw_id"][0] == "tb-001-0000"


def test_cluster_topics_are_named_by_their_words():
    texts = [f"the guitar chord song melody number {i}" for i in range(6)]
    texts += [f"database query index table join number {i}" for i in range(6)]
    emb = np.array([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 6) + np.random.default_rng(0).normal(0, 0.01, (12, 2))
    found = topic_space.cluster_topics(texts, emb, k=2, seed=0, origin="cluster:web")
    assert len(found) == 2 and {t["num_docs"] for t in found} == {6}
    words = {w for t in found for w in t["keywords"].split()}
    assert {"guitar", "database"} <= words or {"chord", "query"} <= words
    table = topic_space.topic_table(["recursion"], found + [{**found[0]}])  # a repeated name is one topic
    assert table.height == 3 and table["topic_id"].to_list() == ["t0000", "t0001", "t0002"]
    assert topic_space.cluster_topics(texts[:1], emb[:1], k=4, seed=0, origin="x") == []


# --- validation ----------------------------------------------------------------------------------


def test_text_rules_name_the_failure():
    rules = generate.TextRules(min_words=10)
    prose = "Sorting puts items in order. Python's sorted function returns a new list in ascending order."
    assert generate.check_text(prose, "stop", rules) is None
    assert generate.check_text("  ", "stop", rules) == ("empty", "no text")
    assert generate.check_text("too short", "stop", rules)[0] == "too_short"
    assert generate.check_text("the loop goes on " * 30, "stop", rules)[0] == "repetitive"
    assert (
        generate.check_text(" ".join(f"{i}+{i}={2 * i};" for i in range(40)), "stop", rules)[0] == "not_prose"
    )
    assert generate.check_text(prose, "length", rules) is None
    assert generate.check_text(prose, "length", generate.TextRules(10, drop_truncated=True))[0] == "truncated"
    with pytest.raises(ValueError, match="min_words"):
        generate.TextRules(min_words=0)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("", "no_code"),
        ("def f(:\n    pass", "syntax_error"),
        ("x = 1\nassert x == 1", "no_function"),
        ('def f():\n    """Doc."""\n    return 1\n\nassert True', "no_tests"),
        ("def f():\n    return 1\n\nassert f() == 1", "no_docstring"),
        (
            'def count_vowels(text: str) -> int:\n    """Return how many vowels (a, e, i, o, u) are in text, '
            'ignoring case."""\n    return sum(1 for ch in text.lower() if ch in "aeiou")\n\n'
            'assert count_vowels("a") == 1',
            "copies_example",
        ),
        (
            'def count_vowels(s):\n    """Count."""\n    return 0\n\nassert count_vowels("") == 0',
            "copies_example",
        ),
    ],
)
def test_parse_exercise_rejects_with_reason(code, reason):
    example = exercises.example_function(templates.load_all()["exercise_example"])
    with pytest.raises(exercises.NotAnExercise) as info:
        exercises.parse_exercise(code, example)
    assert info.value.reason == reason


def test_an_answer_cut_off_mid_statement_keeps_its_whole_statements():
    cut = GOOD + "assert add(2, 2) == 4\n\ndef more(x):\n    return add(x,"
    ex = exercises.parse_exercise(cut)
    assert ex.num_tests == 3 and "more" not in ex.program
    with pytest.raises(exercises.NotAnExercise, match="syntax_error"):
        exercises.parse_exercise("def f(:\n    pass\n")


def test_parse_exercise_splits_prompt_solution_and_tests():
    ex = exercises.parse_exercise("import math\n\n" + GOOD + 'print("side effect")\n```\ntrailing prose')
    assert ex.function == "add" and ex.num_tests == 2
    assert ex.prompt.startswith("def add(a: int, b: int) -> int:") and "return a + b" not in ex.prompt
    assert "return a + b" in ex.solution and "import math" in ex.program
    assert "print" not in ex.runnable()  # top-level calls other than the tests are not run
    assert ex.tests.splitlines() == ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


def _result(texts: list[str], error: str | None = None) -> Result:
    if error:
        return Result.failed("k", "prompt_too_long", error)
    return Result("k", [Completion(t, 10, "stop") for t in texts], num_prompt_tokens=5)


def test_exercise_verification_executes_the_tests_in_the_sandbox():
    """Hand-written candidates through both stages and the real sandbox: only the passing one is
    kept, every other sample is a failure row with its reason, and the counts reconcile."""
    from phi_assets import sandbox

    fn = GOOD.split("\n\n\n")[0]
    looping = fn.replace("return a + b", "while True:\n        pass")
    raising = fn.replace("return a + b", "return a / 0")
    draws = topic_space.draw(["arithmetic"], 3, seed=0, batch=0, prefix="ex")
    prompts = templates.load_all()
    requests = exercises.exercise_requests(
        draws, prompts["exercise"], prompts["exercise_example"], samples=2, max_tokens=64, temperature=0.8
    )
    stage_one = [_result([fn, fn]), _result([looping, raising]), _result([], error="too long")]
    functions, failed = exercises.exercise_functions(draws, stage_one, prompts["exercise_example"], samples=2)
    assert [name for _, name, _ in functions] == ["add"] * 4
    assert [f["reason"] for f in failed] == ["llm_error", "llm_error"]
    tests = exercises.test_requests(requests, functions, max_tokens=32)
    assert tests[0].messages[-1] == ("assistant", f"```python\n{fn}\n\n\nassert add(")
    seeds = draws["seed"].to_list()
    assert [t.sampling.seed for t in tests] == [seeds[0], seeds[0] + 1, seeds[1], seeds[1] + 1]
    stage_two = [
        _result(["1, 2) == 3\nassert add(2, 2) == 4"]),
        _result(["1, 2) == 4"]),
        _result(["1, 1) == 2"]),
        _result(["1, 1) == 2"]),
    ]
    runnable, failed = exercises.exercise_candidates(functions, stage_two, prompts["exercise_example"], failed)
    verdicts = sandbox.run_programs([ex.runnable() for _, ex in runnable], sandbox.Limits(timeout_s=2))
    kept, failures = exercises.exercise_rows(
        runnable, verdicts, failed, {"model": "m", "model_version": "v"}, "p"
    )
    assert kept["candidate_id"].to_list() == ["ex-000-0000-s0"]
    assert kept["function"][0] == "add" and kept["num_tests"][0] == 2 and kept["num_tokens"][0] == 20
    reasons = dict(zip(failures["candidate_id"], failures["reason"], strict=True))
    assert reasons["ex-000-0000-s1"] == "failed" and reasons["ex-000-0001-s0"] == "timeout"
    assert reasons["ex-000-0001-s1"] == "error"
    assert "ZeroDivisionError" in failures.filter(pl.col("candidate_id") == "ex-000-0001-s1")["detail"][0]
    funnel = generate.reconcile(3 * 2, kept, failures)
    assert funnel["by_reason"] == {"error": 1, "failed": 1, "llm_error": 2, "timeout": 1}
    # the passing one failed when run again: its tests passed by chance, and it is dropped with its reason
    (i,) = [i for i, v in enumerate(verdicts) if v.passed]
    again = {i: sandbox.run_programs(["assert False, 'second run'"], sandbox.Limits(timeout_s=2))[0]}
    kept, failures = exercises.exercise_rows(
        runnable, verdicts, [], {"model": "m", "model_version": "v"}, "p", again
    )
    assert kept.height == 0
    flaky = failures.filter(pl.col("reason") == exercises.NONDETERMINISTIC)
    assert flaky["candidate_id"].to_list() == ["ex-000-0000-s0"] and "second run" in flaky["detail"][0]


def test_rewrite_validation_buckets_and_batches():
    buckets = generate.Buckets(high=3.0, medium=2.0)
    assert [buckets.of(s) for s in (4.2, 3.0, 2.5, 0.3)] == ["high", "high", "medium", "low"]
    with pytest.raises(ValueError, match="medium <= high"):
        generate.Buckets(high=1.0, medium=2.0)
    ids = [f"doc{i}" for i in range(200)]
    owners = [[b for b in range(4) if generate.in_batch(i, b, 4)] for i in ids]
    assert all(len(o) == 1 for o in owners)  # every document is in exactly one batch
    assert {o[0] for o in owners} == {0, 1, 2, 3}
    source = " ".join(f"word{i}" for i in range(100))
    docs = pl.DataFrame(
        {
            "source_id": ["a", "b", "c"],
            "source_uri": ["u"] * 3,
            "source_shard": ["s"] * 3,
            "edu_score": [4.0, 1.0, 1.0],
            "bucket": ["high", "low", "low"],
            "style": ["qa", "textbook", "textbook"],
            "source_text": [source] * 3,
        }
    )
    facts = [
        "water boils at sea level",
        "a byte holds eight bits",
        "Python lists keep their order",
        "sets drop repeated items",
        "tuples cannot change",
        "dictionaries map keys to values",
    ]
    qa = "\n\n".join(
        f"Question: is it true that {f}?\nAnswer: yes, {f} (fact {i})." for i, f in enumerate(facts)
    )
    prose = " ".join(f"Section {i}: {f}, as the source explains in its own words." for i, f in enumerate(facts))
    results = [_result([qa]), _result([source]), _result([prose])]
    styles = {"qa": templates.load_all()["rewrite_qa"], "textbook": templates.load_all()["rewrite_textbook"]}
    kept, failed = generate.rewrite_rows(
        docs, results, generate.TextRules(20), styles, {"model": "m", "model_version": "v"}
    )
    assert kept["source_id"].to_list() == ["a", "c"] and kept["num_qa_pairs"][0] == 6
    assert failed["reason"].to_list() == ["copied_source"] and failed["candidate_id"][0] == "b"
    no_pairs = generate.rewrite_rows(
        docs.head(1), [_result([prose])], generate.TextRules(20), styles, {"model": "m", "model_version": "v"}
    )[1]
    assert no_pairs["reason"].to_list() == ["no_qa_pairs"]


def test_reconcile_refuses_lost_rows():
    with pytest.raises(AssertionError, match="do not reconcile"):
        generate.reconcile(3, pl.DataFrame({"a": [1]}), generate.failures_frame([]))


# --- gates ---------------------------------------------------------------------------------------


def test_fuzzy_dedup_keeps_one_of_near_duplicates():
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def words(n: int) -> list[str]:
        return ["".join(rng.choice(letters, 6)) for _ in range(n)]

    base_words = words(120)
    base = " ".join(base_words)
    near = " ".join(base_words[:60] + ["changed"] + base_words[61:])
    other = " ".join(words(120))
    decisions = gates.fuzzy_dedup(["b", "a", "c"], [near, base, other])
    assert decisions["id"].to_list() == ["b", "a", "c"]  # input order
    assert decisions["keep"].to_list() == [False, True, True]  # the smallest id survives
    assert decisions["survivor_id"][0] == "a"


def test_diversity_and_coverage_measures():
    same = ["Python lists are ordered collections of items, and more words follow."] * 3
    varied = ["Recursion calls itself.", "Sets hold unique items.", "Dictionaries map keys to values."]
    low, high = gates.diversity(same), gates.diversity(varied)
    assert low["repeated_openings"] == 1.0 and high["repeated_openings"] == 0.0
    assert low["distinct_3grams"] < 0.5 < high["distinct_3grams"] == 1.0
    assert low["top_openings"] == [{"opening": "python lists are ordered collections", "docs": 3}]
    frame = pl.DataFrame({"audience": ["researchers", "researchers", "young children"]})
    cov = gates.coverage(frame, "audience", topic_space.AUDIENCES)
    assert cov["covered"] == 2 and cov["fraction"] == 0.5 and cov["counts"]["researchers"] == 2
