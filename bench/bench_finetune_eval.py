"""Multi-view evaluation throughput: all views of a video in one batch vs. one forward per
view vs. `predict_videos` with fewer clips per forward (`--forward-clips`, its max_batch), fp32
vs bf16 autocast; and the share of reading the views' tokens from the store. Tiny-preset model
(or `--preset`) on a random 16 x 16-token store, T = 8, 3 crops x 4 clips = 12 views per video.

    .venv/bin/python bench/bench_finetune_eval.py [--videos 12] [--threads 2] [--preset tiny]
        [--forward-clips 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vimpac.finetune.evaluate import THREE_CROP_VIEWS, average_view_probabilities, predict_videos, video_view_tokens
from vimpac.machine import best_of, machine_line
from vimpac.model import VimpacForClassification, build_model_config
from vimpac.store import TokenStore
from vimpac.store.format import StoreMeta, load_manifest
from vimpac.store.writer import EncodedVideo, RankWriter, compact_store
from vimpac.video.views import view_set

FRAMES, CLIPS, GRID, CODEBOOK = 8, 4, (16, 16), 1024


def make_store(root: Path, videos: int) -> TokenStore:
    views = tuple(v.name for v in view_set("noflip6"))
    meta = StoreMeta(tokenizer_id="bench", tokenizer_kind="test", codebook_size=CODEBOOK, downsample=8, fps=4.0,
                     size=128, grid=GRID, views=views, class_names=tuple(f"c{i}" for i in range(10)))
    root.mkdir(parents=True)
    (root / "store.json").write_text(json.dumps(meta.to_json()))
    rng = np.random.default_rng(0)
    encoded = [EncodedVideo(i, f"v{i}", i % 10, {v: rng.integers(0, CODEBOOK, (20, *GRID)) for v in views})
               for i in range(videos)]
    committed, _ = load_manifest(root)
    with RankWriter(root, meta, 0, committed) as writer:
        writer.commit(encoded)
    compact_store(root)
    return TokenStore.open(root)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--forward-clips", type=int, default=4,
                        help="clips per forward of the split variant (predict_videos' max_batch)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}")
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "store", args.videos)
        cfg = build_model_config(args.preset, overrides={"max_frames": FRAMES})
        torch.manual_seed(0)
        model = VimpacForClassification(cfg, 10).eval()
        keys = store.keys()

        def per_view(bf16: bool):
            with torch.inference_mode():
                for key in keys:
                    tokens = torch.from_numpy(video_view_tokens(store, key, THREE_CROP_VIEWS, FRAMES, CLIPS))
                    probs = [average_view_probabilities(model, tokens[i:i + 1], 1, bf16) for i in range(len(tokens))]
                    torch.stack(probs).mean(0)

        def batched(bf16: bool, clips: int = 12):
            predict_videos(model, store, keys, THREE_CROP_VIEWS, FRAMES, CLIPS, bf16=bf16, max_batch=clips)

        start = time.perf_counter()
        for key in keys:
            video_view_tokens(store, key, THREE_CROP_VIEWS, FRAMES, CLIPS)
        reading = time.perf_counter() - start
        split = args.forward_clips
        rows = []
        for name, fn in (("per-view loop fp32", lambda: per_view(False)), ("batched fp32", lambda: batched(False)),
                         (f"{split} clips per forward fp32", lambda: batched(False, split)),
                         ("per-view loop bf16", lambda: per_view(True)), ("batched bf16", lambda: batched(True)),
                         (f"{split} clips per forward bf16", lambda: batched(True, split))):
            seconds = best_of(fn, 2, warmup=1)
            rows.append((name, seconds))
        base = rows[0][1]
        print(f"reading every view's tokens from the store: {1e3 * reading:.1f} ms for {args.videos} videos")
        print(f"{args.videos} videos x {len(THREE_CROP_VIEWS) * CLIPS} views (T={FRAMES}, {GRID[0]}x{GRID[1]} tokens, "
              f"{args.preset} preset), best of 2:")
        print("| variant | seconds | videos/s | speed-up vs per-view fp32 |\n|---|---|---|---|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.2f} | {args.videos / seconds:.2f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
