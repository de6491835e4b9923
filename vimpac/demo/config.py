"""Settings of the end-to-end demo, with the two presets the README and the tests use."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoConfig:
    synthetic_preset: str = "small"  # 64x64 frames: 8x8 tokens after the 8x VQ-VAE
    train_per_class: int = 40
    val_per_class: int = 15
    # Pre-training data well beyond the labelled set, as in the paper (HowTo100M vs UCF101): with
    # 40 uncurated videos and a 500-step tokenizer, pre-training did not help fine-tuning; with
    # both changed it did (docs/demo.md, "How the demo got here").
    uncurated_videos: int = 400
    fps: float = 4.0  # the paper samples 4 FPS for short downstream videos
    size: int = 64
    frames: int = 8  # T of pre-training and fine-tuning clips
    tokenizer_steps: int = 2000  # 500 steps blur the small objects into blobs (docs/demo.md)
    pretrain_steps: int = 300
    pretrain_batch: int = 8  # videos per step (2 clips each)
    finetune_steps: int = 300
    finetune_batch: int = 16
    model_overrides: tuple[str, ...] = ()  # KEY=VALUE for the tiny model preset
    # Pre-training variants (Table 7 / 8 rows) and fine-tuning runs; see pipeline.VARIANTS.
    pretrain_variants: tuple[str, ...] = ("mp_cl", "mp_only", "cl_only", "iid_mp")
    seeds: tuple[int, ...] = (0,)
    workers: int = 2  # processes that generate and decode videos
    threads: int = 2  # torch threads in all (training runs side by side share them)
    parallel_runs: int = 2  # training runs side by side, each in its own process


DEMO_PRESETS: dict[str, DemoConfig] = {
    "full": DemoConfig(),
    # Every stage, tiny sizes: finishes in a few minutes; used by the test suite.
    "quick": DemoConfig(synthetic_preset="tiny", train_per_class=4, val_per_class=2, uncurated_videos=2,
                        tokenizer_steps=40, pretrain_steps=12, pretrain_batch=4, finetune_steps=12,
                        finetune_batch=8, model_overrides=("dim=64", "layers=2", "heads=2", "cls_head_hidden=128"),
                        pretrain_variants=("mp_cl", "mp_only"), threads=1, parallel_runs=1),
}
