"""Fine-tuning, multi-view evaluation, frozen-feature probes and feature extraction.

- `run_finetune(FinetuneConfig)` / `vimpac finetune`: Table 4 recipes, the engine's trainer;
- `evaluate_classifier` / `vimpac evaluate`: softmax averaged over crops x uniform clips;
- `extract_features`, `knn_evaluate`, `linear_probe_evaluate` / `vimpac probe`;
- `embed_videos` / `vimpac embed`: features of raw video files.

Submodules import torch; this package's top level stays light (see docs/finetuning.md).
"""

from vimpac.lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
