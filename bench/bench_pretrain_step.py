"""One full pre-training step on CPU (or GPU): seconds per step, clips/s and achieved GFLOP/s
against the matmul rate measured in the same run.

The step is the real one: small preset (6 layers, 512 wide, T,H|W), T = 5 frames of 16 x 16
tokens (128-pixel frames), a batch of 2 videos x 2 clips, block masking, masked-token logits at
the masked positions, symmetric InfoNCE on the contrastive head, backward, gradient clipping and
AdamW. FLOPs are counted with torch's FlopCounterMode on the same step (matmuls, attention),
so GFLOP/s is model work / wall time.

Reference (issue 5, measured on this kind of machine): the authors' code takes 7.5 s (median)
per step in fp32 (about 120 GFLOP/s), with a plain matmul at about 170 GFLOP/s fp32 and 415
GFLOP/s bf16. Targets: bf16 >= 60% of the bf16 matmul rate, fp32 >= 80% of the fp32 rate.

    .venv/bin/python bench/bench_pretrain_step.py [--iters 5] [--preset small] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vimpac.model.config import build_model_config
from vimpac.model.vimpac import VimpacForPretraining
from vimpac.pretrain.contrastive import ObjectiveConfig, masked_token_loss, pretraining_loss, symmetric_info_nce
from vimpac.pretrain.masking import MaskingConfig, mask_tokens


def machine(device: torch.device) -> str:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text + f", load average {os.getloadavg()[0]:.1f}"


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 2.0) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9


def make_step(model, optimizer, tokens, objective, masking, device, dtype):
    vocab = model.config.vocab
    generator = torch.Generator().manual_seed(0)

    def step() -> float:
        masked = mask_tokens(tokens, masking, vocab, generator)
        inputs, labels, mask = (t.to(device) for t in masked)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(inputs, predict_mask=mask)
            mask_loss, _ = masked_token_loss(out.mlm_logits, labels[mask])
            half = inputs.shape[0] // 2
            cl = symmetric_info_nce(out.cls_projection[:half], out.cls_projection[half:], objective.temperature,
                                    objective.normalize, distributed=False)
            loss = pretraining_loss(mask_loss, cl.loss, objective)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--videos", type=int, default=2, help="videos per step (2 clips each)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(machine(device))

    cfg = build_model_config(args.preset, overrides=["max_frames=5", "height=16", "width=16"])
    clips = 2 * args.videos
    tokens = torch.randint(0, cfg.codebook_size, (clips, 5, 16, 16), generator=torch.Generator().manual_seed(1))
    objective, masking = ObjectiveConfig(), MaskingConfig()
    results = []
    for precision in args.precisions.split(","):
        dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
        torch.manual_seed(0)
        model = VimpacForPretraining(cfg).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step = make_step(model, optimizer, tokens, objective, masking, device, dtype)
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        times, losses = [], []
        for _ in range(args.iters):
            start = time.perf_counter()
            losses.append(step())
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rate = matmul_gflops(torch.float32 if dtype is None else dtype, device)
        seconds = statistics.median(times)
        achieved = flops / seconds / 1e9
        results.append((precision, seconds, clips / seconds, flops / clips / 1e9, achieved, rate, losses[0]))
    print(f"\n{args.preset} preset, T=5, 16x16 tokens, {args.videos} videos x 2 clips, "
          f"median of {args.iters} steps (after 1 counted step)")
    print(f"{'precision':9s} {'s/step':>8s} {'clips/s':>8s} {'GFLOP/clip':>11s} {'GFLOP/s':>8s} "
          f"{'matmul GFLOP/s':>15s} {'of matmul':>9s} {'first loss':>10s}")
    for precision, seconds, cps, per_clip, achieved, rate, loss in results:
        print(f"{precision:9s} {seconds:8.2f} {cps:8.2f} {per_clip:11.1f} {achieved:8.1f} {rate:15.1f} "
              f"{achieved / rate:9.0%} {loss:10.4f}")
    if len(results) == 2:
        print(f"bf16 / fp32 step speed: {results[0][1] / results[1][1]:.2f}x")


if __name__ == "__main__":
    main()
