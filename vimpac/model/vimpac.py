"""The complete models: pre-training (backbone + masked-token head + contrastive head) and
fine-tuning (backbone + classifier), with `save_pretrained` / `from_pretrained`.

    model = VimpacForPretraining(build_model_config("tiny"))
    out = model(masked_tokens, predict_mask)      # logits only where predict_mask is True
    loss = F.cross_entropy(out.mlm_logits, original_tokens[predict_mask])

    model.save_pretrained("runs/pt/final")
    clf = VimpacForClassification.from_pretrained("runs/pt/final", num_classes=101,
                                                  max_frames=10, height=32, width=32)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vimpac.model.backbone import VimpacBackbone
from vimpac.meta_device import meta_model
from vimpac.model.config import ModelConfig
from vimpac.model.errors import CheckpointError, ModelError
from vimpac.model.heads import ClassificationHead, ContrastiveHead, MaskedTokenHead
from vimpac.model.pretrained import (CONFIG_FILE, check_sizes_against_weights, check_weight_header, load_weights,
                                     read_model_config, read_weight_header, read_weights, save_model_folder,
                                     stored_num_classes)


# The masked-token head runs on a multiple of this many rows (zero rows appended, their logits
# dropped). The number of masked positions changes every step, and CPU matmuls (oneDNN) cache a
# primitive, with its buffers, for every new shape: without rounding, a pre-training process grew
# by 11-35 MiB per step (docs/benchmarks.md, "Pre-training memory").
MLM_ROW_MULTIPLE = 128


@dataclass
class PretrainingOutput:
    mlm_logits: torch.Tensor | None      # (N, rows) at the N True positions of predict_mask
    cls_projection: torch.Tensor         # (B, cls_head_out), input of the InfoNCE loss
    cls_hidden: torch.Tensor             # (B, D) backbone CLS output
    hiddens: torch.Tensor                # (B, T, H, W, D) backbone token outputs


class VimpacForPretraining(nn.Module):
    """Backbone + masked-token head (tied to the embedding) + contrastive head on CLS.

    Children are named `backbone`, `mlm_head`, `cls_head` like the authors' wrapper, so their
    `classifier.pt` state dicts load strictly.
    """

    kind = "pretraining"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.backbone = VimpacBackbone(cfg)
        self.mlm_head = MaskedTokenHead(cfg.dim, cfg.num_rows, tied_embedding=self.backbone.embedding)
        self.cls_head = ContrastiveHead(cfg.dim, cfg.cls_head_hidden, cfg.cls_head_out, cfg.cls_head_layers,
                                        bn_after_proj=cfg.cls_head_bn_after_proj)

    def forward(self, tokens: torch.Tensor, predict_mask: torch.Tensor | None = None) -> PretrainingOutput:
        """tokens (B, T, H, W) int64 (masked positions already replaced by [MASK]);
        predict_mask (B, T, H, W) bool: where to compute masked-token logits (None: nowhere)."""
        cls, hiddens = self.backbone(tokens)
        logits = None
        if predict_mask is not None:
            if predict_mask.shape != tokens.shape or predict_mask.dtype != torch.bool:
                raise ModelError(f"predict_mask: expected bool {tuple(tokens.shape)}, got "
                                 f"{predict_mask.dtype} {tuple(predict_mask.shape)}")
            rows = hiddens[predict_mask]
            count = rows.shape[0]
            logits = self.mlm_head(F.pad(rows, (0, 0, 0, -count % MLM_ROW_MULTIPLE)))[:count]
        return PretrainingOutput(logits, self.cls_head(cls), cls, hiddens)

    def save_pretrained(self, folder: str | Path, **extra: Any) -> Path:
        return save_model_folder(self, self.config, folder, self.kind, extra)

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu",
                        **config_changes: Any) -> "VimpacForPretraining":
        """Load a pre-training folder. `config_changes` (e.g. max_frames=10, height=32, width=32,
        dropout=0.0, gradient_checkpointing=True) adjust the config; positional tables are
        interpolated to the new sizes. The model comes back in eval mode (dropout off), as
        Hugging Face's `from_pretrained`; call `.train()` before training it."""
        kind, cfg, meta = read_model_config(folder)
        if kind != cls.kind:
            raise CheckpointError(f"{folder}: holds a {kind!r} model; VimpacForPretraining needs 'pretraining' "
                                  "(use VimpacForClassification.from_pretrained for classifiers)")
        weights = read_checked_weights(folder, kind, cfg, meta)
        model = cls(_changed(cfg, config_changes, folder))
        load_weights(model, weights, str(Path(folder) / "model.safetensors"))
        return model.to(map_location).eval()


class VimpacForClassification(nn.Module):
    """Backbone + dropout + zero-initialised Linear on the CLS output."""

    kind = "classification"

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        cfg.validate()
        if num_classes < 1:
            raise ModelError(f"num_classes: expected a positive integer, got {num_classes}")
        self.config = cfg
        self.num_classes = num_classes
        self.backbone = VimpacBackbone(cfg)
        self.head = ClassificationHead(cfg.dim, num_classes, cfg.classifier_dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, H, W) -> class logits (B, num_classes)."""
        cls, _ = self.backbone(tokens)
        return self.head(cls)

    def save_pretrained(self, folder: str | Path, **extra: Any) -> Path:
        return save_model_folder(self, self.config, folder, self.kind, {"num_classes": self.num_classes, **extra})

    @classmethod
    def from_pretrained(cls, folder: str | Path, num_classes: int | None = None,
                        map_location: str | torch.device = "cpu", new_head: bool = False,
                        **config_changes: Any) -> "VimpacForClassification":
        """Load a classifier folder, or start fine-tuning from a pre-training folder (its
        backbone; a fresh zero head with `num_classes`). `new_head=True` takes only the backbone
        of a classifier folder too (fine-tuning a fine-tuned model on a new task). Positional
        tables are interpolated when `config_changes` give another max_frames / height / width.
        The model comes back in eval mode (dropout off), so that `model(tokens)` predicts the
        same logits every call; call `.train()` before training it."""
        kind, cfg, meta = read_model_config(folder)
        weights = read_checked_weights(folder, kind, cfg, meta)  # refuses an unknown kind
        stored_classes = stored_num_classes(folder, meta) if kind == cls.kind else None
        keep_head = kind == cls.kind and not new_head and num_classes in (None, stored_classes)
        cfg = _changed(cfg, config_changes, folder)
        source = str(Path(folder) / "model.safetensors")
        if keep_head:
            model = cls(cfg, stored_classes)
            load_weights(model, weights, source)
            return model.to(map_location).eval()
        if num_classes is None:
            raise CheckpointError(f"{folder}: holds a {kind!r} model; pass num_classes to put a new classifier on it")
        model = cls(cfg, num_classes)
        backbone_weights = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
        load_weights(model.backbone, backbone_weights, f"{source} (backbone)")
        return model.to(map_location).eval()


def read_checked_weights(folder: str | Path, kind: str, cfg: ModelConfig, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a model folder's model.safetensors (`kind`, `cfg`, `meta`: its config.json as
    read_model_config returns it), read only once the file's header fits the model config.json
    describes: first the sizes that decide that model's memory (check_sizes_against_weights), so
    that building it on the meta device is safe, then every tensor's name, shape and kind of
    dtype (check_weight_header). A tensor the model does not have, or a missing one, is a
    CheckpointError naming the file and the tensor before any tensor data is read."""
    header = read_weight_header(folder)
    shapes = {name: tuple(tensor.shape) for name, tensor in header.items()}
    if kind == VimpacForPretraining.kind:
        check_sizes_against_weights(folder, cfg, shapes, contrastive_head=True)
        described = lambda: VimpacForPretraining(cfg)  # noqa: E731
    elif kind == VimpacForClassification.kind:
        num_classes = stored_num_classes(folder, meta)
        check_sizes_against_weights(folder, cfg, shapes, num_classes=num_classes)
        described = lambda: VimpacForClassification(cfg, num_classes)  # noqa: E731
    else:
        raise CheckpointError(f"{Path(folder) / CONFIG_FILE}: unknown model kind {kind!r}; expected "
                              f"{VimpacForPretraining.kind!r} or {VimpacForClassification.kind!r}")
    check_weight_header(folder, meta_model(described), header)
    return read_weights(folder)


def _changed(cfg: ModelConfig, changes: dict[str, Any], folder: str | Path) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ModelError(f"from_pretrained({folder}): unknown config field(s) {unknown}")
    cfg = dataclasses.replace(cfg, **changes)
    cfg.validate()
    return cfg
