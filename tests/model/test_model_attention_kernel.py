"""The explicit short-row attention (`vimpac.model.attention.attend`) against PyTorch's SDPA."""

import pytest
import torch
import torch.nn.functional as F

from vimpac.model.attention import SHORT_ROW, attend


def _inputs(rows: int, heads: int, length: int, dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(rows, heads, length, dim, generator=gen, requires_grad=True) for _ in range(3))
    keep = torch.rand(rows, 1, 1, length, generator=gen) > 0.3
    keep[..., 0] = True  # the CLS key is never masked
    return q, k, v, keep


@pytest.mark.parametrize("length", [7, 17])
@pytest.mark.parametrize("masked", [False, True])
def test_attend_equals_sdpa_without_dropout(length, masked):
    q, k, v, keep = _inputs(6, 4, length, 16)
    keep = keep if masked else None
    ours = attend(q, k, v, keep, 0.0)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(reference.square().sum(), (q, k, v))
    for ours_g, ref_g in zip(grads, ref_grads):
        torch.testing.assert_close(ours_g, ref_g, atol=1e-5, rtol=1e-4)


def test_attend_bf16_autocast_close_to_fp32():
    q, k, v, keep = _inputs(6, 4, 17, 16)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), keep, 0.0)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), reference, atol=3e-2, rtol=3e-2)


def test_attend_dropout_is_scaled_bernoulli_on_the_probabilities():
    # With v = identity the output is the dropped-out probability matrix itself: every entry is
    # either 0 or the undropped probability / (1 - p), and about p of them are 0.
    p, length = 0.25, 16
    q, k, _, keep = _inputs(64, 4, length, length, seed=1)
    v = torch.eye(length).expand(64, 4, length, length)
    probs = attend(q, k, v, keep, 0.0).detach()
    torch.manual_seed(0)
    dropped = attend(q, k, v, keep, p).detach()
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], probs[kept] / (1 - p))
    candidates = probs != 0  # masked keys have probability 0 either way
    share = 1 - (kept & candidates).sum() / candidates.sum()
    assert abs(float(share) - p) < 0.01  # ~49,000 candidates: standard error ~0.002


def test_long_rows_without_dropout_use_sdpa_numbers():
    q, k, v, keep = _inputs(2, 2, SHORT_ROW + 1, 8)
    torch.testing.assert_close(attend(q, k, v, keep, 0.0),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=keep))
