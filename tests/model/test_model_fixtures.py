"""Reproduce the authors' model outputs (../shared/fixtures/original-vimpac) in fp32.

The fixture weights load STRICTLY under their original names - no renaming - which is what
lets users load released checkpoints directly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_testlib import FIXTURES, fixture_config, fixture_state_dict, load_fixture
from vimpac.model import VimpacForPretraining, count_parameters, pool_tokens

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module", params=FIXTURES)
def run(request):
    fx = load_fixture(request.param)
    model = VimpacForPretraining(fixture_config(fx)).eval()
    model.load_state_dict(fixture_state_dict(fx), strict=True)
    tokens = torch.from_numpy(fx["input_tokens"])
    mask_id = model.config.vocab.mask_id
    with torch.no_grad():
        out = model(tokens, tokens == mask_id)
        everywhere = model.mlm_head(out.hiddens)            # (B, T, H, W, rows), for comparison only
    return fx, model, tokens, out, everywhere


def close(ours: torch.Tensor, ref: np.ndarray) -> None:
    torch.testing.assert_close(ours, torch.from_numpy(np.asarray(ref)), **TOL)


def test_state_dict_names_and_order_equal_the_original(run):
    fx, model, *_ = run
    index = json.loads(str(fx["state_dict_index_json"]))
    ours = model.state_dict()
    assert [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in ours.items()] == \
           [[k, s, d] for k, s, d in index]
    config = json.loads(str(fx["config_json"]))
    assert count_parameters(model.backbone) == config["backbone_param_count"]


def test_backbone_outputs(run):
    fx, model, tokens, out, _ = run
    close(out.cls_hidden, fx["out/cls_hidden"])
    close(out.hiddens, fx["out/hiddens"])
    close(pool_tokens(out.hiddens), fx["out/backbone_pooling"])


def test_contrastive_projection(run):
    fx, _, _, out, _ = run
    close(out.cls_projection, fx["out/cls_proj"])


def test_masked_token_logits(run):
    fx, model, tokens, out, everywhere = run
    with torch.no_grad():
        close(model.mlm_head.transform(out.hiddens), fx["out/mlm_transform"])
    cols = torch.from_numpy(fx["meta/mlm_logit_col_ids"])
    close(everywhere[..., cols], fx["out/mlm_logits_cols"])
    close(torch.logsumexp(everywhere, dim=-1), fx["out/mlm_logsumexp"])
    assert torch.equal(everywhere.argmax(-1), torch.from_numpy(fx["out/mlm_argmax"]))
    top2 = everywhere.topk(2, dim=-1).values
    close(top2[..., 0] - top2[..., 1], fx["out/mlm_top2_margin"])


def test_logits_only_at_masked_positions_match_full_rows(run):
    fx, model, tokens, out, _ = run
    predict = tokens == model.config.vocab.mask_id
    assert out.mlm_logits.shape == (int(predict.sum()), model.config.num_rows)
    # Rows of the masked-only logits, in (b, t, h, w) row-major order, at the fixture's positions.
    flat_index = {tuple(p): i for i, p in enumerate(predict.nonzero().tolist())}
    rows = [flat_index[tuple(p)] for p in fx["meta/mlm_logit_row_positions"].tolist()]
    close(out.mlm_logits[rows], fx["out/mlm_logits_at_mask"])


def test_masked_token_loss(run):
    fx, model, tokens, out, _ = run
    labels = torch.from_numpy(fx["input_mlm_labels"])
    predict = labels != -100
    assert torch.equal(predict, tokens == model.config.vocab.mask_id)
    loss = F.cross_entropy(out.mlm_logits, labels[predict])
    close(loss, fx["out/mlm_loss"])
