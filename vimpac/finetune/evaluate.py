"""Multi-view evaluation: softmax probabilities averaged over spatial crops x temporal clips.

The paper's protocol (Sec. 4, Table 4): 3 spatial crops (top-left / center / bottom-right of
the frame resized to S, i.e. the store's "s1.00_*" views; the center crop only for datasets
where left / right matters, like SSV2) x 10 uniform temporal clips; the video's prediction is
the mean of the 30 softmax distributions. Up to `max_batch` clips go through the model at once
(several videos share a batch when their views are few; a video with more views takes several
forwards), under `inference_mode`.

    result = evaluate_classifier(model, store, frames=10, temporal_clips=10, spatial_crops=3)
    write_evaluation(result, "runs/ucf101/eval")     # results.json + confusion_matrix.png
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from vimpac.data.clips import uniform_clip_starts
from vimpac.engine import distributed
from vimpac.finetune.errors import FinetuneError
from vimpac.finetune.metrics import ClassificationMetrics, classification_metrics, plot_confusion_matrix
from vimpac.io import atomic_write_json
from vimpac.progress import progress_bar

CENTER_VIEW = "s1.00_center"
THREE_CROP_VIEWS = ("s1.00_top_left", "s1.00_center", "s1.00_bottom_right")
# Clips per forward when none is asked for. On a CPU, forwards of 2-4 clips ran 1.2-1.8x faster
# than forwards of 32 at 1 and 2 threads (docs/benchmarks.md, "Multi-view evaluation"): a big
# batch's activations lie above glibc's mmap threshold and fault in fresh pages on every forward.
# A GPU wants big ones.
CPU_CLIPS_PER_FORWARD = 4
GPU_CLIPS_PER_FORWARD = 32


def clips_per_forward(max_batch: int | None, device: str | torch.device) -> int:
    """`max_batch` checked, or, when None, the default for `device`'s type: CPU_CLIPS_PER_FORWARD
    on a CPU, GPU_CLIPS_PER_FORWARD on anything else."""
    if max_batch is None:
        return CPU_CLIPS_PER_FORWARD if torch.device(device).type == "cpu" else GPU_CLIPS_PER_FORWARD
    if max_batch < 1:
        raise FinetuneError(f"max_batch: expected a positive number of clips, got {max_batch}")
    return max_batch


def evaluation_views(store_views: Sequence[str], spatial_crops: int) -> tuple[str, ...]:
    """The store views to average: 3 crops at scale 1.0, or the center crop alone (also when a
    store has no corner crops, e.g. a "center" store)."""
    if spatial_crops not in (1, 3):
        raise FinetuneError(f"spatial_crops: expected 1 or 3, got {spatial_crops}")
    if spatial_crops == 3 and all(v in store_views for v in THREE_CROP_VIEWS):
        return THREE_CROP_VIEWS
    if CENTER_VIEW in store_views:
        return (CENTER_VIEW,)
    raise FinetuneError(f"store has no {CENTER_VIEW!r} view (views: {list(store_views)}); evaluation "
                        "needs the center crop at scale 1.0")


def video_view_tokens(store, key: str, views: Sequence[str], frames: int, temporal_clips: int) -> np.ndarray:
    """All evaluation inputs of one video: (len(views) * temporal_clips, frames, h, w) int64,
    view-major; clips past a short video's end are [PAD]."""
    out = []
    for view in views:
        index = store.index_of(key, view)
        starts = uniform_clip_starts(store.entry(index).num_frames, frames, temporal_clips)
        out.extend(store.clip(index, int(s), frames) for s in starts)
    return np.stack(out).astype(np.int64)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are: the device the inference helpers use unless told another."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """Eval mode (dropout off, BatchNorm's running statistics) inside; afterwards each module is
    back in its own mode, so that a helper called from a training loop does not leave dropout off."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def average_view_probabilities(model: nn.Module, inputs: torch.Tensor, views_per_video: int,
                               bf16: bool = False) -> torch.Tensor:
    """(V * n, T, h, w) tokens of n videos -> (n, C) mean softmax over each video's V views.

    The softmax is taken in fp32 (logits upcast) so bf16 inference does not bias the average.
    """
    if inputs.shape[0] % views_per_video:
        raise FinetuneError(f"{inputs.shape[0]} inputs are not a whole number of videos of {views_per_video} views")
    with _autocast(inputs.device, bf16):
        logits = model(inputs)
    probs = torch.softmax(logits.float(), dim=-1)
    return probs.view(-1, views_per_video, probs.shape[-1]).mean(dim=1)


@dataclass
class EvaluationResult:
    keys: list[str]
    labels: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, C) averaged over views
    class_names: list[str]
    metrics: ClassificationMetrics
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        predicted = self.probabilities.argmax(axis=1)
        return {
            "settings": self.settings,
            **self.metrics.to_json(self.class_names),
            "predictions": [{"key": k, "label": int(y), "predicted": int(p), "confidence": float(self.probabilities[i, p])}
                            for i, (k, y, p) in enumerate(zip(self.keys, self.labels, predicted))],
        }


def labelled_videos(store, where: str = "store") -> tuple[list[str], np.ndarray]:
    """Keys and labels of a store's videos; every video must be labelled."""
    keys = store.keys()
    labels = []
    for key in keys:
        first = next(iter(store.entries_of(key).values()))
        labels.append(store.entry(first).label)
    missing = [k for k, y in zip(keys, labels) if y is None]
    if missing:
        raise FinetuneError(f"{store.root}: {len(missing)} video(s) of the {where} have no label "
                            f"(first: {missing[0]!r}); fine-tuning and evaluation need a labelled annotation list")
    return keys, np.asarray(labels, dtype=np.int64)


def class_names_of(store, num_classes: int | None = None) -> list[str]:
    names = store.class_names
    if names is None:
        if num_classes is None:
            raise FinetuneError(f"{store.root}: store.json has no class_names; pass the number of classes")
        return [str(i) for i in range(num_classes)]
    return list(names)


@torch.inference_mode()
def predict_videos(model: nn.Module, store, keys: Sequence[str], views: Sequence[str], frames: int,
                   temporal_clips: int, device: str | torch.device | None = None, bf16: bool = False,
                   max_batch: int | None = None, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Averaged class probabilities (len(keys), C) for the given videos of `store`, with the
    model in eval mode (its own mode back afterwards); inputs go to `device` (default: the
    model's). At most `max_batch` clips (None: clips_per_forward's default for the device) go
    through the model at once: the views of several
    videos share a forward when they are few, and a video with more views than that (3 crops x
    10 clips = 30) is scored in several forwards, its probabilities averaged as in one."""
    device = model_device(model) if device is None else torch.device(device)
    max_batch = clips_per_forward(max_batch, device)
    per_video = len(views) * temporal_clips
    videos_per_batch = max(1, max_batch // per_video)
    out = []
    with evaluation_mode(model):
        for start in range(0, len(keys), videos_per_batch):
            chunk = keys[start:start + videos_per_batch]
            tokens = torch.from_numpy(np.concatenate([video_view_tokens(store, k, views, frames, temporal_clips)
                                                      for k in chunk]))
            # Per-clip probabilities, then the mean over each video's views: the same numbers as
            # one forward of all its views, with the memory of `max_batch` clips (a video's 30
            # views at 32 x 32 tokens are gigabytes of activations in fp32 on a CPU).
            probs = torch.cat([average_view_probabilities(model, part.to(device), 1, bf16)
                               for part in tokens.split(max_batch)])
            out.append(probs.view(len(chunk), per_video, -1).mean(dim=1).cpu().numpy())
            if progress is not None:
                progress(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def evaluate_classifier(model: nn.Module, store, frames: int | None = None, temporal_clips: int = 10,
                        spatial_crops: int = 3, device: str | torch.device | None = None, bf16: bool = False,
                        max_batch: int | None = None, progress: bool = False) -> EvaluationResult:
    """Evaluate a classifier on every video of a labelled store with the multi-view protocol.

    The model runs in eval mode and is left in the mode it came in; `device` (default: where the
    model's weights are) is where the inputs go, so the model must be there too.
    In a process group (torchrun) every rank must call it: rank r scores videos r, r + W, ...
    and every rank returns the result over all videos, each counted once."""
    device = model_device(model) if device is None else torch.device(device)
    frames = frames or model.config.max_frames
    if temporal_clips < 1:
        raise FinetuneError(f"temporal_clips: expected >= 1, got {temporal_clips}")
    keys, labels = labelled_videos(store)
    num_classes = model.num_classes
    class_names = class_names_of(store, num_classes)
    if len(class_names) != num_classes:
        raise FinetuneError(f"{store.root}: store has {len(class_names)} classes, the model {num_classes}")
    views = evaluation_views(store.views, spatial_crops)
    dist = distributed.current()
    mine = keys[dist.rank::dist.world_size]
    bar = progress_bar(len(mine), "evaluate" if not dist.enabled else f"evaluate (rank 0 of {dist.world_size})",
                       "video", enabled=progress and dist.is_main)
    try:
        probs = predict_videos(model, store, mine, views, frames, temporal_clips, device, bf16, max_batch,
                               progress=bar.update)
    finally:
        bar.close()
    if dist.enabled:
        rows = torch.from_numpy(probs.reshape(len(mine), num_classes)).to(device)
        probs = distributed.gather_strided_rows(rows, len(keys)).cpu().numpy()
    metrics = classification_metrics(probs, labels, class_names)
    settings = {"store": str(store.root), "views": list(views), "temporal_clips": temporal_clips,
                "frames": frames, "bf16": bf16, "num_videos": len(keys)}
    return EvaluationResult(keys, labels, probs, class_names, metrics, settings)


def write_evaluation(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """results.json (metrics, per-class accuracy, confusion counts, per-video predictions) and
    confusion_matrix.png in `out_dir`, both written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    atomic_write_json(json_path, result.to_json())
    png_path = plot_confusion_matrix(result.metrics.confusion, result.class_names, out_dir / "confusion_matrix.png",
                                     title=f"top-1 {100 * result.metrics.top1:.1f}%  "
                                           f"mean-class {100 * result.metrics.mean_class:.1f}%")
    return {"results": json_path, "confusion_matrix": png_path}


def metrics_from_confusion(confusion: np.ndarray, top5_correct: float) -> dict[str, float]:
    """Top-1 / top-5 / mean-class accuracy from summed counts (used when ranks each evaluate
    a part of the videos and add their confusion matrices)."""
    total = confusion.sum()
    support = confusion.sum(axis=1)
    present = support > 0
    per_class = np.diag(confusion)[present] / support[present]
    return {"top1": float(np.trace(confusion) / max(total, 1)), "top5": float(top5_correct / max(total, 1)),
            "mean_class": float(per_class.mean()) if present.any() else math.nan}
