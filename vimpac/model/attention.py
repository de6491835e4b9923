"""Attention over axes of the token grid with a TimeSformer-style CLS slot.

The token grid is (B, T, H, W, D) and CLS is a separate (B, D) vector. An attention over an
axis set S (e.g. T, or H x W) treats every combination of the *other* axes as one row: a
sequence of the row's N tokens with CLS copied into slot 0 in front (length 1 + N). CLS therefore
attends to itself and the row, and every token can attend to CLS. The CLS result is the slot-0
context averaged over all rows, taken BEFORE the output projection (the authors' code; the
paper's Eq. 15 averages after the residual and LayerNorm - the released weights expect the code's
order). [PAD] keys are masked; the CLS key never is; queries are never masked.

Everything is batched: the grid is permuted so S is the sequence axis, the CLS slot is
concatenated in one copy, and all rows go through one batched attention
(`attend`: `torch.nn.functional.scaled_dot_product_attention` on GPU and for long rows, an
explicit scores-softmax-dropout-matmul for the short rows of factorized layouts on CPU, where
it is faster). There are no Python loops over rows.

Parameter names follow the original (`attentions.{k}.attention.query`, `output.dense`,
`output.LayerNorm`, ...) so released checkpoints load without renaming.
"""

from __future__ import annotations

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
    Pre-LN: x <- x + dropout(dense(concat(contexts of LN(x)))); the original names the norm
    `LayerNorm` and the projection `dense` directly on the block in this mode. Its dense maps
    the attention width (D/2 with halve_att) back to D; the original used D -> D there, which is
    why pre-LN + halve_att crashed in it.
    """

    def __init__(self, dim: int, width: int, heads: int, spec: BlockSpec, *, pre_ln: bool,
                 dropout: float, attention_dropout: float) -> None:
        super().__init__()
        parts = len(spec.attentions)
        self.spec = spec
        self.pre_ln = pre_ln
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

        # `split` rather than slicing: its backward is one concatenation of the parts'
        # gradients, where every slice's backward would zero-fill a full-width gradient and add.
        sizes = [3 * attn.out_width for attn in self.attentions]
        cls_parts, x_parts = [], []
        for attn, part, cls_part in zip(self.attentions, qkv.split(sizes, dim=-1), cls_qkv.split(sizes, dim=-1)):
            shape = (3, attn.heads, attn.head_dim)
            ctx_cls, ctx_x = axis_attention(part.unflatten(-1, shape), cls_part.unflatten(-1, shape),
                                            attn.spec.axes, key_pad, dropout_p)
            cls_parts.append(ctx_cls)
            x_parts.append(ctx_x)
        # Concatenating along the head axis = concatenating features in the written order
        # (height part, then width part), each part's heads in head order.
        ctx_cls = torch.cat(cls_parts, dim=-2).flatten(-2)
        ctx_x = (torch.cat(x_parts, dim=-2) if len(x_parts) > 1 else x_parts[0].contiguous()).flatten(-2)

        if self.pre_ln:
            return cls + self.dropout(self.dense(ctx_cls)), x + self.dropout(self.dense(ctx_x))
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


def axis_attention(qkv: torch.Tensor, cls_qkv: torch.Tensor, axes: tuple[int, ...],
                   key_pad: torch.Tensor | None, dropout_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over grid axes `axes` with a CLS slot in front of every row.

    qkv: (B, T, H, W, 3, heads, head_dim) token queries/keys/values; cls_qkv: (B, 3, heads, head_dim).
    Returns the CLS context (B, heads, head_dim), averaged over rows, and the token contexts
    (B, T, H, W, heads, head_dim) (a strided view; the caller's concatenation copies it once).
    """
    batch = qkv.shape[0]
    grid = qkv.shape[1:4]
    rows = tuple(a for a in (1, 2, 3) if a not in axes)
    heads, head_dim = qkv.shape[-2:]
    row_sizes = [grid[a - 1] for a in rows]
    seq_sizes = [grid[a - 1] for a in axes]
    n_rows = batch
    for size in row_sizes:
        n_rows *= size
    n_seq = 1
    for size in seq_sizes:
        n_seq *= size

    # (B, T, H, W, 3, h, d) -> (3, B, rows..., h, seq..., d) -> flatten seq (a view when the
    # seq axes are adjacent in the grid, which holds for every layout but "TxW").
    perm = (4, 0, *rows, 5, *axes, 6)
    tokens = qkv.permute(perm).flatten(-1 - len(axes), -2)
    slot = cls_qkv.permute(1, 0, 2, 3).reshape(3, batch, *([1] * len(rows)), heads, 1, head_dim)
    slot = slot.expand(3, batch, *row_sizes, heads, 1, head_dim)
    # One copy builds every (1 + N) sequence: (3, R, h, 1 + N, d).
    seq = torch.cat([slot, tokens], dim=-2).reshape(3, n_rows, heads, 1 + n_seq, head_dim)
    q, k, v = seq.unbind(0)

    attn_mask = None
    if key_pad is not None:
        pad = key_pad.permute(0, *rows, *axes).reshape(n_rows, n_seq)
        keep = torch.cat([pad.new_ones(n_rows, 1), ~pad], dim=1)   # CLS key is never masked
        attn_mask = keep.view(n_rows, 1, 1, 1 + n_seq)
    out = attend(q, k, v, attn_mask, dropout_p)

    out = out.reshape(batch, *row_sizes, heads, 1 + n_seq, head_dim)
    # `split` (not out[..., 0, :] and out[..., 1:, :]): the backward concatenates the two
    # gradients once instead of zero-filling the full output twice and adding.
    ctx_cls, ctx_x = out.split([1, n_seq], dim=-2)
    ctx_cls = ctx_cls.squeeze(-2)                               # (B, rows..., h, d)
    if rows:
        ctx_cls = ctx_cls.mean(dim=tuple(range(1, 1 + len(rows))))
    else:
        ctx_cls = ctx_cls.reshape(batch, heads, head_dim)       # joint attention: one row per clip
    ctx_x = ctx_x.unflatten(-2, seq_sizes)                      # (B, rows..., h, seq..., d)
    # Back to (B, T, H, W, h, d): position of each grid axis in the current order.
    current = (0, *rows, "h", *axes, "d")
    inverse = [current.index(a) for a in (0, 1, 2, 3, "h", "d")]
    return ctx_cls, ctx_x.permute(inverse)


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
