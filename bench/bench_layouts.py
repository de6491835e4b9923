"""Forward + backward speed of every attention layout, next to the paper's Table 13.

One pre-training step's model work (backbone, masked-token logits at ~15% of positions, the
contrastive head; loss + backward, no optimizer) at the small preset, T = 5 frames of 16 x 16
tokens (128-pixel frames), batch 2, in fp32 and bf16 autocast. Speeds are reported as clips/s
and as ratios against "T,H|W", the paper's default, beside the paper's V100 speeds.

    .venv/bin/python bench/bench_layouts.py                 # CPU, fp32 + bf16
    .venv/bin/python bench/bench_layouts.py --device cuda   # GPU (batch 2 and the given --batch)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from vimpac.model import VimpacForPretraining, build_model_config
from vimpac.model.info import parameter_counts

# Table 13 of the paper: pre-training clips / s / GPU (V100) and backbone parameters, small model.
PAPER = {"TxHxW": (12.6, 23.1), "T,HxW": (20.0, 27.1), "T,H,W": (26.4, 35.8), "T,H|W": (32.0, 29.4)}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line(device: torch.device) -> str:
    line = (f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
    if device.type == "cuda":
        line += f"; GPU: {torch.cuda.get_device_name(device)}"
    try:
        line += f"; load average {os.getloadavg()[0]:.1f}"
    except OSError:
        pass
    return line


def step_seconds(model: VimpacForPretraining, tokens: torch.Tensor, predict: torch.Tensor,
                 labels: torch.Tensor, dtype: torch.dtype | None, iters: int, warmup: int) -> float:
    device = tokens.device

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(tokens, predict)
            loss = F.cross_entropy(out.mlm_logits.float(), labels) + out.cls_projection.float().square().mean()
        loss.backward()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 is faster on a machine shared with busy jobs")
    parser.add_argument("--layouts", nargs="+", default=list(PAPER), help="layouts to time (default: Table 13's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    layouts = args.layouts
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    chosen = [d for d in args.dtypes.split(",") if d]

    print(machine_line(device))
    print(f"small preset, T=5, 16x16 tokens, batch {args.batch}, forward+backward of the pre-training model "
          f"(~15% positions predicted), median of {args.iters} after {args.warmup} warm-up\n")
    gen = torch.Generator().manual_seed(0)
    results: dict[tuple[str, str], float] = {}
    for layout in layouts:
        cfg = build_model_config("small", overrides=[f"layout={layout}", "dropout=0", "attention_dropout=0"])
        torch.manual_seed(0)
        model = VimpacForPretraining(cfg).to(device).train()
        tokens = torch.randint(0, cfg.codebook_size, (args.batch, 5, 16, 16), generator=gen).to(device)
        predict = (torch.rand(tokens.shape, generator=gen) < 0.15).to(device)
        labels = tokens[predict]
        masked = tokens.masked_fill(predict, cfg.vocab.mask_id)
        for name in chosen:
            seconds = step_seconds(model, masked, predict, labels, dtypes[name], args.iters, args.warmup)
            results[(layout, name)] = seconds
            print(f"  measured {layout:<6} {name}: {seconds * 1000:8.1f} ms/step", flush=True)

    print()
    header = f"{'layout':<7} {'params':>7} " + " ".join(f"{d + ' clips/s':>13} {d + ' ratio':>10}" for d in chosen)
    header += f" {'paper clips/s':>13} {'paper ratio':>11}"
    print(header)
    for layout in layouts:
        cfg = build_model_config("small", overrides=[f"layout={layout}"])
        params = parameter_counts(cfg)["backbone"] / 1e6
        row = f"{layout:<7} {params:>6.1f}M "
        for name in chosen:
            clips = args.batch / results[(layout, name)]
            base = args.batch / results[("T,H|W", name)] if ("T,H|W", name) in results else float("nan")
            row += f" {clips:>13.2f} {clips / base:>10.2f}"
        paper = PAPER.get(layout)
        row += f" {paper[0]:>13.1f} {paper[0] / PAPER['T,H|W'][0]:>11.2f}" if paper else f" {'-':>13} {'-':>11}"
        print(row)
    if len(chosen) == 2:
        print()
        for layout in layouts:
            ratio = results[(layout, chosen[0])] / results[(layout, chosen[1])]
            print(f"{layout:<7} {chosen[1]} speed-up over {chosen[0]}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
