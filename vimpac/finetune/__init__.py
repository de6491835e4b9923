"""Fine-tuning, multi-view evaluation, frozen-feature probes and feature extraction.

- `run_finetune(FinetuneConfig)` / `vimpac finetune`: Table 4 recipes, the engine's trainer;
- `evaluate_classifier` / `vimpac evaluate`: softmax averaged over crops x uniform clips;
- `extract_features`, `knn_evaluate`, `linear_probe_evaluate` / `vimpac probe`;
- `embed_videos` / `vimpac embed`: features of raw video files.

Submodules import torch; this package's top level stays light (see docs/finetuning.md).
"""
