"""Layer-wise learning-rate decay (BEiT / ELECTRA style) for fine-tuning.

Layer ids: the embeddings (token table, CLS vector, positional tables, input LayerNorm) are
layer 0, transformer layer i is i + 1, and everything above the last layer (the classifier,
a pre-LN final LayerNorm) is L + 1. A parameter of layer id n gets lr * decay ** (L + 1 - n),
so the head trains at the full rate and the lower layers, which hold the most general
pre-trained features, move least. Weight decay follows the engine's rule (none on 1-D params).
"""

from __future__ import annotations

from torch import nn

from vimpac.engine.optim import no_weight_decay

_LAYER_PREFIX = "backbone.transformer.resblocks."
_EMBEDDING_PREFIXES = ("backbone.cls_param", "backbone.embedding", "backbone.positional_embedding",
                       "backbone.ln_pre")


def layer_id(name: str, num_layers: int) -> int:
    """The layer id of a parameter of a `VimpacForClassification` (see the module docstring)."""
    if name.startswith(_LAYER_PREFIX):
        return int(name[len(_LAYER_PREFIX):].split(".", 1)[0]) + 1
    if name.startswith(_EMBEDDING_PREFIXES):
        return 0
    return num_layers + 1


def layerwise_param_groups(model: nn.Module, lr: float, weight_decay: float, decay: float,
                           num_layers: int) -> list[dict]:
    """AdamW groups with per-layer "lr"; the highest-rate group first (the engine logs group 0)."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer decay must be in (0, 1], got {decay}")
    groups: dict[tuple[int, bool], dict] = {}
    seen: set[int] = set()
    spared = no_weight_decay(model)
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        lid = layer_id(name, num_layers)
        no_decay = id(param) in spared
        group = groups.setdefault((lid, no_decay), {
            "params": [], "lr": lr * decay ** (num_layers + 1 - lid),
            "weight_decay": 0.0 if no_decay else weight_decay, "layer_id": lid,
        })
        group["params"].append(param)
    return [groups[key] for key in sorted(groups, key=lambda k: (-k[0], k[1]))]
