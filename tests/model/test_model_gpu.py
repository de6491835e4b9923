"""The fused attention on CUDA (flash / memory-efficient SDPA kernels) agrees with CPU."""

from __future__ import annotations

import pytest
import torch

from model_testlib import random_tokens, tiny_config
from vimpac.model import VimpacForPretraining

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["T,H|W", "TxHxW"])
def test_cuda_matches_cpu(layout):
    cfg = tiny_config(layout=layout)
    torch.manual_seed(0)
    model = VimpacForPretraining(cfg).eval()
    tokens = random_tokens(cfg)
    tokens[1, -1] = cfg.vocab.pad_id
    with torch.no_grad():
        cpu = model.backbone(tokens)
        gpu_model = model.cuda()
        gpu = gpu_model.backbone(tokens.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = gpu_model.backbone(tokens.cuda())
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], atol=1e-4, rtol=1e-4)
    assert (low[1].float().cpu() - cpu[1]).abs().max() < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bad_token_ids_on_cuda_are_a_model_error_not_a_device_assert():
    from vimpac.model.errors import ModelError

    cfg = tiny_config()
    model = VimpacForPretraining(cfg).cuda()
    tokens = random_tokens(cfg).cuda()
    tokens[0, 0, 0, 0] = cfg.num_rows
    with pytest.raises(ModelError, match="token ids must lie in"):
        model.backbone(tokens)
    # The CUDA context is still usable after the refusal.
    assert model.backbone(random_tokens(cfg).cuda())[0].isfinite().all()
