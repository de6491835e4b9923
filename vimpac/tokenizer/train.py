"""Training our VQ-VAE tokenizer on frames sampled from videos (`vimpac train-tokenizer`).

The pipeline, each step a function that can be used on its own:

1. `discover_videos(inputs)`: video files, folders (searched recursively) and MMAction2 list
   files (paths relative to the list's folder) -> a sorted, de-duplicated list of paths.
2. `split_videos(videos, val_fraction, seed)`: hold out whole videos, so the reported quality
   is measured on frames the model never saw (frames of one video are nearly duplicates).
3. `load_frame_pool(videos, data_cfg)`: decode each video at `fps` (`vimpac.video.reader`),
   take the paper's center view at `size` (`vimpac.video.views`), keep at most
   `max_frames_per_video` evenly spaced frames, all in one in-memory uint8 array.
   Unreadable videos are skipped and listed with the reason, not fatal.
4. `train_vqvae(train_frames, model_cfg, train_cfg)`: AdamW with warmup + cosine
   decay, bf16 autocast on CPU, random horizontal flips, progress (a bar, or lines in a log file) with loss / PSNR /
   perplexity, an optional wall-clock budget; returns the trained tokenizer and a report.
5. `evaluate_tokenizer(tokenizer, frames)`: reconstruction PSNR, codebook perplexity and the
   fraction of codes used, measured through the tokenizer's own inference path.

`train_tokenizer_from_videos` chains them and writes the tokenizer folder plus
`train_report.json` (atomically); it is what the command calls.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from vimpac.config import ConfigError, record_differences, to_dict
from vimpac.devices import usable_device
from vimpac.engine.checkpoint import (NUMBER, OBJECT, CheckpointError, FieldCheck, is_number, is_number_map,
                                      latest_checkpoint, load_checkpoint, read_checkpoint_state, read_state_json,
                                      save_checkpoint)
from vimpac.io import atomic_write_json, write_folder
from vimpac.machine import machine_info
from vimpac.progress import progress_bar, track
from vimpac.signals import stop_on_signals
from vimpac.tokenizer.base import TokenizerError, check_output_folder
from vimpac.tokenizer.vqvae import VQVAE, VQVAEConfig, VQVAETokenizer, frames_to_pixels, psnr_db

REPORT_FILE = "train_report.json"

ExistingOut = Literal["refuse", "replace", "write-into"]


class TokenizerTrainingError(TokenizerError):
    """The training inputs are unusable (no videos, no frames, bad settings); says which."""


class TokenizerTrainingInterrupted(TokenizerError):
    """SIGINT / SIGTERM stopped the training after a checkpoint; `--resume` continues it."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name


# Training checkpoints go to OUT/checkpoints (vimpac.engine.checkpoint's layout) until the
# tokenizer is written; the folder is then removed.
CHECKPOINT_FOLDER = "checkpoints"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of `train_vqvae` (saved in the training report)."""

    # 500 x 32 frames: > 22 dB held-out PSNR on the synthetic benchmark at 64 px in ~2 minutes
    # on a (loaded) 2-core CPU with the "tiny" preset; see docs/tokenizers.md.
    steps: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    """The cosine schedule ends at lr * min_lr_ratio."""
    bf16: bool = True
    """bf16 autocast for the convolutions (fast on CPUs with AVX512-BF16 / AMX, and on GPUs)."""
    flip: bool = True
    """Random horizontal flips of training frames."""
    seed: int = 0
    max_minutes: float | None = None
    """Stop early (still evaluating and saving) once training has run this long."""

    def validate(self) -> "TrainConfig":
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            problems.append(f"max_minutes must be > 0, got {self.max_minutes}")
        if problems:
            raise ConfigError("TrainConfig: " + "; ".join(problems))
        return self


@dataclass(frozen=True)
class DataConfig:
    """How frames are sampled from the videos."""

    size: int = 64
    """Square frame size in pixels (shorter side resized to it, then center crop); multiple of 8."""
    fps: float = 4.0
    max_frames_per_video: int = 64
    """Evenly spaced frames kept per video, so long videos do not dominate the pool."""
    val_fraction: float = 0.1
    """Fraction of the videos held out for the report (at least one when there are two or more)."""
    max_val_frames: int = 2048

    def validate(self) -> "DataConfig":
        problems = []
        if self.size < 8 or self.size % 8:
            problems.append(f"size must be a positive multiple of 8 (8x downsampling), got {self.size}")
        if not (math.isfinite(self.fps) and self.fps > 0):  # inf failed every video, one by one
            problems.append(f"fps must be a finite number > 0, got {self.fps}")
        if self.max_frames_per_video < 1:
            problems.append(f"max_frames_per_video must be >= 1, got {self.max_frames_per_video}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if problems:
            raise ConfigError("DataConfig: " + "; ".join(problems))
        return self


# --------------------------------------------------------------------------------------------
# Inputs


def discover_videos(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand video files, folders and MMAction2 list files into a sorted list of video paths.

    A folder is searched recursively for video files; any other file that is not a video is
    read as an MMAction2 list ("relative/path [label]" per line, relative to the list's folder).
    Inputs that do not exist are an error (a typo should not silently train on less data);
    listed videos that are missing are kept and reported later as skipped.
    """
    from vimpac.data.annotations import AnnotationError, read_mmaction_list
    from vimpac.video.reader import VIDEO_EXTENSIONS as READABLE_EXTENSIONS
    from vimpac.video.reader import find_video_files

    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.update(find_video_files(path))
        elif path.is_file() and path.suffix.lower() in READABLE_EXTENSIONS:
            found.add(path)
        elif path.is_file():
            try:
                records = read_mmaction_list(path).records
            except AnnotationError as exc:
                raise TokenizerTrainingError(f"{exc} (expected a video, a folder or an MMAction2 list file)") from None
            found.update(path.parent / record.path for record in records)
        else:
            raise TokenizerTrainingError(f"{path}: no such video, folder or list file")
    return sorted(found)


def split_videos(videos: Sequence[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out round(val_fraction * n) videos (at least 1 when n >= 2 and val_fraction > 0)."""
    videos = list(videos)
    if len(videos) < 2 or val_fraction <= 0:
        return videos, []
    num_val = min(len(videos) - 1, max(1, round(val_fraction * len(videos))))
    order = list(range(len(videos)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:num_val])
    train = [v for i, v in enumerate(videos) if i not in val_idx]
    val = [v for i, v in enumerate(videos) if i in val_idx]
    return train, val


@dataclass
class FramePool:
    frames: np.ndarray
    """uint8 (N, size, size, 3)."""
    videos: list[str]
    """The videos that contributed frames."""
    skipped: list[dict[str, str]]
    """{"path", "reason"} for every video that could not be used."""


def load_frame_pool(videos: Sequence[Path], data: DataConfig, progress: bool = False, desc: str = "frames") -> FramePool:
    """Decode every video at `data.fps` into one uint8 frame array; skip and list bad videos."""
    from vimpac.video.errors import VideoError

    chunks, used, skipped = [], [], []
    bar = progress_bar(len(videos), desc, "video", enabled=progress)
    for path in track(videos, bar):
        try:
            frames = _read_frames(path, data.fps, data.size, data.max_frames_per_video)
        except VideoError as exc:
            skipped.append({"path": str(path), "reason": exc.reason})
            continue
        except Exception as exc:  # an exotic decoder failure must not end a long run either
            skipped.append({"path": str(path), "reason": f"unexpected {type(exc).__name__}: {exc}"})
            continue
        if len(frames) == 0:
            skipped.append({"path": str(path), "reason": "no frames at the requested fps"})
            continue
        chunks.append(frames)
        used.append(str(path))
    bar.close()
    empty = np.zeros((0, data.size, data.size, 3), dtype=np.uint8)
    return FramePool(np.concatenate(chunks) if chunks else empty, used, skipped)


def _read_frames(path: Path, fps: float, size: int, max_frames: int) -> np.ndarray:
    """At most `max_frames` evenly spaced frames of `path` sampled at `fps`, as the paper's center
    view (shorter side resized to `size`, center crop): uint8 (T, size, size, 3).

    Only the kept frames are decoded to RGB, and only a chunk of them at a time is held at full
    resolution (a large `max_frames` of HD frames would not fit in memory). Raises `VideoError`
    for a bad file.
    """
    from vimpac.video.reader import VideoReader
    from vimpac.video.views import ViewSpec, make_views_of_chunks

    center = ViewSpec(1.0, "center")
    with VideoReader(path) as video:
        indices = video.frame_indices_at_fps(fps)
        if len(indices) > max_frames:
            indices = indices[np.linspace(0, len(indices) - 1, max_frames).round().astype(int)]
        return make_views_of_chunks(video.iter_frames(indices), len(indices), size, [center])[center.name]


# --------------------------------------------------------------------------------------------
# Training and evaluation


@dataclass
class TrainResult:
    tokenizer: VQVAETokenizer
    steps_done: int
    train_seconds: float
    stopped_early: bool
    final_train_loss: float
    history: list[dict[str, float]]


def train_vqvae(
    train_frames: np.ndarray,
    model_cfg: VQVAEConfig,
    train_cfg: TrainConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log_every: int = 25,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    run_record: dict[str, Any] | None = None,
    stop_on_signal: bool = False,
) -> TrainResult:
    """Train a fresh VQ-VAE on uint8 frames (N, S, S, 3); returns the tokenizer in eval mode.

    With `checkpoint_dir`, the whole training state (weights and codebook statistics, AdamW,
    schedule, the frame sampler's and torch's RNG, the running means and history) is saved to
    `checkpoint_dir/checkpoints` every `checkpoint_every` steps, and with `resume` the latest
    checkpoint there is continued: the steps after it are the ones an uninterrupted run takes.
    `run_record` (settings and a fingerprint of the frames) is saved with it and must match on
    resume. With `stop_on_signal`, SIGINT / SIGTERM end the current step, save a checkpoint and
    raise `TokenizerTrainingInterrupted`.
    """
    train_cfg.validate()
    model_cfg.validate()
    if train_frames.ndim != 4 or train_frames.shape[-1] != 3 or train_frames.dtype != np.uint8:
        raise TokenizerTrainingError(f"training frames must be uint8 (N, S, S, 3), got {train_frames.dtype} {train_frames.shape}")
    if len(train_frames) == 0:
        raise TokenizerTrainingError("no training frames: every training video was skipped or empty")
    device = torch.device(device)
    torch.manual_seed(train_cfg.seed)
    generator = torch.Generator().manual_seed(train_cfg.seed)

    model = VQVAE(model_cfg).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, train_cfg))
    pool = torch.from_numpy(np.ascontiguousarray(train_frames))
    batch_size = min(train_cfg.batch_size, len(pool))
    use_bf16 = train_cfg.bf16 and device.type in ("cpu", "cuda")

    history: list[dict[str, float]] = []
    steps_done, stopped_early, loss_value, seconds_before = 0, False, float("nan"), 0.0
    running: dict[str, float] = {}
    if checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    run_record = json.loads(json.dumps(run_record or {}))  # as the checkpoint will hold it (tuples as lists)
    latest = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None and resume else None
    if latest is not None:
        try:
            # Every field checked before anything is restored.
            _check_same_run(latest, read_checkpoint_state(latest, _TRAINING_FIELDS)["run"], run_record)
            state = load_checkpoint(latest, model, optimizer, schedule)
        except CheckpointError as exc:
            raise TokenizerTrainingError(f"{latest}: not a tokenizer training checkpoint this run can continue "
                                         f"({exc})") from exc
        generator.set_state(torch.tensor(state["sampler_rng"], dtype=torch.uint8))
        steps_done, loss_value, seconds_before = state["step"], state["loss"], state["train_seconds"]
        running, history = state["running"], state["history"]

    def save(step: int) -> None:
        save_checkpoint(checkpoint_dir, step, model, optimizer, schedule, {
            "run": run_record, "sampler_rng": generator.get_state().tolist(), "loss": loss_value,
            "train_seconds": seconds_before + time.monotonic() - start, "running": running, "history": history,
        })

    deadline = None if train_cfg.max_minutes is None else time.monotonic() + 60.0 * train_cfg.max_minutes
    start = time.monotonic()
    bar = progress_bar(train_cfg.steps, "train-tokenizer", "step", enabled=progress, initial=steps_done)
    signals = stop_on_signals() if stop_on_signal else contextlib.nullcontext([])
    with signals as stop:
        for step in track(range(steps_done, train_cfg.steps), bar):
            idx = torch.randint(len(pool), (batch_size,), generator=generator)
            pixels = frames_to_pixels(pool[idx].to(device))
            if train_cfg.flip:
                flip = torch.rand(batch_size, generator=generator) < 0.5
                pixels[flip.to(device)] = pixels[flip.to(device)].flip(-1)
            pixels = pixels.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = model(pixels)
            loss = out.loss
            if not torch.isfinite(loss):
                raise TokenizerTrainingError(f"loss became {loss.item()} at step {step}; try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            steps_done = step + 1
            loss_value = loss.item()
            # Exponential running means keep the bar readable; the batch PSNR is on the [-1, 1]
            # pixel scale converted to 0..255 (x127.5) so it matches the held-out figure.
            stats = {
                "loss": loss_value,
                "psnr": psnr_db(out.recon_loss.item() * 127.5**2),
                "ppl": float(out.perplexity),
            }
            running = stats if not running else {k: 0.9 * running[k] + 0.1 * v for k, v in stats.items()}
            if step % log_every == 0 or steps_done == train_cfg.steps:
                history.append({"step": steps_done, "seconds": round(seconds_before + time.monotonic() - start, 2), **{k: round(v, 4) for k, v in running.items()}})
                bar.set_postfix(loss=f"{running['loss']:.4f}", psnr=f"{running['psnr']:.1f}", ppl=f"{running['ppl']:.0f}")
            if checkpoint_dir is not None and (stop or steps_done % checkpoint_every == 0) \
                    and steps_done < train_cfg.steps:
                save(steps_done)
            if stop and steps_done < train_cfg.steps:
                bar.close()
                raise TokenizerTrainingInterrupted(
                    f"stopped by {stop[0]} at step {steps_done} of {train_cfg.steps}; the checkpoint is in "
                    f"{Path(checkpoint_dir) / CHECKPOINT_FOLDER if checkpoint_dir is not None else '(none kept)'}",
                    stop[0])
            if deadline is not None and time.monotonic() > deadline and steps_done < train_cfg.steps:
                stopped_early = True
                break
    bar.close()
    seconds = seconds_before + time.monotonic() - start
    tokenizer = VQVAETokenizer(model, device=device, bf16=train_cfg.bf16)
    return TrainResult(tokenizer, steps_done, seconds, stopped_early, loss_value, history)


def _check_same_run(checkpoint: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """A resumed training must see the settings and frames it was started with, or its steps
    would not be the ones an uninterrupted run takes (the time budget may change)."""
    # Paths as absolute ones: the same videos named from another working folder (or spelled
    # otherwise) are the same run; checkpoints from before this kept the paths as given.
    saved, now = (_with_resolved_videos(record) for record in (saved, now))
    changed = record_differences(saved, now)
    if changed:
        listed = "; ".join(f"{key}: {_short(old)} then, {_short(new)} now" for key, old, new in changed[:3])
        raise TokenizerTrainingError(
            f"{checkpoint}: this training was started with other settings or frames ({listed}); rerun with the "
            "original settings and videos, or start anew in another --out")


def _resolved(paths: Sequence[str | os.PathLike]) -> list[str]:
    return [str(Path(path).resolve()) for path in paths]


def _with_resolved_videos(record: dict[str, Any]) -> dict[str, Any]:
    videos = record.get("training_videos")
    return {**record, "training_videos": _resolved(videos)} if isinstance(videos, list) else record


def _is_sampler_state(value: Any) -> bool:
    if not (isinstance(value, list) and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255
                                            for b in value)):
        return False
    try:
        torch.Generator().set_state(torch.tensor(value, dtype=torch.uint8))  # a throwaway generator
    except RuntimeError:  # another length, or not a valid Mersenne Twister state
        return False
    return True


def _is_running_means(value: Any) -> bool:
    """Empty before the first step, then the running loss / psnr / ppl the training loop updates."""
    return is_number_map(value) and (not value or {"loss", "psnr", "ppl"} <= set(value))


# The fields train_vqvae adds to a checkpoint's state.json.
_TRAINING_FIELDS: dict[str, FieldCheck] = {
    "run": OBJECT,
    "sampler_rng": (_is_sampler_state, f"the frame sampler's state ({torch.Generator().get_state().numel()} bytes)"),
    "loss": NUMBER,
    "train_seconds": (lambda value: is_number(value) and value >= 0, "a number >= 0"),
    "running": (_is_running_means, '{} or {"loss": number, "psnr": number, "ppl": number}'),
    "history": (lambda value: isinstance(value, list) and all(isinstance(row, dict) for row in value),
                "a list of objects"),
}


def _is_tokenizer_training(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's state was written by `train_vqvae` (it holds the run record and the
    frame sampler's state), not by a pre-training or fine-tuning run of the same layout."""
    return "run" in state and "sampler_rng" in state


def _saved_run(checkpoint: Path) -> dict[str, Any]:
    try:
        return read_checkpoint_state(checkpoint, _TRAINING_FIELDS)["run"]
    except CheckpointError as exc:
        raise TokenizerTrainingError(str(exc)) from exc


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def evaluate_tokenizer(tokenizer: VQVAETokenizer, frames: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Reconstruction quality and codebook usage on `frames` (uint8 N, S, S, 3).

    psnr_db: 10 log10(255^2 / MSE) with the MSE pooled over all pixels of all frames (not a
    mean of per-frame PSNRs, which would flatter easy frames). perplexity: exp(entropy) of the
    code histogram. codes_used_fraction: codes chosen at least once / codebook size.
    """
    frames = torch.as_tensor(np.asarray(frames))
    if len(frames) == 0:
        raise TokenizerTrainingError("no frames to evaluate on")
    ids = tokenizer.encode(frames)
    recon = tokenizer.decode(ids)
    mse = float(((recon.float() - frames.float()) ** 2).mean())
    counts = torch.bincount(ids.flatten(), minlength=tokenizer.codebook_size).double()
    probs = counts / counts.sum()
    entropy = float(-(probs[probs > 0] * probs[probs > 0].log()).sum())
    used = int((counts > 0).sum())
    return {
        "num_frames": int(len(frames)),
        "mse": round(mse, 4),
        "psnr_db": round(psnr_db(mse), 3),
        "perplexity": round(math.exp(entropy), 2),
        "codes_used": used,
        "codes_used_fraction": round(used / tokenizer.codebook_size, 4),
    }


def bf16_token_agreement(tokenizer: VQVAETokenizer, frames: np.ndarray | torch.Tensor) -> float:
    """Fraction of token positions where the bf16 fast path agrees with plain fp32."""
    saved = tokenizer.bf16
    try:
        tokenizer.bf16 = True
        fast = tokenizer.encode(frames)
        tokenizer.bf16 = False
        exact = tokenizer.encode(frames)
    finally:
        tokenizer.bf16 = saved
    return float((fast == exact).double().mean())


# --------------------------------------------------------------------------------------------
# The whole command


def train_tokenizer_from_videos(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model_cfg: VQVAEConfig,
    train_cfg: TrainConfig,
    data_cfg: DataConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log=print,
    existing_out: ExistingOut = "write-into",
    resume: bool = False,
    checkpoint_every: int = 100,
    stop_on_signal: bool = False,
) -> dict[str, Any]:
    """Videos -> frame pools -> training -> held-out report -> tokenizer folder + report JSON.

    `existing_out` says what may already be in `out_dir` (checked, like the device, before any
    decoding or training): "refuse" (the command's default) needs a new or empty folder,
    "replace" (`--overwrite`) also takes a folder holding a tokenizer and replaces it as a whole
    once training is done, "write-into" writes into the folder as it is, for callers that
    manage it themselves (the demo's stage folders).

    Training checkpoints go to `out_dir/checkpoints` every `checkpoint_every` steps (and on
    SIGINT / SIGTERM with `stop_on_signal`) and are removed once the tokenizer is written;
    `resume` continues from them, exactly. Without `resume`, a folder holding them is refused
    ("write-into" starts afresh instead).
    """
    data_cfg.validate()
    train_cfg.validate()
    model_cfg.validate()
    if isinstance(device, str):
        device = usable_device(device, "--device")
    if existing_out not in ("refuse", "replace", "write-into"):
        raise ValueError(f"existing_out: expected 'refuse', 'replace' or 'write-into', got {existing_out!r}")
    try:
        interrupted = latest_checkpoint(out_dir)
        interrupted_state = read_state_json(interrupted) if interrupted is not None else None
    except CheckpointError as exc:
        raise TokenizerTrainingError(str(exc)) from exc
    if interrupted_state is not None and not _is_tokenizer_training(interrupted_state):
        # Another run's checkpoints (a pre-training run's folder, say): never ours to continue or delete.
        raise TokenizerTrainingError(
            f"{out_dir}: holds checkpoints of another kind of run ({interrupted} has no tokenizer training record); "
            "choose another --out")
    if interrupted is not None and not resume:
        if existing_out == "write-into":
            shutil.rmtree(Path(out_dir) / CHECKPOINT_FOLDER)  # the caller asked for a fresh run here
        else:
            raise TokenizerTrainingError(
                f"{out_dir}: holds an interrupted training ({interrupted.name}); pass --resume to continue it, or "
                "choose another --out")
    replace = existing_out != "write-into" and check_output_folder(
        out_dir, overwrite=existing_out == "replace", ignore=(CHECKPOINT_FOLDER,) if resume else ())
    if resume and interrupted is None and existing_out != "write-into":
        log(f"--resume: no checkpoint in {out_dir} yet; starting a new training", file=sys.stderr)
    settings = json.loads(json.dumps({"model": to_dict(model_cfg), "train": {**to_dict(train_cfg), "max_minutes": None},
                                      "data": to_dict(data_cfg)}))
    if resume and interrupted is not None:  # settings before minutes of decoding; the frames are checked later
        _check_same_run(interrupted, {"settings": _saved_run(interrupted).get("settings")}, {"settings": settings})
    started = time.time()
    videos = discover_videos(inputs)
    if not videos:
        raise TokenizerTrainingError(f"no video files found in {[str(i) for i in inputs]}")
    train_videos, val_videos = split_videos(videos, data_cfg.val_fraction, train_cfg.seed)
    log(f"{len(videos)} videos: {len(train_videos)} for training, {len(val_videos)} held out")
    train_pool = load_frame_pool(train_videos, data_cfg, progress=progress, desc="decode train")
    val_pool = load_frame_pool(val_videos, data_cfg, progress=progress, desc="decode held-out")
    skipped = train_pool.skipped + val_pool.skipped
    for item in skipped:
        log(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if len(train_pool.frames) == 0:
        raise TokenizerTrainingError(f"no usable training frames: all {len(train_videos)} training videos were skipped")

    val_frames, val_source = val_pool.frames, "held-out videos"
    train_frames = train_pool.frames
    if len(val_frames) == 0 and data_cfg.val_fraction <= 0:
        # Every frame trains, as asked; the report is then on training frames and says why.
        val_frames, val_source = train_frames, "training frames (no held-out split asked: --val-fraction 0)"
    elif len(val_frames) == 0:
        # One usable video (or every held-out one failed): hold out its last frames instead,
        # and say so in the report, because they are near-duplicates of training frames.
        num_val = max(1, round(len(train_frames) * max(data_cfg.val_fraction, 0.1)))
        if len(train_frames) > num_val:
            val_frames, train_frames = train_frames[-num_val:], train_frames[:-num_val]
            val_source = "last frames of the training videos (too few usable videos to hold any out)"
        else:
            val_frames, val_source = train_frames, "training frames (too few frames to hold any out)"
    if len(val_frames) > data_cfg.max_val_frames:
        keep = np.linspace(0, len(val_frames) - 1, data_cfg.max_val_frames).round().astype(int)
        val_frames = val_frames[keep]
    log(f"frame pool: {len(train_frames)} training frames, {len(val_frames)} held-out frames "
        f"({data_cfg.size}x{data_cfg.size} at {data_cfg.fps:g} fps)")

    run_record = {
        "settings": settings,
        "training_videos": _resolved(train_pool.videos),
        "training_frames": {"shape": list(train_frames.shape), "crc32": zlib.crc32(np.ascontiguousarray(train_frames))},
    }
    if interrupted is not None and resume:
        log(f"resuming from {interrupted}")
    result = train_vqvae(train_frames, model_cfg, train_cfg, device=device, progress=progress,
                         checkpoint_dir=out_dir, checkpoint_every=checkpoint_every, resume=resume,
                         run_record=run_record, stop_on_signal=stop_on_signal)
    tokenizer = result.tokenizer
    held_out = evaluate_tokenizer(tokenizer, val_frames)
    agreement = bf16_token_agreement(tokenizer, val_frames[:256])
    report = {
        "tokenizer_id": tokenizer.tokenizer_id,
        "held_out": {**held_out, "source": val_source},
        "bf16_fp32_token_agreement": round(agreement, 4),
        "training": {
            "steps_done": result.steps_done,
            "steps_requested": train_cfg.steps,
            "stopped_early_by_max_minutes": result.stopped_early,
            "train_seconds": round(result.train_seconds, 1),
            "final_train_loss": round(result.final_train_loss, 5),
            "num_train_frames": int(len(train_frames)),
            "history": result.history,
        },
        "total_seconds": round(time.time() - started, 1),
        "num_parameters": tokenizer.num_parameters(),
        "videos": {"train": train_pool.videos, "held_out": val_pool.videos, "skipped": skipped},
        "config": {"model": to_dict(model_cfg), "train": to_dict(train_cfg), "data": to_dict(data_cfg)},
        "machine": machine_info(device),
    }

    def write(folder: Path) -> None:
        tokenizer.save_pretrained(folder)
        atomic_write_json(folder / REPORT_FILE, report)

    write_folder(out_dir, replace, write)
    # Only now: a kill before this point leaves the checkpoints to resume from.
    shutil.rmtree(Path(out_dir) / CHECKPOINT_FOLDER, ignore_errors=True)
    log(
        f"held-out ({held_out['num_frames']} frames, {val_source}): PSNR {held_out['psnr_db']:.2f} dB, "
        f"perplexity {held_out['perplexity']:.1f}, codes used {held_out['codes_used']}/{tokenizer.codebook_size} "
        f"({100 * held_out['codes_used_fraction']:.1f}%); trained {result.steps_done} steps in {result.train_seconds:.0f} s"
    )
    log(f"saved {tokenizer.tokenizer_id} to {out_dir} (report: {REPORT_FILE})")
    return report

