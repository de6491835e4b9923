"""GatherRows / ScatterRows (the hand-written copies around attention) against a plain autograd
reference built from permute / cat / unbind / mean: same outputs and the same gradients."""

from __future__ import annotations

import pytest
import torch

from vimpac.model.attention import GatherRows, RowGeometry, ScatterRows, attend
from vimpac.model.layout import parse_layout

HEADS, HEAD_DIM = 2, 4


def reference_contexts(qkv, cls_qkv, axes_list, key_pad):
    """Each attention's rows by permute + cat (autograd does the backward), then the contexts."""
    batch, grid = qkv.shape[0], qkv.shape[1:4]
    offset, cls_parts, x_parts = 0, [], []
    for axes in axes_list:
        rows = tuple(a for a in (1, 2, 3) if a not in axes)
        width = 3 * HEADS * HEAD_DIM
        part = qkv[..., offset:offset + width].unflatten(-1, (3, HEADS, HEAD_DIM))
        cls_part = cls_qkv[:, offset:offset + width].unflatten(-1, (3, HEADS, HEAD_DIM))
        offset += width
        row_sizes = [grid[a - 1] for a in rows]
        seq_sizes = [grid[a - 1] for a in axes]
        n_rows = batch * int(torch.tensor(row_sizes).prod()) if rows else batch
        n_seq = int(torch.tensor(seq_sizes).prod())
        tokens = part.permute(4, 0, *rows, 5, *axes, 6).reshape(3, batch, *row_sizes, HEADS, n_seq, HEAD_DIM)
        slot = cls_part.permute(1, 0, 2, 3).reshape(3, batch, *([1] * len(rows)), HEADS, 1, HEAD_DIM)
        slot = slot.expand(3, batch, *row_sizes, HEADS, 1, HEAD_DIM)
        q, k, v = torch.cat([slot, tokens], dim=-2).reshape(3, n_rows, HEADS, 1 + n_seq, HEAD_DIM).unbind(0)
        mask = None
        if key_pad is not None:
            pad = key_pad.permute(0, *rows, *axes).reshape(n_rows, n_seq)
            mask = torch.cat([pad.new_ones(n_rows, 1), ~pad], dim=1).view(n_rows, 1, 1, 1 + n_seq)
        out = attend(q, k, v, mask, 0.0).reshape(batch, *row_sizes, HEADS, 1 + n_seq, HEAD_DIM)
        ctx_cls = out[..., 0, :]
        ctx_cls = ctx_cls.mean(dim=tuple(range(1, 1 + len(rows)))) if rows else ctx_cls
        ctx_x = out[..., 1:, :].unflatten(-2, seq_sizes)
        current = (0, *rows, "h", *axes, "d")
        ctx_x = ctx_x.permute([current.index(a) for a in (0, 1, 2, 3, "h", "d")])
        cls_parts.append(ctx_cls)
        x_parts.append(ctx_x)
    return torch.cat(cls_parts, dim=-2).flatten(-2), torch.cat(x_parts, dim=-2).flatten(-2)


def ours(qkv, cls_qkv, axes_list, key_pad):
    rows = [RowGeometry.of(qkv.shape, axes, HEADS, HEAD_DIM) for axes in axes_list]
    qkv_rows = GatherRows.apply(qkv, cls_qkv, rows)
    contexts = [attend(*qkv_rows[3 * i:3 * i + 3], g.key_mask(key_pad), 0.0) for i, g in enumerate(rows)]
    return ScatterRows.apply(rows, *contexts)


BLOCKS = ["T", "H|W", "HxW", "TxHxW", "TxW", "T|H|W|HxW"]


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("with_pad", [False, True])
def test_same_outputs_and_gradients_as_plain_autograd(block, with_pad):
    axes_list = [a.axes for a in parse_layout(block)[0].attentions]
    g = torch.Generator().manual_seed(len(block) + with_pad)
    shape = (2, 3, 4, 5)
    width = len(axes_list) * 3 * HEADS * HEAD_DIM
    qkv = torch.randn(*shape, width, generator=g, dtype=torch.float64)
    cls_qkv = torch.randn(shape[0], width, generator=g, dtype=torch.float64)
    key_pad = None
    if with_pad:
        key_pad = torch.zeros(shape, dtype=torch.bool)
        key_pad[1, -1] = True
    d_cls = torch.randn(shape[0], width // 3, generator=g, dtype=torch.float64)
    d_x = torch.randn(*shape, width // 3, generator=g, dtype=torch.float64)
    results = []
    for fn in (reference_contexts, ours):
        a, b = qkv.clone().requires_grad_(), cls_qkv.clone().requires_grad_()
        ctx_cls, ctx_x = fn(a, b, axes_list, key_pad)
        torch.autograd.backward([ctx_cls, ctx_x], [d_cls, d_x])
        results.append((ctx_cls, ctx_x, a.grad, b.grad))
    for expected, got in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axes_list", [[(2,), (3,)], [(1,)], [(1, 2, 3)]])
def test_gradcheck_through_both_functions(axes_list):
    """gradcheck in float64 (`attend` computes its softmax in fp32, so a linear mix stands in)."""
    g = torch.Generator().manual_seed(0)
    width = len(axes_list) * 3 * HEADS * HEAD_DIM
    qkv = torch.randn(2, 2, 3, 2, width, generator=g, dtype=torch.float64, requires_grad=True)
    cls_qkv = torch.randn(2, width, generator=g, dtype=torch.float64, requires_grad=True)

    def mixed(a, b):
        rows = [RowGeometry.of(a.shape, axes, HEADS, HEAD_DIM) for axes in axes_list]
        qkv_rows = GatherRows.apply(a, b, rows)
        contexts = [qkv_rows[3 * i] + 2 * qkv_rows[3 * i + 1] * qkv_rows[3 * i + 2] for i in range(len(rows))]
        return ScatterRows.apply(rows, *contexts)

    assert torch.autograd.gradcheck(mixed, (qkv, cls_qkv))


def test_unused_output_gets_zero_gradient():
    axes_list = [(1,)]
    qkv = torch.randn(1, 2, 2, 2, 3 * HEADS * HEAD_DIM, requires_grad=True)
    cls_qkv = torch.randn(1, 3 * HEADS * HEAD_DIM, requires_grad=True)
    ctx_cls, _ = ours(qkv, cls_qkv, axes_list, None)   # token contexts unused
    ctx_cls.sum().backward()
    assert torch.isfinite(qkv.grad).all() and qkv.grad.abs().sum() > 0
