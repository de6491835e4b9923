"""torch.compile of the backbone: one graph (no data-dependent breaks), same outputs as eager."""

import pytest
import torch

from vimpac.model.config import build_model_config
from vimpac.model.vimpac import VimpacForPretraining


def _model():
    torch.manual_seed(0)
    cfg = build_model_config("tiny", overrides=["max_frames=4", "height=4", "width=4", "codebook_size=32",
                                                "dim=32", "heads=2", "layers=2"])
    return VimpacForPretraining(cfg).eval()


@pytest.mark.parametrize("with_pad", [False, True])
def test_backbone_traces_to_one_graph(with_pad):
    model = _model()
    tokens = torch.randint(0, 32, (2, 4, 4, 4))
    if with_pad:
        tokens[1, 3] = model.config.vocab.pad_id
    explanation = torch._dynamo.explain(model.backbone)(tokens)
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_compiled_backbone_matches_eager_with_and_without_pad():
    model = _model()
    tokens = torch.randint(0, 32, (2, 4, 4, 4))
    padded = tokens.clone()
    padded[1, 2:] = model.config.vocab.pad_id
    compiled = torch.compile(model.backbone, backend="eager", fullgraph=True)  # the traced program, no codegen
    for inputs in (tokens, padded):
        cls, hiddens = model.backbone(inputs)
        cls_c, hiddens_c = compiled(inputs)
        torch.testing.assert_close(cls_c, cls, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(hiddens_c, hiddens, atol=1e-6, rtol=1e-5)
    torch._dynamo.reset()


def test_compile_in_place_keeps_parameter_names():
    model = _model()
    names = list(model.state_dict())
    model.backbone.compile()
    assert list(model.state_dict()) == names
    torch._dynamo.reset()
