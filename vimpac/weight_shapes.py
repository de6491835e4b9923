"""The sizes a folder's JSON config declares, checked against the tensors of its safetensors file
before a network is built from that config.

The config comes from the same untrusted folder as the weights: built first, a config claiming a
width of 10**8 or 10**6 blocks would allocate terabytes, or create modules for hours, before the
weights were found not to fit. Once the sizes that decide a network's memory equal the shapes of
tensors really in the file (whose size bounds theirs), building it is safe. The shapes come from
the file's header, before any tensor is loaded: a file whose tensors do not fit is refused without
reading gigabytes of them (`fit_problems` compares a header's names, shapes and dtypes with a
model's state dict). Used by model folders (`vimpac.model.pretrained`), tokenizer folders
(`vimpac.tokenizer.vqvae`, `vimpac.tokenizer.dalle`) and training checkpoints
(`vimpac.engine.checkpoint`).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterable, Mapping, TypeVar

if TYPE_CHECKING:
    import torch

Shape = tuple[int, ...]
T = TypeVar("T")


def read_shapes(path: str | Path) -> dict[str, Shape]:
    """name -> shape of every tensor in the safetensors file `path`, from its header alone (no
    tensor data is read). Raises what safetensors raises for a file that is not one
    (`SafetensorError`) and `OSError` (also for a FIFO or device: opening one would block)."""
    from safetensors import safe_open

    require_regular_file(path)
    with safe_open(str(path), "pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def read_meta_tensors(path: str | Path) -> dict[str, "torch.Tensor"]:
    """name -> a tensor on the meta device with the dtype and shape stored in the safetensors file
    `path`: read from its header alone, taking no memory, so that the tensors can be checked
    against a model before `load_file` allocates them all. Raises as `read_shapes`, and
    `ValueError` for a dtype torch lacks."""
    import torch
    from safetensors import safe_open

    require_regular_file(path)
    tensors = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            part = f.get_slice(key)
            dtype = getattr(torch, _TORCH_DTYPES.get(part.get_dtype(), ""), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"tensor {key!r} has dtype {part.get_dtype()}, which this torch cannot hold")
            tensors[key] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
    return tensors


# safetensors' dtype names -> torch's (as safetensors.torch maps them).
_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "U16": "uint16",
                 "U32": "uint32", "U64": "uint64", "C64": "complex64", "F8_E4M3": "float8_e4m3fn",
                 "F8_E5M2": "float8_e5m2"}


def require_regular_file(path: str | Path) -> None:
    """`OSError` unless `path` is a regular file (after symbolic links): safetensors opens a FIFO
    with a blocking open(), which waits for a writer for ever."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file")


def read_safetensors(path: Path, read: Callable[[str], T], error: type[Exception], missing: str = "not found") -> T:
    """`read(str(path))` (e.g. `read_shapes`, `read_meta_tensors` or safetensors' `load_file`) of a
    regular file; a missing or unreadable file is an `error` naming `path` (`missing` says what
    to do about a missing one)."""
    from safetensors import SafetensorError

    try:
        require_regular_file(path)
        return read(str(path))
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{path}: not a readable safetensors file: {exc}") from None


def shape_problems(expected: Mapping[str, Shape], shapes: Mapping[str, Shape]) -> list[str]:
    """One line per tensor of `expected` (name -> the shape the config implies) that the file's
    `shapes` lack or hold with another shape."""
    return [f"{key}: config implies {tuple(shape)}, file has {tuple(shapes[key]) if key in shapes else 'none'}"
            for key, shape in expected.items() if key not in shapes or tuple(shapes[key]) != tuple(shape)]


def tied_names(state: Mapping[str, "torch.Tensor"]) -> list[list[str]]:
    """The names of each tensor that a state dict (`state_dict(keep_vars=True)`) holds under several
    names (tied weights, e.g. an output layer sharing the embedding table), in state-dict order.
    A safetensors file stores such a tensor once, under one of them."""
    names_of: dict[int, list[str]] = {}
    for name, value in state.items():
        names_of.setdefault(id(value), []).append(name)
    return [names for names in names_of.values() if len(names) > 1]


def fit_problems(own: Mapping[str, "torch.Tensor"], stored: Mapping[str, "torch.Tensor"],
                 optional: Collection[str] = ()) -> list[str]:
    """What keeps the tensors `stored` (meta tensors from a file's header: read_meta_tensors) from
    loading strictly into a module whose state dict is `own`, one entry per kind of problem:
    names the module does not have, names it has that the file lacks (except `optional`: tied
    weights stored under another name), other shapes, and a floating-point tensor where the
    module holds an integer one or the reverse (load_state_dict would convert it silently).
    Empty when they fit."""
    common = [key for key in own if key in stored]
    kinds = (
        ("unexpected", sorted(set(stored) - set(own))),
        ("missing", sorted(set(own) - set(stored) - set(optional))),
        ("shape mismatch", [f"{k}: file {tuple(stored[k].shape)} vs model {tuple(own[k].shape)}"
                            for k in common if tuple(stored[k].shape) != tuple(own[k].shape)]),
        ("dtype mismatch", [f"{k}: file {stored[k].dtype} vs model {own[k].dtype}"
                            for k in common if stored[k].is_floating_point() != own[k].is_floating_point()]),
    )
    return [f"{kind} [{listed(items)}]" for kind, items in kinds if items]


def listed(items: list[str], limit: int = 8) -> str:
    """The first `limit` items, comma-separated, and how many more there are."""
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def numbered_blocks(keys: Iterable[str], prefix: str) -> set[str]:
    """The block numbers N of the keys `prefix` + 'N.' + ... (how many layers / blocks a file holds)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return {m.group(1) for key in keys if (m := pattern.match(key))}


def summarize(problems: list[str], limit: int = 4) -> str:
    """The first `limit` problems joined, and how many more there are."""
    return "; ".join(problems[:limit]) + (f" (+{len(problems) - limit} more)" if len(problems) > limit else "")
