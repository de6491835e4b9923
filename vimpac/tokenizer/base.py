"""The interface every frame tokenizer offers, and loading one from a folder.

A tokenizer folder holds `tokenizer.json` (with "kind": "dalle" or "vqvae", and the
architecture) plus `model.safetensors`. `load_tokenizer(folder)` reads the kind and builds the
matching class; `tokenizer_id` (a hash of config and weights) is what a token store records, so
a store made with one tokenizer is never read as if made with another.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch


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


def load_tokenizer(folder: str | Path, device: str | torch.device = "cpu") -> FrameTokenizer:
    folder = Path(folder)
    config_path = folder / "tokenizer.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise TokenizerError(f"{config_path}: not found; a tokenizer folder needs tokenizer.json "
                             "and model.safetensors (see `vimpac train-tokenizer` and `vimpac convert-dalle`)") from None
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{config_path}: not valid JSON: {exc}") from None
    kind = config.get("kind")
    if kind == "dalle":
        from vimpac.tokenizer.dalle import DalleTokenizer

        return DalleTokenizer.from_pretrained(folder, device=device)
    if kind == "vqvae":
        from vimpac.tokenizer.vqvae import VQVAETokenizer

        return VQVAETokenizer.from_pretrained(folder, device=device)
    raise TokenizerError(f"{config_path}: unknown tokenizer kind {kind!r}; expected 'dalle' or 'vqvae'")
