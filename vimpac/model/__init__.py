"""The VIMPAC model: backbone with every attention layout, heads, presets, and loading the
authors' released checkpoints. See docs/model.md.

Names are resolved lazily (PEP 562) so that `vimpac.model.commands` - imported by
`vimpac --help` - does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VimpacBackbone": "backbone", "count_parameters": "backbone", "pool_tokens": "backbone",
    "MODEL_PRESETS": "config", "ModelConfig": "config", "build_model_config": "config",
    "CheckpointError": "errors", "ModelError": "errors",
    "ClassificationHead": "heads", "ContrastiveHead": "heads", "MaskedTokenHead": "heads",
    "PAPER_LAYOUTS": "layout", "parse_layout": "layout",
    "PretrainingOutput": "vimpac", "VimpacForClassification": "vimpac", "VimpacForPretraining": "vimpac",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vimpac.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vimpac.model.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The lazy names too, so that notebooks complete them before their first use.
    return sorted(set(globals()) | set(__all__))
