"""The CPU dropout: drop rate, scaling, gradient, reproducibility, fall-backs."""

import pytest
import torch
import torch.nn.functional as F

from vimpac.model.dropout import Dropout, dropout, keep_mask


def test_keep_mask_rate_and_lanes_are_independent():
    torch.manual_seed(0)
    keep = keep_mask((1000, 4096), 0.1).float()
    # 2^-16 rounding: p = 0.1 drops with probability 6554 / 65536; binomial std over 4.1M draws is 1.5e-4.
    assert abs(keep.mean().item() - (1 - 6554 / 65536)) < 1e-3
    # Four masks share each 64-bit word: neighbours (same word) and lanes must be uncorrelated.
    centred = keep - keep.mean()
    neighbour_corr = (centred[:, :-1] * centred[:, 1:]).mean() / centred.var()
    assert abs(neighbour_corr.item()) < 5e-3
    lanes = keep.view(-1, 4).mean(0)
    assert torch.allclose(lanes, torch.full((4,), keep.mean().item()), atol=2e-3)


@pytest.mark.parametrize("p", [0.02, 0.1, 0.5, 0.9])
def test_drop_rate_follows_p(p):
    torch.manual_seed(1)
    keep = keep_mask((2_000_000,), p)
    assert abs(1 - keep.float().mean().item() - p) < 2e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_values_scaled_dropped_zero_and_gradient_matches(dtype):
    torch.manual_seed(2)
    x = (torch.rand(64, 300) + 0.5).to(dtype).requires_grad_()   # no zeros in the input
    out = dropout(x, 0.25)
    assert out.dtype == dtype and out.shape == x.shape
    kept = out != 0
    assert 0.65 < kept.float().mean().item() < 0.85
    torch.testing.assert_close(out[kept], (x[kept] / 0.75).to(dtype))
    upstream = torch.randn(64, 300).to(dtype)
    out.backward(upstream)
    expected = torch.where(kept, upstream, 0) / 0.75
    torch.testing.assert_close(x.grad, expected.to(dtype))


def test_reproducible_by_seed_and_fresh_per_call():
    x = torch.ones(10_000)
    torch.manual_seed(3)
    a, b = dropout(x, 0.1), dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.1), a)
    assert not torch.equal(a, b)


def test_identity_when_off_and_fallbacks():
    x = torch.randn(100)
    assert dropout(x, 0.1, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros(100))           # F.dropout's p = 1
    module = Dropout(0.3)
    assert module.state_dict() == {} and "p=0.3" in repr(module)
    module.eval()
    assert module(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)


def test_training_statistics_match_f_dropout():
    """Same mean and second moment as F.dropout (an unbiased estimate of the input)."""
    torch.manual_seed(4)
    x = torch.randn(500_000)
    ours, reference = dropout(x, 0.1), F.dropout(x, 0.1, training=True)
    assert abs(ours.mean().item() - reference.mean().item()) < 5e-3
    assert abs(ours.pow(2).mean().item() - reference.pow(2).mean().item()) < 2e-2
