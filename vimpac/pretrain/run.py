"""`vimpac pretrain`: open the store, resolve the config, build the model, run the Trainer,
export the final model folder (RUN/model) for fine-tuning."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from vimpac.config import record_differences, to_dict
from vimpac.devices import resolve_device
from vimpac.engine import distributed
from vimpac.engine.checkpoint import check_run_folder, latest_checkpoint
from vimpac.engine.sync_batchnorm import GatheredBatchNorm1d, synchronize_batchnorm
from vimpac.engine.trainer import Trainer, TrainResult
from vimpac.io import atomic_write_json
from vimpac.model.pretrained import read_model_config
from vimpac.model.vimpac import VimpacForPretraining
from vimpac.pretrain.config import PretrainConfig
from vimpac.pretrain.errors import PretrainError
from vimpac.pretrain.task import PretrainTask, contrastive_batch_change, resolve_config
from vimpac.store.reader import TokenStore


def run_pretraining(store_path: str | Path, run_dir: str | Path, cfg: PretrainConfig, resume: bool = False,
                    init_from: str | Path | None = None) -> TrainResult:
    run_dir = Path(run_dir)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, device=resolve_device(cfg.train.device)))
    cfg.train.validate()
    dist = distributed.init_distributed(cfg.train.device)
    store = TokenStore.open(store_path)
    if init_from is not None:
        cfg = _with_architecture_of(init_from, cfg, store)
    cfg = resolve_config(store, cfg, dist.world_size)
    cfg.train.validate()  # again: gradient accumulation may have been derived from effective_batch
    check_run_folder(run_dir, resume, other_kind="fine-tuning", other_record="finetune.json", announce=dist.is_main)
    config_path = run_dir / "pretrain.json"
    # Absolute, so that a resume from another working folder (or spelled otherwise) matches.
    record = {"store": str(Path(store_path).resolve()), "tokenizer_id": store.meta.tokenizer_id,
              "init_from": str(Path(init_from).resolve()) if init_from is not None else None, **to_dict(cfg)}
    # Only a run with a checkpoint is continued; an attempt that stopped before its first one
    # starts anew (as `--resume` promises), with the settings given now.
    if resume and config_path.exists() and latest_checkpoint(run_dir) is not None:
        previous = _as_recorded_now(json.loads(config_path.read_text()), record)
        if previous.get("effective_batch") is not None and previous["effective_batch"] == record["effective_batch"]:
            # Derived from effective_batch and the number of processes, which may change: the
            # trainer checks that the samples per update stay the same.
            previous["train"] = {**previous["train"], "grad_accum_steps": record["train"]["grad_accum_steps"]}
        changed = _changed_settings(previous, record)
        if changed:
            raise PretrainError(f"{config_path}: --resume with different settings: {changed}; "
                                "use a new --out folder for a new run")
    elif dist.is_main:
        atomic_write_json(config_path, record)
    distributed.barrier()

    torch.manual_seed(cfg.train.seed)
    if init_from is not None:
        model = VimpacForPretraining.from_pretrained(
            init_from, max_frames=cfg.model.max_frames, height=cfg.model.height, width=cfg.model.width)
    else:
        model = VimpacForPretraining(cfg.model)
    device = distributed.rank_device(cfg.train.device, dist)
    model = synchronize_batchnorm(model, device)
    task = PretrainTask(store, cfg, device=device)
    trainer = Trainer(model, task, cfg.train, run_dir, run_config=record)
    if resume and trainer.resume() and dist.is_main:
        note = contrastive_batch_change(cfg, trainer.resumed_layout, dist.world_size)
        if note:
            print(note, file=sys.stderr, flush=True)
    result = trainer.fit()
    if result.status == "finished" and dist.is_main:
        plain = _unsync(trainer.model)
        plain.save_pretrained(run_dir / "model", store=record["store"], steps=result.step)
        atomic_write_json(run_dir / "result.json", dataclasses.asdict(result) | {"checkpoint": str(result.checkpoint)})
    distributed.barrier()
    return result


def _with_architecture_of(init_from: str | Path, cfg: PretrainConfig, store: TokenStore) -> PretrainConfig:
    """`cfg` with the model folder's architecture, which is what the run trains (and records)."""
    kind, model_cfg, _ = read_model_config(init_from)
    if kind != VimpacForPretraining.kind:
        raise PretrainError(f"--init-from {init_from}: holds a {kind!r} model; pre-training starts from a "
                            "'pretraining' model folder (RUN/model of `vimpac pretrain`, or `vimpac convert-original`)")
    if model_cfg.codebook_size != store.meta.codebook_size:
        raise PretrainError(f"--init-from {init_from}: the model has {model_cfg.codebook_size} codes but the store "
                            f"{store.root} was tokenized with {store.meta.codebook_size}; its [MASK] / [PAD] ids "
                            "would be ordinary codes for this model")
    # The clip size follows this run's data (positional tables are interpolated on loading).
    return dataclasses.replace(cfg, model=dataclasses.replace(
        model_cfg, max_frames=cfg.model.max_frames, height=cfg.model.height, width=cfg.model.width))


def _as_recorded_now(previous: dict, record: dict) -> dict:
    """A run's recorded settings in today's form, so that a resume compares like with like:
    runs before 2026-11-26 kept the store path as typed (relative to the folder the command ran
    in) and recorded neither `init_from` nor, with it, the model folder's architecture."""
    previous = dict(previous)
    if "store" in previous:
        previous["store"] = str(Path(previous["store"]).resolve())
    if "init_from" not in previous and record.get("init_from") is not None:
        previous["init_from"], previous["model"] = record["init_from"], record["model"]
    if isinstance(previous.get("model"), dict) and "pre_ln_residual" not in previous["model"]:
        # Recorded before the field existed; those runs used its default.
        previous["model"] = {**previous["model"], "pre_ln_residual": "input"}
    return previous


def _unsync(model: torch.nn.Module) -> VimpacForPretraining:
    """A plain copy (ordinary BatchNorm) when the run synchronised BatchNorm across processes."""
    if all(type(m) is not torch.nn.SyncBatchNorm and type(m) is not GatheredBatchNorm1d for m in model.modules()):
        return model
    plain = VimpacForPretraining(model.config)
    plain.load_state_dict(model.state_dict())
    return plain


def _changed_settings(previous: dict, current: dict) -> list[str]:
    """Setting paths that differ, ignoring ones that may change on resume."""
    may_change = {"train.total_steps", "train.log_every", "train.checkpoint_every", "train.progress",
                  "train.max_minutes", "train.val_every", "train.keep_checkpoints", "train.device",
                  "train.validate_at_end", "train.progress_lines"}
    return [f"{path}: {a!r} -> {b!r}" for path, a, b in record_differences(previous, current)
            if path not in may_change]
