"""`tokenize_videos` on a long video: peak memory and throughput, the working tree against a baseline.

    .venv/bin/python bench/bench_tokenize_long.py [--baseline REV] [--minutes 10] [--short-videos 24]
        [--workers 2] [--size 128] [--views all12] [--rounds 2]

Up to commit 7676947 (the default baseline) a decoding worker made all the views of a video, then
returned them at once: pickled through the pipe and held whole in the worker and in the main
process (an hour at 2 FPS with all12 at S = 128 is 4.2 GB of views). Since then it sends them
chunk by chunk (32 sampled frames) and the main process encodes them as they come. Two workloads, on synthetic videos
(sliding 8 x 8 colour blocks, 160 x 128 at 4 FPS, written with `vimpac.video.writer.write_video`):

1. one long video of `--minutes`, sampled at 2 FPS into `--views` at `--size`;
2. `--short-videos` videos of 10 s each (20 sampled frames: one chunk each, as most datasets).

Each run is a fresh process importing `vimpac` from its own tree (the working tree, or `git
archive REV` unpacked) and running `tokenize_videos` with `--workers` decoding workers and a
cheap tokenizer (the quantised mean colour of each 8 x 8 patch, 64 codes), so that the numbers
show the pipeline's own cost, not an encoder network's. Reported per side: peak RSS (VmHWM) of
the main process and its growth over its RSS just before the call, peak RSS of the largest
decoding worker (its VmHWM, read from /proc every 50 ms while it runs), videos/s and frames/s
(all views, including the start of the workers), and a hash of the shard files, which must be
the same on both sides. The sides take turns `--rounds`
times; throughput is the best round, memory the largest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VIDEO_FPS = 4.0
SAMPLE_FPS = 2.0
HEIGHT, WIDTH = 128, 160

# One run in a fresh process: argv = tree, videos folder, list file, out folder, workers, size, views, fps.
CHILD = """
import hashlib, json, os, sys, threading, time
tree, videos, listing, out, workers, size, views, fps = sys.argv[1:9]
sys.path.insert(0, tree)
import numpy as np
import torch
torch.set_num_threads(1)
import vimpac
from pathlib import Path
assert Path(vimpac.__file__).resolve().is_relative_to(Path(tree).resolve()), vimpac.__file__
from vimpac.data.annotations import load_annotations
from vimpac.store import tokenize_videos
from vimpac.tokenizer.base import FrameTokenizer

class Palette(FrameTokenizer):
    kind, codebook_size, downsample, tokenizer_id = "palette", 64, 8, "palette-64-bench"
    def encode(self, frames):
        x = torch.as_tensor(np.asarray(frames)).float()
        n, h, w, _ = x.shape
        levels = (x.reshape(n, h // 8, 8, w // 8, 8, 3).mean(dim=(2, 4)) // 64).clamp(0, 3).long()
        return levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2]
    def decode(self, ids): raise NotImplementedError
    def save_pretrained(self, folder): raise NotImplementedError

def status(pid, field):
    # VmHWM / VmRSS in bytes. Not ru_maxrss: it survives fork + exec, so a process started by a
    # big one reports at least that one's size.
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0

worker_peaks = {}

def watch_workers():
    while True:
        for task in os.listdir("/proc/self/task"):
            try:
                pids = open(f"/proc/self/task/{task}/children").read().split()
            except OSError:
                continue
            for pid in pids:
                worker_peaks[pid] = max(worker_peaks.get(pid, 0), status(pid, "VmHWM"))
        time.sleep(0.05)

def main():
    annotations = load_annotations("mmaction", listing)
    threading.Thread(target=watch_workers, daemon=True).start()
    rss_before = status("self", "VmRSS")
    report = tokenize_videos(annotations, videos, Palette(), float(fps), int(size), views, out,
                             workers=int(workers), batch_size=64, progress=False)
    main_peak = status("self", "VmHWM")
    digest = hashlib.sha256()
    for shard in sorted((Path(out) / "shards").glob("*.tok")):
        digest.update(shard.read_bytes())
    print(json.dumps({"videos": report.encoded_videos, "failures": len(report.failures), "seconds": report.seconds,
                      "frames": report.encoded_frames, "main_peak": main_peak, "main_growth": main_peak - rss_before,
                      "worker_peak": max(worker_peaks.values(), default=0) if int(workers) else None,
                      "sha256": digest.hexdigest()}))

if __name__ == "__main__":
    main()
"""


def sliding_blocks(path: Path, seconds: float, seed: int) -> Path:
    import numpy as np

    from vimpac.video.writer import write_video

    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 256, size=(HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8),
                   np.ones((8, 8, 1), dtype=np.uint8))
    frames = np.stack([np.roll(base, shift=4 * t, axis=1) for t in range(int(seconds * VIDEO_FPS))])
    return write_video(path, frames, fps=VIDEO_FPS)


def make_workload(folder: Path, durations: list[float]) -> Path:
    """Videos of these durations in folder/videos, and an mmaction list of them."""
    lines = []
    for i, seconds in enumerate(durations):
        sliding_blocks(folder / "videos" / f"v{i:03d}.mp4", seconds, seed=i)
        lines.append(f"v{i:03d}.mp4 {i % 2}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def run_side(tree: Path, workload: Path, out: Path, args: argparse.Namespace) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(workload / "videos"), str(workload / "list.txt"),
                           str(out), str(args.workers), str(args.size), args.views, str(SAMPLE_FPS)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=""))
    if done.returncode:
        raise SystemExit(f"{tree}: exit {done.returncode}: {done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="7676947", metavar="REV",
                        help="git revision to compare with (default: 7676947, the last one sending whole videos)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long video")
    parser.add_argument("--short-videos", type=int, default=24, help="number of 10 s videos (0: skip that workload)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--views", default="all12")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from bench_pretrain_ab import unpack  # the tree of a commit, via git archive

    from vimpac.machine import machine_line
    from vimpac.video.views import resolve_views

    print(machine_line())
    views = len(resolve_views(args.views))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sides = {f"baseline {args.baseline}": unpack(args.baseline, tmp), "working tree": REPO}
        workloads = {f"one {args.minutes:g}-minute video": make_workload(tmp / "long", [60 * args.minutes])}
        if args.short_videos:
            workloads[f"{args.short_videos} videos of 10 s"] = make_workload(tmp / "short", [10.0] * args.short_videos)
        for name, listing in workloads.items():
            workload = listing.parent
            sampled = int(SAMPLE_FPS * (60 * args.minutes if name.startswith("one") else 10.0))
            whole_views = sampled * views * args.size * args.size * 3
            print(f"\n## {name}: {WIDTH}x{HEIGHT} at {VIDEO_FPS:g} FPS, sampled at {SAMPLE_FPS:g} FPS ({sampled} frames a "
                  f"video), {args.views} ({views} views) at S = {args.size}: {whole_views / 2**20:,.0f} MiB of views a "
                  f"video; {args.workers} workers, batch 64; best / largest of {args.rounds} rounds")
            runs: dict[str, list[dict]] = {side: [] for side in sides}
            for round_ in range(max(1, args.rounds)):
                for side, tree in sides.items():
                    out = workload / f"store-{len(runs[side])}-{side.split()[0]}"
                    runs[side].append(run_side(tree, workload, out, args))
                    print(f"  round {round_ + 1}, {side}: {runs[side][-1]['seconds']:.1f} s", flush=True)
            print("| side | main peak RSS | main growth | largest worker peak RSS | videos/s | frames/s | shards sha256 |")
            print("|---|--:|--:|--:|--:|--:|---|")
            for side, results in runs.items():
                best = min(results, key=lambda r: r["seconds"])
                mib = lambda key: max(r[key] for r in results) / 2**20  # noqa: E731
                worker = f"{mib('worker_peak'):,.0f} MiB" if best["worker_peak"] is not None else "-"
                print(f"| {side} | {mib('main_peak'):,.0f} MiB | {mib('main_growth'):,.0f} MiB | {worker} | "
                      f"{best['videos'] / best['seconds']:.2f} | {best['frames'] / best['seconds']:,.0f} | "
                      f"{best['sha256'][:12]} |")
            hashes = {r["sha256"] for results in runs.values() for r in results}
            print("same store on both sides" if len(hashes) == 1 else f"STORES DIFFER: {sorted(hashes)}")


if __name__ == "__main__":
    main()
