"""`vimpac pretrain`: open the store, resolve the config, build the model, run the Trainer,
export the final model folder (RUN/model) for fine-tuning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from vimpac.config import to_dict
from vimpac.engine import distributed
from vimpac.engine.sync_batchnorm import GatheredBatchNorm1d, synchronize_batchnorm
from vimpac.engine.trainer import Trainer, TrainResult
from vimpac.io import atomic_write_json
from vimpac.model.vimpac import VimpacForPretraining
from vimpac.pretrain.config import PretrainConfig
from vimpac.pretrain.errors import PretrainError
from vimpac.pretrain.task import PretrainTask, resolve_config
from vimpac.store.reader import TokenStore


def run_pretraining(store_path: str | Path, run_dir: str | Path, cfg: PretrainConfig, resume: bool = False,
                    init_from: str | Path | None = None) -> TrainResult:
    run_dir = Path(run_dir)
    dist = distributed.init_distributed(cfg.train.device)
    store = TokenStore.open(store_path)
    cfg = resolve_config(store, cfg, dist.world_size)
    config_path = run_dir / "pretrain.json"
    record = {"store": str(store_path), "tokenizer_id": store.meta.tokenizer_id, **to_dict(cfg)}
    if resume and config_path.exists():
        previous = json.loads(config_path.read_text())
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
    if resume:
        trainer.resume()
    result = trainer.fit()
    if result.status == "finished" and dist.is_main:
        plain = _unsync(trainer.model)
        plain.save_pretrained(run_dir / "model", store=str(store_path), steps=result.step)
        atomic_write_json(run_dir / "result.json", dataclasses.asdict(result) | {"checkpoint": str(result.checkpoint)})
    distributed.barrier()
    return result


def _unsync(model: torch.nn.Module) -> VimpacForPretraining:
    """A plain copy (ordinary BatchNorm) when the run synchronised BatchNorm across processes."""
    if all(type(m) is not torch.nn.SyncBatchNorm and type(m) is not GatheredBatchNorm1d for m in model.modules()):
        return model
    plain = VimpacForPretraining(model.config)
    plain.load_state_dict(model.state_dict())
    return plain


def _changed_settings(previous: dict, current: dict, prefix: str = "") -> list[str]:
    """Setting paths that differ, ignoring ones that may change on resume."""
    may_change = {"train.total_steps", "train.log_every", "train.checkpoint_every", "train.progress",
                  "train.max_minutes", "train.val_every", "train.keep_checkpoints", "train.device",
                  "train.validate_at_end", "train.progress_lines"}
    changed = []
    for key in sorted(set(previous) | set(current)):
        path = f"{prefix}{key}"
        a, b = previous.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_settings(a, b, path + ".")
        elif a != b and path not in may_change:
            changed.append(f"{path}: {a!r} -> {b!r}")
    return changed
