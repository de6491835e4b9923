"""The training loop, shared by pre-training and fine-tuning. Reads top to bottom:

    for step in range(start, total_steps):
        for micro_step in range(grad_accum_steps):        # gradient accumulation
            batch = task.batch(step, micro_step, dist)     # deterministic in (step, micro, rank)
            loss, metrics = task.loss(model, batch)        # under autocast
            (loss / grad_accum_steps).backward()
        skip the update if any loss or the gradient norm is not finite
        clip, AdamW step, scheduler step
        log / validate / checkpoint / stop on SIGINT-SIGTERM or the time budget

Exact resume: a task draws everything random for a batch from a generator seeded by
(seed, step, micro_step, rank), and dropout is re-seeded the same way before each micro-step,
so the data and the noise of step s do not depend on how the run got to step s. With model,
optimizer and scheduler restored from the checkpoint, a resumed run repeats the uninterrupted
run's losses exactly (in fp32 with `deterministic=True`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Protocol

import torch
from torch import nn

from vimpac.config import ConfigError
from vimpac.devices import resolve_device, usable_device
from vimpac.engine import distributed
from vimpac.engine.checkpoint import (CHECKPOINT_PREFIX, COUNT, POSITIVE_INT, CheckpointError, FieldCheck,
                                      is_count, is_number, is_number_map, latest_checkpoint, load_checkpoint, or_null,
                                      read_checkpoint_state, save_checkpoint, unwrap)
from vimpac.engine.distributed import DistInfo
from vimpac.engine.metrics import MetricsLogger
from vimpac.engine.optim import build_optimizer, warmup_linear_decay
from vimpac.progress import LOG_FILE_REPORTS, is_terminal, progress_bar
from vimpac.signals import STOP_SIGNALS


@dataclass(frozen=True)
class TrainConfig:
    total_steps: int = 1000  # optimizer updates
    batch_size: int = 8  # samples per micro-batch per process
    grad_accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, ...] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_ratio: float = 0.1
    clip_grad_norm: float = 1.0  # 0 disables clipping (the norm is still measured)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    deterministic: bool = False
    seed: int = 0
    device: str = "auto"  # cpu, cuda, cuda:N, or auto: cuda when torch sees a GPU, else cpu
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    val_every: int = 0  # 0: validate only at the end (when the task can)
    validate_at_end: bool = True  # False when the caller runs its own final evaluation
    max_nonfinite_steps: int = 5  # consecutive skipped updates before the run stops
    max_minutes: Optional[float] = None  # stop (with a checkpoint) after this much wall time
    progress: bool = True  # a bar when stderr is a terminal; else 100 one-line reports (or progress_lines)
    # Without the progress bar: this many one-line reports over the run (rank 0), e.g. for several
    # runs side by side whose bars would garble each other. 0: none, or 100 when the bar is wanted
    # (`progress`) but stderr is not a terminal.
    progress_lines: int = 0
    # DDP must be told when some parameters get no gradient (e.g. a pre-training loss switched off).
    ddp_find_unused_parameters: bool = False

    def validate(self, prefix: str = "train.") -> None:
        """Raise `ConfigError` naming the first field (as `prefix` + name) that cannot work."""
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"{prefix}{name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("total_steps", "batch_size", "grad_accum_steps", "log_every", "checkpoint_every",
                     "keep_checkpoints", "max_nonfinite_steps"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        for name in ("val_every", "progress_lines"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "an integer >= 0 (0: off)")
        for name in ("lr", "weight_decay", "clip_grad_norm"):
            if not _finite(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "a finite number >= 0")
        if not _finite(self.eps) or self.eps <= 0:
            raise bad("eps", "a finite number > 0")
        if not _finite(self.warmup_ratio) or not 0 <= self.warmup_ratio <= 1:
            raise bad("warmup_ratio", "a fraction in [0, 1]")
        if len(self.betas) != 2 or not all(_finite(b) and 0 <= b < 1 for b in self.betas):
            raise bad("betas", "two numbers in [0, 1), e.g. [0.9, 0.98]")
        if self.max_minutes is not None and (not _finite(self.max_minutes) or self.max_minutes < 0):
            raise bad("max_minutes", "a number of minutes >= 0, or null for no limit")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise bad("precision", "fp32, bf16 or fp16")
        device = usable_device(self.device, f"{prefix}device")
        if self.precision == "fp16" and not device.startswith("cuda"):
            raise ConfigError(f"{prefix}precision: fp16 needs a CUDA device (fp16 on CPU is very slow); "
                              f"use bf16 or fp32 on {self.device!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TrainTask(Protocol):
    """What the trainer needs from pre-training or fine-tuning."""

    def batch(self, step: int, micro_step: int, dist: DistInfo) -> Any:
        """The micro-batch for (step, micro_step) on this rank, moved to the device."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """Scalar loss and metrics; keys starting with 'count/' are summed and reported as rates
        (per second, over all ranks, of the updates made: e.g. count/clips gives clips_per_s); the
        others are averaged."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class TrainResult:
    status: Literal["finished", "interrupted", "time_limit"]
    step: int
    skipped_steps: int
    last_metrics: dict[str, float]
    checkpoint: Path | None


def _loss_first(metrics: dict[str, float]) -> list[tuple[str, float]]:
    """A step's metrics for display: the total loss first, then the task's in its order."""
    return sorted(metrics.items(), key=lambda item: item[0] != "loss")


def _checkpoint_step(path: Path | None) -> int:
    """The step in a checkpoint folder's name (step-00000100), -1 for none or another name."""
    if path is None or not path.name.startswith(CHECKPOINT_PREFIX):
        return -1
    digits = path.name[len(CHECKPOINT_PREFIX):]
    return int(digits) if digits.isdigit() else -1


def _step_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}" if step >= 0 else "none"


def _is_log_window(value: Any) -> bool:
    """What _Window.state() writes."""
    return (isinstance(value, dict) and is_number_map(value.get("sums")) and is_number_map(value.get("counts"))
            and is_count(value.get("steps")) and is_number(value.get("seconds")) and value["seconds"] >= 0)


def _is_grad_scaler(value: Any) -> bool:
    """What GradScaler.state_dict() writes (what its load_state_dict reads)."""
    return (isinstance(value, dict) and all(is_number(value.get(k)) for k in ("scale", "growth_factor", "backoff_factor"))
            and all(is_count(value.get(k)) for k in ("growth_interval", "_growth_tracker")))


# The fields the trainer adds to a checkpoint's state.json (all optional: checkpoints from before
# each was written lack it; the trainer then uses its default).
_TRAINER_FIELDS: dict[str, FieldCheck] = {
    "skipped_steps": COUNT,
    "world_size": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "grad_accum_steps": POSITIVE_INT,
    "log_window": or_null((_is_log_window, '{"sums": {...}, "counts": {...}, "steps": integer, "seconds": number}')),
    "grad_scaler": or_null((_is_grad_scaler, "a gradient scaler state (scale, growth_factor, backoff_factor, "
                                             "growth_interval, _growth_tracker)")),
}


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers; stable across processes and Python versions."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class Trainer:
    def __init__(self, model: nn.Module, task: TrainTask, cfg: TrainConfig, run_dir: str | Path,
                 run_config: dict[str, Any] | None = None, param_groups: list[dict] | None = None):
        # `param_groups`: optional AdamW groups built by the caller (e.g. layer-wise LR decay,
        # each group's "lr" already scaled); None gives the default decay / no-decay groups.
        cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device))
        cfg.validate()
        self.cfg = cfg
        self.task = task
        self.run_dir = Path(run_dir)
        self.run_config = run_config or {}
        self.dist = distributed.init_distributed(cfg.device)
        self.device = distributed.rank_device(cfg.device, self.dist)
        if cfg.deterministic:
            # cuBLAS repeats its results only with a fixed workspace, read when its first handle is
            # made (before the model's first matmul); without it torch merely warns (warn_only) and
            # a resumed GPU run need not repeat the uninterrupted one. No effect on CPU.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, tuple(cfg.betas), cfg.eps,
                                         param_groups=param_groups)
        warmup = int(round(cfg.warmup_ratio * cfg.total_steps))
        self.scheduler = warmup_linear_decay(self.optimizer, warmup, cfg.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self.logger = MetricsLogger(self.run_dir, enabled=self.dist.is_main)
        self.step = 0
        self.skipped_steps = 0
        self.resumed_layout: dict[str, int] = {}
        self._stop_signal: int | None = None
        # Under torchrun: the launcher's pid. A `kill -9` of torchrun cannot pass on to the workers,
        # which would train on as orphans (and write into the run folder beside a resumed run).
        self._launcher_pid = os.getppid() if self.dist.enabled else None
        # Metrics since the last log row; saved in checkpoints so a resumed run logs the same rows.
        # (Under DDP the checkpoint holds rank 0's window, so after a resume mid-window the other
        # ranks' share of that one logged row is rank 0's; the training itself is unaffected.)
        self._window = _Window()

    # ------------------------------------------------------------------ public
    def resume(self, checkpoint: str | Path | None = None) -> bool:
        """Load `checkpoint` (or the run's latest); False when there is none."""
        path = Path(checkpoint) if checkpoint else latest_checkpoint(self.run_dir)
        self._check_ranks_resume_together(path)
        if path is None:
            return False
        # Checked before any weight is loaded: a refused resume leaves the model as it was.
        recorded = read_checkpoint_state(path, _TRAINER_FIELDS, optional=_TRAINER_FIELDS)
        self._check_samples_per_update(recorded, path)
        # The processes and batch size that wrote the checkpoint (fields absent from old ones), for a
        # task whose objective depends on the micro-batch over all processes (pre-training's InfoNCE).
        self.resumed_layout = {k: int(recorded[k]) for k in ("world_size", "batch_size") if k in recorded}
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.scaler.is_enabled() and state.get("grad_scaler"):
            # fp16: the scale found so far. A fresh scaler would start at 2^16 again and skip the
            # updates that overflow on the way down, which an uninterrupted run does not.
            self.scaler.load_state_dict(state["grad_scaler"])
        self._window.load_state(state.get("log_window"))
        self.logger.truncate_after(self.step)
        return True

    def _check_ranks_resume_together(self, path: Path | None) -> None:
        """Every rank must continue from the same checkpoint. Only rank 0 writes checkpoints, so
        under torchrun on several machines a run folder that is not shared gives the other
        machines none (or stale ones): they would train other steps than rank 0 and the
        collectives would pair up wrongly, mixing the runs or hanging at the end."""
        steps = distributed.all_gather_int(_checkpoint_step(path), self.device)
        if len(set(steps)) > 1:
            by_rank = ", ".join(f"rank {rank}: {_step_name(step)}" for rank, step in enumerate(steps))
            raise CheckpointError(
                f"{self.run_dir}: the processes found different checkpoints to resume from ({by_rank}); "
                "only rank 0 writes checkpoints, so under torchrun "
                "on several machines the run folder (--out) must be on a file system they all share")

    def _check_samples_per_update(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint written with another global batch (e.g. another number of
        processes): the run would go on silently with a different batch and data order."""
        cfg = self.cfg
        # Checkpoints before these were recorded: the caller has checked batch size and accumulation.
        world = int(state.get("world_size", 1))
        batch = int(state.get("batch_size", cfg.batch_size))
        accum = int(state.get("grad_accum_steps", cfg.grad_accum_steps))
        before = world * batch * accum
        now = self.dist.world_size * cfg.batch_size * cfg.grad_accum_steps
        if before != now:
            raise CheckpointError(
                f"{path}: written by {world} process(es) x batch size {batch} x {accum} accumulation step(s) "
                f"= {before} samples per update, but this run has {self.dist.world_size} x {cfg.batch_size} x "
                f"{cfg.grad_accum_steps} = {now}; resume with {world} process(es) (torchrun --nproc_per_node "
                "x --nnodes), or with settings that keep the samples per update")

    def fit(self) -> TrainResult:
        cfg = self.cfg
        if self.step >= cfg.total_steps:  # resuming a finished run: nothing to train or log again,
            last = {}                      # but the end validation if a kill came before it
            missing = self.dist.is_main and not self.logger.has_record(self.step, "val")  # rank 0 decides
            if cfg.validate_at_end and distributed.any_rank(missing, self.device):
                last = {f"val/{k}": v for k, v in self._validate().items()}
            self.logger.close()
            return TrainResult("finished", self.step, self.skipped_steps, last, latest_checkpoint(self.run_dir))
        if self.step == 0:
            self.logger.truncate_after(0)  # rows of an earlier attempt that died before its first checkpoint
        train_model = self._wrap(self.model)
        started = time.perf_counter()
        window = self._window
        window.start_clock()
        last: dict[str, float] = {}
        consecutive_bad = 0
        status: Literal["finished", "interrupted", "time_limit"] = "finished"
        checkpoint: Path | None = None
        bar = self._progress_bar()
        first_step = self.step
        report_lines = cfg.progress_lines
        if cfg.progress and bar is None and not report_lines:
            # stderr is a file (a cluster job's log): a bar there is one endless line of carriage
            # returns, so one-line reports stand in for it.
            report_lines = LOG_FILE_REPORTS
        report_every = math.ceil(cfg.total_steps / report_lines) if report_lines > 0 else 0
        with self._signal_handlers():
            while self.step < cfg.total_steps:
                train_model.train()
                losses_finite, metrics, counts = self._accumulate_gradients(train_model)
                grad_norm = self._clip_and_measure()
                bad = distributed.any_rank(not (losses_finite and math.isfinite(grad_norm)), self.device)
                if bad:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skipped_steps += 1
                    if self.scaler.is_enabled():
                        self.scaler.update()  # fp16 overflow: GradScaler lowers its scale and we go on
                        # Overflowing gradients are GradScaler's search for a scale and do not count;
                        # a non-finite loss is computed before any scaling, so no scale can fix it.
                        loss_bad = distributed.any_rank(not losses_finite, self.device)
                        consecutive_bad = consecutive_bad + 1 if loss_bad else 0
                    else:
                        consecutive_bad += 1
                    if consecutive_bad >= cfg.max_nonfinite_steps:
                        raise TrainingDiverged(
                            f"{consecutive_bad} consecutive steps (up to step {self.step}) had a non-finite "
                            f"loss or gradient norm; stopping without writing a checkpoint. Lower the learning "
                            f"rate, use fp32, or check the data. Last good checkpoint: {latest_checkpoint(self.run_dir)}")
                else:
                    consecutive_bad = 0
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    # Counts only of updates made, like steps_per_s: a skipped step's clips trained nothing.
                    window.add_step(grad_norm, metrics, counts)
                with warnings.catch_warnings():
                    # A skipped update still advances the schedule (it counts steps); torch warns
                    # when that happens before the first optimizer.step(), which is intended here.
                    warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                    # The largest group's rate this update used: with layer-wise decay the groups
                    # differ and the top one is the nominal learning rate (the classifier's).
                    step_lr = max(self.scheduler.get_last_lr())
                    self.scheduler.step()
                self.step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in _loss_first(metrics)[:4]})
                elif report_every and self.dist.is_main and (
                        self.step % report_every == 0 or self.step == cfg.total_steps):
                    # On stderr, where the bar would be: stdout is left to the command's result.
                    print(self._progress_line(metrics, self.step - first_step, time.perf_counter() - started),
                          file=sys.stderr, flush=True)

                if self.step % cfg.log_every == 0 or self.step == cfg.total_steps:
                    last = self._log_window(window, step_lr)
                # Off the window's clock: the logged rates are those of training.
                with window.paused():
                    if cfg.val_every and self.step % cfg.val_every == 0 and self.step < cfg.total_steps:
                        self._validate()
                    if self.step % cfg.checkpoint_every == 0 or self.step == cfg.total_steps:
                        checkpoint = self._checkpoint()
                if self.step < cfg.total_steps:
                    if distributed.any_rank(self._stop_signal is not None or self._launcher_gone(), self.device):
                        status = "interrupted"
                    elif cfg.max_minutes is not None and distributed.any_rank(
                            time.perf_counter() - started > 60 * cfg.max_minutes, self.device):
                        status = "time_limit"
                    if status != "finished":
                        checkpoint = self._checkpoint()
                        break
        if bar is not None:
            bar.close()
        if status == "finished" and cfg.validate_at_end:
            val = self._validate()
            last.update({f"val/{k}": v for k, v in val.items()})
        self.logger.close()
        return TrainResult(status, self.step, self.skipped_steps, last, checkpoint)

    # ----------------------------------------------------------------- pieces
    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.cfg.compile:
            # In place (parameter names unchanged), and the backbone only where there is one: it
            # compiles to a single graph, while the heads' boolean indexing of masked positions
            # has a data-dependent shape that would split the graph.
            getattr(model, "backbone", model).compile()
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=device_ids, find_unused_parameters=self.cfg.ddp_find_unused_parameters)
        return model

    def _accumulate_gradients(self, model: nn.Module) -> tuple[bool, dict[str, float], dict[str, float]]:
        """Whether every loss was finite, the mean of the metrics over the micro-steps, and the
        sums of the counted quantities ('count/clips' -> 'clips')."""
        cfg = self.cfg
        finite = True
        summed: dict[str, float] = {}
        counts: dict[str, float] = {}
        for micro in range(cfg.grad_accum_steps):
            batch = self.task.batch(self.step, micro, self.dist)
            torch.manual_seed(derive_seed(cfg.seed, self.step, micro, self.dist.rank, 1))  # dropout noise
            sync = micro == cfg.grad_accum_steps - 1 or not self.dist.enabled
            no_sync = model.no_sync() if not sync else contextlib.nullcontext()
            with no_sync, self._autocast():
                loss, metrics = self.task.loss(model, batch)
            self.scaler.scale(loss / cfg.grad_accum_steps).backward()
            loss_value = float(loss.detach())
            finite &= math.isfinite(loss_value)
            for key, value in metrics.items():
                value = float(value.detach()) if torch.is_tensor(value) else float(value)
                if key.startswith("count/"):
                    counts[key[len("count/"):]] = counts.get(key[len("count/"):], 0.0) + value
                else:
                    summed[key] = summed.get(key, 0.0) + value / cfg.grad_accum_steps
            summed["loss"] = summed.get("loss", 0.0) + loss_value / cfg.grad_accum_steps
        return finite, summed, counts

    def _clip_and_measure(self) -> float:
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.clip_grad_norm if self.cfg.clip_grad_norm > 0 else float("inf")
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def _autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _log_window(self, window: "_Window", lr: float) -> dict[str, float]:
        rates = window.count_rate_keys()
        values = window.flush()
        values["lr"] = lr  # of the logged step's update (the scheduler has moved on to the next one)
        values["skipped_steps"] = self.skipped_steps
        values = distributed.all_reduce_mean(values, self.device)
        for key in rates:  # each rank counted its own samples: the run's throughput is their sum
            values[key] *= self.dist.world_size
        self.logger.log(self.step, "train", values)
        return values

    def _validate(self) -> dict[str, float]:
        validate = getattr(self.task, "validate", None)
        if validate is None:
            return {}
        self.model.eval()
        with torch.no_grad(), self._autocast():
            values = validate(unwrap(self.model), self.dist)
        self.model.train()
        if values:
            self.logger.log(self.step, "val", values)
        return values

    def _checkpoint(self) -> Path | None:
        path = None
        if self.dist.is_main:
            state = {"skipped_steps": self.skipped_steps, "data_position": {"step": self.step},
                     "world_size": self.dist.world_size, "batch_size": self.cfg.batch_size,
                     "grad_accum_steps": self.cfg.grad_accum_steps, "log_window": self._window.state(),
                     "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                     "config": self.run_config}
            path = save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, self.scheduler, state,
                                   keep_last=self.cfg.keep_checkpoints)
        distributed.barrier()
        return path

    def _progress_line(self, metrics: dict[str, float], steps_done: int, seconds: float) -> str:
        total = self.cfg.total_steps
        rate = steps_done / seconds if seconds > 0 else 0.0
        values = ", ".join(f"{k} {v:.3g}" for k, v in _loss_first(metrics))
        left = ""
        if rate > 0 and self.step < total:
            seconds_left = (total - self.step) / rate
            left = f", ~{seconds_left:.0f} s left" if seconds_left < 90 else f", ~{seconds_left / 60:.1f} min left"
        label = "/".join(self.run_dir.parts[-2:])  # e.g. pretrain/mp_cl_seed0: runs side by side tell apart
        return (f"[{label}] step {self.step}/{total} ({100 * self.step // total}%): {values}; "
                f"{rate:.2f} steps/s{left}")

    def _progress_bar(self):
        if not (self.cfg.progress and self.dist.is_main and is_terminal(sys.stderr)):
            return None
        return progress_bar(self.cfg.total_steps, "train", "step", initial=self.step)

    def _launcher_gone(self) -> bool:
        if self._launcher_pid is None or os.getppid() == self._launcher_pid:
            return False
        if self._stop_signal is None:
            print(f"rank {self.dist.rank}: the launcher (pid {self._launcher_pid}) has exited; stopping with a "
                  "checkpoint", file=sys.stderr, flush=True)
            self._stop_signal = signal.SIGTERM
        return True

    @contextlib.contextmanager
    def _signal_handlers(self):
        """SIGINT / SIGTERM finish the current step, write a checkpoint and return."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, _frame):
            self._stop_signal = signum

        previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _Window:
    """Sums metrics between two log events; turns counts into per-second rates."""

    def __init__(self):
        self._reset()

    def _reset(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.steps = 0
        self.carried_seconds = 0.0
        self.started = time.perf_counter()

    def add_step(self, grad_norm: float, metrics: dict[str, float], counts: dict[str, float]) -> None:
        """One update made: its metrics (averaged at `flush`) and counted quantities (rates)."""
        self.steps += 1
        self.sums["grad_norm"] = self.sums.get("grad_norm", 0.0) + grad_norm
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0.0) + value

    def state(self) -> dict[str, Any]:
        return {"sums": self.sums, "counts": self.counts, "steps": self.steps,
                "seconds": time.perf_counter() - self.started}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Continue a window saved by `state()` (None: checkpoints from before it was saved)."""
        self._reset()
        if state:
            self.sums, self.counts = dict(state["sums"]), dict(state["counts"])
            self.steps = int(state["steps"])
            self.carried_seconds = float(state["seconds"])

    @contextlib.contextmanager
    def paused(self):
        """Leave the time spent inside out of the window's rates (validation, checkpoints)."""
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.started += time.perf_counter() - begun

    def start_clock(self) -> None:
        """Time the window from now on, plus what a restored window had already run."""
        self.started = time.perf_counter() - self.carried_seconds

    def count_rate_keys(self) -> list[str]:
        """The names `flush` gives the rates of counted quantities (e.g. clips_per_s)."""
        return [f"{k}_per_s" for k in self.counts]

    def flush(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        values = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
        values.update({f"{k}_per_s": v / elapsed for k, v in self.counts.items()})
        values["steps_per_s"] = self.steps / elapsed
        self._reset()
        return values
