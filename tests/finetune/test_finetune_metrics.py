"""Metrics against hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from vimpac.finetune.errors import FinetuneError
from vimpac.finetune.evaluate import metrics_from_confusion
from vimpac.finetune.metrics import classification_metrics, plot_confusion_matrix, top_k_correct


def test_hand_computed_example():
    # 4 classes, 5 examples. Class 3 never appears as a label.
    scores = np.array([
        [0.7, 0.1, 0.1, 0.1],  # label 0, predicted 0: correct
        [0.1, 0.2, 0.6, 0.1],  # label 1, predicted 2 (1 is 2nd)
        [0.1, 0.6, 0.2, 0.1],  # label 1, predicted 1: correct
        [0.5, 0.3, 0.1, 0.1],  # label 2, predicted 0 (2 ties for 3rd with 3; stable order -> 2 first)
        [0.1, 0.1, 0.7, 0.1],  # label 2, predicted 2: correct
    ])
    labels = np.array([0, 1, 1, 2, 2])
    m = classification_metrics(scores, labels, ["a", "b", "c", "d"])
    assert m.top1 == pytest.approx(3 / 5)
    assert m.top5 == 1.0  # 4 classes: top-5 clips to top-4
    assert m.per_class == {"a": 1.0, "b": 0.5, "c": 0.5, "d": None}
    assert m.mean_class == pytest.approx((1.0 + 0.5 + 0.5) / 3)  # absent class d not counted
    assert m.confusion.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    # top-2 by hand: example 1 (1 is 2nd) yes, example 3: order 0, 1, 2 -> no.
    assert top_k_correct(scores, labels, 2).tolist() == [True, True, True, False, True]
    # The same numbers from summed counts (the distributed validation path).
    assert metrics_from_confusion(m.confusion, top5_correct=5) == pytest.approx(
        {"top1": 0.6, "top5": 1.0, "mean_class": 2 / 3})


def test_top5_with_more_classes():
    scores = np.arange(8, dtype=float)[None].repeat(2, axis=0)  # class 7 best, then 6, ...
    assert top_k_correct(scores, np.array([3, 2]), 5).tolist() == [True, False]


def test_bad_input_is_a_typed_error():
    with pytest.raises(FinetuneError, match="labels must lie"):
        classification_metrics(np.ones((2, 3)), np.array([0, 3]))
    with pytest.raises(FinetuneError, match="class names"):
        classification_metrics(np.ones((2, 3)), np.array([0, 1]), ["a"])


def test_confusion_png_is_written(tmp_path):
    path = plot_confusion_matrix(np.array([[2, 1], [0, 3]]), ["x", "y"], tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
