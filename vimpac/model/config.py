"""`ModelConfig`: the architecture of a VIMPAC model, and the named presets.

    cfg = build_model_config("small", overrides=["layout=T,H,W"])

The presets follow the paper's Table 3 (small / base / large-half) plus `tiny` for the 2-core
CPU demo. Positional tables are sized for T = 5 frames of 16 x 16 tokens (128-pixel frames),
the paper's pre-training resolution; a checkpoint loads into another T / H / W by linear
interpolation of the tables (`vimpac.model.interpolate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from vimpac.config import ConfigError, build_config
from vimpac.model.errors import ModelError
from vimpac.model.layout import parse_layout
from vimpac.tokens import Vocab


# Values of `ModelConfig.pre_ln_residual`.
PRE_LN_RESIDUALS = ("input", "normalized")


@dataclass(frozen=True)
class ModelConfig:
    # Vocabulary: K codes of the frame tokenizer; the embedding has K + 5 rows (vimpac.tokens).
    codebook_size: int = 8192
    # Transformer size.
    dim: int = 512
    layers: int = 6
    heads: int = 8
    layout: str = "T,H|W"
    # Post-LN (BERT style, the paper's default) or pre-LN (ViT style, with a final LayerNorm).
    pre_ln: bool = False
    # Pre-LN only, the residual of each attention block: "input" is x + f(LN(x)) (ViT / GPT);
    # "normalized" is LN(x) + f(LN(x)), what the authors' pre-activation code computes (its
    # attention blocks add their output to the normalized input). `vimpac convert-original`
    # sets "normalized" for their pre-LN checkpoints. The MLP block is x + mlp(LN(x)) in both.
    pre_ln_residual: str = "input"
    # Large-Half: attention width D/2 (head dim halves) and MLP width 2D instead of 4D.
    halve_att: bool = False
    halve_mlp: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    # Sizes of the positional tables (tokens per axis); inputs may be smaller, never larger.
    max_frames: int = 5
    height: int = 16
    width: int = 16
    # Contrastive head on CLS: `cls_head_layers` Linear layers (BatchNorm + ReLU between).
    cls_head_layers: int = 2
    cls_head_hidden: int = 2048
    cls_head_out: int = 256
    cls_head_bn_after_proj: bool = False
    # Dropout before the fine-tuning classifier (the original's --last-dropout).
    classifier_dropout: float = 0.0
    # Recompute each layer in the backward pass: less memory, about 30% more compute.
    gradient_checkpointing: bool = False

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.codebook_size)

    @property
    def num_rows(self) -> int:
        """Embedding rows = width of the masked-token softmax."""
        return self.vocab.num_rows

    @property
    def attention_width(self) -> int:
        return self.dim // 2 if self.halve_att else self.dim

    @property
    def head_dim(self) -> int:
        return self.attention_width // self.heads

    @property
    def mlp_width(self) -> int:
        return self.dim * 2 if self.halve_mlp else self.dim * 4

    def validate(self) -> None:
        """Raise `ModelError` naming the field when the architecture cannot be built."""
        for name in ("codebook_size", "dim", "layers", "heads", "max_frames", "height", "width",
                     "cls_head_layers", "cls_head_hidden", "cls_head_out"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelError(f"model config field {name!r}: expected a positive integer, got {value!r}")
        for name in ("dropout", "attention_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ModelError(f"model config field {name!r}: expected a probability in [0, 1), got {value!r}")
        if self.pre_ln_residual not in PRE_LN_RESIDUALS:
            raise ModelError(f"model config field 'pre_ln_residual': expected one of {list(PRE_LN_RESIDUALS)}, "
                             f"got {self.pre_ln_residual!r}")
        if self.pre_ln_residual != "input" and not self.pre_ln:
            raise ModelError(f"model config field 'pre_ln_residual': {self.pre_ln_residual!r} applies to pre-LN "
                             "models only (pre_ln=true); a post-LN block has no such choice")
        if self.attention_width % self.heads:
            raise ModelError(f"model config: attention width {self.attention_width} (dim {self.dim}"
                             f"{', halved' if self.halve_att else ''}) is not divisible by heads={self.heads}")
        for block in parse_layout(self.layout):
            parts = len(block.attentions)
            if self.heads % parts or self.attention_width % parts:
                raise ModelError(f"model config field 'layout': block {block.name!r} splits heads={self.heads} "
                                 f"and width {self.attention_width} into {parts} equal parts; they must divide")


MODEL_PRESETS: dict[str, ModelConfig] = {
    # For the CPU demo: 4 layers of width 192 train a few hundred steps in minutes on 2 cores at
    # T = 8, 16 x 16 tokens. Its codebook size is that of our small VQ-VAE; override
    # `codebook_size` to match the tokenizer actually used.
    "tiny": ModelConfig(codebook_size=1024, dim=192, layers=4, heads=4, max_frames=8, height=16, width=16,
                        cls_head_layers=2, cls_head_hidden=512),
    # Table 3. The paper gives the contrastive head as 2 x 2048 for Small (Sec. F) and 3 x 4096 for
    # the large models; Base is not stated, we use the large head.
    "small": ModelConfig(dim=512, layers=6, heads=8, cls_head_layers=2, cls_head_hidden=2048),
    "base": ModelConfig(dim=768, layers=12, heads=12, cls_head_layers=3, cls_head_hidden=4096),
    "large-half": ModelConfig(dim=1024, layers=24, heads=16, halve_att=True, halve_mlp=True,
                              cls_head_layers=3, cls_head_hidden=4096),
}


def build_model_config(
    preset: str | None = "small",
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, object] | Sequence[str] = (),
) -> ModelConfig:
    """A preset, then a YAML file, then `key=value` overrides; errors name the field."""
    try:
        cfg = build_config(ModelConfig, presets=MODEL_PRESETS, preset=preset, yaml_path=yaml_path,
                           overrides=overrides)
    except ConfigError as exc:
        raise ModelError(str(exc)) from None
    # Validated once at the end: overrides are applied one at a time and may pass through
    # combinations that do not divide (dim first, heads second).
    cfg.validate()
    return cfg
