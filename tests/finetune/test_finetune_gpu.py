"""The inference helpers run where the model is when no device is given (CUDA only)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vimpac.finetune.embed import embed_tokens
from vimpac.finetune.evaluate import evaluate_classifier
from vimpac.finetune.probe import extract_features
from vimpac.model import VimpacForClassification
from vimpac.store import TokenStore

sys.path.insert(0, str(Path(__file__).parent))
from finetune_helpers import ALL12, make_store, tiny_model_config  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_helpers_default_to_the_models_device(tmp_path):
    store = TokenStore.open(make_store(tmp_path / "s", num_videos=4, views=ALL12))
    torch.manual_seed(0)
    model = VimpacForClassification(tiny_model_config(), 3)
    torch.nn.init.normal_(model.head.cls_fc.weight, std=1.0)
    on_cpu = (evaluate_classifier(model, store, frames=4, temporal_clips=2).probabilities,
              extract_features(model, store, frames=4, temporal_clips=2).features,
              embed_tokens(model, store.tokens(0).astype(np.int64))[0])
    model.cuda()
    on_gpu = (evaluate_classifier(model, store, frames=4, temporal_clips=2).probabilities,
              extract_features(model, store, frames=4, temporal_clips=2).features,
              embed_tokens(model, store.tokens(0).astype(np.int64))[0])
    for gpu, cpu in zip(on_gpu, on_cpu):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
