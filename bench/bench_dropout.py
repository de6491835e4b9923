"""Dropout on CPU: `vimpac.model.dropout` against `F.dropout`, forward + backward, side by side.

Sizes are the pre-training step's (bench_pretrain_step.py): the 2 x 2 clips' 5120 x 512
activations (dropped three times per layer) and the attention probabilities of the H and W rows
(320 rows x 4 heads x 17 x 17) and the T rows (1024 x 8 x 6 x 6). p = 0.1 as in pre-training.
Best of --repeats calls after one warm-up; both variants timed in the same run.

    .venv/bin/python bench/bench_dropout.py [--threads 1] [--repeats 20]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from vimpac.machine import best_of, machine_line
from vimpac.model.dropout import dropout

SHAPES = {"activations 4x5x16x16x512": (4, 5, 16, 16, 512), "H/W probs 320x4x17x17": (320, 4, 17, 17),
          "T probs 1024x8x6x6": (1024, 8, 6, 6)}


def forward_backward(fn, x: torch.Tensor, grad: torch.Tensor):
    def run() -> None:
        fn(x, 0.1).backward(grad)
        x.grad = None
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"{'tensor':28s} {'dtype':9s} {'F.dropout ms':>12s} {'ours ms':>8s} {'speed-up':>8s}  (forward + backward)")
    for name, shape in SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, dtype=dtype, requires_grad=True)
            grad = torch.randn(shape, dtype=dtype)
            native = best_of(forward_backward(lambda t, p: F.dropout(t, p, True), x, grad), args.repeats, warmup=1)
            ours = best_of(forward_backward(dropout, x, grad), args.repeats, warmup=1)
            print(f"{name:28s} {str(dtype)[6:]:9s} {native * 1e3:12.2f} {ours * 1e3:8.2f} {native / ours:7.2f}x")


if __name__ == "__main__":
    main()
