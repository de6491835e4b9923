"""Tiny token stores from numpy arrays, for pre-training tests (no video decoding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vimpac.io import atomic_write_json
from vimpac.store.format import META_FILE, StoreMeta, load_manifest
from vimpac.store.writer import EncodedVideo, RankWriter, compact_store


def write_store(root: Path, videos: list[np.ndarray], codebook_size: int, labels: list[int] | None = None,
                views: tuple[str, ...] = ("s1.00_center",), fps: float = 4.0) -> Path:
    """A store whose video i has tokens `videos[i]` (T_i, h, w) in every view."""
    h, w = videos[0].shape[1:]
    meta = StoreMeta(tokenizer_id="test-tokens", tokenizer_kind="test", codebook_size=codebook_size, downsample=8,
                     fps=fps, size=h * 8, grid=(h, w), views=views,
                     class_names=None if labels is None else tuple(f"class_{i}" for i in range(max(labels) + 1)))
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / META_FILE, meta.to_json())
    encoded = [EncodedVideo(i, f"video_{i:03d}", None if labels is None else labels[i],
                            {view: tokens for view in views}) for i, tokens in enumerate(videos)]
    with RankWriter(root, meta, 0, load_manifest(root)[0]) as writer:
        writer.commit(encoded)
    compact_store(root)
    return root


def static_texture_videos(num_videos: int, frames: int, grid: int, codebook_size: int, noise: float = 0.1,
                          seed: int = 0) -> list[np.ndarray]:
    """Each video: one random token texture held over time, with a fraction `noise` of tokens
    redrawn per frame. A masked token can be copied from the same place in a visible frame and
    clips of one video share their texture, so a tiny model learns both tasks in a few dozen steps."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_videos):
        texture = rng.integers(0, codebook_size, size=(grid, grid))
        clip = np.repeat(texture[None], frames, axis=0)
        redraw = rng.random(clip.shape) < noise
        clip[redraw] = rng.integers(0, codebook_size, size=int(redraw.sum()))
        out.append(clip.astype(np.uint16))
    return out
