"""Training checkpoints as safetensors + JSON, written atomically, loaded without pickle.

Layout of a run folder:

    RUN/checkpoints/step-00000100/model.safetensors      weights (tied weights stored once)
                                 /optimizer.safetensors  optimizer tensors, flattened
                                 /rng.safetensors        torch CPU / CUDA generator states
                                 /state.json             step, data position, scheduler,
                                                         optimizer structure, python / numpy RNG,
                                                         counters, the run's config
    RUN/checkpoints/latest                                name of the newest complete checkpoint

A checkpoint folder is assembled under a temporary name and renamed into place, and `latest`
is replaced atomically afterwards, so a kill at any moment leaves the previous checkpoint
usable.

Reading is as careful as writing, because a run folder may come from elsewhere: `latest` must be a
regular file holding a folder name of the form the writer uses (step-NNNNNNNN), which can only
name a folder inside RUN/checkpoints. Anything else (`..`, an absolute path, a FIFO, a folder)
is a CheckpointError naming the file, and it says which complete checkpoint folders there are:
a damaged pointer is not silently replaced by a guess; deleting it resumes from the newest
complete folder. A well-formed name whose folder is gone or incomplete (deleted by hand, say)
falls back to the newest complete folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from vimpac.io import atomic_write_text, current_umask, parse_json

CHECKPOINT_PREFIX = "step-"
# The names save_checkpoint gives checkpoint folders (more digits from step 10**8 on).
CHECKPOINT_NAME = re.compile(re.escape(CHECKPOINT_PREFIX) + r"\d{8,}")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the model / optimizer."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write checkpoint `step` (rank 0 only) and prune all but the newest `keep_last`."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"{CHECKPOINT_PREFIX}{step:08d}"
    final = ckpt_root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=ckpt_root))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it owner-only; a run folder is shared like any other
        save_model(unwrap(model), str(tmp / "model.safetensors"))
        opt_tensors, opt_structure = _flatten_optimizer(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(_torch_rng_tensors(), str(tmp / "rng.safetensors"))
        full_state = {
            **state,
            "step": step,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "optimizer": opt_structure,
            "python_rng": _python_rng_state(),
            "numpy_rng": _numpy_rng_state(),
        }
        (tmp / "state.json").write_text(json.dumps(full_state, indent=1))
        for path in tmp.iterdir():
            os.chmod(path, 0o666 & ~current_umask())  # safetensors writes owner-only files
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(ckpt_root / "latest", name + "\n")
    _prune(ckpt_root, keep=max(1, keep_last))
    return final


def check_run_folder(run_dir: str | Path, resume: bool, *, other_kind: str, other_record: str,
                     announce: bool = True) -> None:
    """Before a run writes into `run_dir`: refuse a folder holding a run of `other_kind` (marked by
    its `other_record` file) or checkpoints of an earlier run without `resume`. With `resume` and
    no checkpoint yet, say (when `announce`, i.e. on one rank) that the run starts anew: not an
    error, so that a job script can always pass --resume (e.g. a requeued cluster job)."""
    run_dir = Path(run_dir)
    if (run_dir / other_record).exists():
        raise CheckpointError(f"{run_dir}: holds a {other_kind} run ({other_record}); choose another --out")
    has_checkpoint = latest_checkpoint(run_dir) is not None
    if has_checkpoint and not resume:
        raise CheckpointError(f"{run_dir}: holds checkpoints of an earlier run; pass --resume to continue it "
                              "or choose another --out")
    if resume and not has_checkpoint and announce:
        print(f"--resume: no checkpoint in {run_dir} yet; starting a new run", file=sys.stderr)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a resume continues from: the one `latest` names, or the newest complete
    folder when `latest` is missing or names a folder that is gone; None when there is none.
    An unusable `latest` is a CheckpointError (see the module docstring)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    pointer = ckpt_root / "latest"
    complete = _complete_checkpoints(ckpt_root)
    if os.path.lexists(pointer):
        try:
            name = _read_regular_file(pointer, limit=64).decode("utf-8", errors="replace").strip()
        except OSError as exc:
            name, problem = None, f"cannot read it: {exc.strerror or exc}"
        except CheckpointError:
            name, problem = None, "not a regular file"
        else:
            problem = f"expected a checkpoint folder name ({CHECKPOINT_PREFIX}NNNNNNNN), got {name[:40]!r}"
        if name is None or not CHECKPOINT_NAME.fullmatch(name):
            found = (f"the newest complete checkpoint is {complete[-1]}; delete {pointer} to resume from it"
                     if complete else f"{ckpt_root} holds no complete checkpoint")
            raise CheckpointError(f"{pointer}: {problem}; {found}")
        if (ckpt_root / name) in complete:
            return ckpt_root / name
    return complete[-1] if complete else None


def _complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """The checkpoint folders of `ckpt_root` named as save_checkpoint names them and holding a
    state.json (written last), oldest first."""
    return sorted((p for p in _checkpoint_folders(ckpt_root) if (p / "state.json").is_file()), key=_folder_step)


def _checkpoint_folders(ckpt_root: Path) -> list[Path]:
    folders = [p for p in ckpt_root.glob(f"{CHECKPOINT_PREFIX}*") if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(folders, key=_folder_step)


def _folder_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):])


def _read_regular_file(path: Path, limit: int = -1) -> bytes:
    """The bytes of `path` (at most `limit`). Anything but a regular file is a CheckpointError:
    reading a FIFO would block for ever, a device would not end. Opened non-blocking so that
    even the open of a FIFO returns."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{path}: not a regular file")
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        return file.read(limit)


def read_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """The JSON state of checkpoint `path` (step, counters, the run's settings), without
    touching any model: callers check it fits the run before loading weights."""
    path = Path(path)
    try:
        state = parse_json(_read_regular_file(path / "state.json"))
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8, nested too deeply
        raise CheckpointError(f"{path}: cannot read state.json: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / 'state.json'}: expected a JSON object, got {type(state).__name__}")
    return state


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore model / optimizer / scheduler / RNG from `path`; returns the JSON state."""
    path = Path(path)
    state = read_checkpoint_state(path)
    try:
        missing, unexpected = load_model(unwrap(model), str(path / "model.safetensors"), strict=False)
    except Exception as exc:  # safetensors raises several types for bad files
        raise CheckpointError(f"{path / 'model.safetensors'}: cannot load into the model: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{path / 'model.safetensors'}: does not fit the model "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    if optimizer is not None:
        try:
            tensors = load_file(str(path / "optimizer.safetensors"))
            optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
        except Exception as exc:  # a damaged file, or a checkpoint of another optimizer / model
            raise CheckpointError(f"{path / 'optimizer.safetensors'}: cannot load into the optimizer: {exc}") from exc
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        try:
            rng = load_file(str(path / "rng.safetensors"))
        except Exception as exc:
            raise CheckpointError(f"{path / 'rng.safetensors'}: cannot read: {exc}") from exc
        _restore_torch_rng(rng)
        random.setstate(_tuple_state(state["python_rng"]))
        np.random.set_state(tuple(state["numpy_rng"][:1]) + (np.array(state["numpy_rng"][1], dtype=np.uint32),)
                            + tuple(state["numpy_rng"][2:]))
    return state


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    structure: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for param_id, param_state in sd["state"].items():
        entry = {}
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}.{key}"] = value.detach().contiguous().clone()
                entry[key] = {"tensor": f"{param_id}.{key}"}
            else:
                entry[key] = {"value": value}
        structure["state"][str(param_id)] = entry
    return tensors, structure


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    state = {}
    for param_id, entry in structure["state"].items():
        state[int(param_id)] = {
            key: tensors[spec["tensor"]] if "tensor" in spec else spec["value"] for key, spec in entry.items()
        }
    return {"state": state, "param_groups": structure["param_groups"]}


def _torch_rng_tensors() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda{i}"] = s
    return states


def _restore_torch_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(k for k in states if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _tuple_state(saved: list) -> tuple:
    return (saved[0], tuple(saved[1]), saved[2])


def _numpy_rng_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _prune(ckpt_root: Path, keep: int) -> None:
    # Only folders named as this module names them: never a user's step-00000100.backup.
    complete = _checkpoint_folders(ckpt_root)
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
