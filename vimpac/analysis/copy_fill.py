"""Fill masked tokens by copying their nearest visible neighbour (the paper's App. H.2 baseline).

    filled = copy_fill(tokens, mask, "spatiotemporal")   # tokens, mask: (B, T, H, W)
    accuracy = copy_accuracy(tokens, mask, filled.tokens)

"Nearest" is the Euclidean distance in the token grid with unit spacing on every axis:
`"spatial"` looks only inside the masked token's own frame (distance over (h, w)),
`"spatiotemporal"` looks at the whole clip (distance over (t, h, w)). Distances are compared
as exact integer squared distances, so ties are real ties; they go to the visible position
that comes first in (t, h, w) raster order (`torch.argmin` returns the first minimum, and the
candidates are listed in raster order). A masked token with no visible candidate (a fully
masked frame in spatial mode, a fully masked clip) gets no source: its filled value is -1 and
it counts as wrong.

The search is a distance matrix between the masked positions and the visible ones, computed in
chunks of masked positions so that memory stays bounded (`chunk_elements` entries per chunk)
whatever the grid size; there is no Python loop over tokens, only over samples and chunks.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from vimpac.analysis.errors import AnalysisError

Neighbourhood = Literal["spatial", "spatiotemporal"]
NEIGHBOURHOODS: tuple[str, ...] = ("spatial", "spatiotemporal")

NO_SOURCE = -1
"""Value of `CopyFill.source` (and of the filled token) where nothing was copied."""

_FAR = torch.iinfo(torch.int32).max
"""Distance given to candidates a neighbourhood excludes (other frames in spatial mode)."""


class CopyFill(NamedTuple):
    tokens: torch.Tensor  # (B, T, H, W) int64: visible tokens kept, masked ones copied (-1: no source)
    source: torch.Tensor  # (B, T, H, W) int64: flat index t*H*W + h*W + w copied from; -1 if none / not masked


def nearest_visible(mask: torch.Tensor, neighbourhood: Neighbourhood, chunk_elements: int = 1 << 16) -> torch.Tensor:
    """For one clip's mask (T, H, W) bool: the flat index of the nearest visible position of
    every masked position (int64 (T, H, W); -1 at visible positions and where none exists)."""
    if mask.dim() != 3 or mask.dtype != torch.bool:
        raise AnalysisError(f"nearest_visible: expected a bool mask (T, H, W), got {mask.dtype} {tuple(mask.shape)}")
    if neighbourhood not in NEIGHBOURHOODS:
        raise AnalysisError(f"nearest_visible: neighbourhood must be one of {NEIGHBOURHOODS}, got {neighbourhood!r}")
    T, H, W = mask.shape
    flat = mask.reshape(-1).cpu()
    source = torch.full((flat.numel(),), NO_SOURCE, dtype=torch.int64)
    visible = (~flat).nonzero().squeeze(1)  # ascending = raster order: ties go to the first
    queries = flat.nonzero().squeeze(1)
    if visible.numel() == 0 or queries.numel() == 0:
        return source.reshape(T, H, W)
    coords = torch.stack(torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij"))
    coords = coords.reshape(3, -1).to(torch.int32)  # (3, P): one contiguous row per axis
    candidates = coords[:, visible]  # (3, V)
    rows = max(1, chunk_elements // visible.numel())
    for begin in range(0, queries.numel(), rows):  # chunks bound memory; not a loop over tokens
        query = coords[:, queries[begin:begin + rows]]  # (3, m)
        # Squared distance axis by axis, in place: three (m, V) passes instead of materialising
        # an (m, V, 3) difference and reducing over its short last axis (4x faster on CPU).
        dt = query[0, :, None] - candidates[0]
        dh = query[1, :, None] - candidates[1]
        distance = dh.mul_(dh)
        dw = query[2, :, None] - candidates[2]
        distance.addcmul_(dw, dw)
        if neighbourhood == "spatial":
            distance.masked_fill_(dt != 0, _FAR)
        else:
            distance.addcmul_(dt, dt)
        best = distance.argmin(1)
        found = distance.gather(1, best[:, None]).squeeze(1) < _FAR
        source[queries[begin:begin + rows]] = torch.where(found, visible[best], torch.full_like(best, NO_SOURCE))
    return source.reshape(T, H, W)


def copy_fill(tokens: torch.Tensor, mask: torch.Tensor, neighbourhood: Neighbourhood) -> CopyFill:
    """Replace every masked token of a batch (B, T, H, W) by its nearest visible neighbour's token."""
    if tokens.dim() != 4 or mask.shape != tokens.shape or mask.dtype != torch.bool:
        raise AnalysisError(f"copy_fill: expected tokens (B, T, H, W) and a bool mask of the same shape, got "
                            f"{tuple(tokens.shape)} and {mask.dtype} {tuple(mask.shape)}")
    tokens = tokens.long().cpu()
    source = torch.stack([nearest_visible(m, neighbourhood) for m in mask.cpu()]) if len(mask) else \
        torch.full(tokens.shape, NO_SOURCE, dtype=torch.int64)
    flat_tokens = tokens.flatten(1)
    copied = flat_tokens.gather(1, source.flatten(1).clamp(min=0)).reshape(tokens.shape)
    copied = copied.masked_fill(source == NO_SOURCE, NO_SOURCE)
    return CopyFill(torch.where(mask.cpu(), copied, tokens), source)


def copy_accuracy(tokens: torch.Tensor, mask: torch.Tensor, filled: torch.Tensor) -> tuple[int, int]:
    """(correct, masked): how many masked tokens the fill got exactly right, out of how many."""
    mask = mask.cpu()
    correct = int(((filled.cpu() == tokens.long().cpu()) & mask).sum())
    return correct, int(mask.sum())
