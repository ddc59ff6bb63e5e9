"""How models are asked (chat or completion, stops) and the understanding score's problems, grading
and judge calibration. The engine itself is exercised by tests/test_eval_assets.py."""

import pytest

from phi_assets import sandbox
from phi_assets.evaluation import generate, harness, understanding
from resources.llm.types import Completion, Result


@pytest.fixture(scope="module")
def problems(mbpp_path) -> list[harness.Problem]:
    return harness.load_humaneval()[:2] + harness.load_mbpp(mbpp_path, range(11, 13))


def test_a_base_model_continues_the_raw_prompt_with_the_training_stops(problems):
    humaneval, _, mbpp, _ = generate.requests(problems, chat=False)
    assert humaneval.prompt == problems[0].prompt and "\ndef " in humaneval.sampling.stop
    assert mbpp.prompt == problems[2].prompt and mbpp.prompt.startswith('"""\n')
    from resources.llm.checkpoint import COMPLETION_STOPS as STOPS

    assert tuple(mbpp.sampling.stop) == tuple(STOPS)  # what SFT and DPO sampled the same prompts with


def test_a_chat_model_answers_in_a_code_fence(problems):
    humaneval, _, mbpp, _ = generate.requests(problems, chat=True)
    assert humaneval.prefilled and humaneval.message_dicts()[-1]["content"] == "```python\n"
    assert problems[0].prompt in humaneval.message_dicts()[0]["content"]
    assert problems[2].prompt in mbpp.message_dicts()[0]["content"] and tuple(mbpp.sampling.stop) == ("```",)


def test_samples_keep_one_row_per_completion_and_count_engine_failures_as_wrong(problems):
    ok = Result(key="a", completions=[Completion("    return 1\n", 3, "stop")] * 2, num_prompt_tokens=5)
    failed = Result.failed("b", "prompt_too_long", "prompt has 300 tokens")
    rows = generate.samples(problems[:2], [ok, failed], chat=False)
    assert [r["task_id"] for r in rows] == [problems[0].task_id] * 2 + [problems[1].task_id]
    assert rows[2] == {"task_id": problems[1].task_id, "completion": "", "engine_error": "prompt_too_long"}
    chat_rows = generate.samples(problems[:1], [ok], chat=True)
    assert chat_rows[0]["completion"] == "\n    return 1\n"  # a whole function goes after the prompt


def test_every_understanding_reference_passes_and_an_empty_body_fails():
    problems = understanding.PROBLEMS
    assert len({p.id for p in problems}) == len(problems) >= 10
    references, empties = understanding.calibration(problems)
    verdicts = sandbox.run_programs(
        [p.program(c) for p, c in zip(problems * 2, references + empties, strict=True)]
    )
    assert [v.kind for v in verdicts[: len(problems)]] == ["passed"] * len(problems)
    assert not any(v.passed for v in verdicts[len(problems) :])


@pytest.mark.parametrize(
    ("reply", "grade"),
    [
        (" 7", 7),
        (" 10/10", 10),
        ("Score: 3", 3),
        (" **8**", 8),
        (" 0", 0),
        (" 11", None),
        ("n/a", None),
        ("", None),
    ],
)
def test_grades_are_read_from_the_judge_reply(reply, grade):
    assert understanding.parse_grade(reply) == grade


def test_the_score_ignores_ungraded_answers_and_the_gap_says_whether_the_judge_can_tell():
    assert understanding.score([10, None, 5]) == (0.75, 1)
    assert understanding.score([None, None]) == (None, 2)
    assert understanding.judge_gap([10, 10], [0, 2]) == pytest.approx(0.9)
    assert understanding.judge_gap([10, 10], [10, 10]) == 0.0
    assert understanding.judge_gap([None], [0]) is None


def test_the_judge_sees_problem_reference_and_answer():
    p = understanding.PROBLEMS[0]
    (request,) = understanding.judge_requests([p], ["    return words\n"])
    user = request.message_dicts()[1]["content"]
    assert p.reference in user and "return words" in user and request.message_dicts()[-1]["content"] == "Score:"
    assert request.sampling.temperature == 0.0


def test_n_samples_from_the_engine_give_unbiased_pass_at_k(mbpp_path, smol_backend, smol_dir):
    """SmolLM2 through vLLM (the session's shared engine): 4 samples per MBPP problem at temperature
    0.8, each with its own seed, every one executed; pass@k is the estimator over the counts."""
    from phi_assets.evaluation import execute
    from resources.llm import Engine, ModelRef

    mbpp = harness.load_mbpp(mbpp_path, range(11, 15))
    engine = Engine(smol_backend, None)  # not closed here: the session's engine outlives the test
    model = ModelRef(name="smollm2", version="test", path=str(smol_dir))
    requests = generate.requests(mbpp, n=4, temperature=0.8, max_tokens=96, chat=True)
    results = engine.generate(model, requests).results
    samples = generate.samples(mbpp, results, chat=True)
    assert [s["task_id"] for s in samples] == [p.task_id for p in mbpp for _ in range(4)]
    assert len({s["completion"] for s in samples[:4]}) > 1  # different seeds, different samples
    report = execute.evaluate(mbpp, samples, (1, 2, 10))
    assert set(report.pass_at_k) == {"pass@1", "pass@2"}  # 10 > 4 samples: not reported
    counts = {}
    for row in report.rows:
        n, c = counts.get(row["task_id"], (0, 0))
        counts[row["task_id"]] = (n + 1, c + row["passed"])
    for k in (1, 2):
        expected = sum(harness.pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
        assert report.pass_at_k[f"pass@{k}"] == pytest.approx(expected)
    assert report.pass_at_k["pass@1"] == pytest.approx(sum(r["passed"] for r in report.rows) / len(report.rows))


def test_understanding_problems_are_asked_and_read_as_humaneval_ones():
    p = understanding.PROBLEMS[0]
    (asked,) = understanding.as_humaneval([p])
    (completion,) = generate.requests([asked], chat=False)
    assert completion.prompt == p.prompt and "\ndef " in completion.sampling.stop
    (chat,) = generate.requests([asked], chat=True)
    assert p.prompt in chat.message_dicts()[0]["content"]
