"""Educational-value annotation and classifier: prompts, requests, sampling, training, metrics.

The label distribution itself (logprobs -> probabilities) is tested in tests/test_edu_distribution.py."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from phi_assets.curation import classifier as clf
from phi_assets.curation import edu


def test_prompts_are_repo_files_with_the_rubric():
    code, web = edu.load_prompt("code"), edu.load_prompt("web")
    assert "basic coding concepts" in code.template and "additive 5-point" in web.template
    assert code.sha256 != web.sha256
    request = edu.build_request(code, "def f():\n    return 1\n" * 200, max_chars=100)
    (_, user), (role, prefill) = request.messages
    assert role == "assistant" and prefill == edu.PREFILL and request.prefilled
    assert "{document}" not in user and len(user) < len(code.template) + 100
    # one greedy token, read through its top-20 log-probabilities
    assert request.sampling.temperature == 0.0 and request.sampling.max_tokens == 1
    assert request.sampling.logprobs == edu.TOP_LOGPROBS == 20


def test_load_prompt_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="edu_poetry.md does not exist"):
        edu.load_prompt("poetry")
    (tmp_path / "edu_code.md").write_text("Rate this.")
    with pytest.raises(ValueError, match="no {document} placeholder"):
        edu.load_prompt("code", tmp_path)


def test_excerpt_cuts_at_a_line_break():
    text = "line one\n" * 100
    cut = edu.excerpt(text, 50)
    assert len(cut) <= 50 and cut.endswith("line one") and text.startswith(cut)
    assert edu.excerpt("short", 50) == "short"


def test_sample_is_deterministic_and_stable_under_growth():
    docs = pl.DataFrame({"id": [f"{i:032x}" for i in range(500)], "row": list(range(500))})
    first = edu.sample_documents(docs, 20, seed=1)
    assert first.equals(edu.sample_documents(docs.reverse(), 20, seed=1))  # order does not matter
    assert not first.equals(edu.sample_documents(docs, 20, seed=2))
    grown = pl.concat(
        [docs, pl.DataFrame({"id": [f"{i:032x}" for i in range(500, 520)], "row": list(range(20))})]
    )
    kept = set(edu.sample_documents(grown, 20, seed=1)["id"]) & set(first["id"])
    assert len(kept) >= 15  # new documents displace only those ranked after them
    with pytest.raises(ValueError, match="sample size"):
        edu.sample_documents(docs, 0)


def _separable(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0-5, embeddings = a direction per label plus noise (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, n)
    centers = rng.normal(size=(6, 32))
    x = centers[labels] + rng.normal(scale=0.3, size=(n, 32))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_classifier_learns_and_reports_held_out_metrics(tmp_path):
    x, y = _separable(240)
    model = clf.train(x, y, clf.ClassifierConfig(num_trees=50), "enc-v1")
    report = model.report
    assert report["num_train"] + report["num_test"] == 240 and report["num_test"] == 60
    assert report["warning"] == ""
    assert sum(report["test_labels"]) == 60
    forest = report["heads"]["forest"]
    assert forest["macro_f1"] > 0.8 and forest["f1_at_threshold"] > 0.8
    assert np.asarray(forest["confusion"]).shape == (6, 6) and np.asarray(forest["confusion"]).sum() == 60
    assert 0 <= report["heads"]["linear"]["f1_at_threshold"] <= 1
    scores = model.score(x[:10])
    assert scores.dtype == np.float32 and ((scores >= 0) & (scores <= 5)).all()
    model.save(tmp_path / "m")
    loaded = clf.EduClassifier.load(tmp_path / "m")
    for head in clf.HEADS:
        np.testing.assert_allclose(loaded.score(x[:10], head), model.score(x[:10], head), rtol=1e-6)
    assert loaded.encoder_version == "enc-v1" and loaded.report == model.report


def test_evaluate_counts_exactly():
    labels = np.array([0, 3, 4, 5, 2, 3])
    scores = np.array([0.2, 2.6, 3.4, 4.9, 3.0, 1.0])  # predicted classes 0 3 3 5 3 1
    m = clf.evaluate(scores, labels, threshold=3)  # no expected scores: the labels are the truth
    # binary: truth (label >= 3) 0 1 1 1 0 1; decided (the score itself >= 3, as the corpus filter keeps)
    # 0 0 1 1 1 0 -> tp 2, fp 1, fn 2 -> F1 4/7
    assert m["f1_at_threshold"] == pytest.approx(4 / 7)
    assert m["f1_ci_low"] <= 4 / 7 <= m["f1_ci_high"]
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["confusion"][3][3] == 1 and m["confusion"][3][1] == 1 and m["confusion"][2][3] == 1
    # with expected scores the truth is "expected >= 3": 0 0 1 1 1 0 -> equals the decisions
    expected = np.array([0.4, 2.9, 3.6, 4.7, 3.2, 2.9])
    assert clf.evaluate(scores, labels, 3, expected)["f1_at_threshold"] == pytest.approx(1.0)


def test_classifier_refuses_too_few_labels_and_bad_config():
    x, y = _separable(3)
    with pytest.raises(ValueError, match="at least 4 annotated documents with status ok"):
        clf.train(x, y, clf.ClassifierConfig(), "v")
    with pytest.raises(ValueError, match="head"):
        clf.ClassifierConfig(head="svm")
    with pytest.raises(ValueError, match="threshold"):
        clf.ClassifierConfig(threshold=7)
    with pytest.raises(ValueError, match="not a saved classifier"):
        clf.EduClassifier.load(__import__("pathlib").Path("/nonexistent"))


def test_single_label_still_trains():
    """A tiny annotator may give one score to everything; the report then shows it, no crash."""
    x, _ = _separable(40)
    model = clf.train(x, np.full(40, 2), clf.ClassifierConfig(num_trees=10), "v")
    assert np.allclose(model.score(x), 2.0)
    assert model.report["heads"]["forest"]["accuracy"] == 1.0
    assert "only 40 annotated documents" in model.report["warning"]  # and the report says how few


def test_classifier_directory_is_copied_once_from_an_object_store(tmp_path, monkeypatch):
    """The k8s profile keeps artifacts on an object store (here fsspec's in-memory one)."""
    import tempfile
    import uuid

    from phi_assets.curation.assets import local_copy
    from resources import ArtifactStore

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = ArtifactStore(root=f"memory://phi-{uuid.uuid4().hex}/artifacts")
    manifest = {"asset": "edu_classifier", "partition": None, "data_version": "v1"}
    where = store.version_path("edu_classifier", None, "v1")
    store.fs.pipe_file(f"{where}/code/classifier.json", b"{}")
    store.fs.pipe_file(f"{where}/code/linear.json", b"[]")
    first = local_copy(store, manifest, "code")
    assert sorted(p.name for p in first.iterdir()) == ["classifier.json", "linear.json"]
    assert str(first).startswith(str(tmp_path)) and local_copy(store, manifest, "code") == first
    assert not [p for p in first.parent.iterdir() if p.name.endswith(".partial")]
