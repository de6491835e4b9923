"""The fine-tuning task the engine's `Trainer` drives.

Training data (paper Table 4): each sample is a labelled video, one of its pre-extracted
spatial views drawn at random (12 views, or the 6 unflipped ones where left / right matters)
and a random temporal crop of T frames ([PAD] past the end of short videos).

Order: videos are visited in a fresh permutation every epoch (every video once per epoch, as a
data loader with shuffling would), the permutation seeded by (seed, epoch). The global sample
position of (step, micro_step, rank, j) fixes which video a sample is, and its view and crop
come from a generator seeded by (seed, position), so a resumed run sees exactly the batches of
the uninterrupted one, and N ranks together see the batches of one process with the same
samples per update (however they are split into ranks, micro-batches and accumulation steps).

Validation: the multi-view protocol of `vimpac.finetune.evaluate` on the validation store,
each rank scoring its share of the videos; confusion matrices are summed across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vimpac.data.clips import random_clip_start
from vimpac.engine.distributed import DistInfo
from vimpac.engine.trainer import derive_seed
from vimpac.finetune.errors import FinetuneError
from vimpac.finetune.evaluate import evaluation_views, labelled_videos, metrics_from_confusion, predict_videos
from vimpac.finetune.metrics import top_k_correct


_SAMPLE_SEED_TAG = 0xC409  # keeps a sample's seed apart from the epoch orders' (seed, epoch, 0x5EED)


@dataclass(frozen=True)
class ValidationSettings:
    temporal_clips: int = 10
    spatial_crops: int = 3
    max_batch: int | None = None  # clips per forward; None: the device's default (clips_per_forward)


class FinetuneTask:
    """Batches of (tokens (B, T, h, w) int64, labels (B,)) and the cross-entropy loss."""

    def __init__(self, store, frames: int, batch_size: int, grad_accum_steps: int = 1,
                 train_views: Sequence[str] | None = None, label_smoothing: float = 0.0, seed: int = 0,
                 device: str | torch.device = "cpu", val_store=None,
                 validation: ValidationSettings = ValidationSettings(), val_bf16: bool = False):
        self.store = store
        self.frames = int(frames)
        self.batch_size = int(batch_size)
        self.grad_accum_steps = int(grad_accum_steps)
        self.label_smoothing = float(label_smoothing)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.val_store = val_store
        self.validation = validation
        self.val_bf16 = val_bf16
        if not 0.0 <= self.label_smoothing < 1.0:
            raise FinetuneError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing}")
        self.keys, self.labels = labelled_videos(store, "training store")
        if not self.keys:
            raise FinetuneError(f"{store.root}: the training store holds no videos")
        views = tuple(train_views) if train_views is not None else tuple(store.views)
        missing = [v for v in views if v not in store.views]
        if missing:
            raise FinetuneError(f"{store.root}: training view(s) {missing} are not in the store (views: {list(store.views)})")
        self.views = views
        # (video, view) -> entry index, resolved once: the hot path is then list look-ups only.
        self._entry = [[store.index_of(k, v) for v in views] for k in self.keys]
        self._frames = [[store.entry(i).num_frames for i in row] for row in self._entry]

    # ------------------------------------------------------------------ sampling
    @property
    def num_videos(self) -> int:
        return len(self.keys)

    @lru_cache(maxsize=4)
    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(derive_seed(self.seed, epoch, 0x5EED)).permutation(self.num_videos)

    def video_at(self, position: int) -> int:
        """The video of global sample `position` (epoch-wise permutations, back to back)."""
        epoch, offset = divmod(position, self.num_videos)
        return int(self._epoch_order(epoch)[offset])

    def batch(self, step: int, micro_step: int, dist: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
        first = ((step * self.grad_accum_steps + micro_step) * dist.world_size + dist.rank) * self.batch_size
        tokens = np.empty((self.batch_size, self.frames, *self.store.grid), dtype=np.int64)
        labels = np.empty(self.batch_size, dtype=np.int64)
        for j in range(self.batch_size):
            # Per sample, not per (step, micro_step, rank): the draws must not depend on the split.
            rng = np.random.default_rng(derive_seed(self.seed, first + j, _SAMPLE_SEED_TAG))
            video = self.video_at(first + j)
            view = int(rng.integers(len(self.views)))
            start = random_clip_start(rng, self._frames[video][view], self.frames)
            tokens[j] = self.store.clip(self._entry[video][view], start, self.frames)
            labels[j] = self.labels[video]
        return torch.from_numpy(tokens).to(self.device), torch.from_numpy(labels).to(self.device)

    # ------------------------------------------------------------------ loss
    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        tokens, labels = batch
        logits = model(tokens).float()  # the loss in fp32 under bf16 autocast
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy, "count/samples": tokens.shape[0]}

    # ------------------------------------------------------------------ validation
    def validate(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        if self.val_store is None:
            return {}
        keys, labels = labelled_videos(self.val_store, "validation store")
        views = evaluation_views(self.val_store.views, self.validation.spatial_crops)
        mine = list(range(dist.rank, len(keys), dist.world_size))
        num_classes = model.num_classes
        confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
        top5 = 0.0
        if mine:
            probs = predict_videos(model, self.val_store, [keys[i] for i in mine], views, self.frames,
                                   self.validation.temporal_clips, self.device, self.val_bf16,
                                   self.validation.max_batch)
            truth = labels[mine]
            np.add.at(confusion, (truth, probs.argmax(axis=1)), 1)
            top5 = float(top_k_correct(probs, truth, 5).sum())
        flat = torch.from_numpy(np.append(confusion.ravel(), top5))
        if dist.enabled:
            flat = flat.to(self.device)
            torch.distributed.all_reduce(flat)
        flat = flat.cpu().numpy()
        return metrics_from_confusion(flat[:-1].reshape(num_classes, num_classes), flat[-1])
