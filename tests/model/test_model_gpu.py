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
