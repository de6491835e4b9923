"""Tiny labelled token stores and models for the fine-tuning tests (a uniquely named module)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vimpac.model import ModelConfig
from vimpac.store.format import StoreMeta, load_manifest
from vimpac.store.writer import EncodedVideo, RankWriter, compact_store
from vimpac.video.views import view_set

CODEBOOK = 32
GRID = (3, 3)
NOFLIP6 = tuple(v.name for v in view_set("noflip6"))
ALL12 = tuple(v.name for v in view_set("all12"))


def tiny_model_config(**changes) -> ModelConfig:
    base = dict(codebook_size=CODEBOOK, dim=32, layers=2, heads=2, max_frames=4, height=GRID[0], width=GRID[1],
                cls_head_layers=2, cls_head_hidden=32, cls_head_out=16, dropout=0.0, attention_dropout=0.0)
    base.update(changes)
    return ModelConfig(**base)


def make_store(root: Path, num_videos: int = 12, num_classes: int = 3, views=NOFLIP6, frames=(3, 9),
               seed: int = 0, tokenizer_id: str = "tok-test", class_token: bool = True, grid=GRID,
               fps: float = 2.0) -> Path:
    """A store of random tokens; with `class_token`, every frame of a class-c video starts with
    token c in its top-left cell, so the labels are learnable."""
    rng = np.random.default_rng(seed)
    meta = StoreMeta(tokenizer_id=tokenizer_id, tokenizer_kind="test", codebook_size=CODEBOOK, downsample=8,
                     fps=fps, size=8 * grid[0], grid=tuple(grid), views=tuple(views), source="finetune test",
                     class_names=tuple(f"class{c}" for c in range(num_classes)))
    root.mkdir(parents=True, exist_ok=True)
    (root / "store.json").write_text(json.dumps(meta.to_json()))
    videos = []
    for i in range(num_videos):
        label = i % num_classes
        length = int(rng.integers(frames[0], frames[1] + 1))
        per_view = {}
        for view in views:
            tokens = rng.integers(num_classes, CODEBOOK, size=(length, *grid))
            if class_token:
                tokens[:, 0, 0] = label
            per_view[view] = tokens
        videos.append(EncodedVideo(record=i, key=f"v{i:03d}", label=label, views=per_view))
    committed, _ = load_manifest(root)
    with RankWriter(root, meta, 0, committed) as writer:
        writer.commit(videos)
    compact_store(root)
    return root
