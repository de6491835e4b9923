"""The interface every frame tokenizer offers, and loading one from a folder.

A tokenizer folder holds `tokenizer.json` (with "kind": "dalle" or "vqvae", and the
architecture) plus `model.safetensors`. `load_tokenizer(folder)` reads the kind and builds the
matching class; `tokenizer_id` (a hash of config and weights) is what a token store records, so
a store made with one tokenizer is never read as if made with another.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vimpac.io import output_folder_problem, parse_json


class TokenizerError(ValueError):
    """A tokenizer folder or file is missing, malformed or unsafe; the message names it."""


class FrameTokenizer(ABC):
    """Encodes RGB frames to a grid of code ids and decodes ids back to frames.

    Frames are uint8 (N, H, W, 3) arrays or tensors with H and W divisible by `downsample`;
    ids are int64 tensors (N, H / downsample, W / downsample) in [0, codebook_size).
    """

    kind: str
    codebook_size: int
    downsample: int = 8

    @abstractmethod
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Code ids (N, h, w) -> uint8 frames (N, h * downsample, w * downsample, 3)."""

    @abstractmethod
    def save_pretrained(self, folder: str | Path) -> None: ...

    @property
    @abstractmethod
    def tokenizer_id(self) -> str:
        """A short stable hash of the config and weights; stores record it."""


FOLDER_CONTENTS = ("a tokenizer folder holds tokenizer.json (with \"kind\": \"dalle\" or \"vqvae\") and "
                   "model.safetensors (see `vimpac train-tokenizer` and `vimpac convert-dalle`)")


def load_tokenizer(folder: str | Path, device: str | torch.device = "cpu") -> FrameTokenizer:
    """Build the tokenizer saved in `folder`; raises `TokenizerError` naming the path for a bad one."""
    folder = Path(folder)
    if folder.is_file():
        # A common slip: pointing at the weights or the config instead of their folder.
        hint = f"; did you mean {folder.parent}?" if folder.name in ("tokenizer.json", "model.safetensors") else ""
        raise TokenizerError(f"{folder}: is a file, expected a tokenizer folder; {FOLDER_CONTENTS}{hint}")
    if not folder.is_dir():
        raise TokenizerError(f"{folder}: no such tokenizer folder; {FOLDER_CONTENTS}")
    config_path = folder / "tokenizer.json"
    try:
        config = parse_json(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{config_path}: not found; {FOLDER_CONTENTS}") from None
    except ValueError as exc:  # not JSON, not UTF-8, nested too deeply
        raise TokenizerError(f"{config_path}: not valid JSON: {exc}") from None
    except OSError as exc:  # a folder named tokenizer.json, no permission to read it, ...
        raise TokenizerError(f"{config_path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(config, dict):
        raise TokenizerError(f"{config_path}: expected a JSON object with \"kind\": \"dalle\" or \"vqvae\", "
                             f"got a JSON {type(config).__name__}; {FOLDER_CONTENTS}")
    kind = config.get("kind")
    if kind == "dalle":
        from vimpac.tokenizer.dalle import DalleTokenizer

        return DalleTokenizer.from_pretrained(folder, device=device)
    if kind == "vqvae":
        from vimpac.tokenizer.vqvae import VQVAETokenizer

        return VQVAETokenizer.from_pretrained(folder, device=device)
    raise TokenizerError(f"{config_path}: unknown tokenizer kind {kind!r}; expected 'dalle' or 'vqvae'")


def check_output_folder(out_dir: str | Path, overwrite: bool, ignore: Sequence[str] = ()) -> bool:
    """Check, before any work, that a tokenizer can be written to `out_dir` (see
    `io.output_folder_problem`). True when it holds a tokenizer that `overwrite` allows
    replacing (write with `io.write_folder(..., replace=True)`), False when it is new or empty."""
    problem = output_folder_problem(out_dir, "tokenizer.json", "tokenizer", overwrite, ignore)
    if problem:
        raise TokenizerError(problem)
    return (Path(out_dir) / "tokenizer.json").exists()
