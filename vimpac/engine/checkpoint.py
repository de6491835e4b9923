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
falls back to the newest complete folder. A checkpoint folder that is a symbolic link is a
CheckpointError too: resuming would read files from wherever it points. `state.json` is checked field by field (types, the RNG
states, the optimizer structure against the optimizer, the scheduler against the scheduler), and
the tensor files from their safetensors headers (names, shapes and dtypes against the model and
the optimizer, the CPU and CUDA generator states), before any tensor is loaded, so a bad file is a
CheckpointError naming it and the field, and nothing is restored by half.
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
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from vimpac.io import atomic_write_text, current_umask, fsync_dir, parse_json, writer_os_error
from vimpac.weight_shapes import fit_problems, listed, read_meta_tensors, tied_names

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
        fsync_dir(tmp)  # the files' names: fsyncing a file does not make its folder entry durable
        if final.is_symlink():
            final.unlink()  # the link only: rmtree refuses one, and what it points to is not this run's
        elif final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(ckpt_root)  # the rename, before `latest` names it: a power loss must not keep a pointer to nothing
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failed_write = writer_os_error(exc, final)
        if failed_write is not None:
            raise failed_write from exc
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
    An unusable `latest`, or a checkpoint folder that is a symbolic link, is a CheckpointError
    (see the module docstring)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    pointer = ckpt_root / "latest"
    links = sorted(p for p in ckpt_root.glob(f"{CHECKPOINT_PREFIX}*") if CHECKPOINT_NAME.fullmatch(p.name)
                   and p.is_symlink())
    if links:
        raise CheckpointError(f"{links[0]}: a symbolic link (to {os.readlink(links[0])}); checkpoint folders must be "
                              f"real folders in {ckpt_root}: resuming would read files from elsewhere, and the run's "
                              "checkpoints would be pruned and replaced around it. Replace it with a copy of the "
                              "folder, or remove it")
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
    # Never a symbolic link: pruning would count it as one of the checkpoints it keeps, and
    # resuming read from wherever it points (latest_checkpoint refuses a run holding one).
    folders = [p for p in ckpt_root.glob(f"{CHECKPOINT_PREFIX}*")
               if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
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


# Checks of state.json fields: (accepts(value), what is expected).
FieldCheck = tuple[Callable[[Any], bool], str]


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_positive_int(value: Any) -> bool:
    return is_count(value) and value >= 1


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_number_map(value: Any) -> bool:
    return isinstance(value, dict) and all(is_number(v) for v in value.values())


COUNT: FieldCheck = (is_count, "an integer >= 0")
POSITIVE_INT: FieldCheck = (is_positive_int, "an integer >= 1")
NUMBER: FieldCheck = (is_number, "a number")
OBJECT: FieldCheck = (lambda value: isinstance(value, dict), "a JSON object")


def or_null(check: FieldCheck) -> FieldCheck:
    accepts, expected = check
    return (lambda value: value is None or accepts(value), f"{expected} or null")


def _valid_python_rng(value: Any) -> bool:
    try:
        random.Random().setstate(_python_rng_tuple(value))  # a throwaway generator: what setstate accepts
    except (TypeError, ValueError, OverflowError, IndexError):
        return False
    return True


def _valid_numpy_rng(value: Any) -> bool:
    try:
        name, keys, pos, has_gauss, cached = _numpy_rng_tuple(value)
        if not (name == "MT19937" and keys.shape == (624,) and is_count(pos) and pos <= 624
                and has_gauss in (0, 1) and is_number(cached)):
            return False
        np.random.RandomState().set_state((name, keys, pos, has_gauss, cached))  # a throwaway generator
    except (TypeError, ValueError, OverflowError, IndexError):
        return False
    return True


def _valid_optimizer_structure(value: Any) -> bool:
    """The shape of what _flatten_optimizer writes; whether it fits the optimizer is checked by
    _optimizer_mismatch once that is known."""
    if not isinstance(value, dict) or not isinstance(value.get("param_groups"), list) \
            or not isinstance(value.get("state"), dict):
        return False
    groups = value["param_groups"]
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) and all(is_count(i) for i in g["params"])
               for g in groups):
        return False
    ids = [i for g in groups for i in g["params"]]
    unique_ids = set(ids)
    if len(unique_ids) != len(ids):
        return False
    return all(key.isdigit() and int(key) in unique_ids and isinstance(entry, dict) and all(
        isinstance(spec, dict) and (spec.keys() == {"tensor"} and isinstance(spec["tensor"], str)
                                    or spec.keys() == {"value"} and not isinstance(spec["value"], (dict, list)))
        for spec in entry.values()) for key, entry in value["state"].items())


# The fields save_checkpoint writes, and what each must be.
_SAVED_FIELDS: dict[str, FieldCheck] = {
    "step": COUNT,
    "scheduler": or_null(OBJECT),
    "optimizer": (_valid_optimizer_structure, "the optimizer structure a checkpoint records "
                  "({\"param_groups\": [...], \"state\": {...}}, each parameter listed once)"),
    "python_rng": (_valid_python_rng, "a Python random state [3, [625 integers], gauss]"),
    "numpy_rng": (_valid_numpy_rng, "a numpy random state [\"MT19937\", [624 integers < 2**32], pos <= 624, "
                                    "has_gauss 0 or 1, cached number]"),
}


def read_state_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in checkpoint `path`'s state.json, its fields unchecked (to tell which kind
    of run wrote it); read_checkpoint_state is the one to restore from."""
    path = Path(path)
    try:
        state = parse_json(_read_regular_file(path / "state.json"))
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8, nested too deeply
        raise CheckpointError(f"{path}: cannot read state.json: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / 'state.json'}: expected a JSON object, got {type(state).__name__}")
    return state


def read_checkpoint_state(path: str | Path, fields: Mapping[str, FieldCheck] | None = None,
                          optional: Collection[str] = ()) -> dict[str, Any]:
    """The JSON state of checkpoint `path` (step, counters, the run's settings), without
    touching any model: callers check it fits the run before loading weights.

    Every field save_checkpoint writes is checked, and so are the caller's `fields` (name ->
    check); those named in `optional` may be missing (checkpoints from before they were
    written). A field that is missing or not as expected is a CheckpointError naming the file
    and the field."""
    state_file = Path(path) / "state.json"
    state = read_state_json(path)
    for name, (accepts, expected) in {**_SAVED_FIELDS, **(fields or {})}.items():
        if name not in state:
            if name in optional:
                continue
            raise CheckpointError(f"{state_file}: field {name!r} is missing; expected {expected}")
        if not accepts(state[name]):
            raise CheckpointError(f"{state_file}: field {name!r} must be {expected}, got {_short(state[name])}")
    return state


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    state_file = path / "state.json"
    # Everything that can be checked is, before the first thing is restored; the tensor files
    # from their headers, before any of them is loaded.
    optimizer_file, rng_file, model_file = (path / name for name in
                                            ("optimizer.safetensors", "rng.safetensors", "model.safetensors"))
    if optimizer is not None:
        stored = _header_tensors(optimizer_file, "cannot load into the optimizer")
        if problem := _optimizer_mismatch(state["optimizer"], stored, optimizer):
            raise CheckpointError(f"{state_file}: field {problem}; the checkpoint does not fit this run's optimizer")
        named = {spec["tensor"] for entry in state["optimizer"]["state"].values() for spec in entry.values()
                 if "tensor" in spec}
        if unnamed := sorted(set(stored) - named):
            raise CheckpointError(f"{optimizer_file}: holds tensors {state_file} does not name: {unnamed[:5]}"
                                  + (f" (+{len(unnamed) - 5} more)" if len(unnamed) > 5 else ""))
    scheduler_state = None
    if scheduler is not None and state["scheduler"] is not None:
        current = scheduler.state_dict()
        # Only the scheduler's own keys: load_state_dict sets every key given as an attribute.
        scheduler_state = {k: v for k, v in state["scheduler"].items() if k in current}
        if problem := _structure_mismatch(scheduler_state, current, "scheduler"):
            raise CheckpointError(f"{state_file}: field {problem}; the checkpoint does not fit this run's "
                                  "learning-rate schedule")
    if restore_rng and (problem := rng_state_problem(_header_tensors(rng_file))):
        raise CheckpointError(f"{rng_file}: {problem}")
    if problems := _model_file_problems(unwrap(model), _header_tensors(model_file, "cannot load into the model")):
        raise CheckpointError(f"{model_file}: does not fit the model: " + "; ".join(problems))
    optimizer_state = rng = None
    if optimizer is not None:
        try:
            optimizer_state = _unflatten_optimizer(load_file(str(optimizer_file)), state["optimizer"])
        except Exception as exc:  # safetensors raises several types for bad files
            raise CheckpointError(f"{optimizer_file}: cannot load into the optimizer: {exc}") from exc
    if restore_rng:
        try:
            rng = load_file(str(rng_file))
        except Exception as exc:
            raise CheckpointError(f"{rng_file}: cannot read: {exc}") from exc
        try:
            torch.Generator().set_state(rng["cpu"])  # a throwaway generator: is it a CPU generator state?
        except (RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{rng_file}: expected the CPU generator state 'cpu' "
                                  f"({torch.get_rng_state().numel()} bytes): {exc}") from None
    try:  # strict: the header check above already refused what strict loading would
        load_model(unwrap(model), str(model_file))
    except Exception as exc:  # safetensors raises several types for bad files
        raise CheckpointError(f"{model_file}: cannot load into the model: {exc}") from exc
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except Exception as exc:  # a checkpoint of another optimizer / model
            raise CheckpointError(f"{optimizer_file}: cannot load into the optimizer: {exc}") from exc
    if scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    if rng is not None:
        _restore_torch_rng(rng)
        random.setstate(_python_rng_tuple(state["python_rng"]))
        np.random.set_state(_numpy_rng_tuple(state["numpy_rng"]))
    return state


def _model_file_problems(model: nn.Module, stored: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps the tensors of model.safetensors (`stored`: meta tensors from its header) from
    loading into `model` as safetensors' strict `load_model` loads them: every tensor of the
    model under its name, a tied one (one tensor under several names, stored once by
    `save_model`) under any one of its names but not under two."""
    own = model.state_dict(keep_vars=True)
    stored_as_well, optional = [], set()
    for names in tied_names(own):
        present = [name for name in names if name in stored]
        if present:  # the first name found loads the tensor; the others must not be there too
            optional.update(name for name in names if name != present[0])
            stored_as_well += present[1:]
    problems = fit_problems(own, {k: v for k, v in stored.items() if k not in stored_as_well}, optional)
    if stored_as_well:
        problems.append(f"stored twice [{listed(sorted(stored_as_well))}] (one tensor of the model, tied "
                        "weights, under another name too)")
    return problems


def _optimizer_mismatch(structure: dict, tensors: Mapping[str, torch.Tensor],
                        optimizer: torch.optim.Optimizer) -> str | None:
    """What keeps the saved optimizer `structure` (checked by _valid_optimizer_structure) and its
    `tensors` from fitting `optimizer`: torch's load_state_dict checks only the group sizes and
    would take a moment estimate of another shape, or a learning rate that is text, and fail at
    the next step."""
    saved_groups, groups = structure["param_groups"], optimizer.param_groups
    if len(saved_groups) != len(groups):
        return f"'optimizer.param_groups' lists {len(saved_groups)} parameter group(s), the optimizer has {len(groups)}"
    for i, (saved, group) in enumerate(zip(saved_groups, groups)):
        if len(saved["params"]) != len(group["params"]):
            return (f"'optimizer.param_groups[{i}].params' lists {len(saved['params'])} parameters, the "
                    f"optimizer's group {len(group['params'])}")
        # Keys of one side only come from another torch version: torch fills in missing ones.
        common = {k: v for k, v in group.items() if k != "params" and k in saved}
        if problem := _structure_mismatch({k: saved[k] for k in common}, common, f"optimizer.param_groups[{i}]"):
            return problem
    params = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                      chain.from_iterable(g["params"] for g in groups)))
    for key, entry in structure["state"].items():
        for name, spec in entry.items():
            if "tensor" not in spec:
                continue
            where = f"'optimizer.state.{key}.{name}'"
            tensor = tensors.get(spec["tensor"])
            if tensor is None:
                return f"{where} names tensor {spec['tensor']!r}, which optimizer.safetensors lacks"
            param = params[int(key)]
            # Scalars (Adam's step) or per-element statistics of the parameter (moments, momentum).
            if tensor.ndim != 0 and (tensor.shape != param.shape or not tensor.is_floating_point()):
                return (f"{where} is a {tensor.dtype} tensor of shape {tuple(tensor.shape)}, its parameter "
                        f"a float tensor of shape {tuple(param.shape)}")
    return None


def _structure_mismatch(saved: Any, current: Any, where: str) -> str | None:
    """Where `saved` (read from JSON) is not of the kind `current` (the object's own
    state_dict) is: a number for a number, a bool for a bool, a list of the same length, a
    dict with the same keys; None in `current` admits null or a plain value."""
    if isinstance(current, bool):
        ok, kind = isinstance(saved, bool), "true or false"
    elif isinstance(current, (int, float)):
        ok, kind = is_number(saved), "a number"
    elif isinstance(current, str):
        ok, kind = isinstance(saved, str), "a string"
    elif isinstance(current, (list, tuple)):
        if not isinstance(saved, list) or len(saved) != len(current):
            return f"{where!r} must be a list of {len(current)}, got {_short(saved)}"
        return next((p for i, (s, c) in enumerate(zip(saved, current))
                     if (p := _structure_mismatch(s, c, f"{where}[{i}]"))), None)
    elif isinstance(current, dict):
        if not isinstance(saved, dict) or set(saved) != {str(k) for k in current}:
            return f"{where!r} must be an object with the keys {sorted(map(str, current))}, got {_short(saved)}"
        return next((p for k, c in current.items() if (p := _structure_mismatch(saved[str(k)], c, f"{where}.{k}"))),
                    None)
    else:
        ok, kind = saved is None or isinstance(saved, (bool, int, float, str)), "null or a plain value"
    return None if ok else f"{where!r} must be {kind}, got {_short(saved)}"


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


# torch.cuda.get_rng_state(): the Philox seed and offset, 8 bytes each.
CUDA_RNG_STATE_BYTES = 16


def rng_state_problem(states: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps `states` (rng.safetensors' tensors, or their meta tensors from its header) from
    being what save_checkpoint writes: 'cpu', torch.get_rng_state()'s bytes, and one state per
    GPU 'cuda0' ... 'cudaN-1', CUDA_RNG_STATE_BYTES uint8 each (torch.cuda.set_rng_state would
    fail deep inside on others). None when they are."""
    def problem(name: str, size: int) -> str | None:
        tensor = states[name]
        if tensor.dtype != torch.uint8 or tuple(tensor.shape) != (size,):
            return (f"field {name!r} must be a generator state of {size} bytes (uint8), got "
                    f"{tensor.dtype} of shape {tuple(tensor.shape)}")
        return None

    cpu_size = torch.get_rng_state().numel()
    if "cpu" not in states:
        return f"expected the CPU generator state 'cpu' ({cpu_size} bytes); the file holds {sorted(states)[:5]}"
    cuda = {name for name in states if name != "cpu"}
    expected = {f"cuda{i}" for i in range(len(cuda))}
    if cuda != expected:
        return (f"unexpected tensors {sorted(cuda - expected)[:5]}; expected 'cpu' and one CUDA generator state "
                f"per GPU, 'cuda0' to 'cuda{len(cuda) - 1}'")
    return problem("cpu", cpu_size) or next(
        (p for i in range(len(cuda)) if (p := problem(f"cuda{i}", CUDA_RNG_STATE_BYTES))), None)


def _restore_torch_rng(states: dict[str, torch.Tensor]) -> None:
    """Restore the states rng_state_problem accepted. CUDA states are restored only on as many
    GPUs as they were saved from: on another machine the per-GPU states have no counterpart
    (and the trainer re-seeds torch at every step from derive_seed)."""
    torch.set_rng_state(states["cpu"])
    cuda = [states[f"cuda{i}"] for i in range(len(states) - 1)]  # by number: "cuda10" sorts before "cuda2"
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _header_tensors(file: Path, failure: str = "cannot read") -> dict[str, torch.Tensor]:
    """The tensors of the safetensors `file` as meta tensors (dtype and shape, no data) read from
    its header, to be checked before the file is loaded; errors are a CheckpointError naming it
    ("FILE: `failure`: why")."""
    try:
        return read_meta_tensors(file)
    except Exception as exc:  # safetensors raises several types for bad files
        raise CheckpointError(f"{file}: {failure}: {exc}") from exc


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _python_rng_tuple(saved: list) -> tuple:
    """random.setstate's argument from the JSON list _python_rng_state wrote."""
    if not isinstance(saved, list):
        raise TypeError("expected a list")
    version, internal, gauss = saved
    if not isinstance(internal, list) or not (gauss is None or is_number(gauss)):
        raise TypeError("expected [version, [integers], gauss]")
    return (version, tuple(internal), gauss)


def _numpy_rng_tuple(saved: list) -> tuple:
    """np.random.set_state's argument from the JSON list _numpy_rng_state wrote."""
    if not isinstance(saved, list):
        raise TypeError("expected a list")
    name, keys, pos, has_gauss, cached = saved
    if not isinstance(keys, list) or not all(is_count(k) for k in keys):
        raise TypeError("expected a list of integers")
    return (name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)


def _numpy_rng_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _prune(ckpt_root: Path, keep: int) -> None:
    # Only folders named as this module names them: never a user's step-00000100.backup.
    complete = _checkpoint_folders(ckpt_root)
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
