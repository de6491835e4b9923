"""Token store benchmarks: random clip reads per second, and video -> store throughput.

    .venv/bin/python bench/bench_store.py [--videos 2000] [--reads 200000] [--e2e-videos 6] [--no-dalle]

1. Clip reads (one process, one thread): a store of `--videos` random (T, 16, 16) token arrays
   (T uniform in [5, 60]) is written with the store's own writer, then `--reads` random
   five-frame clips are read, side by side:
   * `store.clip` inside the video (zero-copy view of the memory-mapped shard);
   * the same plus a copy (`np.array`), what a Dataset hands to a DataLoader;
   * `store.clip` with starts anywhere in [0, T) (clips past the end are padded);
   * pread: no mmap, one `os.pread` + `np.frombuffer` per clip (the "read a file slice" way);
   * in-RAM upper bound: slicing a Python list of numpy arrays already in memory.
   The shards are in the page cache (just written); cold-cache reads are disk-bound instead.
2. End to end (`tokenize_videos`): synthetic 4 s videos (160x128 at 8 fps) tokenized at 4 fps,
   128 px, center view, with our VQ-VAE (default config, random init) and DALL-E's dVAE (tiny
   preset and full size, random weights, bf16 fast path), with 0 and 2 decoding workers. The
   timings include the start of the worker processes (a few seconds on a loaded machine), as a
   real run pays it once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vimpac.store import TokenStore
from vimpac.store.format import META_FILE, SHARD_DIR, StoreMeta, load_manifest
from vimpac.io import atomic_write_json
from vimpac.machine import load_average_1m, machine_line
from vimpac.store.writer import EncodedVideo, RankWriter, compact_store

GRID = (16, 16)
CLIP = 5


# ------------------------------------------------------------------------------ clip reads


def build_store(root: Path, videos: int, seed: int = 0) -> None:
    meta = StoreMeta(tokenizer_id="bench", tokenizer_kind="random", codebook_size=8192, downsample=8,
                     fps=2.0, size=128, grid=GRID, views=("s1.00_center",))
    root.mkdir(parents=True)
    atomic_write_json(root / META_FILE, meta.to_json())
    rng = np.random.default_rng(seed)
    with RankWriter(root, meta, 0, load_manifest(root)[0]) as writer:
        batch = []
        for i in range(videos):
            frames = int(rng.integers(5, 61))
            batch.append(EncodedVideo(i, f"video{i:06d}", i % 400,
                                      {"s1.00_center": rng.integers(0, 8192, size=(frames, *GRID))}))
            if len(batch) == 256:
                writer.commit(batch)
                batch = []
        writer.commit(batch)
    compact_store(root)


def time_reads(name: str, fn, indices: np.ndarray, starts: np.ndarray) -> float:
    fn(int(indices[0]), int(starts[0]))  # warm
    idx, st = indices.tolist(), starts.tolist()
    t0 = time.perf_counter()
    for i, s in zip(idx, st):
        fn(i, s)
    seconds = time.perf_counter() - t0
    return len(idx) / seconds


def bench_reads(args: argparse.Namespace, tmp: Path) -> list[tuple[str, float]]:
    root = tmp / "read-store"
    t0 = time.perf_counter()
    build_store(root, args.videos)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = TokenStore.open(root)
    open_s = time.perf_counter() - t0
    frames = store.num_frames
    print(f"store: {len(store)} entries, {int(frames.sum())} frames, "
          f"{sum(p.stat().st_size for p in (root / SHARD_DIR).iterdir()) / 2**20:.1f} MiB of shards; "
          f"written in {build_s:.1f} s, opened in {open_s * 1000:.1f} ms")
    rng = np.random.default_rng(1)
    indices = rng.integers(0, len(store), size=args.reads)
    inside = (rng.random(args.reads) * (frames[indices] - CLIP + 1)).astype(np.int64)
    anywhere = (rng.random(args.reads) * frames[indices]).astype(np.int64)

    # pread baseline: same offsets, one system call per clip, no mapping.
    entries = store.manifest
    shard_fds = [os.open(root / SHARD_DIR / name, os.O_RDONLY) for name in entries.shards]
    offsets, shard_of = list(entries.entry_offset), list(entries.entry_shard)
    frame_bytes = GRID[0] * GRID[1] * 2

    def pread_clip(i: int, s: int) -> np.ndarray:
        data = os.pread(shard_fds[shard_of[i]], CLIP * frame_bytes, offsets[i] + s * frame_bytes)
        return np.frombuffer(data, dtype="<u2").reshape(CLIP, *GRID)

    in_ram = [np.array(store.tokens(i)) for i in range(len(store))]
    results = [
        ("store.clip (view, inside)", time_reads("clip", lambda i, s: store.clip(i, s, CLIP), indices, inside)),
        ("store.clip + copy (inside)", time_reads("copy", lambda i, s: np.array(store.clip(i, s, CLIP)), indices, inside)),
        ("store.clip, start in [0, T) (pads)", time_reads("pad", lambda i, s: store.clip(i, s, CLIP), indices, anywhere)),
        ("pread + frombuffer (no mmap)", time_reads("pread", pread_clip, indices, inside)),
        ("in-RAM list slice (upper bound)", time_reads("ram", lambda i, s: in_ram[i][s:s + CLIP], indices, inside)),
    ]
    # Correctness of what was timed: the clip and the pread agree.
    for i, s in zip(indices[:100].tolist(), inside[:100].tolist()):
        assert np.array_equal(store.clip(i, s, CLIP), pread_clip(i, s))
    for fd in shard_fds:
        os.close(fd)
    return results


# ------------------------------------------------------------------------------ end to end


def make_videos(folder: Path, count: int) -> list:
    from vimpac.data.annotations import VideoRecord
    from vimpac.video.writer import write_video

    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        base = np.kron(rng.integers(0, 256, size=(16, 20, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
        frames = np.stack([np.roll(base, 3 * t, axis=1) for t in range(32)])  # 4 s at 8 fps
        write_video(folder / f"v{i:03d}.mp4", frames, fps=8)
        records.append(VideoRecord(f"v{i:03d}.mp4", i % 2, f"v{i:03d}"))
    return records


def bench_e2e(args: argparse.Namespace, tmp: Path) -> tuple[list[tuple[str, float, float, int]], list[str]]:
    """(name, videos/s, frames/s, frames) per variant, and the variants that could not run."""
    from vimpac.store.tokenize import tokenize_videos
    from vimpac.tokenizer.vqvae import VQVAEConfig, VQVAETokenizer

    videos = tmp / "videos"
    records = make_videos(videos, args.e2e_videos)
    torch.manual_seed(0)
    failed: list[str] = []
    variants = [("VQ-VAE (default config), 0 workers", lambda: VQVAETokenizer.from_config(VQVAEConfig()), 0),
                ("VQ-VAE (default config), 2 workers", lambda: VQVAETokenizer.from_config(VQVAEConfig()), 2)]
    try:
        from vimpac.tokenizer.dalle import DALLE_PRESETS, DalleTokenizer

        variants.append(("dVAE tiny preset (bf16), 0 workers", lambda: DalleTokenizer(DALLE_PRESETS["tiny"]), 0))
        variants.append(("dVAE tiny preset (bf16), 2 workers", lambda: DalleTokenizer(DALLE_PRESETS["tiny"]), 2))
        if not args.no_dalle:
            variants.append(("dVAE full size (bf16), 2 workers", lambda: DalleTokenizer(DALLE_PRESETS["official"]), 2))
    except ImportError as exc:
        print(f"DALL-E tokenizer not available: {exc}")
        failed.append("dVAE variants")
    results = []
    for n, (name, make, workers) in enumerate(variants):
        try:
            tokenizer = make()
            tokenizer.tokenizer_id  # noqa: B018  (fails early if the tokenizer cannot be identified)
        except Exception as exc:  # a benchmark reports a broken variant and goes on
            print(f"skipped {name}: {type(exc).__name__}: {exc}")
            failed.append(name)
            continue
        out = tmp / f"e2e-{n}"
        report = tokenize_videos(records, videos, tokenizer, fps=4, size=128, views="center", out_dir=out,
                                 workers=workers, batch_size=32, progress=False)
        assert report.encoded_videos == len(records) and not report.failures, report.summary()
        results.append((name, report.videos_per_s, report.frames_per_s, report.encoded_frames))
        shutil.rmtree(out)
    return results, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2000, help="videos in the clip-read store")
    parser.add_argument("--reads", type=int, default=200_000, help="random clips to read per variant")
    parser.add_argument("--e2e-videos", type=int, default=6, help="videos for the end-to-end run (0: skip)")
    parser.add_argument("--no-dalle", action="store_true", help="skip the full-size dVAE end-to-end run")
    args = parser.parse_args()
    print(f"machine: {machine_line()}")
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        torch.set_num_threads(1)
        failed: list[str] = []
        reads = bench_reads(args, tmp)
        base = reads[0][1]
        print(f"\nrandom {CLIP}-frame clip reads, 1 process, 1 thread ({args.reads} reads each):")
        print(f"{'variant':40s} {'clips/s':>12s} {'vs store.clip':>14s}")
        for name, rate in reads:
            print(f"{name:40s} {rate:12,.0f} {rate / base:13.2f}x")
        torch.set_num_threads(os.cpu_count() or 1)
        if args.e2e_videos:
            print(f"\nend to end, {args.e2e_videos} videos x 16 frames (4 s at 4 fps), 128 px, center view "
                  f"(torch threads {torch.get_num_threads()}):")
            print(f"{'variant':44s} {'videos/s':>9s} {'frames/s':>9s}")
            results, failed = bench_e2e(args, tmp)
            for name, vps, fps, frames in results:
                print(f"{name:44s} {vps:9.2f} {fps:9.1f}")
    print(f"\nmachine after: load average {load_average_1m()}")
    if failed:  # reported and gone on, but run_all.py (`make bench`) must see it
        print(f"FAILED variants: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
