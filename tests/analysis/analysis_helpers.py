"""Small inputs for the analysis tests: token stores from numpy arrays (with a chosen tokenizer id,
so a real tokenizer can be checked against them), smooth token videos, tiny random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vimpac.io import atomic_write_json
from vimpac.store.format import META_FILE, StoreMeta, load_manifest
from vimpac.store.writer import EncodedVideo, RankWriter, compact_store


def write_token_store(root: Path, videos: list[np.ndarray], codebook_size: int,
                      tokenizer_id: str = "test-tokens", view: str = "s1.00_center") -> Path:
    """A store whose video i has tokens `videos[i]` (T_i, h, w), one view."""
    h, w = videos[0].shape[1:]
    meta = StoreMeta(tokenizer_id=tokenizer_id, tokenizer_kind="test", codebook_size=codebook_size, downsample=8,
                     fps=2.0, size=h * 8, grid=(h, w), views=(view,), class_names=None)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / META_FILE, meta.to_json())
    encoded = [EncodedVideo(i, f"video_{i:03d}", None, {view: tokens.astype(np.uint16)}) for i, tokens in enumerate(videos)]
    with RankWriter(root, meta, 0, load_manifest(root)[0]) as writer:
        writer.commit(encoded)
    compact_store(root)
    return root


def smooth_token_videos(num_videos: int, frames: int, grid: int, codebook_size: int, patch: int = 4,
                        seed: int = 0) -> list[np.ndarray]:
    """Token videos with the locality of real footage: regions of `patch` x `patch` equal tokens
    (neighbouring tokens usually agree) drifting one token per frame in a random direction
    (the same place in the next frame usually agrees too)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_videos):
        coarse = rng.integers(0, codebook_size, size=(grid // patch + 2, grid // patch + 2))
        field = coarse.repeat(patch, 0).repeat(patch, 1)
        dy, dx = rng.choice([-1, 0, 1], size=2)
        oy, ox = rng.integers(0, patch, size=2)  # regions not aligned to the grid's origin
        clip = np.stack([np.roll(field, (oy + t * dy, ox + t * dx), axis=(0, 1))[:grid, :grid] for t in range(frames)])
        out.append(clip.astype(np.uint16))
    return out


def tiny_vqvae(codebook_size: int = 16, seed: int = 0):
    """A randomly initialised VQ-VAE small enough to run in milliseconds."""
    import torch

    from vimpac.tokenizer.vqvae import VQVAEConfig, VQVAETokenizer

    torch.manual_seed(seed)
    cfg = VQVAEConfig(width=8, channel_mult=(1, 1, 1), num_res_blocks=1, codebook_size=codebook_size, code_dim=8)
    return VQVAETokenizer.from_config(cfg)


def save_tiny_pretraining_model(folder: Path, codebook_size: int) -> None:
    """A 1-layer, 32-wide pre-training model over 4 frames of 4 x 4 tokens, saved to `folder`."""
    import torch

    from vimpac.model.config import build_model_config
    from vimpac.model.vimpac import VimpacForPretraining

    torch.manual_seed(0)
    cfg = build_model_config("tiny", overrides=[f"codebook_size={codebook_size}", "dim=32", "layers=1", "heads=2",
                                                "max_frames=4", "height=4", "width=4", "cls_head_hidden=32",
                                                "cls_head_out=16"])
    VimpacForPretraining(cfg).save_pretrained(folder)
