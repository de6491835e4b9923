"""Fine-tuning, multi-view evaluation, frozen-feature probes and feature extraction.

- `run_finetune(FinetuneConfig)` / `vimpac finetune`: Table 4 recipes, the engine's trainer;
- `evaluate_classifier` / `vimpac evaluate`: softmax averaged over crops x uniform clips;
- `extract_features`, `knn_evaluate`, `linear_probe_evaluate` / `vimpac probe`;
- `embed_videos` / `vimpac embed`: features of raw video files.

Submodules import torch; this package's top level stays light (see docs/finetuning.md).
"""

import importlib
from typing import Any

_EXPORTS = {
    "FinetuneConfig": "runner",
    "FinetuneSummary": "runner",
    "run_finetune": "runner",
    "FinetuneError": "errors",
    "FinetuneRecipe": "recipes",
    "get_recipe": "recipes",
    "evaluate_classifier": "evaluate",
    "predict_videos": "evaluate",
    "EvaluationResult": "evaluate",
    "write_evaluation": "evaluate",
    "extract_features": "probe",
    "FeatureSet": "probe",
    "knn_evaluate": "probe",
    "linear_probe_evaluate": "probe",
    "embed_videos": "embed",
    "embed_tokens": "embed",
    "Embeddings": "embed",
    "write_embeddings": "embed",
    "load_classifier": "loading",
    "load_backbone": "loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Resolved on first use (PEP 562): the submodules import torch, `vimpac --help` must not.
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vimpac.finetune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vimpac.finetune.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The lazy names too, so that notebooks complete them before their first use.
    return sorted(set(globals()) | set(__all__))
