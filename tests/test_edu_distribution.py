"""Educational-value annotation as a label distribution: logprobs through the engine, the distribution's
arithmetic, the classifier heads trained on it, and (slow) real annotation with SmolLM2 on vLLM CPU.

Fast tests: the distribution (``edu.label_distribution``, ``edu.read_result``), the frame the asset
writes, logprobs in the request cache and through the OpenAI-compatible HTTP backend (against the
scripted fake server of tests/test_llm_http.py), the classifier heads on synthetic embeddings and the
bootstrap interval. The slow tests annotate a small real sample with the session's vLLM engine
(``smol_backend`` in tests/conftest.py).
"""

from __future__ import annotations

import math
import sysconfig
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi_assets.curation import classifier as clf
from phi_assets.curation import edu, stages
from resources import ArtifactStore
from resources.llm import Completion, Engine, ModelRef, Request, Result, request_key
from resources.llm.cache import SCHEMA, RequestCache, _row
from resources.llm.http_backend import HTTPBackend
from tests.test_llm_http import Scripted, endpoint_model, fast

LOG = math.log


# -- the distribution -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "top",
    [
        {"0": LOG(0.1), "1": LOG(0.2), "2": LOG(0.3), "3": LOG(0.1), "4": LOG(0.05), "5": LOG(0.05)},
        {"5": LOG(0.7), "4": LOG(0.1), " ": LOG(0.15)},
        {"2": LOG(0.01), "Hello": LOG(0.9)},
    ],
)
def test_expected_score_is_the_weighted_mean_of_the_label_probabilities(top):
    d = edu.label_distribution(top)
    assert d.status == "ok" and len(d.probs) == 6 and sum(d.probs) == pytest.approx(1.0)
    assert d.expected_score == pytest.approx(sum(k * p for k, p in enumerate(d.probs)))
    assert d.expected_score == pytest.approx(np.average(range(6), weights=d.probs))
    labelled = {int(t): math.exp(lp) for t, lp in top.items() if t.strip() in edu.LABELS}
    assert d.label_mass == pytest.approx(sum(labelled.values()))  # before renormalising
    assert d.label == max(labelled, key=labelled.get)


def test_entropy_in_nats_of_the_renormalised_distribution():
    uniform = edu.label_distribution({str(k): LOG(0.1) for k in range(6)})
    assert uniform.entropy == pytest.approx(math.log(6)) and uniform.expected_score == pytest.approx(2.5)
    assert edu.label_distribution({"4": LOG(0.3), "x": LOG(0.7)}).entropy == pytest.approx(0.0)
    assert edu.label_distribution({"1": LOG(0.2), "2": LOG(0.2)}).entropy == pytest.approx(math.log(2))


def test_label_token_variants_are_summed_and_only_exact_digits_count():
    d = edu.label_distribution({"3": LOG(0.2), " 3": LOG(0.1), "4": LOG(0.15), "\n4 ": LOG(0.05),
                                "**3": LOG(0.1), "13": LOG(0.1), " 6": LOG(0.1), "3.": LOG(0.1)})
    assert d.label_mass == pytest.approx(0.5)
    assert d.probs == pytest.approx((0, 0, 0, 0.6, 0.4, 0))
    assert d.label == 3 and d.expected_score == pytest.approx(3.4)


def test_a_tie_goes_to_the_lower_label():
    assert edu.label_distribution({"2": LOG(0.3), "5": LOG(0.3)}).label == 2


def test_no_label_in_the_top_k_is_counted_never_guessed():
    d = edu.label_distribution({" ": LOG(0.8), "**": LOG(0.1), "Excellent": LOG(0.05)})
    assert d.status == "no_label"
    assert d.probs is d.label_mass is d.expected_score is d.label is d.entropy is None


def test_read_result_statuses():
    ok = Result("k" * 64, [Completion("3", 1, "length", [{"3": LOG(0.5), "2": LOG(0.25)}])])
    assert edu.read_result(ok).probs == pytest.approx((0, 0, 1 / 3, 2 / 3, 0, 0))
    failed = Result.failed("k" * 64, "prompt_too_long", "prompt has 9000 tokens")
    assert edu.read_result(failed).status == "llm_error"
    without = Result("ab" * 32, [Completion("3", 1, "length")])  # a backend that dropped them
    with pytest.raises(ValueError, match=r"abababababab has no log-probabilities.*logprobs=20"):
        edu.read_result(without)


def test_annotations_frame_keeps_every_document_with_its_distribution():
    sample = pl.DataFrame({"id": ["a", "b", "c"], "uri": ["u1", "u2", "u3"], "text": ["x = 1", "y", "z"]})
    dists = [edu.label_distribution({"4": LOG(0.5), "3": LOG(0.3)}), edu.LabelDistribution("no_label"),
             edu.LabelDistribution("llm_error")]
    frame = stages.annotations_frame("code", sample, ["4", " ", None], [None, None, "boom"], dists,
                                     edu.load_prompt("code"), 100)
    assert frame.height == 3 and frame["status"].to_list() == ["ok", "no_label", "llm_error"]
    assert frame["probs"][0].to_list() == pytest.approx([0, 0, 0, 0.375, 0.625, 0])
    assert frame["expected_score"][0] == pytest.approx(3.625) and frame["label"][0] == 4
    assert frame["label_mass"][0] == pytest.approx(0.8) and frame["entropy"][0] > 0
    assert frame.select("probs", "expected_score", "label", "entropy").slice(1).null_count().row(0) == (2,) * 4
    assert stages.status_counts(frame.head(1)) == {"ok": 1, "no_label": 0, "llm_error": 0}
    summary = edu.summarize(frame)
    assert summary["labels"] == [0, 0, 0, 0, 1, 0] and summary["mean_expected_score"] == pytest.approx(3.625)
    assert sum(summary["expected_score_hist"]) == 1 and summary["expected_score_hist"][14] == 1  # [3.5, 3.75)


# -- logprobs through the engine: cache and HTTP --------------------------------------------------------
MODEL = ModelRef(name="tiny", version="tiny-v1")


def test_logprobs_are_part_of_the_request_key_only_when_asked_for():
    plain = Request.chat("hi", max_tokens=1)
    assert "logprobs" not in plain.to_json()["sampling"]  # keys of requests made before logprobs stay valid
    asked = Request.chat("hi", max_tokens=1, logprobs=5)
    assert request_key(MODEL, plain) != request_key(MODEL, asked)
    with pytest.raises(ValueError, match="logprobs must be within 0..20"):
        Request.chat("hi", logprobs=21)


def test_cache_round_trip_returns_identical_logprobs(tmp_path):
    cache = RequestCache(ArtifactStore(root=str(tmp_path / "artifacts")))
    asked, plain = Request.chat("rate", max_tokens=2, logprobs=3, n=2), Request.chat("rate", max_tokens=2)
    positions = [{"3": -0.123456789012345, " 3": -2.5, "4": -1e-300}, {"\n": -0.0, "é": -17.25}]
    with_lp = Result(request_key(MODEL, asked), [Completion("3\n", 2, "length", positions),
                                                 Completion("4", 1, "stop", positions[:1])], 9)
    without = Result(request_key(MODEL, plain), [Completion("3\n", 2, "length")], 9)
    assert cache.put(MODEL, [(asked, with_lp), (plain, without)]) == 2
    found = RequestCache(cache.store).lookup(MODEL, [with_lp.key, without.key])
    assert found[with_lp.key].completions == with_lp.completions  # every float exactly, texts and order too
    assert found[without.key].completions == without.completions
    assert found[without.key].completions[0].logprobs is None


@pytest.mark.parametrize("how", ["segment", "put_table"])
def test_rows_written_without_a_logprobs_column_read_as_none(tmp_path, how):
    """A segment of the layout before logprobs (SCHEMA's columns only), or such a table given to put_table."""
    cache = RequestCache(ArtifactStore(root=str(tmp_path / "artifacts")))
    request = Request.chat("old", max_tokens=4)
    result = Result(request_key(MODEL, request), [Completion("answer", 2, "stop")], 5)
    table = pa.Table.from_pylist([_row(MODEL, request, result)], schema=SCHEMA)
    assert "logprobs" not in table.column_names
    if how == "segment":
        Path(cache.directory(MODEL)).mkdir(parents=True)
        pq.write_table(table, f"{cache.directory(MODEL)}/seg-1000-abcdef01.parquet")
    else:
        cache.put_table(MODEL, table)
    [got] = RequestCache(cache.store).lookup(MODEL, [result.key]).values()
    assert got.text == "answer" and got.completions[0].logprobs is None


def _chat_logprobs(*positions: list[tuple[str, float]]) -> dict:
    content = [{"token": p[0][0], "logprob": p[0][1], "bytes": None,
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in p]} for p in positions]
    return {"choices": [{"message": {"content": "".join(p[0][0] for p in positions)}, "finish_reason": "length",
                         "logprobs": {"content": content}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": len(positions)}}


@pytest.fixture
def fake_openai():
    """The scripted fake OpenAI server of tests/test_llm_http.py, on a port of its own."""
    Scripted.script, Scripted.received = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_http_chat_asks_for_top_logprobs_and_reads_them(fake_openai):
    Scripted.script = [(200, {}, _chat_logprobs([("4", -0.4), ("3", -1.2), (" 4", -2.0), ("4", -3.0)]))]
    request = Request.chat([{"role": "user", "content": "Rate."}, {"role": "assistant", "content": "Score: "}],
                           max_tokens=1, logprobs=3)
    with Engine(HTTPBackend(fast(fake_openai)), None) as engine:
        [r] = engine.generate(endpoint_model(), [request]).results
    body = Scripted.received[0]["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 3 and body["max_tokens"] == 1
    # the 3 most likely kept (the 4th left out); no two entries share a text
    assert r.ok and r.completions[0].logprobs == [{"4": -0.4, "3": -1.2, " 4": -2.0}]
    assert edu.read_result(r).probs[4] == pytest.approx((math.exp(-0.4) + math.exp(-2.0)) / (
        math.exp(-0.4) + math.exp(-2.0) + math.exp(-1.2)))


def test_http_tokens_with_the_same_text_are_merged(fake_openai):
    Scripted.script = [(200, {}, _chat_logprobs([("3", LOG(0.3)), ("3", LOG(0.2)), ("2", LOG(0.1))]))]
    with Engine(HTTPBackend(fast(fake_openai)), None) as engine:
        [r] = engine.generate(endpoint_model(), [Request.chat("Rate.", max_tokens=1, logprobs=3)]).results
    [position] = r.completions[0].logprobs
    assert set(position) == {"3", "2"} and math.exp(position["3"]) == pytest.approx(0.5)


def test_http_completions_ask_with_an_integer_and_read_the_legacy_format(fake_openai):
    payload = {"choices": [{"text": "3", "finish_reason": "length",
                            "logprobs": {"tokens": ["3"], "token_logprobs": [-0.5],
                                         "top_logprobs": [{"3": -0.5, "2": -1.5}]}}],
               "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
    Scripted.script = [(200, {}, payload)]
    with Engine(HTTPBackend(fast(fake_openai)), None) as engine:
        request = Request.completion("Score: ", max_tokens=1, logprobs=2)
        [r] = engine.generate(endpoint_model(), [request]).results
    assert Scripted.received[0]["body"]["logprobs"] == 2 and "top_logprobs" not in Scripted.received[0]["body"]
    assert r.completions[0].logprobs == [{"3": -0.5, "2": -1.5}]


def test_http_without_logprobs_asks_for_none_and_an_answer_missing_them_is_a_clear_error(fake_openai):
    with Engine(HTTPBackend(fast(fake_openai, max_attempts=1)), None) as engine:
        [plain] = engine.generate(endpoint_model(), [Request.chat("hi", max_tokens=4)]).results
        assert plain.ok and plain.completions[0].logprobs is None
        assert not {"logprobs", "top_logprobs"} & set(Scripted.received[0]["body"])
        [missing] = engine.generate(endpoint_model(), [Request.chat("hi", max_tokens=1, logprobs=5)],
                                    fail_on_transient=False).results
    assert missing.error_kind == "server_error" and "top-5 logprobs were asked for" in missing.error


# -- the classifier on the distribution ---------------------------------------------------------------------
def _graded(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings whose first coordinates carry a continuous educational value: (x, labels, expected)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    expected = np.clip(2.5 + 1.2 * x[:, 0] + 0.4 * x[:, 1] + rng.normal(scale=0.2, size=n), 0, 5)
    return x, np.rint(expected).astype(int), expected


def test_linear_head_regresses_the_expected_score_and_forest_classifies_the_label():
    from sklearn.linear_model import Ridge

    x, labels, expected = _graded(300)
    config = clf.ClassifierConfig(num_trees=20, ridge_alpha=1.0, seed=3)
    model = clf.train(x, labels, config, "enc", expected_scores=expected)
    train_rows, _ = clf.split(labels, config.test_fraction, config.seed)
    on_expected = Ridge(alpha=1.0).fit(x[train_rows], expected[train_rows])
    on_labels = Ridge(alpha=1.0).fit(x[train_rows], labels[train_rows])
    np.testing.assert_allclose(model.coef, on_expected.coef_, rtol=1e-5)
    assert not np.allclose(model.coef, on_labels.coef_, rtol=1e-3)  # the target is not the rounded label
    assert set(model.forest.classes_) <= set(range(6)) and model.report["targets"]["forest"] == "label"
    assert model.report["heads"]["linear"]["f1_at_threshold"] > 0.8


def test_f1_interval_is_seeded_and_contains_the_point_estimate():
    x, labels, expected = _graded(400, seed=1)
    config = clf.ClassifierConfig(num_trees=20)
    report = clf.train(x, labels, config, "enc", expected_scores=expected).report
    for head in clf.HEADS:
        m = report["heads"][head]
        assert 0 <= m["f1_ci_low"] <= m["f1_at_threshold"] <= m["f1_ci_high"] <= 1
        assert m["f1_ci_low"] < m["f1_ci_high"]  # 100 test documents: not a point
    again = clf.train(x, labels, config, "enc", expected_scores=expected).report
    assert again["heads"] == report["heads"]
    truth, decided = expected >= 3, x[:, 0] > 0.3
    first = clf.bootstrap_f1(truth, decided, seed=7)
    assert clf.bootstrap_f1(truth, decided, seed=7) == first != clf.bootstrap_f1(truth, decided, seed=8)
    assert clf.bootstrap_f1(truth, truth, seed=7) == (1.0, 1.0)


def test_classifier_rejects_expected_scores_that_do_not_fit():
    x, labels, expected = _graded(40)
    with pytest.raises(ValueError, match="40 labels and 39 expected scores"):
        clf.train(x, labels, clf.ClassifierConfig(), "enc", expected_scores=expected[:39])
    with pytest.raises(ValueError, match="within 0..5"):
        clf.train(x, labels, clf.ClassifierConfig(), "enc", expected_scores=expected + 10)


# -- real annotation: SmolLM2 on vLLM CPU -------------------------------------------------------------------
SMALL_CHARS = 300  # the rubric (~280-370 tokens) plus this fits the session engine's 512-token context


@pytest.fixture(scope="module")
def annotated(smol_backend, smol_dir, tmp_path_factory) -> dict:
    """4 code documents (standard-library files) and 4 web documents (pydoc topics) annotated as
    ``edu_annotations`` does, through the session's engine with a request cache; then once more."""
    from pydoc_data.topics import topics

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:4]
    code = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    web = [topics[name] for name in sorted(topics)[:4]]
    requests = [edu.build_request(edu.load_prompt(source), text, max_chars=SMALL_CHARS)
                for source, texts in (("code", code), ("web", web)) for text in texts]
    model = ModelRef("SmolLM2-135M-Instruct", "test-smol", path=str(smol_dir))
    cache = RequestCache(ArtifactStore(root=str(tmp_path_factory.mktemp("edu") / "artifacts")))
    engine = Engine(smol_backend, cache)  # not closed: the backend outlives this module
    first = engine.generate(model, requests)
    return {"first": first, "again": engine.generate(model, requests)}


@pytest.mark.slow
def test_every_real_document_gets_a_label_distribution(annotated):
    results = annotated["first"].results
    assert len(results) == 8 and annotated["first"].stats.num_cache_hits == 0
    for r in results:
        assert r.ok and r.completions[0].num_tokens == 1 and len(r.completions[0].logprobs) == 1
        assert len(r.completions[0].logprobs[0]) <= edu.TOP_LOGPROBS
        d = edu.read_result(r)
        assert d.status == "ok", (r.text, r.completions[0].logprobs)
        assert sum(d.probs) == pytest.approx(1.0) and 0 < d.label_mass <= 1 + 1e-6
        assert d.expected_score == pytest.approx(sum(k * p for k, p in enumerate(d.probs)))
        assert d.label == int(np.argmax(d.probs)) and 0 <= d.entropy <= math.log(6) + 1e-9


@pytest.mark.slow
def test_real_logprobs_come_back_from_the_cache_identical(annotated):
    again = annotated["again"]
    assert again.stats.num_cache_hits == 8 and all(r.cached for r in again.results)
    assert [r.completions for r in again.results] == [r.completions for r in annotated["first"].results]
