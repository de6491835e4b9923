"""One full pre-training step on CPU (or GPU): seconds per step, clips/s and achieved GFLOP/s
against matmul rates measured in the same run.

The step is the real one: small preset (6 layers, 512 wide, T,H|W), T = 5 frames of 16 x 16
tokens (128-pixel frames), a batch of 2 videos x 2 clips, block masking, masked-token logits at
the masked positions, symmetric InfoNCE on the contrastive head, backward, gradient clipping and
AdamW. FLOPs are counted with torch's FlopCounterMode on the same step (matmuls, attention),
so GFLOP/s is model work / wall time.

Two matmul ceilings are measured in the same run, for each precision:
  * "square": a 2048^3 matmul, the usual headline rate (on a CPU with AMX, bf16 runs far above
    what a 512-wide model can use; with AVX512-BF16 alone it is about 2.2x fp32);
  * "at-shape": the matmuls one layer of this step really runs, forward and backward, at
    M = clips * tokens rows: x @ W^T, dX = dY @ W, dW = dY^T @ x for Q/K/V (512 -> 1536),
    the block output (512 -> 512), the MLP (512 -> 2048 -> 512), each with the operand layout
    F.linear and autograd use (W^T and dY^T are transposed views); total FLOPs / total time.
    (Before 2026-11-26 dY^T was a contiguous matrix, which overstated the bf16 ceiling: with AMX
    the weight-gradient product with a transposed A runs at about half the rate.)
    The two shapes named in issue 5, (5120 x 512) @ (512 x 2048) and (5120 x 2048) @ (2048 x 512),
    are printed separately.
The rates are measured before and after the timed steps (load drifts); the mean is used.

Before timing, the fp32 and bf16-autocast losses are compared on the same batch and weights
(dropout off so both see the same network): they must agree within bf16 rounding.

Reference (issue 5, measured on this kind of machine): the authors' code takes 7.5 s (median)
per step in fp32 (about 120 GFLOP/s), small preset, 2 videos x 2 clips; "vs authors" compares
clips/s with it (small preset only). Targets: bf16 >= 60% of the bf16 matmul rate, fp32 >= 80%
of the fp32 rate; on CPU a line per variant says whether it is met, judged on the lower of its
two fractions.

    .venv/bin/python bench/bench_pretrain_step.py [--iters 5] [--preset small] [--device cpu]
        [--variants eager,compile] [--optimizers foreach,fused] [--profile]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from vimpac.machine import machine_line
from vimpac.model.config import build_model_config
from vimpac.model.vimpac import VimpacForPretraining
from vimpac.pretrain.contrastive import ObjectiveConfig, masked_token_loss, pretraining_loss, symmetric_info_nce
from vimpac.pretrain.masking import MaskingConfig, mask_tokens

AUTHORS_FP32_SECONDS = 7.5  # issue 5: the authors' code, median fp32 step on this kind of CPU machine
AUTHORS_PRESET, AUTHORS_CLIPS = "small", 4  # ... of this step: small preset, 2 videos x 2 clips
# Issue 5's CPU targets: the step's GFLOP/s as a fraction of the matmul rate of its precision.
TARGET_FRACTIONS = {"fp32": 0.80, "bf16": 0.60}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def load() -> str:
    try:
        return "load average " + " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_calls(fn, device: torch.device, seconds: float) -> float:
    """Seconds per call of `fn` (median of batches of calls filling `seconds`)."""
    fn()
    _sync(device)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _operand(rows: int, cols: int, transposed: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A (rows, cols) matrix: contiguous, or the transposed view of a contiguous (cols, rows) one."""
    if transposed:
        return torch.randn(cols, rows, device=device, dtype=dtype).t()
    return torch.randn(rows, cols, device=device, dtype=dtype)


def matmul_rate(shapes: list[tuple[int, int, int, str]], dtype: torch.dtype, device: torch.device,
                seconds: float) -> float:
    """GFLOP/s of running every (M, K, N, layout) product once: total FLOPs / total median time.

    layout "nn": both operands contiguous; "nt": B is a transposed view (x @ W^T in F.linear);
    "tn": A is a transposed view (dY^T @ x, autograd's weight gradient)."""
    flops = total = 0.0
    for m, k, n, layout in shapes:
        a = _operand(m, k, layout[0] == "t", dtype, device)
        b = _operand(k, n, layout[1] == "t", dtype, device)
        total += _time_calls(lambda: a @ b, device, seconds / len(shapes))
        flops += 2 * m * k * n
    return flops / total / 1e9


def layer_shapes(rows: int, dim: int, qkv: int, mlp: int) -> list[tuple[int, int, int, str]]:
    """(M, K, N, layout) of one layer's linear layers, forward and both backward products, with
    the operand layouts that F.linear and autograd use.

    T,H|W has two attention blocks per layer (Q/K/V and output projection each) and one MLP."""
    shapes = []
    for fan_in, fan_out, count in ((dim, qkv, 2), (dim, dim, 2), (dim, mlp, 1), (mlp, dim, 1)):
        for _ in range(count):
            shapes += [(rows, fan_in, fan_out, "nt"),    # y = x @ W^T
                       (rows, fan_out, fan_in, "nn"),    # dx = dy @ W
                       (fan_out, rows, fan_in, "tn")]    # dW = dy^T @ x
    return shapes


def measure_rates(rows: int, cfg, device: torch.device, seconds: float) -> dict[tuple[str, str], float]:
    rates = {}
    named = {
        "square": [(2048, 2048, 2048, "nn")],
        "fc": [(rows, cfg.dim, cfg.mlp_width, "nn")],
        "proj": [(rows, cfg.mlp_width, cfg.dim, "nn")],
        "layer": layer_shapes(rows, cfg.dim, 3 * cfg.attention_width, cfg.mlp_width),
    }
    for precision in DTYPES:
        dtype = DTYPES[precision] or torch.float32
        for name, shapes in named.items():
            rates[(precision, name)] = matmul_rate(shapes, dtype, device, seconds)
    return rates


def vs_authors(preset: str, clips: int, seconds: float) -> str:
    """Clips/s against the authors' fp32 step: a step of more clips does more work, and another
    preset is another model, which their step says nothing about ("-")."""
    if preset != AUTHORS_PRESET:
        return "-"
    return f"{(clips / seconds) / (AUTHORS_CLIPS / AUTHORS_FP32_SECONDS):.2f}x"


def step_config(preset: str = "small"):
    """The benchmark's model: `preset` at T = 5 frames of 16 x 16 tokens (128-pixel frames)."""
    return build_model_config(preset, overrides=["max_frames=5", "height=16", "width=16"])


def step_tokens(cfg, clips: int) -> torch.Tensor:
    return torch.randint(0, cfg.codebook_size, (clips, 5, 16, 16), generator=torch.Generator().manual_seed(1))


def build_step(precision: str, device: torch.device = torch.device("cpu"), preset: str = "small", videos: int = 2,
               optimizer: str = "fused", compile: bool = False):
    """The benchmark's step (a callable returning the loss) with fresh weights (seed 0).

    `optimizer`: foreach, fused or single (AdamW's for-loop); `compile`: compile the backbone in
    place, as the trainer's compile=True does."""
    cfg = step_config(preset)
    torch.manual_seed(0)
    model = VimpacForPretraining(cfg).to(device).train()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=optimizer == "foreach",
                              fused=True if optimizer == "fused" else None)
    if compile:
        model.backbone.compile()
    return make_step(model, adamw, step_tokens(cfg, 2 * videos), cfg.vocab, ObjectiveConfig(), MaskingConfig(),
                     device, DTYPES[precision])


def make_step(model, optimizer, tokens, vocab, objective, masking, device, dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]

    def forward_loss(inputs, labels, mask) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(inputs, predict_mask=mask)
            mask_loss, _ = masked_token_loss(out.mlm_logits, labels[mask])
            half = inputs.shape[0] // 2
            cl = symmetric_info_nce(out.cls_projection[:half], out.cls_projection[half:], objective.temperature,
                                    objective.normalize, distributed=False)
            return pretraining_loss(mask_loss, cl.loss, objective)

    def step() -> float:
        masked = mask_tokens(tokens, masking, vocab, generator)
        inputs, labels, mask = (t.to(device) for t in masked)
        loss = forward_loss(inputs, labels, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def check_losses(cfg, tokens, objective, masking, device) -> None:
    """fp32 vs bf16-autocast losses of one batch with the same weights, dropout off."""
    cfg = dataclasses.replace(cfg, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = VimpacForPretraining(cfg).to(device).train()
    # Each video draws its codes from its own slice of the codebook, so the CLS outputs differ
    # between videos: with i.i.d. random tokens they are nearly equal at initialisation, and the
    # contrastive head's batch-of-4 BatchNorm then divides rounding noise by a tiny spread.
    videos = tokens.shape[0] // 2
    width = cfg.codebook_size // videos
    offsets = (torch.arange(tokens.shape[0]) % videos * width).view(-1, 1, 1, 1)
    tokens = tokens % width + offsets
    masked = mask_tokens(tokens, masking, cfg.vocab, torch.Generator().manual_seed(0))
    inputs, labels, mask = (t.to(device) for t in masked)
    print("\nfp32 vs bf16 losses, same batch and weights, dropout off (train-mode BatchNorm):")
    values = {}
    for precision, dtype in DTYPES.items():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(inputs, predict_mask=mask)
            mask_loss, _ = masked_token_loss(out.mlm_logits, labels[mask])
            half = inputs.shape[0] // 2
            cl = symmetric_info_nce(out.cls_projection[:half], out.cls_projection[half:], objective.temperature,
                                    objective.normalize, distributed=False).loss
            total = pretraining_loss(mask_loss, cl, objective)
        values[precision] = (float(mask_loss), float(cl), float(total))
        print(f"  {precision}: mask loss {values[precision][0]:.5f}  contrastive {values[precision][1]:.5f}  "
              f"total {values[precision][2]:.5f}")
        if precision == "fp32":
            cls_fp32 = out.cls_hidden
        else:
            cls_error = float((out.cls_hidden.float() - cls_fp32).norm() / cls_fp32.norm())
    # How much the contrastive loss moves when ONLY its input (the fp32 CLS output) is rounded
    # to bf16: the head's train-mode BatchNorm over 4 clips and the 0.2 temperature amplify
    # rounding, so this, not 2^-9, is the scale a bf16 run's contrastive loss can be judged by.
    with torch.no_grad():
        projection = model.cls_head(cls_fp32.bfloat16().float())
        rounded_cl = float(symmetric_info_nce(projection[:half], projection[half:], objective.temperature,
                                              objective.normalize, distributed=False).loss)
    rel = [abs(b - a) / abs(a) for a, b in zip(values["fp32"], values["bf16"])]
    sensitivity = abs(rounded_cl - values["fp32"][1]) / abs(values["fp32"][1])
    print(f"  backbone CLS output, bf16 vs fp32: relative error {cls_error:.2e} (bf16 rounding: 2^-9 = 2.0e-03 "
          "per value)")
    print(f"  fp32 contrastive loss with only its input rounded to bf16: {rounded_cl:.5f} "
          f"(relative change {sensitivity:.2e})")
    # bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2% per value); a loss averaged
    # over hundreds of positions should stay within a few of those units.
    ok = rel[0] < 1e-2 and rel[2] < 1e-2 and rel[1] < max(1e-2, 4 * sensitivity)
    verdict = "OK, within bf16 rounding" if ok else "MISMATCH beyond bf16 rounding"
    print(f"  relative differences: mask {rel[0]:.2e}, contrastive {rel[1]:.2e}, total {rel[2]:.2e} -> {verdict}")


def profile_step(step, label: str, steps: int = 2, rows: int = 18) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(f"\nprofile, {label}, {steps} steps (self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def target_line(label: str, precision: str, achieved: float, square: float, layer: float) -> str:
    """Issue 5's verdict for one CPU variant, judged on the lower of its two fractions (the
    issue's "matmul rate" is a plain matmul; the at-shape rate is this step's own ceiling)."""
    target, fraction = TARGET_FRACTIONS[precision], achieved / max(square, layer)
    verdict = "met" if fraction >= target else "NOT met"
    return (f"target {label}: >= {target:.0%} of the {precision} matmul rate: {verdict} "
            f"({achieved / square:.0%} of square, {achieved / layer:.0%} of at-shape)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--videos", type=int, default=2, help="videos per step (2 clips each)")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per variant (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--variants", default="eager", help="comma list of eager, compile (torch.compile)")
    parser.add_argument("--optimizers", default="foreach",
                        help="comma list of AdamW implementations: foreach, fused, single (for-loop)")
    parser.add_argument("--matmul-seconds", type=float, default=2.0, help="time per matmul-rate measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table per variant")
    parser.add_argument("--no-loss-check", action="store_true")
    args = parser.parse_args()
    choices = (("--precisions", args.precisions, tuple(DTYPES)),
               ("--variants", args.variants, ("eager", "compile")),
               ("--optimizers", args.optimizers, ("foreach", "fused", "single")))
    for option, given, known in choices:
        unknown = set(given.split(",")) - set(known)
        if unknown:
            parser.error(f"{option}: unknown {sorted(unknown)}; choose from {', '.join(known)}")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*TF32.*")
    print(machine_line(device))
    print(f"start: {load()}")

    cfg = step_config(args.preset)
    clips = 2 * args.videos
    rows = clips * 5 * 16 * 16
    if not args.no_loss_check:
        check_losses(cfg, step_tokens(cfg, clips), ObjectiveConfig(), MaskingConfig(), device)

    rates_before = measure_rates(rows, cfg, device, args.matmul_seconds)
    results, failed = [], []
    for precision in args.precisions.split(","):
        for variant in args.variants.split(","):
            for opt_name in args.optimizers.split(","):
                label = f"{precision} {variant} {opt_name}"
                try:
                    step = build_step(precision, device, args.preset, args.videos, opt_name,
                                      compile=variant == "compile")
                    start = time.perf_counter()
                    first_loss = step()  # warm-up (and compilation)
                    warm = time.perf_counter() - start
                    with FlopCounterMode(display=False) as counter:
                        step()
                    flops = counter.get_total_flops()
                    times = []
                    for _ in range(args.iters):
                        start = time.perf_counter()
                        step()
                        _sync(device)
                        times.append(time.perf_counter() - start)
                except Exception as exc:  # one failing variant (e.g. compile on a new GPU) must not lose the others
                    print(f"  {label}: FAILED: {type(exc).__name__}: {str(exc)[:500]}", flush=True)
                    failed.append(label)
                    continue
                print(f"  {label}: first step {warm:.1f} s, steps {', '.join(f'{t:.2f}' for t in times)} s "
                      f"({load()})", flush=True)
                if args.profile:
                    profile_step(step, label)
                results.append((precision, variant, opt_name, statistics.median(times), flops, first_loss, warm))
    rates_after = measure_rates(rows, cfg, device, args.matmul_seconds)
    rates = {k: (rates_before[k] + rates_after[k]) / 2 for k in rates_before}

    print(f"\nend: {load()}")
    print(f"\nmatmul rates, GFLOP/s (before / after the steps; mean used), M = {rows} rows:")
    for (precision, name), value in rates.items():
        print(f"  {precision} {name:7s} {rates_before[(precision, name)]:8.1f} / {rates_after[(precision, name)]:8.1f}"
              f"  -> {value:8.1f}")
    print(f"\n{args.preset} preset, T=5, 16x16 tokens, {args.videos} videos x 2 clips, "
          f"median of {args.iters} steps (after 1 warm-up + 1 counted step)")
    print(f"{'variant':26s} {'s/step':>7s} {'clips/s':>7s} {'GFLOP/clip':>10s} {'GFLOP/s':>8s} "
          f"{'square':>7s} {'of sq':>6s} {'layer':>7s} {'of layer':>8s} {'vs authors':>10s} {'warm-up s':>9s}")
    for precision, variant, opt_name, seconds, flops, _, warm in results:
        achieved = flops / seconds / 1e9
        square, layer = rates[(precision, "square")], rates[(precision, "layer")]
        print(f"{precision + ' ' + variant + ' ' + opt_name:26s} {seconds:7.2f} {clips / seconds:7.2f} "
              f"{flops / clips / 1e9:10.1f} {achieved:8.1f} {square:7.0f} {achieved / square:6.0%} {layer:7.0f} "
              f"{achieved / layer:8.0%} {vs_authors(args.preset, clips, seconds):>10s} {warm:9.1f}")
    print("(issue-5 shapes: " + ", ".join(
        f"{p} fc {rates[(p, 'fc')]:.0f} / proj {rates[(p, 'proj')]:.0f}" for p in DTYPES) + " GFLOP/s)")
    if device.type == "cpu":
        for precision, variant, opt_name, seconds, flops, _, _ in results:
            print(target_line(f"{precision} {variant} {opt_name}", precision, flops / seconds / 1e9,
                              rates[(precision, "square")], rates[(precision, "layer")]))
    if failed:
        print(f"FAILED variants: {', '.join(failed)}")
    if device.type == "cuda":
        print("(paper, Table 6: one V100 pre-trains small at 32.0 and large-half at 5.0 'videos/s', which issue 5 "
              "reads as clips/s; the 'vs authors' column compares with their CPU step)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
