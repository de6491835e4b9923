"""Resizing positional tables when weights load into a model with another T / H / W.

Pre-training runs at T = 5 frames of 16 x 16 tokens; fine-tuning at T = 10 and 32 x 32 tokens.
Each factorized table (rows, D) is resized along its rows by linear interpolation
(`align_corners=False`), as the authors' loader does. The CLS row is never resized.
"""

from __future__ import annotations

from typing import MutableMapping

import torch
import torch.nn.functional as F

TABLE_NAMES = ("temporal_pos_embedding", "height_pos_embedding", "width_pos_embedding")


def resize_table(table: torch.Tensor, rows: int) -> torch.Tensor:
    """Linearly interpolate a (n, D) table to (rows, D); returns the input when n == rows."""
    if table.shape[0] == rows:
        return table
    as_signal = table.detach().float().t().unsqueeze(0)          # (1, D, n)
    resized = F.interpolate(as_signal, size=rows, mode="linear", align_corners=False)
    return resized[0].t().contiguous().to(table.dtype)


def resize_positional_tables(state_dict: MutableMapping[str, torch.Tensor],
                             target: MutableMapping[str, torch.Tensor]) -> list[str]:
    """Resize every positional table of `state_dict` whose row count differs from `target`
    (a model's state dict); returns the keys changed, as `old -> new` descriptions."""
    changed = []
    for key in list(state_dict):
        if key.rsplit(".", 1)[-1] not in TABLE_NAMES or key not in target:
            continue
        old, want = state_dict[key], target[key]
        if old.shape != want.shape and old.dim() == 2 and old.shape[1] == want.shape[1]:
            state_dict[key] = resize_table(old, want.shape[0])
            changed.append(f"{key}: {old.shape[0]} -> {want.shape[0]} rows")
    return changed
