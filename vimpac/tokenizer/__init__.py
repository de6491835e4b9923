"""Frame tokenizers: DALL-E's dVAE (weight-compatible) and our own trainable VQ-VAE."""

from vimpac.lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
