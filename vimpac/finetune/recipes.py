"""Fine-tuning recipes: the paper's Table 4 hyper-parameters per downstream dataset.

    recipe = get_recipe("ucf101")
    lr = recipe.lr_for("large-half")          # 5e-5; 1e-4 for small / base
    epochs = recipe.epochs_for(pretrained=False)  # x4 on small datasets without pre-training

Shared by every dataset (Table 4): AdamW, betas (0.9, 0.999), eps 1e-8, weight decay 0.01,
linear warm-up over 10% of the updates then linear decay, gradient clipping at 1.0, batch size
128, backbone dropout 0.1, last-FC dropout 0.0, T = 10 frames of S = 256 pixels. Per dataset:
epochs (SSV2 22, Diving48 / UCF101 / HMDB51 50, Kinetics-400 30), frame rate (Sec. 4: 2 FPS
for the long-video datasets UCF101 and Kinetics-400, 4 FPS for HMDB51, SSV2, Diving48) and
whether left / right matters (SSV2: no flipped training views, center crop only at test).
Without pre-training the paper trains 4x longer on the small datasets and 1.5x on the large
ones (Appendix C). `synthetic` is our own small recipe for the CPU demo benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

from vimpac.finetune.errors import FinetuneError


@dataclass(frozen=True)
class FinetuneRecipe:
    name: str
    epochs: int
    fps: float
    flip: bool  # False: left / right matters (train on "noflip6" views, test on the center crop)
    lr: float = 1e-4  # small / base models
    lr_large: float = 5e-5  # large-half
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad_norm: float = 1.0
    batch_size: int = 128
    frames: int = 10
    size: int = 256
    dropout: float = 0.1
    classifier_dropout: float = 0.0
    temporal_clips: int = 10  # uniform temporal clips at test
    scratch_epoch_factor: float = 4.0  # epochs multiplier for the "no pre-training" baseline

    @property
    def spatial_crops(self) -> int:
        """Spatial crops averaged at test: 3 (top-left / center / bottom-right), 1 without flips."""
        return 3 if self.flip else 1

    @property
    def train_views(self) -> str:
        """The store view set the training views come from."""
        return "all12" if self.flip else "noflip6"

    def lr_for(self, model_preset: str | None) -> float:
        return self.lr_large if model_preset == "large-half" else self.lr

    def epochs_for(self, pretrained: bool) -> float:
        return float(self.epochs) if pretrained else self.epochs * self.scratch_epoch_factor


RECIPES: dict[str, FinetuneRecipe] = {
    "ssv2": FinetuneRecipe("ssv2", epochs=22, fps=4, flip=False, scratch_epoch_factor=1.5),
    "diving48": FinetuneRecipe("diving48", epochs=50, fps=4, flip=True),
    "ucf101": FinetuneRecipe("ucf101", epochs=50, fps=2, flip=True),
    "hmdb51": FinetuneRecipe("hmdb51", epochs=50, fps=4, flip=True),
    "k400": FinetuneRecipe("k400", epochs=30, fps=2, flip=True, scratch_epoch_factor=1.5),
    # The CPU demo's synthetic motion benchmark: left / right is the label, so no flips; small
    # clips, batches and budgets so a tiny model fine-tunes in minutes on 2 cores.
    "synthetic": FinetuneRecipe("synthetic", epochs=30, fps=4, flip=False, lr=3e-4, lr_large=3e-4,
                                batch_size=16, frames=8, size=128, temporal_clips=4,
                                scratch_epoch_factor=1.0),
}


def get_recipe(name: str) -> FinetuneRecipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise FinetuneError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}") from None
