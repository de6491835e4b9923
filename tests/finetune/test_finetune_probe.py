"""k-NN and the linear probe: near 100% on separable features, near chance on random ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vimpac.cli import main
from vimpac.finetune.errors import FinetuneError
from vimpac.finetune.probe import (FeatureSet, extract_features, knn_evaluate, knn_scores, linear_probe_evaluate,
                                  train_linear_probe)
from vimpac.model import VimpacForPretraining
from vimpac.store import TokenStore

sys.path.insert(0, str(Path(__file__).parent))
from finetune_helpers import make_store, tiny_model_config  # noqa: E402

CLASSES, DIM = 5, 16


def features(seed: int, per_class: int, separable: bool) -> FeatureSet:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CLASSES), per_class)
    x = rng.normal(size=(len(labels), DIM))
    if separable:
        centers = np.random.default_rng(100).normal(size=(CLASSES, DIM)) * 4.0  # same centers for both splits
        x = x + centers[labels]
    return FeatureSet(x, labels, [str(i) for i in range(len(labels))])


@pytest.mark.parametrize("evaluate", [knn_evaluate, linear_probe_evaluate])
def test_separable_features_are_classified(evaluate):
    result = evaluate(features(0, 40, True), features(1, 20, True))
    assert result["top1"] >= 0.98


@pytest.mark.parametrize("evaluate", [knn_evaluate, linear_probe_evaluate])
def test_random_features_give_chance(evaluate):
    result = evaluate(features(0, 60, False), features(1, 60, False))
    # chance is 0.2; 300 validation examples give a standard deviation of about 0.023
    assert 0.1 <= result["top1"] <= 0.32


def test_knn_votes_by_hand():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([0, 0, 1])
    scores = knn_scores(train, labels, np.array([[1.0, 0.05]]), num_classes=2, k=2, temperature=0.5)
    assert scores[0].tolist() == [1.0, 0.0]  # both neighbours are class 0
    scores = knn_scores(train, labels, np.array([[0.6, 0.8]]), num_classes=2, k=3, temperature=1.0)
    norm = np.array([[1.0, 0.0], [0.9, 0.1] / np.hypot(0.9, 0.1), [0.0, 1.0]])
    weights = np.exp(norm @ np.array([0.6, 0.8]))
    np.testing.assert_allclose(scores[0], [weights[:2].sum() / weights.sum(), weights[2] / weights.sum()], rtol=1e-5)


def test_probe_on_a_store_through_the_cli(tmp_path, capsys):
    torch.manual_seed(0)
    VimpacForPretraining(tiny_model_config()).save_pretrained(tmp_path / "pt")
    train = make_store(tmp_path / "train", num_videos=9, seed=1)
    val = make_store(tmp_path / "val", num_videos=6, seed=2)
    store = TokenStore.open(train)
    fs = extract_features(VimpacForPretraining.from_pretrained(tmp_path / "pt"), store, frames=4, temporal_clips=2)
    assert fs.features.shape == (9, 32) and fs.labels.tolist() == [i % 3 for i in range(9)]
    for method in ("knn", "linear"):
        out = tmp_path / f"{method}.json"
        code = main(["probe", "--checkpoint", str(tmp_path / "pt"), "--train-store", str(train), "--val-store", str(val),
                     "--method", method, "--k", "3", "--frames", "4", "--temporal-clips", "2", "--out", str(out)])
        assert code == 0
        report = json.loads(out.read_text())
        assert 0.0 <= report["top1"] <= 1.0
        assert report["method"] == method  # the linear probe's optimizer name used to overwrite it
    assert report["optimizer"] == "lbfgs"


@pytest.mark.parametrize("weight_decay", ["-1", "nan"])
def test_probe_refuses_a_negative_or_nan_weight_decay(tmp_path, capsys, weight_decay):
    # Both used to end in an L-BFGS overflow traceback after the features were extracted.
    with pytest.raises(SystemExit):
        main(["probe", "--checkpoint", str(tmp_path / "pt"), "--train-store", str(tmp_path / "train"),
              "--val-store", str(tmp_path / "val"), "--method", "linear", "--weight-decay", weight_decay])
    assert "--weight-decay: expected a" in capsys.readouterr().err
    x, y = np.random.default_rng(0).normal(size=(8, 3)), np.arange(8) % 2
    with pytest.raises(FinetuneError, match="weight_decay"):
        train_linear_probe(x, y, 2, weight_decay=float(weight_decay))


def reference_knn_scores(train: np.ndarray, labels: np.ndarray, query: np.ndarray, num_classes: int, k: int,
                         temperature: float) -> np.ndarray:
    """k-NN votes computed directly in float64, one query at a time."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    out = np.zeros((len(query), num_classes))
    for i, q in enumerate(query):
        similarity = train @ q
        for j in np.argsort(-similarity, kind="stable")[:k]:
            out[i, labels[j]] += np.exp((similarity[j] - similarity.max()) / temperature)
        out[i] /= out[i].sum()
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.07, 0.01, 0.001])
def test_knn_scores_match_a_direct_reference_also_at_low_temperature(temperature):
    # Below a temperature of ~0.0113, exp(similarity / temperature) overflowed float32: every
    # score was NaN and top-1 collapsed to whatever NaN sorting gave.
    rng = np.random.default_rng(0)
    train, labels, query = rng.normal(size=(30, 6)), rng.integers(0, 4, 30), rng.normal(size=(9, 6))
    scores = knn_scores(train, labels, query, num_classes=4, k=7, temperature=temperature)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, reference_knn_scores(train, labels, query, 4, 7, temperature), atol=1e-5)


def test_probe_refuses_stores_whose_class_names_differ(tmp_path, capsys):
    # Label 0 meant "class0" in training and "class2" in validation: the probe used to score the
    # ids as if they named the same classes (`vimpac finetune` already refused such stores).
    VimpacForPretraining(tiny_model_config()).save_pretrained(tmp_path / "pt")
    train = make_store(tmp_path / "train", num_videos=6, seed=1)
    val = make_store(tmp_path / "val", num_videos=6, seed=2)
    meta = json.loads((val / "store.json").read_text())
    meta["class_names"] = ["class2", "class1", "class0"]
    (val / "store.json").write_text(json.dumps(meta))
    code = main(["probe", "--checkpoint", str(tmp_path / "pt"), "--train-store", str(train), "--val-store", str(val),
                 "--frames", "4", "--temporal-clips", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"training store {train} and the validation store {val} differ" in err
    assert "label 0 is 'class0' in training, 'class2' in validation" in err
    named = features(0, 4, True)
    named.class_names = [f"c{i}" for i in range(CLASSES)]
    renamed = features(1, 4, True)
    renamed.class_names = [f"c{i}" for i in reversed(range(CLASSES))]
    with pytest.raises(FinetuneError, match="class names differ"):
        knn_evaluate(named, renamed)


@pytest.mark.parametrize("field,other", [("fps", dict(fps=4.0)), ("size", dict(grid=(6, 6)))])
def test_probe_refuses_stores_of_another_fps_or_frame_size(tmp_path, capsys, field, other):
    # k-NN between features of 2 fps training clips and 4 fps validation clips compared unlike
    # things: the probe ran and reported a meaningless accuracy. Another frame size ended in a
    # shape error from inside the model.
    VimpacForPretraining(tiny_model_config()).save_pretrained(tmp_path / "pt")
    train = make_store(tmp_path / "train", num_videos=6, seed=1)
    val = make_store(tmp_path / "val", num_videos=6, seed=2, **other)
    code = main(["probe", "--checkpoint", str(tmp_path / "pt"), "--train-store", str(train), "--val-store", str(val),
                 "--frames", "4", "--temporal-clips", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(val) in err and f"{field}=" in err and len(err.strip().splitlines()) == 1


def test_probe_counts_the_videos_of_its_feature_extraction(tmp_path, capsys):
    # Minutes of feature extraction showed nothing; in a log file (pytest's stderr is no
    # terminal either) the count is whole lines, and --no-progress keeps it quiet.
    torch.manual_seed(0)
    VimpacForPretraining(tiny_model_config()).save_pretrained(tmp_path / "pt")
    train = make_store(tmp_path / "train", num_videos=9, seed=1)
    val = make_store(tmp_path / "val", num_videos=6, seed=2)
    argv = ["probe", "--checkpoint", str(tmp_path / "pt"), "--train-store", str(train), "--val-store", str(val),
            "--k", "3", "--frames", "4", "--temporal-clips", "2"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    finals = [line.split(",")[0] for line in err.splitlines() if line.startswith("features ") and "(100%)" in line]
    assert finals == ["features train: 9/9 video (100%)", "features val: 6/6 video (100%)"]
    assert main([*argv, "--no-progress"]) == 0
    assert "features" not in capsys.readouterr().err


def test_feature_extraction_caps_the_clips_of_a_forward_also_within_a_video(tmp_path):
    """6 clips per video with max_batch 4: forwards of 4 and 2 clips (one of 6 before, whatever
    max_batch said), and the features of one forward per video."""
    store = TokenStore.open(make_store(tmp_path / "s", num_videos=3))
    torch.manual_seed(0)
    model = VimpacForPretraining(tiny_model_config()).eval()
    sizes = []
    model.backbone.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    whole = extract_features(model, store, frames=4, temporal_clips=6, max_batch=18)
    assert sizes == [18]
    sizes.clear()
    split = extract_features(model, store, frames=4, temporal_clips=6, max_batch=4)
    assert sizes == [4, 2] * 3
    np.testing.assert_allclose(split.features, whole.features, rtol=1e-5, atol=1e-6)
