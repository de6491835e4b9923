"""Frame tokenizers: DALL-E's dVAE (weight-compatible) and our own trainable VQ-VAE."""

import importlib
from typing import Any

_EXPORTS = {
    "FrameTokenizer": "base",
    "TokenizerError": "base",
    "load_tokenizer": "base",
    "DalleTokenizer": "dalle",
    "load_official_pickles": "dalle",
    "convert_official_pickles": "dalle",
    "VQVAEConfig": "vqvae",
    "VQVAETokenizer": "vqvae",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Resolved on first use (PEP 562): the submodules import torch, `vimpac --help` must not.
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vimpac.tokenizer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vimpac.tokenizer.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The lazy names too, so that notebooks complete them before their first use.
    return sorted(set(globals()) | set(__all__))
