"""Building the models the fine-tuning area needs from model folders (ours, or converted from
the authors' release with `vimpac convert-original`).

- `build_classifier`: a pre-trained backbone (positional tables interpolated to the fine-tuning
  T and token grid) under a fresh zero-initialised classifier, or a from-scratch model;
- `load_classifier`: a fine-tuned classifier for evaluation, from a model folder or a run;
- `load_backbone`: only the backbone of any model folder, for probes and `vimpac embed`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vimpac.finetune.errors import FinetuneError
from vimpac.io import parse_json
from vimpac.model import ModelConfig, ModelError, VimpacBackbone, VimpacForClassification, build_model_config
from vimpac.model.config import MODEL_PRESETS
from vimpac.model.pretrained import CONFIG_FILE, load_weights, read_model_config
from vimpac.model.vimpac import read_checked_weights

# Where `vimpac finetune` writes the final classifier and its resolved settings in a run folder.
RUN_MODEL_DIR = "model"
RUN_RECORD = "finetune.json"

# What makes a model "small", "base" or "large-half" (Table 3) for the recipe's learning rate.
_SIZE_FIELDS = ("dim", "layers", "halve_att", "halve_mlp")


def resolve_model_folder(path: str | Path) -> Path:
    """A model folder itself, or RUN/model of a fine-tuning run."""
    path = Path(path)
    for candidate in (path, path / RUN_MODEL_DIR):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise FinetuneError(f"{path}: not a model folder (no {CONFIG_FILE}) nor a finished fine-tuning run "
                        f"(no {RUN_MODEL_DIR}/{CONFIG_FILE}); pass a folder written by save_pretrained, "
                        "`vimpac convert-original` or `vimpac finetune`")


def _run_record_path(path: str | Path) -> Path | None:
    """finetune.json of the run whose folder (or model/ folder) `path` is; None for any other folder."""
    path = Path(path)
    record = path / RUN_RECORD
    if not record.is_file() and path.name == RUN_MODEL_DIR:
        record = path.parent / RUN_RECORD
    return record if record.is_file() else None


def run_evaluation_settings(path: str | Path) -> dict[str, int]:
    """The multi-view settings (temporal_clips, spatial_crops) a fine-tuning run evaluated with,
    when `path` is the run folder or its model/ folder; {} for any other model folder. So that
    re-evaluating a run repeats its recipe's protocol (e.g. SSV2: the center crop only)."""
    record = _run_record_path(path)
    if record is None:
        return {}
    try:
        resolved = parse_json(record.read_text())["resolved"]
        return {name: int(resolved[name]) for name in ("temporal_clips", "spatial_crops")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FinetuneError(f"{record}: cannot read the run's resolved temporal_clips / spatial_crops "
                            f"({type(exc).__name__}: {exc}); pass --temporal-clips and --spatial-crops") from None


def run_training_store(path: str | Path) -> dict:
    """How the training store of the fine-tuned model at `path` was tokenized: tokenizer_id,
    codebook_size, size, grid, fps (`runner.training_store_record`). Read from the run's
    finetune.json (`path` is the run folder or its model/ folder), else from the model folder's
    config.json, where `vimpac finetune` records it too (a model copied out of its run). {} for
    any other model folder and for runs from before it was recorded (unknown, not checked)."""
    sources = []
    record = _run_record_path(path)
    if record is not None:
        sources.append(record)
    try:
        sources.append(resolve_model_folder(path) / CONFIG_FILE)
    except FinetuneError:
        pass
    for source in sources:
        try:
            saved = parse_json(source.read_text())
            if not isinstance(saved, dict) or "train_store_meta" not in saved:
                continue
            meta = saved["train_store_meta"]
            return {"tokenizer_id": str(meta["tokenizer_id"]), "codebook_size": int(meta["codebook_size"]),
                    "size": int(meta["size"]), "grid": [int(n) for n in meta["grid"]], "fps": float(meta["fps"])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FinetuneError(f"{source}: cannot read the training store settings 'train_store_meta' "
                                f"({type(exc).__name__}: {exc})") from None
    return {}


def size_preset_of(path: str | Path) -> str | None:
    """The model preset (Table 3) whose size the model folder's backbone has, e.g. "large-half"
    for the authors' converted final model; None for any other size."""
    try:
        _, cfg, _ = read_model_config(resolve_model_folder(path))
    except ModelError as exc:
        raise FinetuneError(str(exc)) from None
    for name, preset in MODEL_PRESETS.items():
        if all(getattr(cfg, f) == getattr(preset, f) for f in _SIZE_FIELDS):
            return name
    return None


def build_classifier(num_classes: int, frames: int, grid: tuple[int, int], codebook_size: int,
                     pretrained: str | Path | None = None, preset: str | None = "small",
                     overrides: dict | None = None) -> VimpacForClassification:
    """The model to fine-tune: `pretrained` folder's backbone + zero head, or `preset` from scratch.

    `overrides` adjust the architecture-independent fields (dropout, classifier_dropout,
    gradient_checkpointing, ...). The token vocabulary must be the store's: a model trained on
    another codebook would read every id as a different code.
    """
    changes = {"max_frames": frames, "height": grid[0], "width": grid[1], **(overrides or {})}
    try:
        if pretrained is not None:
            folder = resolve_model_folder(pretrained)
            _, cfg, _ = read_model_config(folder)
            _check_codebook(cfg, codebook_size, folder)
            # Always a new zero head, also on a fine-tuned model (its head belongs to its own task).
            return VimpacForClassification.from_pretrained(folder, num_classes=num_classes, new_head=True, **changes)
        cfg = build_model_config(preset, overrides={"codebook_size": codebook_size, **changes})
        return VimpacForClassification(cfg, num_classes)
    except ModelError as exc:
        raise FinetuneError(str(exc)) from None


def load_classifier(path: str | Path, frames: int | None = None, grid: tuple[int, int] | None = None,
                    expect_codebook_size: int | None = None) -> VimpacForClassification:
    """A fine-tuned classifier from a model folder or a run (tables resized if T / grid differ)."""
    folder = resolve_model_folder(path)
    kind, cfg, _ = read_model_config(folder)
    if kind != VimpacForClassification.kind:
        raise FinetuneError(f"{folder}: holds a {kind!r} model; evaluation needs a fine-tuned classifier "
                            "(run `vimpac finetune` first, or use `vimpac probe` for frozen features)")
    if expect_codebook_size is not None:
        _check_codebook(cfg, expect_codebook_size, folder)
    return VimpacForClassification.from_pretrained(folder, **_size_changes(cfg, frames, grid))


def load_backbone(path: str | Path, frames: int | None = None, grid: tuple[int, int] | None = None,
                  expect_codebook_size: int | None = None) -> VimpacBackbone:
    """The backbone of any model folder (pre-training or classification), without its heads."""
    folder = resolve_model_folder(path)
    kind, cfg, meta = read_model_config(folder)
    if expect_codebook_size is not None:
        _check_codebook(cfg, expect_codebook_size, folder)
    all_weights = read_checked_weights(folder, kind, cfg, meta)
    cfg = dataclasses.replace(cfg, **_size_changes(cfg, frames, grid))
    backbone = VimpacBackbone(cfg)
    weights = {k[len("backbone."):]: v for k, v in all_weights.items() if k.startswith("backbone.")}
    load_weights(backbone, weights, f"{folder / 'model.safetensors'} (backbone)")
    return backbone


def _size_changes(cfg: ModelConfig, frames: int | None, grid: tuple[int, int] | None) -> dict:
    changes = {}
    if frames is not None and frames != cfg.max_frames:
        changes["max_frames"] = frames
    if grid is not None and tuple(grid) != (cfg.height, cfg.width):
        changes["height"], changes["width"] = int(grid[0]), int(grid[1])
    return changes


def _check_codebook(cfg: ModelConfig, codebook_size: int, folder: Path) -> None:
    if cfg.codebook_size != codebook_size:
        raise FinetuneError(f"{folder}: model was trained on a codebook of {cfg.codebook_size} codes, but the "
                            f"tokens come from a tokenizer with {codebook_size}; use tokens of the same tokenizer")
