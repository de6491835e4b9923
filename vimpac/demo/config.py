"""Settings of the end-to-end demo, with the two presets the README and the tests use."""

from __future__ import annotations

from dataclasses import dataclass, field

from vimpac.config import KEY_VALUE_ITEMS, ConfigError

# Pre-training variants: KEY=VALUE overrides of the "tiny" pre-training preset.
PRETRAIN_VARIANTS: dict[str, tuple[str, ...]] = {
    "mp_cl": (),  # VIMPAC: block-masked token prediction + contrastive
    "mp_only": ("objective.alpha=0",),  # Table 7, MP only
    # Table 7's CL-only row: contrastive learning alone, on unmasked inputs (its numbers are
    # Table 12's MP-off / CL-Mask-off row); masked_token=false alone would contrast masked clips.
    "cl_only": ("objective.masked_token=false", "data.contrastive_unmasked=true"),
    "iid_mp": ("masking.strategy=iid", "objective.alpha=0"),  # Table 8, i.i.d. masking (MP only)
}


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
    # KEY=VALUE for the tiny model preset; `model_overrides=layout=T,H,W,dim=64` (or `=[layout=T,H,W,dim=64]`)
    # keeps a value's commas.
    model_overrides: tuple[str, ...] = field(default=(), metadata=KEY_VALUE_ITEMS)
    # Pre-training variants (Table 7 / 8 rows) and fine-tuning runs; see PRETRAIN_VARIANTS.
    pretrain_variants: tuple[str, ...] = ("mp_cl", "mp_only", "cl_only", "iid_mp")
    seeds: tuple[int, ...] = (0,)
    workers: int = 2  # processes that generate and decode videos
    threads: int = 2  # torch threads in all (training runs side by side share them)
    parallel_runs: int = 2  # training runs side by side, each in its own process

    def __post_init__(self) -> None:
        # Checked here, before any stage runs: a bad value used to surface as a KeyError or a
        # traceback deep inside a stage, after minutes of work.
        from vimpac.data.synthetic import SYNTHETIC_PRESETS

        if self.synthetic_preset not in SYNTHETIC_PRESETS:
            raise ConfigError(f"synthetic_preset: expected one of {sorted(SYNTHETIC_PRESETS)}, "
                              f"got {self.synthetic_preset!r}")
        unknown = [v for v in self.pretrain_variants if v not in PRETRAIN_VARIANTS]
        if unknown:
            raise ConfigError(f"pretrain_variants: unknown variant(s) {unknown}; "
                              f"choose from {list(PRETRAIN_VARIANTS)}")
        if len(set(self.pretrain_variants)) != len(self.pretrain_variants):
            raise ConfigError(f"pretrain_variants: each variant at most once, got {list(self.pretrain_variants)}")
        if not self.seeds:
            raise ConfigError("seeds: expected at least one seed")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"seeds: expected distinct seeds >= 0, got {list(self.seeds)}")
        for name in ("train_per_class", "val_per_class", "size", "frames", "tokenizer_steps", "pretrain_steps",
                     "pretrain_batch", "finetune_steps", "finetune_batch", "workers", "threads", "parallel_runs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a whole number >= 1, got {getattr(self, name)}")
        if self.uncurated_videos < 0:
            raise ConfigError(f"uncurated_videos: expected a count >= 0, got {self.uncurated_videos}")
        if not self.fps > 0:
            raise ConfigError(f"fps: expected a positive frame rate, got {self.fps}")
        if self.size % 8:
            raise ConfigError(f"size: expected a multiple of 8 pixels (the VQ-VAE downsamples 8x), got {self.size}")
        for item in self.model_overrides:
            if "=" not in item:
                raise ConfigError(f"model_overrides: expected KEY=VALUE items, got {item!r}; e.g. "
                                  "model_overrides=layout=T,H,W,dim=64 or, quoted for the shell, "
                                  "'model_overrides=[\"layout=T,H,W\", \"dim=64\"]'")


DEMO_PRESETS: dict[str, DemoConfig] = {
    "full": DemoConfig(),
    # Every stage, tiny sizes: finishes in about a minute; used by the test suite.
    "quick": DemoConfig(synthetic_preset="tiny", train_per_class=4, val_per_class=2, uncurated_videos=2,
                        tokenizer_steps=40, pretrain_steps=12, pretrain_batch=4, finetune_steps=12,
                        finetune_batch=8, model_overrides=("dim=64", "layers=2", "heads=2", "cls_head_hidden=128"),
                        pretrain_variants=("mp_cl", "mp_only"), threads=1, parallel_runs=1),
}
