"""The VIMPAC backbone: token + factorized positional embedding, then layers of attention blocks.

    backbone = VimpacBackbone(cfg)
    cls, hiddens = backbone(tokens)          # tokens (B, T, H, W) int64
                                              # cls (B, D), hiddens (B, T, H, W, D)

Module and parameter names equal the authors' (`cls_param`, `embedding`,
`positional_embedding.temporal_pos_embedding`, `ln_pre`, `transformer.resblocks.{i}...`), so
their state dicts load without renaming.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vimpac.model.attention import LAYER_NORM_EPS, AttentionBlock
from vimpac.model.config import ModelConfig
from vimpac.model.dropout import Dropout
from vimpac.model.errors import ModelError
from vimpac.model.layout import parse_layout

INIT_STD = 0.02  # BERT's initializer range, as in the original


class PositionalEmbedding(nn.Module):
    """Factorized positions: temporal[t] + height[h] + width[w], plus a separate CLS row."""

    def __init__(self, frames: int, height: int, width: int, dim: int) -> None:
        super().__init__()
        self.cls_pos_embedding = nn.Parameter(torch.empty(1, dim))
        self.temporal_pos_embedding = nn.Parameter(torch.empty(frames, dim))
        self.height_pos_embedding = nn.Parameter(torch.empty(height, dim))
        self.width_pos_embedding = nn.Parameter(torch.empty(width, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The original: CLS row std 0.02; the three tables 0.02 / sqrt(3) so their sum has std 0.02.
        nn.init.normal_(self.cls_pos_embedding, std=INIT_STD)
        for table in (self.temporal_pos_embedding, self.height_pos_embedding, self.width_pos_embedding):
            nn.init.normal_(table, std=INIT_STD / math.sqrt(3))

    def forward(self, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS position (D,) and grid positions (frames, height, width, D) for an input of that size."""
        grid = (self.temporal_pos_embedding[:frames, None, None]
                + self.height_pos_embedding[None, :height, None]
                + self.width_pos_embedding[None, None, :width])
        return self.cls_pos_embedding[0], grid


class MLP(nn.Module):
    """Linear -> exact GELU -> Linear -> dropout (the original's `c_fc` / `c_proj`)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.c_proj = nn.Linear(hidden, dim)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class ResidualLayer(nn.Module):
    """One layer: the layout's attention blocks in order, then the MLP block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.attention_blocks = nn.ModuleList(
            AttentionBlock(cfg.dim, cfg.attention_width, cfg.heads, block, pre_ln=cfg.pre_ln,
                           dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
                           normalized_residual=cfg.pre_ln_residual == "normalized")
            for block in parse_layout(cfg.layout)
        )
        self.mlp = MLP(cfg.dim, cfg.mlp_width, cfg.dropout)
        self.ln = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)

    def forward(self, cls: torch.Tensor, x: torch.Tensor,
                key_pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.attention_blocks:
            cls, x = block(cls, x, key_pad)
        if self.pre_ln:
            return cls + self.mlp(self.ln(cls)), x + self.mlp(self.ln(x))
        return self.ln(cls + self.mlp(cls)), self.ln(x + self.mlp(x))


class Transformer(nn.Module):
    """The stack of layers (a separate module only to keep the original's `transformer.resblocks`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.resblocks = nn.ModuleList(ResidualLayer(cfg) for _ in range(cfg.layers))

    def forward(self, cls: torch.Tensor, x: torch.Tensor,
                key_pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.resblocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                cls, x = checkpoint(layer, cls, x, key_pad, use_reentrant=False)
            else:
                cls, x = layer(cls, x, key_pad)
        return cls, x


class VimpacBackbone(nn.Module):
    """Tokens (B, T, H, W) -> (CLS (B, D), hiddens (B, T, H, W, D))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.pad_id = cfg.vocab.pad_id
        # Registration order reproduces the original state-dict order.
        self.cls_param = nn.Parameter(torch.empty(cfg.dim))
        self.embedding = nn.Embedding(cfg.num_rows, cfg.dim)
        self.drop = Dropout(cfg.dropout)
        self.positional_embedding = PositionalEmbedding(cfg.max_frames, cfg.height, cfg.width, cfg.dim)
        if not cfg.pre_ln:
            self.ln_pre = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
        self.transformer = Transformer(cfg)
        if cfg.pre_ln:
            self.ln_post = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original initialisation: BERT's N(0, 0.02) for Linear / Embedding / CLS, zero biases,
        unit LayerNorms; in pre-LN mode the residual projections are scaled by 1/sqrt(#residuals)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=INIT_STD)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.cls_param, std=INIT_STD)
        self.positional_embedding.reset_parameters()
        if self.config.pre_ln:
            layers = self.transformer.resblocks
            residuals = sum(len(layer.attention_blocks) + 1 for layer in layers)
            std = INIT_STD / math.sqrt(residuals)
            for layer in layers:
                nn.init.normal_(layer.mlp.c_proj.weight, std=std)
                for block in layer.attention_blocks:
                    nn.init.normal_(block.dense.weight, std=std)

    def embed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token + positional embedding (then LayerNorm in post-LN mode) and dropout."""
        _, frames, height, width = tokens.shape
        cls_pos, grid_pos = self.positional_embedding(frames, height, width)
        x = self.embedding(tokens) + grid_pos
        cls = (self.cls_param + cls_pos).expand(tokens.shape[0], -1)
        if not self.config.pre_ln:
            cls, x = self.ln_pre(cls), self.ln_pre(x)
        return self.drop(cls), self.drop(x)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_shape(tokens)
        key_pad = tokens == self.pad_id
        # Under torch.compile these data-dependent tests would split the graph: the id check is an
        # eager-mode convenience there, and the PAD mask is always kept.
        if not torch.compiler.is_compiling() and tokens.numel():
            # One device-to-host copy for both tests (on a GPU each is a synchronisation).
            has_pad, low, high = torch.stack([key_pad.any().to(tokens.dtype), tokens.min(), tokens.max()]).tolist()
            if low < 0 or high >= self.config.num_rows:
                # Otherwise an IndexError deep in the embedding on CPU, and on a GPU a device-side
                # assert that also leaves the CUDA context unusable.
                raise ModelError(f"backbone input: token ids must lie in [0, {self.config.num_rows}) "
                                 f"({self.config.codebook_size} codes + 5 specials), got [{low}, {high}]")
            if not has_pad:
                key_pad = None  # no mask lets SDPA pick its fastest kernel (same numbers)
        cls, x = self.embed(tokens)
        cls, x = self.transformer(cls, x, key_pad)
        if self.config.pre_ln:
            cls, x = self.ln_post(cls), self.ln_post(x)
        return cls, x

    def _check_shape(self, tokens: torch.Tensor) -> None:
        cfg = self.config
        if tokens.dim() != 4 or tokens.dtype not in (torch.int64, torch.int32):
            raise ModelError(f"backbone input: expected integer tokens (B, T, H, W), got "
                             f"{tuple(tokens.shape)} {tokens.dtype}")
        _, frames, height, width = tokens.shape
        if frames > cfg.max_frames or height > cfg.height or width > cfg.width:
            raise ModelError(
                f"backbone input: {frames} x {height} x {width} tokens exceed the positional tables "
                f"({cfg.max_frames} x {cfg.height} x {cfg.width}); build the model with larger "
                "max_frames / height / width (loading a checkpoint interpolates the tables)")


def pool_tokens(hiddens: torch.Tensor) -> torch.Tensor:
    """Mean of the token outputs over T, H and W (the original's `pooling` output, PAD included)."""
    return hiddens.mean(dim=(1, 2, 3))


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (a tied weight counts once), as the paper's tables count them."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["VimpacBackbone", "PositionalEmbedding", "pool_tokens", "count_parameters"]
