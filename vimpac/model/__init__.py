"""The VIMPAC model: backbone with every attention layout, heads, presets, and loading the
authors' released checkpoints. See docs/model.md.

Names are resolved lazily (PEP 562) so that `vimpac.model.commands` - imported by
`vimpac --help` - does not pull in torch.
"""

from __future__ import annotations

from vimpac.lazy import lazy_exports

_EXPORTS = {
    "VimpacBackbone": "backbone", "count_parameters": "backbone", "pool_tokens": "backbone",
    "MODEL_PRESETS": "config", "ModelConfig": "config", "build_model_config": "config",
    "CheckpointError": "errors", "ModelError": "errors",
    "ClassificationHead": "heads", "ContrastiveHead": "heads", "MaskedTokenHead": "heads",
    "PAPER_LAYOUTS": "layout", "parse_layout": "layout",
    "PretrainingOutput": "vimpac", "VimpacForClassification": "vimpac", "VimpacForPretraining": "vimpac",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
