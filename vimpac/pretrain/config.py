"""The pre-training run config: model, masking, objective, data and optimisation, with presets.

    cfg = build_pretrain_config("tiny", yaml_path=None, overrides=["train.lr=5e-4", "masking.strategy=iid"])

Presets follow the paper's Table 4: "analysis" is the Small-model recipe of Appendix F
(lr 1e-3, warm-up 10%, effective batch 1024), "results" the Large-Half recipe of Sec. 4.2
(lr 3e-4, warm-up 5%); "tiny" is the CPU demo. By default the model's vocabulary and positional
tables are sized from the token store and the clip length (`model_from_store`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from vimpac.config import build_config
from vimpac.engine.trainer import TrainConfig
from vimpac.model.config import MODEL_PRESETS, ModelConfig
from vimpac.pretrain.contrastive import ObjectiveConfig
from vimpac.pretrain.masking import MaskingConfig


@dataclass(frozen=True)
class PretrainDataConfig:
    frames: int = 5  # T: frames per clip
    view: str = "s1.00_center"  # pre-training uses resized, centre-cropped frames only (no augmentation)
    max_distance_seconds: Optional[float] = None  # d_max between the two clips' starts (Table 10); None = inf, 0 = same clip
    # Contrastive loss on unmasked inputs (Table 12's "CL-Mask" off). With objective.masked_token=false
    # it is the paper's contrastive-only pre-training (Table 7's CL row, Table 16's "alpha = inf*").
    contrastive_unmasked: bool = False
    val_fraction: float = 0.05  # videos held out for periodic validation (chosen by a hash of the key)
    val_batches: int = 4


@dataclass(frozen=True)
class PretrainConfig:
    model: ModelConfig = field(default_factory=lambda: MODEL_PRESETS["small"])
    model_from_store: bool = True  # codebook_size, max_frames, height, width from the store and data.frames
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Videos per optimizer update over all processes and accumulation steps (each gives 2 clips);
    # None = batch_size * grad_accum_steps * world size. When set, grad_accum_steps is derived.
    effective_batch: Optional[int] = None


_ANALYSIS_TRAIN = TrainConfig(total_steps=12_000, batch_size=64, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.98),
                              eps=1e-8, warmup_ratio=0.1, clip_grad_norm=1.0, precision="bf16",
                              checkpoint_every=1000, log_every=50, val_every=1000)

PRETRAIN_PRESETS: dict[str, PretrainConfig] = {
    # 2-core CPU demo: tiny model, T = 8 clips, a few hundred updates.
    "tiny": PretrainConfig(
        model=MODEL_PRESETS["tiny"],
        data=PretrainDataConfig(frames=8, val_fraction=0.1, val_batches=2),
        train=TrainConfig(total_steps=300, batch_size=16, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.98),
                          warmup_ratio=0.1, clip_grad_norm=1.0, precision="bf16", log_every=10,
                          checkpoint_every=100, val_every=100),
    ),
    # Table 4 "Pre-Train (Analysis)": Small model, T = 5, S = 128, 10 epochs on HowTo100M.
    "analysis": PretrainConfig(model=MODEL_PRESETS["small"], data=PretrainDataConfig(frames=5),
                               train=_ANALYSIS_TRAIN, effective_batch=1024),
    # Table 4 "Pre-Train (Results)": Large-Half, lr 3e-4, warm-up 5%, 120K updates.
    "results": PretrainConfig(model=MODEL_PRESETS["large-half"], data=PretrainDataConfig(frames=5),
                              train=dataclasses.replace(_ANALYSIS_TRAIN, total_steps=120_000, lr=3e-4,
                                                        warmup_ratio=0.05, batch_size=16),
                              effective_batch=1024),
}


def build_pretrain_config(
    preset: str | None = "tiny",
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, object] | Sequence[str] = (),
) -> PretrainConfig:
    return build_config(PretrainConfig, PRETRAIN_PRESETS, preset, yaml_path, overrides)
