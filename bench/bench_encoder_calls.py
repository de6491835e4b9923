"""Tokenizing a store: memory and speed of the encoder calls, per-group remainders vs full calls.

    .venv/bin/python bench/bench_encoder_calls.py [--videos 30] [--size 128] [--batch 64]

`vimpac tokenize` gathers decoded videos and encodes their frames in calls of `--batch-size`.
Before: each group of videos was encoded with its own remainder call, so the encoder saw a new
batch size at almost every group; now (`vimpac.store.tokenize.FullBatchEncoder`) every call but
the last is full and a video's frames may span calls. CPU inference builds and caches oneDNN
kernels per input shape, and the heap fragments on varied sizes, so the first way grows the
process with every new size.

Both ways encode the same frames (random pixels, one view per video, lengths uniform in
[8, 40] frames as for 4-20 s clips at 2 FPS) with DALL-E's dVAE (official size, random weights,
bf16, the tokenizer's own batches of 16 frames), each in a fresh process; reported: the batch
sizes the encoder network saw, resident memory after the first call and at the end, and frames/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker(way: str, videos: int, size: int, batch: int, seed: int) -> dict:
    import numpy as np
    import torch

    from vimpac.machine import resident_mib
    from vimpac.store.tokenize import DecodedVideo, DecodeJob, FullBatchEncoder
    from vimpac.tokenizer.dalle import DALLE_PRESETS, DalleEncoder, DalleTokenizer

    cfg = DALLE_PRESETS["official"]
    torch.manual_seed(0)
    tokenizer = DalleTokenizer(cfg, DalleEncoder(cfg.encoder), device="cpu", precision="bf16")
    seen: list[int] = []
    tokenizer.encoder.blocks.input.register_forward_pre_hook(lambda module, args: seen.append(int(args[0].shape[0])))
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 41, videos)
    decoded = [DecodedVideo(DecodeJob(i, f"v{i}", None, "", "", 2.0, size, (), 1),
                            {"center": rng.integers(0, 256, (int(n), size, size, 3), dtype=np.uint8)}, None)
               for i, n in enumerate(lengths)]
    rss_first = None
    start = time.perf_counter()
    if way == "full calls":
        encoder = FullBatchEncoder(tokenizer, ("center",), batch)
        for video in decoded:
            encoder.add(video)
            rss_first = rss_first or (resident_mib() if seen else None)
        encoder.finish()
    else:  # the earlier grouping: gather until `batch` frames, then calls of `batch` and a remainder
        group: list = []
        for i, video in enumerate(decoded):
            group.append(video.views["center"])
            if sum(len(g) for g in group) >= batch or i == len(decoded) - 1:
                frames = np.concatenate(group)
                for s in range(0, len(frames), batch):
                    tokenizer.encode(frames[s:s + batch])
                    rss_first = rss_first or resident_mib()
                group = []
    seconds = time.perf_counter() - start
    return {"way": way, "frames": int(lengths.sum()), "seconds": seconds, "sizes": sorted(set(seen)),
            "calls": len(seen), "rss_first": rss_first, "rss_end": resident_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=30)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="frames per store encoder call (tokenize's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.videos, args.size, args.batch, args.seed)))
        return

    from vimpac.machine import machine_line

    print(machine_line())
    print(f"{args.videos} videos, lengths uniform in [8, 40] frames, {args.size} px, store batch {args.batch}, "
          "DALL-E dVAE (official size, random weights, bf16), one fresh process per way")
    rows = []
    for way in ("per-group remainders (before)", "full calls"):
        out = subprocess.run([sys.executable, __file__, "--worker", way, "--videos", str(args.videos), "--size",
                              str(args.size), "--batch", str(args.batch), "--seed", str(args.seed)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {way}: done", flush=True)
    print("\n| way | encoder batch sizes seen | RSS after 1st call MiB | RSS at end MiB | growth MiB | frames/s |")
    print("|---|---|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['way']} | {len(r['sizes'])}: {r['sizes']} | {r['rss_first']:.0f} | {r['rss_end']:.0f} | "
              f"{r['rss_end'] - r['rss_first']:.0f} | {r['frames'] / r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
