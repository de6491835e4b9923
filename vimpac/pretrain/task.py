"""The pre-training task the engine's Trainer runs: clip pairs from the token store, masking,
and the two losses (masked-token prediction + symmetric InfoNCE).

Batch layout: B videos per micro-batch give 2B clips; rows 0..B-1 are the first clip of each
video and rows B..2B-1 the second, so the contrastive pairs are (i, B + i). Both losses use the
same masked input, as the paper does (Sec. 3.3), unless `data.contrastive_unmasked`.

Everything random in a batch comes from a generator seeded by (seed, step, micro_step, rank):
which videos (an epoch-wise permutation of the training videos), where the clips start, and
the masks. Resuming at step s therefore reproduces the batches of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import torch
from torch import nn

from vimpac.data.clips import sample_clip_pair
from vimpac.engine.distributed import DistInfo, gather_strided_rows
from vimpac.engine.trainer import derive_seed
from vimpac.pretrain.config import PretrainConfig
from vimpac.pretrain.contrastive import masked_token_loss, pretraining_loss, symmetric_info_nce
from vimpac.pretrain.errors import PretrainError
from vimpac.pretrain.masking import mask_tokens
from vimpac.store.reader import TokenStore
from vimpac.tokens import Vocab


@dataclass
class PretrainBatch:
    tokens: torch.Tensor  # (2B, T, H, W) int64, before masking (PAD where a video ran out)
    inputs: torch.Tensor  # masked model input
    labels: torch.Tensor  # original ids at masked positions, -100 elsewhere
    mask: torch.Tensor  # bool, the positions with a label


def split_train_val(keys: list[str], val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Video numbers for training and validation, chosen by a hash of the key so the split
    does not change when the store grows or is re-ordered."""
    if val_fraction <= 0 or len(keys) < 2:
        return np.arange(len(keys)), np.arange(0)
    # The first 4 bytes of each key's blake2b as a little-endian fraction of 2**32 (exact in
    # float64); one buffer instead of a Python int and float per key.
    digests = b"".join(hashlib.blake2b(k.encode(), digest_size=4).digest() for k in keys)
    scores = np.frombuffer(digests, dtype="<u4") / 2**32
    val = scores < val_fraction
    if not val.any():
        val[int(np.argmin(scores))] = True
    if val.all():
        val[int(np.argmax(scores))] = False
    return np.flatnonzero(~val), np.flatnonzero(val)


class PretrainTask:
    def __init__(self, store: TokenStore, cfg: PretrainConfig, device: torch.device | str = "cpu"):
        self.store = store
        self.cfg = cfg
        self.device = torch.device(device)
        self.vocab = Vocab(store.meta.codebook_size)
        self.frames = cfg.data.frames
        if cfg.data.view not in store.views:
            raise PretrainError(f"{store.root}: has no view {cfg.data.view!r} (data.view); it has {list(store.views)}")
        # From the store's entry arrays in one pass (an `entries_of` dict per video took 1-2 s per
        # rank at 1M videos). One copy of the key list: `store.keys()` copies it, and a copy per
        # video made this quadratic (90 s for 80k videos).
        videos, self.entries = store.entries_for_view(cfg.data.view)
        all_keys = store.keys()
        train, val = split_train_val([all_keys[v] for v in videos.tolist()], cfg.data.val_fraction)
        self.train_entries, self.val_entries = self.entries[train], self.entries[val]
        if len(self.train_entries) == 0:
            raise PretrainError(f"{store.root}: no training videos with view {cfg.data.view!r}")
        self.num_frames = store.num_frames
        self.max_distance = (None if cfg.data.max_distance_seconds is None
                             else int(round(cfg.data.max_distance_seconds * store.meta.fps)))

    # ------------------------------------------------------------------ batches
    def batch(self, step: int, micro_step: int, dist: DistInfo) -> PretrainBatch:
        train = self.cfg.train
        per_rank = train.batch_size
        # Global sample positions of this micro-batch: consecutive over (step, micro, rank).
        first = ((step * train.grad_accum_steps + micro_step) * dist.world_size + dist.rank) * per_rank
        entries = self._entries_at(np.arange(first, first + per_rank))
        rng = np.random.default_rng(derive_seed(train.seed, step, micro_step, dist.rank, 0))
        generator = torch.Generator().manual_seed(derive_seed(train.seed, step, micro_step, dist.rank, 2))
        return self._make_batch(entries, rng, generator)

    def _entries_at(self, positions: np.ndarray) -> np.ndarray:
        n = len(self.train_entries)
        epochs, offsets = np.divmod(positions, n)
        return np.array([self.train_entries[_epoch_permutation(n, self.cfg.train.seed, int(e))[o]]
                         for e, o in zip(epochs, offsets)], dtype=np.int64)

    def _make_batch(self, entries: np.ndarray, rng: np.random.Generator,
                    generator: torch.Generator) -> PretrainBatch:
        T = self.frames
        first_clips, second_clips = [], []
        for entry in entries:
            start_a, start_b = sample_clip_pair(rng, int(self.num_frames[entry]), T, self.max_distance)
            first_clips.append(self.store.clip(int(entry), start_a, T))
            second_clips.append(self.store.clip(int(entry), start_b, T))
        tokens = torch.from_numpy(np.stack(first_clips + second_clips).astype(np.int64))
        masked = mask_tokens(tokens, self.cfg.masking, self.vocab, generator)
        to = self.device
        return PretrainBatch(tokens.to(to), masked.inputs.to(to), masked.labels.to(to), masked.mask.to(to))

    # ------------------------------------------------------------------ losses
    def loss(self, model: nn.Module, batch: PretrainBatch, distributed: bool | None = None,
             contrastive: bool = True):
        """`contrastive=False` leaves the contrastive loss out (validation on a single video)."""
        objective = self.cfg.objective
        if not contrastive and objective.contrastive:
            objective = dataclasses.replace(objective, alpha=0.0)
        unmasked_contrastive = objective.contrastive and self.cfg.data.contrastive_unmasked
        if objective.masked_token or not unmasked_contrastive:
            # Contrastive learning alone on unmasked inputs (Tables 7 / 16) needs only the forward below.
            out = model(batch.inputs, predict_mask=batch.mask if objective.masked_token else None)
        clips = batch.tokens.shape[0]
        not_pad = batch.tokens != self.vocab.pad_id
        metrics: dict[str, float | torch.Tensor] = {
            "mask_ratio": batch.mask.sum() / not_pad.sum().clamp(min=1),
            "count/clips": clips,
            "count/tokens": int(not_pad.sum()),
        }
        mask_loss = cl_loss = None
        if objective.masked_token:
            mask_loss, mask_acc = masked_token_loss(out.mlm_logits, batch.labels[batch.mask])
            metrics.update(mask_loss=mask_loss.detach(), mask_acc=mask_acc)
        if objective.contrastive:
            projection = model(batch.tokens).cls_projection if unmasked_contrastive else out.cls_projection
            half = clips // 2
            result = symmetric_info_nce(projection[:half], projection[half:], objective.temperature,
                                        objective.normalize, distributed=distributed)
            cl_loss = result.loss
            metrics.update(cl_loss=cl_loss.detach(), cl_acc=result.accuracy)
        return pretraining_loss(mask_loss, cl_loss, objective), metrics

    # ------------------------------------------------------------------ validation
    def validate(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        """Losses and accuracies on held-out videos with fixed clips and masks (the same at
        every call, so curves are comparable), plus the accuracy of always predicting the most
        frequent code: the floor a useful masked-token model must clear.

        In a process group every rank must call it: rank r computes batches r, r + W, ... and
        every rank returns the mean over all batches, the same numbers as one process gives."""
        objective = self.cfg.objective
        # The contrastive metrics need two videos; with one held-out video (a small store) the
        # masked-token metrics are still measured.
        contrastive = objective.contrastive and len(self.val_entries) >= 2
        if len(self.val_entries) == 0 or not (contrastive or objective.masked_token):
            return {}
        batch_size = self.cfg.train.batch_size
        if contrastive:  # e.g. batch_size 1 per rank under torchrun
            batch_size = max(batch_size, 2)
        names = self._validation_metrics(contrastive)
        total = self.cfg.data.val_batches
        rows = []
        majority = self.most_frequent_code
        for i in range(dist.rank, total, dist.world_size):
            rng = np.random.default_rng(derive_seed(self.cfg.train.seed, -1, i))
            entries = rng.choice(self.val_entries, size=min(batch_size, len(self.val_entries)), replace=False)
            generator = torch.Generator().manual_seed(derive_seed(self.cfg.train.seed, -2, i))
            batch = self._make_batch(entries, rng, generator)
            _, metrics = self.loss(model, batch, distributed=False, contrastive=contrastive)
            labels = batch.labels[batch.mask]
            metrics["majority_acc"] = (labels == majority).float().mean() if labels.numel() else 0.0
            metrics = {k: v for k, v in metrics.items() if not k.startswith("count/")}
            if set(metrics) != set(names):
                raise RuntimeError(f"validation metrics {sorted(metrics)} differ from the expected {names}")
            rows.append([float(metrics[name]) for name in names])
        mine = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), len(names))
        if dist.enabled:
            # Every rank gets every batch's row in batch order: the sums below add them in the order
            # one process does, so the result does not depend on the number of processes.
            mine = gather_strided_rows(mine.to(self.device), total).cpu()
        sums = [0.0] * len(names)
        for row in mine.tolist():
            sums = [s + v for s, v in zip(sums, row)]
        return {name: s / max(len(mine), 1) for name, s in zip(names, sums)}

    def _validation_metrics(self, contrastive: bool) -> list[str]:
        """What `validate` averages, in a fixed order known also to a rank without a batch."""
        names = ["mask_ratio"]
        if self.cfg.objective.masked_token:
            names += ["mask_loss", "mask_acc"]
        if contrastive:
            names += ["cl_loss", "cl_acc"]
        return names + ["majority_acc"]

    @cached_property
    def most_frequent_code(self) -> int:
        """The most frequent code of (up to 2,000) training videos."""
        counts = np.zeros(self.vocab.codebook_size + 1, dtype=np.int64)
        for entry in self.train_entries[:2000]:
            ids = self.store.tokens(int(entry)).ravel()
            counts += np.bincount(ids[ids < self.vocab.codebook_size], minlength=counts.size)
        return int(np.argmax(counts[:-1]))


@lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng(derive_seed(seed, epoch, n, 7)).permutation(n)


def check_settings(store: TokenStore, cfg: PretrainConfig, world_size: int) -> None:
    """Refuse, before any work, settings the store or the batch arithmetic cannot satisfy."""
    _check_data_settings(cfg)
    if cfg.data.view not in store.views:
        raise PretrainError(f"{store.root}: has no view {cfg.data.view!r} (data.view); it has {list(store.views)}")
    model = cfg.model
    h, w = store.grid
    if not cfg.model_from_store:
        problems = []
        if model.codebook_size != store.meta.codebook_size:
            problems.append(f"model.codebook_size={model.codebook_size} but the store's tokenizer has "
                            f"{store.meta.codebook_size} codes")
        if (model.height, model.width) != (h, w):
            problems.append(f"model.height/width={model.height}x{model.width} but the store's token grid is {h}x{w}")
        if cfg.data.frames > model.max_frames:
            problems.append(f"data.frames={cfg.data.frames} exceeds model.max_frames={model.max_frames}")
        if problems:
            raise PretrainError(f"{store.root}: " + "; ".join(problems) + " (or set model_from_store=true)")
    longest = int(store.num_frames.max()) if len(store) else 0
    if longest < cfg.data.frames:
        raise PretrainError(f"{store.root}: data.frames={cfg.data.frames} but the longest video has {longest} "
                            f"frames at {store.meta.fps} fps; lower data.frames or re-tokenize at a higher fps")
    if cfg.effective_batch is not None:
        per_update = cfg.train.batch_size * world_size
        if cfg.effective_batch % per_update:
            raise PretrainError(f"effective_batch={cfg.effective_batch} is not divisible by train.batch_size "
                                f"({cfg.train.batch_size}) x processes ({world_size}) = {per_update}")
    if cfg.objective.contrastive and cfg.train.batch_size * world_size < 2:
        raise PretrainError("the contrastive loss needs at least 2 videos per step over all processes "
                            "(train.batch_size x processes); or set objective.alpha=0")


def contrastive_batch_change(cfg: PretrainConfig, resumed_layout: dict[str, int], world_size: int) -> str | None:
    """The note for a resume whose contrastive batch differs from the checkpoint's, else None.

    InfoNCE's negatives are the other videos of one micro-step gathered from all processes
    (batch_size x processes; Sec. 3.2, Table 11), not of the whole update: 16 GPUs x 16 x 4
    accumulation steps resumed as 8 x 16 x 8 keeps the samples per update (which the trainer
    checks) but halves the candidates of every InfoNCE."""
    if not cfg.objective.contrastive or "world_size" not in resumed_layout:
        return None
    batch_before = resumed_layout.get("batch_size", cfg.train.batch_size)
    before, now = batch_before * resumed_layout["world_size"], cfg.train.batch_size * world_size
    if before == now:
        return None
    return (f"note: the contrastive loss's batch is now {now} videos per micro-step (train.batch_size "
            f"{cfg.train.batch_size} x {world_size} process(es)), the checkpoint's was {before} "
            f"({batch_before} x {resumed_layout['world_size']}): each InfoNCE has {'fewer' if now < before else 'more'} "
            f"negatives, so the objective differs from here on although the samples per update are the same; "
            f"resume with {resumed_layout['world_size']} process(es) to keep it")


def _check_data_settings(cfg: PretrainConfig) -> None:
    data = cfg.data
    if isinstance(data.frames, bool) or not isinstance(data.frames, int) or data.frames < 1:
        raise PretrainError(f"data.frames: expected a positive number of frames, got {data.frames!r}")
    distance = data.max_distance_seconds
    # 0 is the paper's d_max = 0 row of Table 10: the same clip twice.
    if distance is not None and not (math.isfinite(distance) and distance >= 0):
        raise PretrainError(f"data.max_distance_seconds: expected seconds >= 0 (0: the same clip twice), "
                            f"or null for no limit, got {distance!r}")
    if not 0.0 <= data.val_fraction < 1.0:
        raise PretrainError(f"data.val_fraction: expected a fraction in [0, 1), got {data.val_fraction!r}")
    if data.val_batches < 1:
        raise PretrainError(f"data.val_batches: expected an integer >= 1, got {data.val_batches!r}")
    if cfg.effective_batch is not None and cfg.effective_batch < 1:
        raise PretrainError(f"effective_batch: expected a positive number of videos, or null, got {cfg.effective_batch!r}")


def resolve_config(store: TokenStore, cfg: PretrainConfig, world_size: int) -> PretrainConfig:
    """Size the model from the store (when asked) and derive gradient accumulation."""
    check_settings(store, cfg, world_size)
    if cfg.model_from_store:
        h, w = store.grid
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, codebook_size=store.meta.codebook_size, max_frames=cfg.data.frames, height=h, width=w))
    if cfg.effective_batch is not None:
        accum = cfg.effective_batch // (cfg.train.batch_size * world_size)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_accum_steps=accum))
    unused = not (cfg.objective.masked_token and cfg.objective.contrastive)
    if unused and not cfg.train.ddp_find_unused_parameters:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ddp_find_unused_parameters=True))
    cfg.model.validate()
    return cfg


def steps_per_epoch(task: PretrainTask) -> int:
    t = task.cfg.train
    return max(1, math.ceil(len(task.train_entries) / (t.batch_size * t.grad_accum_steps)))
