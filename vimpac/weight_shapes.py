"""The sizes a folder's JSON config declares, checked against the tensors of its safetensors file
before a network is built from that config.

The config comes from the same untrusted folder as the weights: built first, a config claiming a
width of 10**8 or 10**6 blocks would allocate terabytes, or create modules for hours, before the
weights were found not to fit. Once the sizes that decide a network's memory equal the shapes of
tensors really in the file (whose size bounds theirs), building it is safe. Used by model folders
(`vimpac.model.pretrained`) and VQ-VAE tokenizer folders (`vimpac.tokenizer.vqvae`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping

Shape = tuple[int, ...]


def read_shapes(path: str | Path) -> dict[str, Shape]:
    """name -> shape of every tensor in the safetensors file `path`, from its header alone (no
    tensor data is read). Raises what safetensors raises for a file that is not one
    (`SafetensorError`) and `OSError`."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def shape_problems(expected: Mapping[str, Shape], shapes: Mapping[str, Shape]) -> list[str]:
    """One line per tensor of `expected` (name -> the shape the config implies) that the file's
    `shapes` lack or hold with another shape."""
    return [f"{key}: config implies {tuple(shape)}, file has {tuple(shapes[key]) if key in shapes else 'none'}"
            for key, shape in expected.items() if key not in shapes or tuple(shapes[key]) != tuple(shape)]


def numbered_blocks(keys: Iterable[str], prefix: str) -> set[str]:
    """The block numbers N of the keys `prefix` + 'N.' + ... (how many layers / blocks a file holds)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return {m.group(1) for key in keys if (m := pattern.match(key))}


def summarize(problems: list[str], limit: int = 4) -> str:
    """The first `limit` problems joined, and how many more there are."""
    return "; ".join(problems[:limit]) + (f" (+{len(problems) - limit} more)" if len(problems) > limit else "")
