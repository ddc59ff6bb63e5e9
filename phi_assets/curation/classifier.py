"""The educational-value classifier: two heads on frozen sentence embeddings, with a held-out report.

- ``forest``: a random forest classifier on the embeddings, as phi-1 (section 2.1) trained on
  GPT-4 annotations; its score is the expected label under the predicted class probabilities.
- ``linear``: a ridge regression head, as FineWeb-Edu's classifier (a linear regression head on
  frozen embeddings); its score is the prediction clipped to 0-5.

``train`` holds out a stratified ``test_fraction`` of the labelled documents (when every label has
two examples; a plain seeded split otherwise), fits both heads on the rest and reports per head:
F1 of the binary decision "score >= threshold" (FineWeb-Edu reports F1 at 3), macro-F1 over the
0-5 labels, accuracy and the 6x6 confusion matrix (rows: annotated label, columns: predicted
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


@dataclass(frozen=True)
class ClassifierConfig:
    head: str = "forest"  # the head that scores the corpora
    threshold: float = 3.0  # keep documents scoring at or above this (FineWeb-Edu: 3)
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


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """F1 at ``threshold``, macro-F1 and accuracy over 0-5, the confusion matrix (rows: truth)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    predicted = np.clip(np.rint(scores), 0, 5).astype(int)
    present = sorted(set(labels.tolist()) | set(predicted.tolist()))
    return {
        "f1_at_threshold": float(f1_score(labels >= threshold, predicted >= threshold, zero_division=0)),
        "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "confusion": confusion_matrix(labels, predicted, labels=LABELS).tolist(),
    }


def train(
    embeddings: np.ndarray, labels: np.ndarray, config: ClassifierConfig, encoder_version: str
) -> EduClassifier:
    """Fit both heads on a held-out split; the report holds each head's test metrics."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import Ridge

    labels = np.asarray(labels, dtype=int)
    if len(labels) < MIN_LABELLED:
        raise ValueError(
            f"the classifier needs at least {MIN_LABELLED} annotated documents with a "
            f"parseable score, got {len(labels)}; annotate a larger sample"
        )
    train_rows, test_rows = split(labels, config.test_fraction, config.seed)
    forest = RandomForestClassifier(
        n_estimators=config.num_trees, random_state=config.seed, class_weight="balanced", n_jobs=1
    )
    forest.fit(embeddings[train_rows], labels[train_rows])
    ridge = Ridge(alpha=config.ridge_alpha).fit(embeddings[train_rows], labels[train_rows])
    model = EduClassifier(
        forest, ridge.coef_.astype(np.float32), float(ridge.intercept_), config, encoder_version
    )
    model.report = {
        "warning": (f"only {len(labels)} annotated documents with a parseable score: the held-out metrics "
                    f"rest on {len(test_rows)} documents" if len(labels) < FEW_LABELLED else ""),
        "num_train": len(train_rows),
        "num_test": len(test_rows),
        "train_labels": np.bincount(labels[train_rows], minlength=6).tolist(),
        "test_labels": np.bincount(labels[test_rows], minlength=6).tolist(),
        "heads": {
            head: evaluate(model.score(embeddings[test_rows], head), labels[test_rows], config.threshold)
            for head in HEADS
        },
    }
    return model
