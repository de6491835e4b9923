"""Parameter counts of a model config, for `vimpac model-info` and the docs.

The model is built on the meta device (`vimpac.meta_device.meta_model`): no memory is allocated
and no weights are initialised for real, so even large-half (233M with heads) is counted in a
fraction of a second - and the counted thing is the real module, not a formula.
"""

from __future__ import annotations

from typing import Any, Sequence

from vimpac.config import to_dict
from vimpac.meta_device import meta_model
from vimpac.model.backbone import count_parameters
from vimpac.model.config import ModelConfig, build_model_config
from vimpac.model.vimpac import VimpacForPretraining


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Counts of the pre-training model's parts; the tied decoder weight is counted once, in the
    backbone's embedding (as the paper's Table 3 counts backbones)."""
    model = meta_model(lambda: VimpacForPretraining(cfg))
    backbone = count_parameters(model.backbone)
    embedding = model.backbone.embedding.weight.numel()
    tied = {id(p) for p in model.backbone.parameters()}
    mlm_head = sum(p.numel() for p in model.mlm_head.parameters() if id(p) not in tied)
    return {
        "total": count_parameters(model),
        "backbone": backbone,
        "backbone_without_embedding": backbone - embedding,
        "embedding": embedding,
        "mlm_head": mlm_head,
        "cls_head": count_parameters(model.cls_head),
    }


def parameter_report(preset: str, layout: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """{"preset", "config", "parameters"} for a preset with an optional layout and overrides."""
    items = list(overrides) + ([f"layout={layout}"] if layout else [])
    cfg = build_model_config(preset, overrides=items)
    return {"preset": preset, "config": to_dict(cfg), "parameters": parameter_counts(cfg)}
