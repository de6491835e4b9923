"""Heads on top of the backbone: masked-token prediction, contrastive projection, classification.

Names follow the original (`mlm_head.transform.0`, `mlm_head.bias`, `cls_head.mlp.linear_0`,
`cls_head.mlp.bn_0`, ...), so released checkpoints load unchanged.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vimpac.model.attention import LAYER_NORM_EPS
from vimpac.model.backbone import INIT_STD
from vimpac.model.dropout import Dropout


class MaskedTokenHead(nn.Module):
    """Linear -> GELU -> LayerNorm -> logits over every vocabulary row.

    The decoder weight is the embedding table (tied); the bias is a separate parameter. Give it
    only the hidden states at masked positions, (N, D) -> (N, rows): the loss is the same as
    computing logits everywhere and keeping the masked ones, at a fraction of the cost (the
    (B, T, H, W, rows) logits of the original are its largest tensor).
    """

    def __init__(self, dim: int, num_rows: int, tied_embedding: nn.Embedding | None = None) -> None:
        super().__init__()
        # `bias` first: the original's state-dict order (a module's own parameters come first).
        self.bias = nn.Parameter(torch.zeros(num_rows))
        self.transform = nn.Sequential(
            nn.Linear(dim, dim),
            nn.GELU(),  # exact (erf) GELU, as the original
            nn.LayerNorm(dim, eps=LAYER_NORM_EPS),
        )
        self.decoder = nn.Linear(dim, num_rows)
        nn.init.normal_(self.transform[0].weight, std=INIT_STD)
        nn.init.zeros_(self.transform[0].bias)
        nn.init.normal_(self.decoder.weight, std=INIT_STD)
        # The aliases appear in the state dict as `decoder.weight` / `decoder.bias`, as in the original.
        self.decoder.bias = self.bias
        if tied_embedding is not None:
            if tied_embedding.weight.shape != (num_rows, dim):
                raise ValueError(f"tied embedding is {tuple(tied_embedding.weight.shape)}, expected ({num_rows}, {dim})")
            self.decoder.weight = tied_embedding.weight

    def transform_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transform(hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., D) -> logits (..., rows); pass only the positions you need."""
        return F.linear(self.transform(hidden), self.decoder.weight, self.bias)


class ContrastiveHead(nn.Module):
    """SimCLR-style projection of the CLS output: [Linear -> BatchNorm -> ReLU] x (layers - 1),
    then a bias-free Linear to `out_dim` (optionally followed by BatchNorm).

    BatchNorm is a plain BatchNorm1d; a distributed run swaps it for a synchronised one with
    `vimpac.engine.sync_batchnorm.synchronize_batchnorm` (the original always uses SyncBatchNorm;
    without a process group the two compute the same). State-dict names are identical either way.
    """

    def __init__(self, in_dim: int, hidden: int = 2048, out_dim: int = 256, layers: int = 2,
                 bn_after_proj: bool = False) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"contrastive head needs at least 1 layer, got {layers}")
        norm = nn.BatchNorm1d
        modules: list[tuple[str, nn.Module]] = []
        for i in range(layers):
            fan_in = in_dim if i == 0 else hidden
            if i == layers - 1:
                modules.append((f"linear_{i}", nn.Linear(fan_in, out_dim, bias=False)))
                if bn_after_proj:
                    modules.append((f"bn_{i}", norm(out_dim)))
            else:
                modules += [(f"linear_{i}", nn.Linear(fan_in, hidden)), (f"bn_{i}", norm(hidden)),
                            (f"act_{i}", nn.ReLU())]
        self.mlp = nn.Sequential(OrderedDict(modules))
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        """CLS output (B, D) -> projection (B, out_dim); BatchNorm needs B > 1 in training."""
        return self.mlp(cls)


class ClassificationHead(nn.Module):
    """Dropout -> Linear on the CLS output, initialised to zero (the original's `cls_fc`), so
    fine-tuning starts from uniform predictions and the backbone gets no noisy early gradients."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)
        self.cls_fc = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.cls_fc.weight)
        nn.init.zeros_(self.cls_fc.bias)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.cls_fc(self.dropout(cls))
