"""Classification metrics of averaged video predictions, and the confusion-matrix picture.

Conventions (as in the action-recognition literature the paper compares with):
- top-k accuracy: the true class is among the k highest scores (ties broken by class index,
  via a stable sort, so the numbers do not depend on the sorting implementation);
- mean-class accuracy: the mean over classes *present in the labels* of per-class top-1
  accuracy (classes without examples would otherwise count as 0 or NaN);
- confusion matrix: rows are true classes, columns predicted classes, entries are counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vimpac.finetune.errors import FinetuneError


@dataclass
class ClassificationMetrics:
    top1: float
    top5: float
    mean_class: float
    per_class: dict[str, float | None]  # class name -> top-1 accuracy (None: no examples)
    confusion: np.ndarray  # (C, C) int64 counts, rows = true class
    num_examples: int

    def summary(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5, "mean_class": self.mean_class}

    def to_json(self, class_names: Sequence[str]) -> dict:
        return {"num_examples": self.num_examples, **self.summary(), "per_class": self.per_class,
                "confusion_matrix": {"classes": list(class_names), "rows_are": "true class",
                                     "counts": self.confusion.tolist()}}


def top_k_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N,): whether labels[i] is among the k best scores of row i (k clipped to C)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (order == labels[:, None]).any(axis=1)


def classification_metrics(scores: np.ndarray, labels: np.ndarray,
                           class_names: Sequence[str] | None = None) -> ClassificationMetrics:
    """Top-1 / top-5 / mean-class accuracy, per-class accuracy and the confusion matrix.

    scores: (N, C) probabilities or logits; labels: (N,) ints in [0, C).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise FinetuneError(f"metrics: expected scores (N, C) and labels (N,), got {scores.shape} and {labels.shape}")
    num, num_classes = scores.shape
    if num == 0:
        raise FinetuneError("metrics: no examples to score")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise FinetuneError(f"metrics: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise FinetuneError(f"metrics: {len(names)} class names for {num_classes} score columns")
    predicted = np.argsort(-scores, axis=1, kind="stable")[:, 0]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    per_class: dict[str, float | None] = {}
    for c, name in enumerate(names):
        per_class[name] = float(confusion[c, c] / support[c]) if support[c] else None
    present = [v for v in per_class.values() if v is not None]
    return ClassificationMetrics(
        top1=float(top_k_correct(scores, labels, 1).mean()),
        top5=float(top_k_correct(scores, labels, 5).mean()),
        mean_class=float(np.mean(present)),
        per_class=per_class,
        confusion=confusion,
        num_examples=num,
    )


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], path: str | Path,
                          title: str = "confusion matrix") -> Path:
    """Row-normalised confusion matrix as a PNG (written atomically). Class labels are drawn
    only up to 60 classes; beyond that the picture is a heat map without tick labels."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    from vimpac.io import atomic_path

    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    n = len(class_names)
    side = min(4 + 0.3 * n, 24)
    fig, ax = plt.subplots(figsize=(side, side))
    try:
        image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
        if n <= 60:
            ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=7)
            ax.set_yticks(range(n), labels=list(class_names), fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path
