"""Benchmark: block-mask generation and the symmetric InfoNCE.

    .venv/bin/python bench/bench_masking.py [--repeats 30]

Compares, in one run on this machine:
  * vimpac's vectorised block masking (bounds as (B, N, 3) tensors, union as one batched
    matmul of interval indicators),
  * the same bounds with a broadcast-then-any union (the other obvious vectorisation),
  * a straightforward per-sample, per-block Python loop (what the authors' code does),
for a batch of 64 clips at 5 x 16 x 16 with 5 blocks (T=5, S=128), and the InfoNCE loss for
1024 clip pairs x 256 features (forward, forward + backward).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

from vimpac.machine import machine_line
from vimpac.pretrain.contrastive import symmetric_info_nce
from vimpac.pretrain.masking import (
    MaskingConfig,
    apply_mask,
    block_length_limits,
    block_mask,
    mask_tokens,
    sample_blocks,
)
from vimpac.tokens import DALLE_VOCAB


def loop_block_mask(batch: int, T: int, H: int, W: int, num_blocks: int, rng: random.Random) -> torch.Tensor:
    """The straightforward version: one Python iteration per sample and per block."""
    limit_t, limit_h, limit_w = block_length_limits(T, H, W)
    mask = torch.zeros(batch, T, H, W, dtype=torch.bool)
    for i in range(batch):
        for _ in range(num_blocks):
            lt, lh, lw = rng.randint(1, limit_t), rng.randint(1, limit_h), rng.randint(1, limit_w)
            t0, h0, w0 = rng.randint(0, T - lt), rng.randint(0, H - lh), rng.randint(0, W - lw)
            mask[i, t0 : t0 + lt, h0 : h0 + lh, w0 : w0 + lw] = True
    return mask


def broadcast_block_mask(batch, T, H, W, num_blocks, generator) -> torch.Tensor:
    """Vectorised alternative: materialise (B, N, T, H, W) and take any() over the blocks."""
    starts, lengths = sample_blocks(batch, T, H, W, num_blocks, generator)
    ends = starts + lengths
    inside = [
        (torch.arange(size) >= starts[:, :, a, None]) & (torch.arange(size) < ends[:, :, a, None])
        for a, size in enumerate((T, H, W))
    ]
    t, h, w = inside
    return (t[:, :, :, None, None] & h[:, :, None, :, None] & w[:, :, None, None, :]).any(1)


def timed(fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"machine: {machine_line()}")

    B, T, H, W, N = 64, 5, 16, 16, 5
    generator = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    tokens = torch.randint(0, DALLE_VOCAB.codebook_size, (B, T, H, W), generator=generator)
    config = MaskingConfig(num_blocks=N)

    print(f"\nBlock mask, batch {B} at {T}x{H}x{W}, {N} blocks (median of {args.repeats})")
    ours = timed(lambda: block_mask(B, T, H, W, N, generator), args.repeats)
    broadcast = timed(lambda: broadcast_block_mask(B, T, H, W, N, generator), args.repeats)
    loop = timed(lambda: loop_block_mask(B, T, H, W, N, rng), max(5, args.repeats // 3))
    full = timed(lambda: mask_tokens(tokens, config, DALLE_VOCAB, generator), args.repeats)
    mask = block_mask(B, T, H, W, N, generator)
    bert = timed(lambda: apply_mask(tokens, mask, DALLE_VOCAB, "bert", generator), args.repeats)
    rows = [
        ("vimpac block_mask (batched matmul union)", ours),
        ("broadcast + any() union", broadcast),
        ("per-sample, per-block Python loop", loop),
        ("vimpac mask_tokens (mask + [MASK] + labels)", full),
        ("apply_mask bert 80/10/10 (given the mask)", bert),
    ]
    for name, seconds in rows:
        print(f"  {name:<46} {seconds * 1e3:8.3f} ms   loop / this = {loop / seconds:6.1f}x")

    big_b, big_t, big_s, big_n = 1024, 10, 32, 7
    big = timed(lambda: block_mask(big_b, big_t, big_s, big_s, big_n, generator), max(3, args.repeats // 10))
    print(f"  vimpac block_mask, batch {big_b} at {big_t}x{big_s}x{big_s}, {big_n} blocks: {big * 1e3:.1f} ms")

    n, d = 1024, 256
    first = torch.randn(n, d, generator=generator, requires_grad=True)
    second = torch.randn(n, d, generator=generator, requires_grad=True)
    print(f"\nSymmetric InfoNCE, {n} clip pairs x {d} features, fp32, l2-normalised (median of {args.repeats})")

    def forward():
        with torch.no_grad():
            symmetric_info_nce(first, second, distributed=False)

    def forward_backward():
        symmetric_info_nce(first, second, distributed=False).loss.backward()

    def forward_backward_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            symmetric_info_nce(first, second, distributed=False).loss.backward()

    def concatenated_forward_backward():
        """The SimCLR-style formulation: (n, 2N) logits concatenated, then cross_entropy."""
        a, b = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
        self_mask = torch.eye(n, dtype=torch.bool)
        loss = 0.0
        for x, y in ((a, b), (b, a)):
            same = (x @ x.T / 0.2).masked_fill(self_mask, float("-inf"))
            logits = torch.cat([x @ y.T / 0.2, same], dim=1)
            loss = loss + F.cross_entropy(logits, torch.arange(n))
        loss.backward()

    fwd = timed(forward, args.repeats)
    concatenated = timed(concatenated_forward_backward, args.repeats)
    fwd_bwd = timed(forward_backward, args.repeats)
    fwd_bwd_autocast = timed(forward_backward_bf16, args.repeats)
    print(f"  forward                                     {fwd * 1e3:8.2f} ms")
    print(f"  forward + backward                          {fwd_bwd * 1e3:8.2f} ms   ({fwd_bwd / fwd:.1f}x forward)")
    print(f"  forward + backward inside bf16 autocast     {fwd_bwd_autocast * 1e3:8.2f} ms   (logits stay fp32)")
    print(f"  concatenated-logits variant, fwd + bwd      {concatenated * 1e3:8.2f} ms   "
          f"(this / vimpac = {concatenated / fwd_bwd:.2f})")


if __name__ == "__main__":
    main()
