"""Attention over axes of the token grid with a TimeSformer-style CLS slot.

The token grid is (B, T, H, W, D) and CLS is a separate (B, D) vector. An attention over an
axis set S (e.g. T, or H x W) treats every combination of the *other* axes as one row: a
sequence of the row's N tokens with CLS copied into slot 0 in front (length 1 + N). CLS therefore
attends to itself and the row, and every token can attend to CLS. The CLS result is the slot-0
context averaged over all rows, taken BEFORE the output projection (the authors' code; the
paper's Eq. 15 averages after the residual and LayerNorm - the released weights expect the code's
order). [PAD] keys are masked; the CLS key never is; queries are never masked.

Everything is batched: `GatherRows` writes every attention's rows (CLS slot + tokens, S as the
sequence axis) in one copy of the Q/K/V activations, all rows go through one batched attention
(`attend`: `torch.nn.functional.scaled_dot_product_attention` on GPU and for long rows, an
explicit scores-softmax-dropout-matmul for the short rows of factorized layouts on CPU, where
it is faster), and `ScatterRows` writes the contexts back in one more copy. Their backward
passes are one copy each as well (plain autograd through permute / cat / unbind / split copied the
gradient three times). There are no Python loops over rows.

Parameter names follow the original (`attentions.{k}.attention.query`, `output.dense`,
`output.LayerNorm`, ...) so released checkpoints load without renaming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vimpac.model.dropout import Dropout, dropout as dropout_fn
from vimpac.model.layout import AttentionSpec, BlockSpec

LAYER_NORM_EPS = 1e-12  # the original's value everywhere in the backbone and the token head

# Rows at most this long (1 + tokens) use the explicit attention below on CPU even without dropout.
# CPU SDPA's fused kernel is built for long sequences: on this model's rows (7 for T, 17 for H or
# W) it was slower than three plain ops (bench: docs/benchmarks.md, "Pre-training step").
SHORT_ROW = 64


class QKVProjection(nn.Module):
    """Separate query / key / value Linear layers (the original's `BertSelfAttention` names)."""

    def __init__(self, dim: int, out_width: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, out_width)
        self.key = nn.Linear(dim, out_width)
        self.value = nn.Linear(dim, out_width)


class AxisAttention(nn.Module):
    """One attention of a block: its own Q/K/V over the axis set `spec.axes`, `heads` heads."""

    def __init__(self, dim: int, out_width: int, heads: int, spec: AttentionSpec) -> None:
        super().__init__()
        self.spec = spec
        self.heads = heads
        self.head_dim = out_width // heads
        self.out_width = out_width
        self.attention = QKVProjection(dim, out_width)

    def extra_repr(self) -> str:
        return f"axes={self.spec.name}, heads={self.heads}, head_dim={self.head_dim}"


class OutputProjection(nn.Module):
    """Post-LN block output: LayerNorm(residual + dropout(dense(context)))."""

    def __init__(self, width: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)  # noqa: N815 - the original's name
        self.dropout = Dropout(dropout)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(context)))


class AttentionBlock(nn.Module):
    """One comma-separated group of the layout: parallel attentions + one shared output.

    Post-LN (default): x <- LN(x + dropout(dense(concat(contexts)))).
    Pre-LN: x <- x + dropout(dense(concat(contexts of LN(x)))), or with
    `normalized_residual` LN(x) + dropout(dense(...)) as the authors' pre-activation code
    computes it. The original names the norm `LayerNorm` and the projection `dense` directly on
    the block in this mode. Its dense maps the attention width (D/2 with halve_att) back to D;
    the original used D -> D there, which is why pre-LN + halve_att crashed in it.
    """

    def __init__(self, dim: int, width: int, heads: int, spec: BlockSpec, *, pre_ln: bool,
                 dropout: float, attention_dropout: float, normalized_residual: bool = False) -> None:
        super().__init__()
        parts = len(spec.attentions)
        self.spec = spec
        self.pre_ln = pre_ln
        self.normalized_residual = normalized_residual
        self.attention_dropout = attention_dropout
        self.attentions = nn.ModuleList(
            AxisAttention(dim, width // parts, heads // parts, a) for a in spec.attentions
        )
        if pre_ln:
            self.dense = nn.Linear(width, dim)
            self.LayerNorm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)  # noqa: N815
            self.dropout = Dropout(dropout)
        else:
            self.output = OutputProjection(width, dim, dropout)

    def forward(self, cls: torch.Tensor, x: torch.Tensor,
                key_pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """cls (B, D), x (B, T, H, W, D), key_pad (B, T, H, W) bool or None -> same shapes."""
        cls_in, x_in = (self.LayerNorm(cls), self.LayerNorm(x)) if self.pre_ln else (cls, x)
        weight, bias = self._fused_qkv(x_in.device.type)
        qkv = F.linear(x_in, weight, bias)          # (B, T, H, W, 3 * width)
        cls_qkv = F.linear(cls_in, weight, bias)    # (B, 3 * width)
        dropout_p = self.attention_dropout if self.training else 0.0

        # Every attention's rows in one copy of the Q/K/V activations, and the contexts back into
        # one (B, T, H, W, width) tensor in one more; the backward of each is one copy too.
        rows = [RowGeometry.of(x.shape, attn.spec.axes, attn.heads, attn.head_dim) for attn in self.attentions]
        qkv_rows = GatherRows.apply(qkv, cls_qkv, rows)
        contexts = []
        for i, geometry in enumerate(rows):
            q, k, v = qkv_rows[3 * i:3 * i + 3]
            contexts.append(attend(q, k, v, geometry.key_mask(key_pad), dropout_p))
        ctx_cls, ctx_x = ScatterRows.apply(rows, *contexts)

        if self.pre_ln:
            cls_res, x_res = (cls_in, x_in) if self.normalized_residual else (cls, x)
            return cls_res + self.dropout(self.dense(ctx_cls)), x_res + self.dropout(self.dense(ctx_x))
        return self.output(ctx_cls, cls), self.output(ctx_x, x)

    def _fused_qkv(self, device_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The Q/K/V weights and biases of every attention of the block, concatenated.

        One matmul then computes all projections. The concatenation is rebuilt at every forward
        (it is small next to the activations) so the parameters keep the original's separate
        names and the optimizer updates them directly. Under autocast it is cast once here:
        `F.linear` would cast this non-leaf tensor again for each of its two calls (tokens and
        CLS), since autocast caches casts of leaf parameters only. Same values either way.
        """
        weight = torch.cat([w for a in self.attentions
                            for w in (a.attention.query.weight, a.attention.key.weight, a.attention.value.weight)])
        bias = torch.cat([b for a in self.attentions
                          for b in (a.attention.query.bias, a.attention.key.bias, a.attention.value.bias)])
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            weight, bias = weight.to(dtype), bias.to(dtype)
        return weight, bias


@dataclass(frozen=True)
class RowGeometry:
    """How one attention over grid axes `axes` cuts a (B, T, H, W) grid into rows.

    Every combination of the other axes is a row; its sequence is the CLS slot followed by the
    row's `seq_len` tokens in grid order. Rows are numbered batch-major, then by the other axes
    in grid order: (B, *row_sizes) flattened.
    """

    batch: int
    grid: tuple[int, int, int]     # (T, H, W)
    axes: tuple[int, ...]          # grid axes attended over (1 = T, 2 = H, 3 = W)
    row_axes: tuple[int, ...]      # the other grid axes
    row_sizes: tuple[int, ...]
    seq_sizes: tuple[int, ...]
    heads: int
    head_dim: int

    @classmethod
    def of(cls, grid_shape: torch.Size, axes: tuple[int, ...], heads: int, head_dim: int) -> "RowGeometry":
        """Geometry for a (B, T, H, W, ...) activation shape."""
        row_axes = tuple(a for a in (1, 2, 3) if a not in axes)
        return cls(grid_shape[0], tuple(grid_shape[1:4]), tuple(axes), row_axes, tuple(grid_shape[a] for a in row_axes),
                   tuple(grid_shape[a] for a in axes), heads, head_dim)

    @property
    def rows_per_clip(self) -> int:
        return math.prod(self.row_sizes)

    @property
    def seq_len(self) -> int:
        return math.prod(self.seq_sizes)

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    def rows_shape(self) -> tuple[int, ...]:
        """(B, *row_sizes, heads, 1 + seq_len, head_dim): a row tensor before flattening the rows."""
        return (self.batch, *self.row_sizes, self.heads, 1 + self.seq_len, self.head_dim)

    def flat_rows_shape(self) -> tuple[int, int, int, int]:
        return (self.batch * self.rows_per_clip, self.heads, 1 + self.seq_len, self.head_dim)

    def grid_to_rows(self, grid: torch.Tensor) -> torch.Tensor:
        """View (B, T, H, W, heads, head_dim) as (B, *row_sizes, heads, *seq_sizes, head_dim)."""
        return grid.permute(0, *self.row_axes, 4, *self.axes, 5)

    def token_slots(self, rows: torch.Tensor) -> torch.Tensor:
        """The token slots of a (B, *row_sizes, heads, 1 + N, head_dim) tensor, seq axes unflattened."""
        return rows[..., 1:, :].unflatten(-2, self.seq_sizes)

    def sum_over_rows(self, slot: torch.Tensor) -> torch.Tensor:
        """(B, *row_sizes, heads, head_dim) -> (B, heads, head_dim)."""
        return slot.sum(dim=tuple(range(1, 1 + len(self.row_axes)))) if self.row_axes else slot

    def mean_over_rows(self, slot: torch.Tensor) -> torch.Tensor:
        """(B, *row_sizes, heads, head_dim) -> (B, heads, head_dim), one rounding under bf16."""
        return slot.mean(dim=tuple(range(1, 1 + len(self.row_axes)))) if self.row_axes else slot

    def broadcast_to_rows(self, per_clip: torch.Tensor) -> torch.Tensor:
        """(B, heads, head_dim) -> a view broadcastable to (B, *row_sizes, heads, head_dim)."""
        return per_clip.view(self.batch, *([1] * len(self.row_axes)), self.heads, self.head_dim)

    def key_mask(self, key_pad: torch.Tensor | None) -> torch.Tensor | None:
        """(B, T, H, W) PAD flags -> (rows, 1, 1, 1 + N) keep mask; the CLS key is never masked."""
        if key_pad is None:
            return None
        n_rows = self.batch * self.rows_per_clip
        pad = key_pad.permute(0, *self.row_axes, *self.axes).reshape(n_rows, self.seq_len)
        return torch.cat([pad.new_ones(n_rows, 1), ~pad], dim=1).view(n_rows, 1, 1, 1 + self.seq_len)


class GatherRows(torch.autograd.Function):
    """Q/K/V activations -> every attention's (rows, heads, 1 + N, head_dim) q, k, v.

    qkv (B, T, H, W, sum of 3 * width) holds the attentions' [q | k | v] blocks side by side (the
    fused projection's order); cls_qkv (B, same) is the CLS slot's. Returns q, k, v of the first
    attention, then of the second, ... Forward writes each output once (the CLS slot broadcast
    over the rows); backward writes the gradient straight into one (B, T, H, W, ...) tensor,
    where autograd through permute / cat / unbind / split would copy it three times.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cls_qkv: torch.Tensor, rows: list[RowGeometry]) -> tuple[torch.Tensor, ...]:
        ctx.rows = rows
        ctx.shapes = (qkv.shape, cls_qkv.shape, qkv.dtype, qkv.device)
        outputs = []
        offset = 0
        for geometry in rows:
            grid = qkv[..., offset:offset + 3 * geometry.width].unflatten(-1, (3, geometry.heads, geometry.head_dim))
            cls_part = cls_qkv[:, offset:offset + 3 * geometry.width].view(-1, 3, geometry.heads, geometry.head_dim)
            for j in range(3):
                out = qkv.new_empty(geometry.rows_shape())
                geometry.token_slots(out).copy_(geometry.grid_to_rows(grid[..., j, :, :]))
                out[..., 0, :].copy_(geometry.broadcast_to_rows(cls_part[:, j]))
                outputs.append(out.view(geometry.flat_rows_shape()))
            offset += 3 * geometry.width
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        # Autograd materialises the gradient of an unused output as zeros, so none is None here.
        qkv_shape, cls_shape, dtype, device = ctx.shapes
        d_qkv = torch.empty(qkv_shape, dtype=dtype, device=device)
        d_cls = torch.empty(cls_shape, dtype=dtype, device=device)
        offset = 0
        for i, geometry in enumerate(ctx.rows):
            grid = d_qkv[..., offset:offset + 3 * geometry.width].unflatten(-1, (3, geometry.heads, geometry.head_dim))
            cls_part = d_cls[:, offset:offset + 3 * geometry.width].view(-1, 3, geometry.heads, geometry.head_dim)
            for j in range(3):
                grad = grads[3 * i + j].reshape(geometry.rows_shape())
                geometry.grid_to_rows(grid[..., j, :, :]).copy_(geometry.token_slots(grad))
                cls_part[:, j].copy_(geometry.sum_over_rows(grad[..., 0, :]))
            offset += 3 * geometry.width
        return d_qkv, d_cls, None


class ScatterRows(torch.autograd.Function):
    """Every attention's (rows, heads, 1 + N, head_dim) output -> the block's contexts.

    Returns the CLS context (B, sum of widths), slot 0 averaged over each clip's rows, and the
    token contexts (B, T, H, W, sum of widths), the attentions' heads side by side in the
    written order (height part, then width part). One copy each way.
    """

    @staticmethod
    def forward(ctx, rows: list[RowGeometry], *outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.rows = rows
        first = outputs[0]
        batch, grid_shape = rows[0].batch, rows[0].grid
        width = sum(g.width for g in rows)
        ctx_cls = first.new_empty(batch, width)
        ctx_x = first.new_empty(batch, *grid_shape, width)
        offset = 0
        for geometry, out in zip(rows, outputs):
            out = out.reshape(geometry.rows_shape())
            grid = ctx_x[..., offset:offset + geometry.width].unflatten(-1, (geometry.heads, geometry.head_dim))
            geometry.grid_to_rows(grid).copy_(geometry.token_slots(out))
            ctx_cls[:, offset:offset + geometry.width].copy_(geometry.mean_over_rows(out[..., 0, :]).flatten(1))
            offset += geometry.width
        return ctx_cls, ctx_x

    @staticmethod
    def backward(ctx, d_cls: torch.Tensor, d_x: torch.Tensor):
        # Both gradients are tensors: autograd materialises an unused output's as zeros.
        grads = []
        offset = 0
        for geometry in ctx.rows:
            d_out = d_x.new_empty(geometry.rows_shape())
            grid = d_x[..., offset:offset + geometry.width].unflatten(-1, (geometry.heads, geometry.head_dim))
            geometry.token_slots(d_out).copy_(geometry.grid_to_rows(grid))
            part = d_cls[:, offset:offset + geometry.width].reshape(-1, geometry.heads, geometry.head_dim)
            d_out[..., 0, :].copy_(geometry.broadcast_to_rows(part / geometry.rows_per_clip))
            grads.append(d_out.view(geometry.flat_rows_shape()))
            offset += geometry.width
        return (None, *grads)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None,
           dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), keys where `keep`) with dropout on the probabilities, @ v.

    q, k, v: (R, heads, L, d); keep: bool, broadcastable to (R, heads, L, L), or None.

    GPUs (and long CPU rows without dropout) use `F.scaled_dot_product_attention`. On CPU with
    dropout, SDPA cannot use its fused kernel and falls back to a generic path that scales q and
    k separately and (under bf16 autocast) copies everything to fp32 and back; for short rows
    these copies, not the FLOPs, are the cost. Here the (L x L) scores are scaled instead of
    q and k, the softmax runs in fp32 and the probabilities are dropped out as SDPA does (keep
    with probability 1 - p, kept values scaled by 1 / (1 - p)), with `vimpac.model.dropout`'s
    cheaper mask.
    """
    if q.device.type != "cpu" or (dropout_p == 0.0 and q.shape[-2] > SHORT_ROW):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p)
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = scores.softmax(dim=-1, dtype=torch.float32)
    if dropout_p > 0.0:
        probs = dropout_fn(probs, dropout_p)
    return probs.to(v.dtype) @ v
