"""Subcommands of the pre-training area (`vimpac pretrain`, `vimpac masking-table`).

Only argparse-level code at the top: the handlers import numpy / torch lazily.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vimpac.cli import command_error


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_pretrain(subparsers)
    table = subparsers.add_parser(
        "masking-table",
        help="induced block-masking ratio per input size and block count (paper Table 2)",
        description=(
            "Print the exact induced masking ratio of block masking for each clip length T, frame "
            "size S and number of blocks, and the block count closest to the target ratio (marked *). "
            "The defaults reproduce the paper's Table 2."
        ),
    )
    table.add_argument("--frames", type=_int_list, default=[5, 10], metavar="T,...",
                       help="clip lengths in frames (default: 5,10)")
    table.add_argument("--sizes", type=_int_list, default=[128, 256], metavar="S,...",
                       help="frame sizes in pixels (default: 128,256)")
    table.add_argument("--blocks", type=_blocks, default=list(range(4, 9)), metavar="N|A-B|N,...|auto",
                       help="block counts: a range 4-8, a list 4,6,8, or 'auto' (the closest to the target)")
    table.add_argument("--downsample", type=int, default=8,
                       help="pixels per token along each side (DALL-E's dVAE: 8)")
    table.add_argument("--target", type=float, default=0.15, help="target masking ratio (default: 0.15)")
    table.add_argument("--monte-carlo", type=_sample_count, default=0, metavar="SAMPLES",
                       help="also estimate each ratio by running the sampler on SAMPLES (>= 2) clips")
    table.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo estimate")
    table.add_argument("--json", action="store_true",
                       help='print a JSON list of {"T", "S", "blocks", "ratio"} records (ratio as a fraction)')
    table.set_defaults(run=_run_masking_table)


def _run_masking_table(args: argparse.Namespace) -> int:
    from vimpac.pretrain.errors import PretrainError
    from vimpac.pretrain.masking import masking_table

    if args.downsample < 1:
        return command_error(args, "--downsample must be >= 1")
    try:
        rows = masking_table(args.frames, args.sizes, args.blocks, args.downsample, args.target)
    except PretrainError as exc:
        return command_error(args, exc)

    estimates: dict[tuple[int, int, int], tuple[float, float]] = {}
    if args.monte_carlo:
        import torch

        from vimpac.pretrain.masking import MAX_CLIP_TOKENS, monte_carlo_masking_ratio

        largest = max(rows, key=lambda row: row.T * (row.S // args.downsample) ** 2)
        side = largest.S // args.downsample
        if largest.T * side * side > MAX_CLIP_TOKENS:
            return command_error(args, f"--monte-carlo: T = {largest.T}, S = {largest.S} gives {largest.T} x {side} "
                                       f"x {side} tokens per sampled mask; expected at most {MAX_CLIP_TOKENS:,}")

        generator = torch.Generator().manual_seed(args.seed)
        for row in rows:
            side = row.S // args.downsample
            estimates[row.T, row.S, row.blocks] = monte_carlo_masking_ratio(
                row.T, side, side, row.blocks, args.monte_carlo, generator
            )

    if args.json:
        records = []
        for row in rows:
            record = {"T": row.T, "S": row.S, "blocks": row.blocks, "ratio": row.ratio}
            if estimates:
                record["monte_carlo"], record["monte_carlo_stderr"] = estimates[row.T, row.S, row.blocks]
            records.append(record)
        print(json.dumps(records, indent=1))
        return 0
    print(_format_table(rows, args.downsample, args.target, estimates))
    return 0


def _format_table(rows, downsample: int, target: float, estimates: dict) -> str:
    from vimpac.pretrain.masking import masking_table

    counts = sorted({row.blocks for row in rows})
    sizes = list(dict.fromkeys((row.T, row.S) for row in rows))
    by_key = {(row.T, row.S, row.blocks): row for row in rows}
    header = f"{'T':>3} {'S':>5} {'tokens':>7} | " + " ".join(f"{n:>7}" for n in counts)
    lines = [
        f"Induced masking ratio (%) of block masking, union of N blocks; * = closest to {100 * target:g}%",
        "",
        f"{'':>17} | #blocks",
        header,
        "-" * len(header),
    ]
    for T, S in sizes:
        cells = []
        for n in counts:
            row = by_key.get((T, S, n))
            cells.append(f"{'':>7}" if row is None else f"{100 * row.ratio:6.2f}{'*' if row.closest else ' '}")
        side = S // downsample
        lines.append((f"{T:>3} {S:>5} {f'{side}x{side}':>7} | " + " ".join(cells)).rstrip())
    # A size whose closest count is not a column gets no *: say which count it is.
    outside = [(T, S) for T, S in sizes if not any(row.closest for row in rows if (row.T, row.S) == (T, S))]
    if outside:
        lines += ["", f"Closest to {100 * target:g}% outside the block counts shown:"]
        for T, S in outside:
            (best,) = masking_table([T], [S], "auto", downsample, target)
            lines.append(f"  T={T:<3} S={S:<4} {best.blocks} blocks: {100 * best.ratio:.2f}")
    if estimates:
        lines += ["", "Monte Carlo check (sampler): exact vs estimate +- standard error, in %"]
        for (T, S, n), (mean, stderr) in estimates.items():
            exact = by_key[T, S, n].ratio
            lines.append(f"  T={T:<3} S={S:<4} N={n:<3} exact {100 * exact:6.2f}  sampled {100 * mean:6.2f} +- {100 * stderr:.2f}")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _sample_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value != 0 and value < 2:  # a standard error needs two samples
        raise argparse.ArgumentTypeError(f"expected 0 (off) or at least 2 samples, got {text!r}")
    return value


def _blocks(text: str) -> list[int] | str:
    text = text.strip()
    if text == "auto":
        return "auto"
    if "-" in text and "," not in text:
        low, _, high = text.partition("-")
        try:
            first, last = int(low), int(high)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a range like 4-8, got {text!r}") from None
        if first < 1 or last < first:
            raise argparse.ArgumentTypeError(f"expected a range A-B with 1 <= A <= B, got {text!r}")
        return list(range(first, last + 1))
    return _int_list(text)


def _register_pretrain(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pre-train a VIMPAC model on a token store (masked tokens + contrastive)",
        description=(
            "Pre-train with block-masked token prediction and symmetric InfoNCE on clip pairs from a "
            "token store. Settings come from a preset, then --config YAML, then KEY=VALUE overrides "
            "(e.g. train.lr=5e-4 masking.strategy=iid objective.alpha=0 model.layers=4). Works as one "
            "process or under torchrun (DDP). Writes RUN/metrics.jsonl, RUN/tensorboard, "
            "RUN/checkpoints, RUN/pretrain.json (the resolved settings) and, when finished, RUN/model for `vimpac finetune`."
        ),
    )
    parser.add_argument("--store", required=True, help="token store made by `vimpac tokenize`")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--preset", default="tiny", help="tiny | analysis | results (default: tiny)")
    parser.add_argument("--config", help="YAML file of settings applied over the preset")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    parser.add_argument("--init-from", help="start from a pre-trained model folder instead of random weights")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: train.device, which is auto: cuda when "
                                         "available)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the settings resolved against the store (model size, gradient accumulation) "
                             "and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings overrides")
    parser.set_defaults(run=_run_pretrain, positional_overrides=True)


def _run_pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    from vimpac.config import ConfigError, to_dict
    from vimpac.devices import resolve_device
    from vimpac.engine import distributed
    from vimpac.engine.checkpoint import CheckpointError
    from vimpac.engine.trainer import TrainingDiverged
    from vimpac.model.errors import ModelError
    from vimpac.pretrain.config import build_pretrain_config
    from vimpac.pretrain.errors import PretrainError
    from vimpac.pretrain.run import run_pretraining
    from vimpac.pretrain.task import resolve_config
    from vimpac.store.errors import StoreError
    from vimpac.store.reader import TokenStore

    try:
        cfg = build_pretrain_config(args.preset, args.config, args.overrides)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, device=resolve_device(args.device or cfg.train.device)))
        if args.print_config:
            cfg.train.validate()
            # For the processes torchrun starts (gradient accumulation depends on them), from rank 0.
            cfg = resolve_config(TokenStore.open(args.store), cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
            if os.environ.get("RANK", "0") == "0":
                print(json.dumps(to_dict(cfg), indent=2))
            return 0
        result = run_pretraining(args.store, args.out, cfg, resume=args.resume, init_from=args.init_from)
    except (ConfigError, PretrainError, StoreError, ModelError, CheckpointError) as exc:
        return command_error(args, exc)
    except TrainingDiverged as exc:
        return command_error(args, exc, code=4)
    code = {"finished": 0, "interrupted": 130}.get(result.status, 3)  # 3: the time limit
    if not distributed.current().is_main:  # under torchrun, one summary
        return code
    print(f"{result.status} at step {result.step} ({result.skipped_steps} skipped); run folder {args.out}")
    for key, value in sorted(result.last_metrics.items()):
        if isinstance(value, float):
            print(f"  {key:24s} {value:.4f}")
    if result.status == "time_limit":
        print("stopped by train.max_minutes; continue with the same command and --resume", file=sys.stderr)
    return code
