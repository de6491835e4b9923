"""How fast is the synthetic benchmark to make? Rendering vs encoding per video, and whole runs
with 1 vs 2 worker processes.

    .venv/bin/python bench/synthetic_generation.py            # ~1-2 minutes on 2 cores
    .venv/bin/python bench/synthetic_generation.py --full     # also the default `make-synthetic`

Prints the machine (CPU, cores, load, versions) and a table per part; ratios compare variants
measured in the same run. Wall-clock numbers on a shared machine vary with its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from vimpac.data.synthetic import (
    CLASS_NAMES,
    SyntheticConfig,
    generate_benchmark,
    generate_uncurated,
    render_uncurated,
    render_video,
    video_rng,
)
from vimpac.data.synthetic_render import load_textures
from vimpac.machine import machine_line
from vimpac.video.writer import write_video


def per_video(size: int, repeats: int) -> dict[str, float]:
    """Median ms to render / encode one 32-frame labelled clip, and its size on disk."""
    cfg = SyntheticConfig(height=size, width=size)
    render_ms, encode_ms, kilobytes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            name = CLASS_NAMES[i % len(CLASS_NAMES)]
            start = time.perf_counter()
            frames = render_video(name, video_rng(0, "train", i, name), cfg)
            render_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            path = write_video(Path(tmp) / f"{i}.mp4", frames, cfg.fps, crf=cfg.crf, gop_size=16)
            encode_ms.append((time.perf_counter() - start) * 1000)
            kilobytes.append(path.stat().st_size / 1000)
    return {
        "render_ms": statistics.median(render_ms),
        "encode_ms": statistics.median(encode_ms),
        "kB": statistics.median(kilobytes),
    }


def uncurated_video(size: int) -> dict[str, float]:
    cfg = SyntheticConfig(height=size, width=size)
    start = time.perf_counter()
    frames = render_uncurated(0, cfg)
    render_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = write_video(Path(tmp) / "u.mp4", frames, cfg.fps, crf=cfg.crf, gop_size=16)
        encode_s = time.perf_counter() - start
        kilobytes = path.stat().st_size / 1000
    return {"frames": len(frames), "render_s": render_s, "encode_s": encode_s, "kB": kilobytes}


def whole_run(cfg: SyntheticConfig, workers: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = generate_benchmark(tmp, cfg, progress=False, workers=workers)
        if cfg.uncurated_videos:
            summary = summary.merge(generate_uncurated(tmp, cfg, progress=False, workers=workers))
        return time.perf_counter() - start, summary.videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also time the default `make-synthetic` (2 workers)")
    parser.add_argument("--repeats", type=int, default=14, help="clips per size in part 1")
    args = parser.parse_args()
    import av

    print(f"machine: {machine_line()}")
    print(f"numpy {np.__version__}, PyAV {av.__version__} (torch unused here)")
    start = time.perf_counter()
    load_textures()
    print(f"background photos loaded once per process in {time.perf_counter() - start:.2f} s\n")

    print("1. one labelled clip (32 frames, 8 fps), median over", args.repeats)
    print(f"   {'size':>7}  {'render ms':>9}  {'encode ms':>9}  {'render/encode':>13}  {'file kB':>7}")
    for size in (64, 128):
        r = per_video(size, args.repeats)
        print(f"   {size:>3}x{size:<3}  {r['render_ms']:9.1f}  {r['encode_ms']:9.1f}  {r['render_ms'] / r['encode_ms']:13.2f}  {r['kB']:7.1f}")

    print("\n2. one uncurated video (30 s at 8 fps)")
    for size in (64, 128):
        r = uncurated_video(size)
        print(f"   {size}x{size}: {r['frames']} frames, render {r['render_s']:.2f} s, encode {r['encode_s']:.2f} s, {r['kB']:.0f} kB")

    subset = dataclasses.replace(SyntheticConfig(), train_per_class=6, val_per_class=2, uncurated_videos=4)
    n_videos = len(subset.classes) * 8 + 4
    print(f"\n3. a run of {n_videos} videos (14 classes x 8 clips at 128x128, + 4 uncurated x 30 s), spawn pool")
    times = {}
    for workers in (1, 2):
        seconds, videos = whole_run(subset, workers)
        times[workers] = seconds
        print(f"   workers={workers}: {seconds:6.1f} s  ({videos / seconds:.1f} videos/s)")
    print(f"   speed-up 2 vs 1 workers: {times[1] / times[2]:.2f}x")
    default = SyntheticConfig()
    labelled = len(default.classes) * (default.train_per_class + default.val_per_class)
    # Cost model from this run: uncurated videos are 240 frames, labelled 32.
    frames_subset = len(subset.classes) * 8 * 32 + 4 * 240
    frames_default = labelled * 32 + default.uncurated_videos * 240
    print(f"   extrapolated default run ({labelled} clips + {default.uncurated_videos} uncurated), 2 workers: "
          f"~{times[2] * frames_default / frames_subset:.0f} s")

    if args.full:
        seconds, videos = whole_run(default, 2)
        print(f"\n4. the default `vimpac make-synthetic` (2 workers): {videos} videos in {seconds:.1f} s")


if __name__ == "__main__":
    main()
