"""The educational-value classifier: two heads on frozen sentence embeddings, with a held-out report.

The annotations are label distributions (``edu.LabelDistribution``): each document has a label
(the argmax) and an expected score (sum of k * p_k, continuous).

- ``forest``: a random forest classifier on the labels, as phi-1 (section 2.1) trained on GPT-4
  annotations; its score is the expected label under the predicted class probabilities.
- ``linear``: a ridge regression head on the expected scores, as FineWeb-Edu's classifier (a linear
  regression head on frozen embeddings, trained on a continuous target); its score is the
  prediction clipped to 0-5.

``train`` holds out a stratified ``test_fraction`` of the annotated documents (stratified by label
when every label has two examples; a plain seeded split otherwise), fits both heads on the rest and
reports per head: F1 of the binary decision "score >= threshold" (the score itself, not rounded: what
``filtered_*_corpus`` keeps) against the truth "expected score >= threshold" (FineWeb-Edu reports F1
at 3), with a 95% bootstrap interval over the test documents (``BOOTSTRAP_RESAMPLES`` seeded
resamples: ``f1_ci_low``, ``f1_ci_high``); and against the labels,
macro-F1 over 0-5, accuracy and the 6x6 confusion matrix (rows: annotated label, columns: predicted
label = the score rounded). ``EduClassifier.save`` writes ``forest.joblib``, ``linear.json`` and
``classifier.json`` into a directory; ``load`` reads them back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HEADS = ("forest", "linear")
LABELS = list(range(6))
MIN_LABELLED = 4  # three to train on and one to test: anything less cannot be split
FEW_LABELLED = 50  # below this the report carries a warning: metrics on a handful of test documents
BOOTSTRAP_RESAMPLES = 1000  # resamples of the test documents behind the F1 interval
BOOTSTRAP_CHUNK = 100  # resamples drawn at once: memory ~ chunk x test documents


@dataclass(frozen=True)
class ClassifierConfig:
    head: str = "forest"  # the head that scores the corpora
    threshold: float = 3.0  # keep documents scoring at or above this (FineWeb-Edu: 3); F1 is reported here
    test_fraction: float = 0.25
    num_trees: int = 200
    ridge_alpha: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"ClassifierConfig.head={self.head!r}; choose one of {HEADS}")
        if not 0 <= self.threshold <= 5:
            raise ValueError(f"ClassifierConfig.threshold must be within 0..5, got {self.threshold}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"ClassifierConfig.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.num_trees < 1 or self.ridge_alpha < 0:
            raise ValueError("ClassifierConfig.num_trees must be >= 1 and ridge_alpha >= 0")


@dataclass
class EduClassifier:
    forest: Any  # sklearn RandomForestClassifier
    coef: np.ndarray  # linear head: (dim,)
    intercept: float
    config: ClassifierConfig
    encoder_version: str
    report: dict[str, Any] = field(default_factory=dict)

    def score(self, embeddings: np.ndarray, head: str | None = None) -> np.ndarray:
        """Educational value in [0, 5] for each row of ``embeddings`` (float32, (n, dim))."""
        head = head or self.config.head
        if len(embeddings) == 0:
            return np.zeros(0, dtype=np.float32)
        if head == "forest":
            proba = self.forest.predict_proba(embeddings)  # (n, num_classes_seen)
            return (proba @ self.forest.classes_.astype(np.float64)).astype(np.float32)
        if head == "linear":
            return np.clip(embeddings @ self.coef + self.intercept, 0, 5).astype(np.float32)
        raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")

    def save(self, directory: Path) -> None:
        import joblib

        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.forest, directory / "forest.joblib")
        (directory / "linear.json").write_text(
            json.dumps({"coef": self.coef.tolist(), "intercept": self.intercept})
        )
        (directory / "classifier.json").write_text(
            json.dumps(
                {"config": asdict(self.config), "encoder_version": self.encoder_version, "report": self.report},
                indent=1,
            )
        )

    @classmethod
    def load(cls, directory: Path) -> EduClassifier:
        import joblib

        directory = Path(directory)
        missing = [
            n for n in ("forest.joblib", "linear.json", "classifier.json") if not (directory / n).is_file()
        ]
        if missing:
            raise ValueError(f"{directory} is not a saved classifier: missing {', '.join(missing)}")
        info = json.loads((directory / "classifier.json").read_text())
        linear = json.loads((directory / "linear.json").read_text())
        return cls(
            joblib.load(directory / "forest.joblib"),
            np.asarray(linear["coef"], dtype=np.float32),
            float(linear["intercept"]),
            ClassifierConfig(**info["config"]),
            info["encoder_version"],
            info["report"],
        )


def split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices; stratified when every label has at least two examples."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    counts = np.bincount(labels, minlength=6)
    stratify = labels if counts[counts > 0].min() >= 2 and len(np.unique(labels)) > 1 else None
    n_test = max(1, round(len(rows) * test_fraction))
    if stratify is not None and n_test < len(np.unique(labels)):
        stratify = None  # too few test rows to hold one of each label
    train, test = train_test_split(rows, test_size=n_test, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


def f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of boolean decisions; 0 when there is nothing to find and nothing was found (as sklearn's
    ``zero_division=0``)."""
    tp, fp, fn = (truth & predicted).sum(), (~truth & predicted).sum(), (truth & ~predicted).sum()
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def bootstrap_f1(truth: np.ndarray, predicted: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of F1 over ``resamples`` resamples (with replacement) of the documents; the
    same for the same ``seed``."""
    n = len(truth)
    if n == 0:
        raise ValueError("bootstrap_f1 needs at least one document")
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        rows = rng.integers(0, n, size=(min(BOOTSTRAP_CHUNK, resamples - start), n))
        t, p = truth[rows], predicted[rows]  # (chunk, n)
        tp, fp, fn = (t & p).sum(1), (~t & p).sum(1), (t & ~p).sum(1)
        denominator = 2 * tp + fp + fn
        values.append(np.divide(2 * tp, denominator, out=np.zeros(len(rows)), where=denominator > 0))
    low, high = np.percentile(np.concatenate(values), [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float, expected: np.ndarray | None = None,
             seed: int = 0) -> dict[str, Any]:
    """F1 at ``threshold`` (truth: ``expected`` score >= threshold; the labels when no expected scores
    are given) with its bootstrap interval; macro-F1 and accuracy over 0-5 and the confusion matrix
    (rows: truth) against the labels."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    expected = labels.astype(np.float64) if expected is None else np.asarray(expected, dtype=np.float64)
    truth, decided = expected >= threshold, np.asarray(scores) >= threshold
    low, high = bootstrap_f1(truth, decided, seed=seed)
    predicted = np.clip(np.rint(scores), 0, 5).astype(int)
    present = sorted(set(labels.tolist()) | set(predicted.tolist()))
    return {
        "f1_at_threshold": f1(truth, decided),
        "f1_ci_low": low,
        "f1_ci_high": high,
        "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "confusion": confusion_matrix(labels, predicted, labels=LABELS).tolist(),
    }


def train(
    embeddings: np.ndarray, labels: np.ndarray, config: ClassifierConfig, encoder_version: str,
    expected_scores: np.ndarray | None = None,
) -> EduClassifier:
    """Fit both heads on a held-out split: the forest on ``labels`` (0-5), the linear head on
    ``expected_scores`` (continuous, 0-5; the labels when not given). The report holds each head's
    test metrics."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import Ridge

    labels = np.asarray(labels, dtype=int)
    expected = labels.astype(np.float64) if expected_scores is None else np.asarray(expected_scores, np.float64)
    if len(labels) < MIN_LABELLED:
        raise ValueError(
            f"the classifier needs at least {MIN_LABELLED} annotated documents with status ok, "
            f"got {len(labels)}; annotate a larger sample"
        )
    if len(expected) != len(labels) or len(embeddings) != len(labels):
        raise ValueError(f"the classifier got {len(embeddings)} embeddings, {len(labels)} labels and "
                         f"{len(expected)} expected scores; they must be one per document")
    if not np.all(np.isfinite(expected) & (expected >= 0) & (expected <= 5)):
        raise ValueError("expected scores must be finite and within 0..5 (the annotations' expected_score)")
    train_rows, test_rows = split(labels, config.test_fraction, config.seed)
    forest = RandomForestClassifier(
        n_estimators=config.num_trees, random_state=config.seed, class_weight="balanced", n_jobs=1
    )
    forest.fit(embeddings[train_rows], labels[train_rows])
    ridge = Ridge(alpha=config.ridge_alpha).fit(embeddings[train_rows], expected[train_rows])
    model = EduClassifier(
        forest, ridge.coef_.astype(np.float32), float(ridge.intercept_), config, encoder_version
    )
    test_labels, test_expected = labels[test_rows], expected[test_rows]
    model.report = {
        "warning": (f"only {len(labels)} annotated documents with status ok: the held-out metrics "
                    f"rest on {len(test_rows)} documents" if len(labels) < FEW_LABELLED else ""),
        "num_train": len(train_rows),
        "num_test": len(test_rows),
        "train_labels": np.bincount(labels[train_rows], minlength=6).tolist(),
        "test_labels": np.bincount(test_labels, minlength=6).tolist(),
        "test_mean_expected_score": round(float(test_expected.mean()), 4),
        "targets": {"forest": "label", "linear": "expected_score"},
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "heads": {
            head: evaluate(model.score(embeddings[test_rows], head), test_labels, config.threshold,
                           test_expected, seed=config.seed)
            for head in HEADS
        },
    }
    return model
