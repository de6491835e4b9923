"""`vimpac finetune` as a function: recipe + overrides -> model, task, trainer -> final model
and multi-view evaluation.

    cfg = FinetuneConfig(train_store="tok/train", val_store="tok/val", out="runs/ft",
                         pretrained="runs/pt/model", recipe="ucf101")
    summary = run_finetune(cfg)

Run folder: finetune.json (the resolved settings), metrics.jsonl / tensorboard / checkpoints
(the engine), model/ (the fine-tuned classifier, `save_pretrained` format) and eval/
(results.json + confusion_matrix.png of the final multi-view evaluation).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from vimpac.config import to_dict
from vimpac.finetune.errors import FinetuneError
from vimpac.finetune.recipes import get_recipe

# Fields that may change between a run and its resumption (everything else must match). `out`
# names the folder being resumed, wherever it now is (moved, or spelled another way).
_RESUMABLE_CHANGES = ("resume", "max_minutes", "progress", "progress_lines", "device", "val_store", "log_every",
                      "checkpoint_every", "out",
                      # How an update's samples are split into processes x batch x accumulation steps may
                      # change (e.g. a 2-GPU run resumed on one with --grad-accum 2): the trainer refuses
                      # another number of samples per update, and a sample's video, view and crop follow
                      # from its position in the update, so the updates stay the same.
                      "batch_size", "grad_accum_steps",
                      # Memory only: how many evaluation clips share a forward, not what is scored.
                      "eval_batch_size")
# Paths that match when they name the same file or folder (relative then, absolute now, ...).
# finetune.json records them absolute, so that a resume from another working folder matches.
_PATH_FIELDS = ("train_store", "pretrained")


def _recorded_config(cfg: FinetuneConfig) -> dict[str, Any]:
    """`cfg` as finetune.json records it: the path fields absolute (a relative one would be read
    against whatever folder a later `--resume` runs in)."""
    record = to_dict(cfg)
    for name in _PATH_FIELDS:
        if record[name] is not None:
            record[name] = str(Path(record[name]).resolve())
    return record


def _same_path(before: Any, now: Any) -> bool:
    if not isinstance(before, str) or not isinstance(now, str):
        return False
    try:
        return Path(before).resolve() == Path(now).resolve() or Path(before).samefile(now)
    except OSError:
        return False


@dataclass(frozen=True)
class FinetuneConfig:
    train_store: str
    out: str
    val_store: Optional[str] = None
    pretrained: Optional[str] = None  # model folder; None trains from scratch with `preset`
    preset: str = "small"  # model preset from scratch (its size picks the recipe lr: large-half 5e-5)
    recipe: str = "ucf101"
    # None: the recipe's value.
    frames: Optional[int] = None
    epochs: Optional[float] = None
    steps: Optional[int] = None  # overrides epochs
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    grad_accum_steps: int = 1
    weight_decay: Optional[float] = None
    warmup_ratio: Optional[float] = None
    dropout: Optional[float] = None
    classifier_dropout: Optional[float] = None
    label_smoothing: float = 0.0
    layer_decay: float = 1.0  # 1.0: off
    temporal_clips: Optional[int] = None
    spatial_crops: Optional[int] = None
    val_every: int = 0  # steps between periodic validations (0: only the final evaluation)
    val_temporal_clips: Optional[int] = None  # clips for periodic validation (default: temporal_clips)
    # clips per forward of the periodic validation and the final evaluation (None: 4 on a CPU, 32 on a GPU)
    eval_batch_size: Optional[int] = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "cpu"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    max_minutes: Optional[float] = None
    deterministic: bool = False
    gradient_checkpointing: bool = False
    resume: bool = False
    progress: bool = True
    progress_lines: int = 0  # without the bar: this many one-line reports over the run


@dataclass
class FinetuneSummary:
    status: str
    steps: int
    run_dir: Path
    model_dir: Path | None
    evaluation: dict[str, Any] | None  # the final multi-view metrics (top1, top5, mean_class)


def training_store_record(store) -> dict[str, Any]:
    """How the training store was tokenized, as finetune.json records it ("train_store_meta"), so
    that `vimpac evaluate` can refuse a store tokenized otherwise (`open_store_like`)."""
    meta = store.meta
    return {"tokenizer_id": meta.tokenizer_id, "codebook_size": meta.codebook_size, "size": meta.size,
            "grid": list(store.grid), "fps": meta.fps}


def open_store_like(path: str, reference: dict[str, Any], reference_name: str):
    """The store at `path`, refused (FinetuneError / StoreError naming it and both values) when it
    was tokenized unlike `reference`, a `training_store_record`: another tokenizer or codebook,
    frame size, token grid or FPS. A field missing from `reference` (a run folder from before it
    was recorded) is not checked."""
    from vimpac.store import TokenStore
    from vimpac.store.format import same_fps

    store = TokenStore.open(path, expect_tokenizer_id=reference.get("tokenizer_id"),
                            expect_codebook_size=reference.get("codebook_size"))
    size, grid, fps = reference.get("size"), reference.get("grid"), reference.get("fps")
    if size is not None and store.meta.size != size:
        raise FinetuneError(f"{path}: frames of {store.meta.size} px, {reference_name} of {size} px; "
                            "tokenize both with one --size")
    if grid is not None and tuple(store.grid) != tuple(grid):
        raise FinetuneError(f"{path}: token grid {tuple(store.grid)} differs from {reference_name}'s {tuple(grid)}")
    if fps is not None and not same_fps(store.meta.fps, fps):
        # A clip of T frames would span another stretch of time than the model learned on.
        raise FinetuneError(f"{path}: sampled at {store.meta.fps:g} fps, {reference_name} at "
                            f"{fps:g} fps; tokenize both with one --fps")
    return store


def _open_stores(cfg: FinetuneConfig):
    from vimpac.store import TokenStore

    train = TokenStore.open(cfg.train_store)
    val = None
    if cfg.val_store:
        val = open_store_like(cfg.val_store, training_store_record(train), "the training store")
    return train, val


def training_views(store_views, flip: bool) -> tuple[str, ...]:
    """The store's views to train on: all of them, or the unflipped ones when left / right matters."""
    views = tuple(v for v in store_views if flip or not v.endswith("_flip"))
    if not views:
        raise FinetuneError(f"store views {list(store_views)}: none is usable without flips")
    return views


def model_size(cfg: FinetuneConfig) -> str | None:
    """The size of the model fine-tuned, which picks the recipe's learning rate (Table 4: 1e-4 for
    small / base, 5e-5 for large-half): the `pretrained` folder's, else `preset` (from scratch)."""
    from vimpac.finetune.loading import size_preset_of

    return cfg.preset if cfg.pretrained is None else size_preset_of(cfg.pretrained)


def resolve_settings(cfg: FinetuneConfig, num_videos: int, world_size: int = 1) -> dict[str, Any]:
    """The recipe with the command-line overrides applied, and the number of updates."""
    recipe = get_recipe(cfg.recipe)
    pick = lambda value, default: default if value is None else value  # noqa: E731
    batch_size = pick(cfg.batch_size, recipe.batch_size)
    epochs = pick(cfg.epochs, recipe.epochs_for(pretrained=cfg.pretrained is not None))
    per_update = batch_size * cfg.grad_accum_steps * world_size
    steps = cfg.steps if cfg.steps is not None else max(1, math.ceil(epochs * num_videos / per_update))
    temporal_clips = pick(cfg.temporal_clips, recipe.temporal_clips)
    return {
        "recipe": recipe.name, "frames": pick(cfg.frames, recipe.frames), "batch_size": batch_size,
        "epochs": steps * per_update / num_videos, "steps": steps,
        "lr": cfg.lr if cfg.lr is not None else recipe.lr_for(model_size(cfg)),
        "weight_decay": pick(cfg.weight_decay, recipe.weight_decay),
        "warmup_ratio": pick(cfg.warmup_ratio, recipe.warmup_ratio), "betas": recipe.betas, "eps": recipe.eps,
        "clip_grad_norm": recipe.clip_grad_norm, "dropout": pick(cfg.dropout, recipe.dropout),
        "classifier_dropout": pick(cfg.classifier_dropout, recipe.classifier_dropout),
        "flip": recipe.flip, "temporal_clips": temporal_clips,
        "spatial_crops": pick(cfg.spatial_crops, recipe.spatial_crops),
        "val_temporal_clips": pick(cfg.val_temporal_clips, temporal_clips),
    }


def _check_options(cfg: FinetuneConfig) -> None:
    """The options the trainer does not check itself."""
    if not 0.0 < cfg.layer_decay <= 1.0:
        raise FinetuneError(f"--layer-decay: expected a factor in (0, 1] (1: off), got {cfg.layer_decay}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise FinetuneError(f"--label-smoothing: expected a value in [0, 1), got {cfg.label_smoothing}")
    for name in ("frames", "batch_size", "steps", "temporal_clips", "val_temporal_clips", "eval_batch_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise FinetuneError(f"--{name.replace('_', '-')}: expected a positive integer, got {value}")
    if cfg.grad_accum_steps < 1:  # the number of updates per epoch divides by it
        raise FinetuneError(f"--grad-accum: expected a positive integer, got {cfg.grad_accum_steps}")
    if cfg.epochs is not None and not (math.isfinite(cfg.epochs) and cfg.epochs > 0):
        raise FinetuneError(f"--epochs: expected a positive finite number, got {cfg.epochs}")
    if cfg.val_every and cfg.val_store is None:
        raise FinetuneError(f"--val-every {cfg.val_every}: periodic validation needs --val-store")


def _check_resume(run_dir: Path, cfg: FinetuneConfig) -> None:
    import os

    from vimpac.engine.checkpoint import check_run_folder, latest_checkpoint

    check_run_folder(run_dir, cfg.resume, other_kind="pre-training", other_record="pretrain.json",
                     announce=os.environ.get("RANK", "0") == "0")  # before the process group is joined
    has_checkpoint = latest_checkpoint(run_dir) is not None
    saved = run_dir / "finetune.json"
    if cfg.resume and has_checkpoint and saved.is_file():
        before = json.loads(saved.read_text())["config"]
        now = to_dict(cfg)
        changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and before.get(k) != now[k]
                         and not (k in _PATH_FIELDS and _same_path(before.get(k), now[k])))
        if changed:
            raise FinetuneError(f"{saved}: --resume with different settings {changed}; "
                                f"the run used {[(k, before.get(k)) for k in changed]}")


def run_finetune(cfg: FinetuneConfig) -> FinetuneSummary:
    import torch

    from vimpac.devices import usable_device
    from vimpac.engine import distributed
    from vimpac.engine.trainer import TrainConfig, Trainer
    from vimpac.finetune.evaluate import class_names_of, evaluate_classifier, write_evaluation
    from vimpac.finetune.layer_decay import layerwise_param_groups
    from vimpac.finetune.loading import RUN_MODEL_DIR, build_classifier
    from vimpac.finetune.probe import check_same_classes
    from vimpac.finetune.task import FinetuneTask, ValidationSettings
    from vimpac.io import atomic_write_json

    run_dir = Path(cfg.out)
    _check_options(cfg)
    _check_resume(run_dir, cfg)
    train_store, val_store = _open_stores(cfg)
    # "auto" resolved before the process group is joined (it picks NCCL for CUDA), and the batches
    # go where the trainer puts the model: this rank's GPU under torchrun, also for "cuda:0".
    device = usable_device(cfg.device, "--device")
    dist = distributed.init_distributed(device)
    rank_device = distributed.rank_device(device, dist)
    settings = resolve_settings(cfg, train_store.num_videos, dist.world_size)
    class_names = class_names_of(train_store)
    num_classes = len(class_names)
    labels = [lab for lab in train_store.labels if lab >= 0]
    if labels and max(labels) >= num_classes:
        raise FinetuneError(f"{cfg.train_store}: label {max(labels)} but only {num_classes} class names")
    if val_store is not None:
        check_same_classes(class_names, val_store.class_names, cfg.train_store, cfg.val_store)

    torch.manual_seed(cfg.seed)  # a from-scratch model's initialisation
    model = build_classifier(
        num_classes, settings["frames"], train_store.grid, train_store.meta.codebook_size,
        pretrained=cfg.pretrained, preset=cfg.preset,
        overrides={"dropout": settings["dropout"], "attention_dropout": settings["dropout"],
                   "classifier_dropout": settings["classifier_dropout"],
                   "gradient_checkpointing": cfg.gradient_checkpointing})
    train_cfg = TrainConfig(
        total_steps=settings["steps"], batch_size=settings["batch_size"], grad_accum_steps=cfg.grad_accum_steps,
        lr=settings["lr"], weight_decay=settings["weight_decay"], betas=settings["betas"], eps=settings["eps"],
        warmup_ratio=settings["warmup_ratio"], clip_grad_norm=settings["clip_grad_norm"],
        precision=cfg.precision, deterministic=cfg.deterministic, seed=cfg.seed, device=device,
        log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, val_every=cfg.val_every,
        max_minutes=cfg.max_minutes, progress=cfg.progress, progress_lines=cfg.progress_lines,
        validate_at_end=False)  # the full multi-view evaluation below replaces the periodic one
    train_cfg.validate(prefix="")  # before anything is written
    param_groups = None
    if cfg.layer_decay != 1.0:
        param_groups = layerwise_param_groups(model, settings["lr"], settings["weight_decay"], cfg.layer_decay,
                                              model.config.layers)
    task = FinetuneTask(
        train_store, settings["frames"], settings["batch_size"], cfg.grad_accum_steps,
        train_views=training_views(train_store.views, settings["flip"]), label_smoothing=cfg.label_smoothing,
        seed=cfg.seed, device=rank_device, val_store=val_store if cfg.val_every > 0 else None,
        validation=ValidationSettings(settings["val_temporal_clips"], settings["spatial_crops"], cfg.eval_batch_size),
        val_bf16=cfg.precision == "bf16")
    record = {"config": _recorded_config(cfg), "resolved": settings, "model": to_dict(model.config),
              "num_classes": num_classes, "class_names": class_names, "train_views": list(task.views),
              "train_store_meta": training_store_record(train_store)}
    if dist.is_main:
        atomic_write_json(run_dir / "finetune.json", record)
    trainer = Trainer(model, task, train_cfg, run_dir, run_config=record, param_groups=param_groups)
    if cfg.resume:
        trainer.resume()
    result = trainer.fit()
    if result.status != "finished":
        return FinetuneSummary(result.status, result.step, run_dir, None, None)

    model_dir, evaluation = None, None
    if dist.is_main:
        # The store settings and class names travel with the model, also when it is copied out
        # of the run: `vimpac evaluate` checks stores against them, users map outputs to names.
        model_dir = model.save_pretrained(run_dir / RUN_MODEL_DIR, train_store_meta=record["train_store_meta"],
                                          class_names=class_names)
    if val_store is not None:  # every rank scores its share of the videos
        ev = evaluate_classifier(model, val_store, settings["frames"], settings["temporal_clips"],
                                 settings["spatial_crops"], trainer.device, cfg.precision == "bf16",
                                 max_batch=cfg.eval_batch_size, progress=cfg.progress)
        evaluation = ev.metrics.summary()
        if dist.is_main:
            write_evaluation(ev, run_dir / "eval")
    distributed.barrier()
    return FinetuneSummary(result.status, result.step, run_dir, model_dir, evaluation)


def config_from_args(**fields: Any) -> FinetuneConfig:
    """A FinetuneConfig from keyword arguments, ignoring the ones it does not have."""
    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    return FinetuneConfig(**{k: v for k, v in fields.items() if k in names})
