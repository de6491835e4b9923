"""Our VQ-VAE tokenizer on CPU: inference and training speed, fp32 vs bf16, 1 vs all threads.

    .venv/bin/python bench/bench_vqvae.py [--preset tiny] [--sizes 64,128] [--frames 256]

Measures, side by side in one run:
* encode frames/s with plain fp32 and with the fast path (bf16 autocast + channels_last),
  and how many token positions the two agree on (random weights after a few training steps
  would be more realistic; the figure from a trained model is in train_report.json);
* decode frames/s, fp32 vs bf16;
* training steps/s (batch 32, 64 px), fp32 vs bf16 autocast, with 1 thread and with torch's
  default thread count.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from vimpac.machine import best_of, machine_line
from vimpac.tokenizer.vqvae import VQVAE, VQVAE_PRESETS, VQVAETokenizer, frames_to_pixels


def frames_of(n: int, size: int) -> np.ndarray:
    # Smooth random images (a coarse grid upsampled), closer to video frames than white noise.
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n, 3, 8, 8)).astype(np.float32))
    up = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def bench_inference(preset: str, sizes: list[int], num_frames: int, repeats: int) -> None:
    cfg = VQVAE_PRESETS[preset]
    model = VQVAE(cfg)
    fp32 = VQVAETokenizer(model, bf16=False)
    fast = VQVAETokenizer(model, bf16=True)
    print(f"\n[inference] preset {preset} ({fast.num_parameters() / 1e6:.2f}M params), {num_frames} frames, "
          f"threads {torch.get_num_threads()}, best of {repeats}")
    print(f"{'size':>5} {'encode fp32':>12} {'encode bf16':>12} {'ratio':>6} {'decode fp32':>12} {'decode bf16':>12} {'ratio':>6} {'agree':>7}")
    for size in sizes:
        frames = frames_of(num_frames, size)
        t_enc32 = best_of(lambda: fp32.encode(frames), repeats, warmup=1)
        t_enc16 = best_of(lambda: fast.encode(frames), repeats, warmup=1)
        ids = fp32.encode(frames)
        t_dec32 = best_of(lambda: fp32.decode(ids), repeats, warmup=1)
        t_dec16 = best_of(lambda: fast.decode(ids), repeats, warmup=1)
        agree = float((fast.encode(frames) == ids).double().mean())
        print(f"{size:>5} {num_frames / t_enc32:>10.0f}/s {num_frames / t_enc16:>10.0f}/s {t_enc32 / t_enc16:>5.1f}x "
              f"{num_frames / t_dec32:>10.0f}/s {num_frames / t_dec16:>10.0f}/s {t_dec32 / t_dec16:>5.1f}x {100 * agree:>6.1f}%")


def bench_training(preset: str, steps: int, thread_counts: list[int]) -> None:
    cfg = VQVAE_PRESETS[preset]
    frames = torch.from_numpy(frames_of(256, 64))
    print(f"\n[training] preset {preset}, batch 32 at 64 px, AdamW, {steps} timed steps after 2 warm-up")
    print(f"{'threads':>7} {'fp32':>10} {'bf16':>10} {'ratio':>6}")
    for threads in thread_counts:
        torch.set_num_threads(threads)
        rates = {}
        for bf16 in (False, True):
            torch.manual_seed(0)
            model = VQVAE(cfg).to(memory_format=torch.channels_last).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

            def step() -> None:
                x = frames_to_pixels(frames[torch.randint(len(frames), (32,))]).contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(x)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()

            for _ in range(2):
                step()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            rates[bf16] = steps / (time.perf_counter() - start)
        print(f"{threads:>7} {rates[False]:>7.2f}/s {rates[True]:>7.2f}/s {rates[True] / rates[False]:>5.1f}x  (steps/s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(VQVAE_PRESETS))
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=10)
    args = parser.parse_args(argv)
    default_threads = torch.get_num_threads()
    print("machine:", machine_line())
    bench_inference(args.preset, [int(s) for s in args.sizes.split(",")], args.frames, args.repeats)
    bench_training(args.preset, args.train_steps, sorted({1, default_threads}))
    torch.set_num_threads(default_threads)
    print("\nmachine at the end:", machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
