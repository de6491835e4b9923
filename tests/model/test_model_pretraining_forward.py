"""VimpacForPretraining.forward: masked-token logits at the masked positions only, computed on a
row count rounded up to MLM_ROW_MULTIPLE (so CPU matmul primitives are reused across steps)."""

from __future__ import annotations

import pytest
import torch

from model_testlib import random_tokens, tiny_config
from vimpac.model import VimpacForPretraining
from vimpac.model.vimpac import MLM_ROW_MULTIPLE


def head_row_counts(model: VimpacForPretraining, tokens: torch.Tensor, mask: torch.Tensor) -> list[int]:
    seen = []
    hook = model.mlm_head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            model(tokens, predict_mask=mask)
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("masked", [0, 1, 37, MLM_ROW_MULTIPLE, MLM_ROW_MULTIPLE + 1])
def test_head_rows_are_rounded_up_and_logits_cut_back(masked):
    torch.manual_seed(0)
    cfg = tiny_config(max_frames=4, height=8, width=8)  # 2 x 256 positions
    model = VimpacForPretraining(cfg).eval()
    tokens = random_tokens(cfg)
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask.view(-1)[torch.randperm(mask.numel(), generator=torch.Generator().manual_seed(masked))[:masked]] = True

    assert head_row_counts(model, tokens, mask) == [-(-masked // MLM_ROW_MULTIPLE) * MLM_ROW_MULTIPLE]
    with torch.no_grad():
        out = model(tokens, predict_mask=mask)
        direct = model.mlm_head(out.hiddens[mask])
    assert out.mlm_logits.shape == (masked, cfg.num_rows)
    torch.testing.assert_close(out.mlm_logits, direct, rtol=1e-5, atol=1e-5)


def test_padding_rows_get_no_gradient():
    """Every parameter gradient equals that of the head run on the masked rows alone."""
    torch.manual_seed(0)
    cfg = tiny_config(max_frames=4, height=8, width=8)
    model = VimpacForPretraining(cfg).double().train()
    tokens = random_tokens(cfg)
    mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(1)) < 0.15
    labels = tokens[mask]

    def gradients(padded: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        out = model(tokens, predict_mask=mask)
        logits = out.mlm_logits if padded else model.mlm_head(out.hiddens[mask])
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    padded, direct = gradients(True), gradients(False)
    assert padded.keys() == direct.keys() and "mlm_head.bias" in padded
    for name in direct:
        torch.testing.assert_close(padded[name], direct[name], rtol=1e-10, atol=1e-12, msg=name)
