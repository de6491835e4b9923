"""Frozen-feature evaluations: k-NN and a linear probe on CLS features. No fine-tuning, so they
are cheap enough to run periodically during pre-training as signals of representation quality.

    train = extract_features(backbone, train_store, frames=5, temporal_clips=4)
    val = extract_features(backbone, val_store, frames=5, temporal_clips=4)
    knn = knn_evaluate(train, val, k=20)            # {"top1": ..., "top5": ..., ...}
    lin = linear_probe_evaluate(train, val)

Features: the backbone's CLS output for the store's center view (scale 1.0), averaged over N
uniform temporal clips. k-NN follows the usual monitor (Wu et al. 2018, also DINO's):
L2-normalised features, cosine similarity, the k nearest training videos vote for their class
with weight exp(similarity / temperature). The linear probe is multinomial logistic regression
on standardised features, trained full-batch with L-BFGS (deterministic, a few hundred
iterations, L2 penalty) or AdamW.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vimpac.data.clips import uniform_clip_starts
from vimpac.finetune.errors import FinetuneError
from vimpac.finetune.evaluate import CENTER_VIEW, clips_per_forward, model_device
from vimpac.finetune.metrics import classification_metrics
from vimpac.progress import progress_bar


@dataclass
class FeatureSet:
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64, -1 for unlabelled videos
    keys: list[str]
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.features.ndim != 2 or self.labels.shape != (self.features.shape[0],):
            raise FinetuneError(f"features must be (N, D) with N labels, got {self.features.shape} and {self.labels.shape}")


def _backbone_of(model: nn.Module) -> nn.Module:
    return getattr(model, "backbone", model)


@torch.inference_mode()
def extract_features(model: nn.Module, store, frames: int | None = None, temporal_clips: int = 4,
                     view: str = CENTER_VIEW, device: str | torch.device | None = None, bf16: bool = False,
                     max_batch: int | None = None, progress: bool = False) -> FeatureSet:
    """CLS features of every video of `store` (one view, uniform clips averaged).

    `model` is a backbone or any model with a `.backbone` (pre-training or classification), run
    in eval mode (its own mode back afterwards) on `device` (default: where its weights are).
    `progress`: count the videos on stderr ("features <store folder>")."""
    backbone = _backbone_of(model)
    frames = frames or backbone.config.max_frames
    device = model_device(backbone) if device is None else torch.device(device)
    max_batch = clips_per_forward(max_batch, device)  # None: the device's default
    if view not in store.views:
        raise FinetuneError(f"{store.root}: no {view!r} view for features (views: {list(store.views)})")
    was_training = backbone.training
    backbone.eval()
    keys = store.keys()
    labels = np.empty(len(keys), dtype=np.int64)
    inputs, features = [], []
    per_batch = max(1, max_batch // temporal_clips)
    bar = progress_bar(len(keys), f"features {Path(store.root).name}", "video", enabled=progress)

    def flush() -> None:
        if not inputs:
            return
        tokens = torch.from_numpy(np.concatenate(inputs).astype(np.int64))
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:  # at most max_batch clips a forward, also when one video has more clips
            cls = torch.cat([backbone(part.to(device))[0].float() for part in tokens.split(max_batch)])
        features.append(cls.view(-1, temporal_clips, cls.shape[-1]).mean(dim=1).cpu().numpy())
        bar.update(len(inputs))
        inputs.clear()

    for v, key in enumerate(keys):
        index = store.index_of(key, view)
        entry = store.entry(index)
        labels[v] = -1 if entry.label is None else entry.label
        starts = uniform_clip_starts(entry.num_frames, frames, temporal_clips)
        inputs.append(np.stack([store.clip(index, int(s), frames) for s in starts]))
        if len(inputs) >= per_batch:
            flush()
    flush()
    bar.close()
    backbone.train(was_training)
    dim = backbone.config.dim
    matrix = np.concatenate(features) if features else np.zeros((0, dim), dtype=np.float32)
    return FeatureSet(matrix, labels, keys, list(store.class_names) if store.class_names else None)


# ---------------------------------------------------------------------------------------- k-NN

def knn_scores(train_features: np.ndarray | torch.Tensor, train_labels: np.ndarray | torch.Tensor,
               query_features: np.ndarray | torch.Tensor, num_classes: int, k: int = 20,
               temperature: float = 0.07, chunk: int = 1024) -> np.ndarray:
    """Class scores (M, C): the k most cosine-similar training features vote with weight
    exp(similarity / temperature). Scores of each row sum to 1."""
    train = F.normalize(torch.as_tensor(train_features, dtype=torch.float32), dim=1)
    query = F.normalize(torch.as_tensor(query_features, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(train_labels, dtype=torch.int64)
    if train.shape[0] == 0:
        raise FinetuneError("k-NN: no training features")
    if train.shape[1] != query.shape[1]:
        raise FinetuneError(f"k-NN: training features have {train.shape[1]} dims, queries {query.shape[1]}")
    k = min(k, train.shape[0])
    out = []
    for start in range(0, query.shape[0], chunk):
        similarity = query[start:start + chunk] @ train.T
        top_sim, top_idx = similarity.topk(k, dim=1)
        # Shifted by each row's best similarity: the normalised votes are the same, and exp cannot
        # overflow (float32 exp(1 / temperature) is inf for temperatures below ~0.0113).
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        votes = torch.zeros(top_idx.shape[0], num_classes)
        votes.scatter_add_(1, labels[top_idx], weights)
        out.append(votes / votes.sum(dim=1, keepdim=True))
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes), dtype=np.float32)


def _labelled(features: FeatureSet, name: str) -> FeatureSet:
    keep = features.labels >= 0
    if not keep.any():
        raise FinetuneError(f"{name}: no labelled videos")
    return FeatureSet(features.features[keep], features.labels[keep], [k for k, m in zip(features.keys, keep) if m],
                      features.class_names)


def check_same_classes(train_names: Sequence[str] | None, val_names: Sequence[str] | None,
                       train_store: str | Path | None = None, val_store: str | Path | None = None) -> None:
    """Label i must name the same class in both sets (when both name their classes): otherwise
    a probe or a fine-tuning run's validation compares ids that mean different classes and its
    accuracy means nothing. `train_store` / `val_store`, when given, are named in the error."""
    if train_names is not None and val_names is not None and list(train_names) != list(val_names):
        differ = next((i for i, (a, b) in enumerate(zip(train_names, val_names)) if a != b), None)
        detail = (f"label {differ} is {train_names[differ]!r} in training, {val_names[differ]!r} in validation"
                  if differ is not None else f"{len(train_names)} training vs {len(val_names)} validation classes")
        which = (f"the class names of the training store {train_store} and the validation store {val_store}"
                 if train_store is not None and val_store is not None else "the training and validation class names")
        raise FinetuneError(f"{which} differ ({detail}); "
                            "use stores tokenized with the same class list (tokenize --class-names)")


def _num_classes(train: FeatureSet, val: FeatureSet) -> int:
    check_same_classes(train.class_names, val.class_names)
    if train.class_names:
        return len(train.class_names)
    return int(max(train.labels.max(), val.labels.max())) + 1


def knn_evaluate(train: FeatureSet, val: FeatureSet, k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    """k-NN accuracy of `val` against `train` (top-1, top-5, mean-class)."""
    train, val = _labelled(train, "k-NN training set"), _labelled(val, "k-NN validation set")
    num_classes = _num_classes(train, val)
    scores = knn_scores(train.features, train.labels, val.features, num_classes, k, temperature)
    return {**classification_metrics(scores, val.labels).summary(), "k": k, "temperature": temperature}


# ------------------------------------------------------------------------------ linear probe

@dataclass
class LinearProbe:
    """Logistic regression on standardised features: softmax(((x - mean) / std) @ W.T + b)."""

    mean: torch.Tensor
    std: torch.Tensor
    linear: nn.Linear

    @torch.no_grad()
    def scores(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        x = (torch.as_tensor(features, dtype=torch.float32) - self.mean) / self.std
        return torch.softmax(self.linear(x), dim=1).numpy()


def train_linear_probe(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, num_classes: int,
                       method: Literal["lbfgs", "adamw"] = "lbfgs", steps: int = 300,
                       weight_decay: float = 1e-4, lr: float | None = None, seed: int = 0) -> LinearProbe:
    """Fit a linear classifier full-batch. L-BFGS (strong-Wolfe line search) converges in a few
    hundred iterations on probe-sized problems; AdamW is there for very large feature sets."""
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise FinetuneError(f"linear probe: expected features (N, D) and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise FinetuneError(f"linear probe: weight_decay (the L2 penalty) must be a finite number >= 0, got {weight_decay}")
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.01, generator=generator)
        linear.bias.zero_()

    def objective() -> torch.Tensor:
        return F.cross_entropy(linear(x), y) + weight_decay * linear.weight.pow(2).sum()

    if method == "lbfgs":
        optimizer = torch.optim.LBFGS(linear.parameters(), lr=lr or 1.0, max_iter=steps,
                                      history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        optimizer.step(closure)
    elif method == "adamw":
        optimizer = torch.optim.AdamW(linear.parameters(), lr=lr or 1e-2, weight_decay=0.0)
        for _ in range(steps):
            optimizer.zero_grad()
            objective().backward()
            optimizer.step()
    else:
        raise FinetuneError(f"linear probe method: expected 'lbfgs' or 'adamw', got {method!r}")
    linear.requires_grad_(False)
    return LinearProbe(mean, std, linear)


def linear_probe_evaluate(train: FeatureSet, val: FeatureSet, method: Literal["lbfgs", "adamw"] = "lbfgs",
                          steps: int = 300, weight_decay: float = 1e-4) -> dict[str, float]:
    """Train on `train`, report accuracy on `val` (top-1, top-5, mean-class) and train top-1."""
    train, val = _labelled(train, "linear-probe training set"), _labelled(val, "linear-probe validation set")
    num_classes = _num_classes(train, val)
    probe = train_linear_probe(train.features, train.labels, num_classes, method, steps, weight_decay)
    result = classification_metrics(probe.scores(val.features), val.labels).summary()
    train_top1 = float((probe.scores(train.features).argmax(1) == train.labels).mean())
    # "optimizer", not "method": `vimpac probe` reports its --method ("linear") under that key.
    return {**result, "train_top1": train_top1, "optimizer": method, "steps": steps, "weight_decay": weight_decay}


__all__ = ["FeatureSet", "LinearProbe", "check_same_classes", "extract_features", "knn_evaluate", "knn_scores",
           "linear_probe_evaluate", "train_linear_probe"]
