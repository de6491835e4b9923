"""Subcommands of the analysis area: `vimpac analyze copy-baseline | reconstruct | masks` and
`vimpac plot`.

Only argparse here at import time; the handlers import torch, matplotlib and the work itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vimpac.argtypes import at_least, nonnegative_float, open_ratio, positive_float, positive_int
from vimpac.cli import command_error


def register(subparsers: argparse._SubParsersAction) -> None:
    analyze = subparsers.add_parser(
        "analyze", help="paper App. H analyses: copy-paste baseline, model reconstructions, mask pictures",
        description="Analyses of the mask-then-predict task (paper Appendix H).")
    sub = analyze.add_subparsers(title="analyze commands", metavar="COMMAND")
    analyze.set_defaults(run=lambda args: _print_help(analyze))

    copy = sub.add_parser(
        "copy-baseline", help="token accuracy of copying the nearest visible neighbour (paper Fig. 4)",
        description="Mask clips of a token store with block and i.i.d. masking at the same ratios, fill every "
        "masked token with its nearest visible neighbour (same frame / whole clip) and report the accuracy of "
        "that fill. With --tokenizer, also decode original | masked | copy-filled clips into a PNG per setting.")
    copy.add_argument("--store", required=True, metavar="STORE", help="token store folder")
    copy.add_argument("--tokenizer", metavar="DIR", help="the store's tokenizer folder: also draw PNG grids")
    copy.add_argument("--out", default="analysis/copy-baseline", metavar="DIR",
                      help="output folder for copy_baseline.json and the PNGs (default: analysis/copy-baseline)")
    copy.add_argument("--ratios", type=_ratio_list, default=(0.15, 0.30, 0.45), metavar="R,...",
                      help="target masking ratios (default: 0.15,0.30,0.45)")
    copy.add_argument("--videos", type=positive_int, default=16, help="clips evaluated, one per video (default: 16)")
    copy.add_argument("--frames", type=positive_int, default=5, help="clip length T in frames (default: 5)")
    copy.add_argument("--show", type=positive_int, default=1, help="clips drawn per PNG (default: 1)")
    copy.add_argument("--seed", type=int, default=0, help="seed of the clip choice and the masks")
    copy.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    copy.set_defaults(run=_run_copy_baseline)

    rec = sub.add_parser(
        "reconstruct", help="a model's predictions for masked tokens, decoded (paper Fig. 5)",
        description="Rows of original frames, the tokenizer round trip, the masked area highlighted, and the "
        "model's prediction decoded; writes reconstruction.png and reconstruction.gif.")
    rec.add_argument("checkpoint", metavar="CHECKPOINT", help="pre-training model folder (or a run folder with model/)")
    rec.add_argument("video", metavar="VIDEO", help="video file")
    rec.add_argument("--tokenizer", required=True, metavar="DIR", help="the tokenizer the model was trained on")
    rec.add_argument("--frames", type=positive_int, default=None, help="frames T (default: the model's max_frames)")
    rec.add_argument("--fps", type=positive_float, default=1.0,
                     help="frames per second to sample (default: 1, as Fig. 5)")
    rec.add_argument("--start", type=nonnegative_float, default=0.0, help="start time in seconds (default: 0)")
    rec.add_argument("--size", type=positive_int, default=None,
                     help="frame size S (default: the model's token grid x the tokenizer's downsample)")
    rec.add_argument("--strategy", choices=("block", "iid"), default="block", help="masking (default: block)")
    rec.add_argument("--ratio", type=open_ratio, default=0.15,
                     help="i.i.d. ratio, or the target block masking picks its block count for (default: 0.15)")
    rec.add_argument("--out", default="analysis/reconstruct", metavar="DIR", help="output folder")
    rec.add_argument("--seed", type=int, default=0, help="seed of the mask")
    rec.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    rec.set_defaults(run=_run_reconstruct)

    masks = sub.add_parser(
        "masks", help="pictures of sampled block / i.i.d. masks and the induced-ratio histogram",
        description="Draw sampled block and i.i.d. masks over (T, H, W), one row of frames per sample, and a "
        "histogram of the masked fraction over many samples with the exact expected ratio marked.")
    masks.add_argument("--frames", type=positive_int, default=5, help="T (default: 5)")
    masks.add_argument("--grid", type=positive_int, nargs=2, default=(16, 16), metavar=("H", "W"),
                       help="token grid (default: 16 16, 128-pixel frames)")
    masks.add_argument("--blocks", type=_blocks, default="auto", metavar="N|auto",
                       help="block count, or 'auto': the count whose expected ratio is closest to --ratio")
    masks.add_argument("--ratio", type=open_ratio, default=0.15, help="i.i.d. ratio and the 'auto' target (default: 0.15)")
    masks.add_argument("--samples", type=positive_int, default=4, help="masks drawn per kind (default: 4)")
    masks.add_argument("--histogram-samples", type=at_least(2), default=2000,
                       help="masks in the histogram (default: 2000)")
    masks.add_argument("--cell", type=positive_int, default=8, help="pixels per token in the pictures (default: 8)")
    masks.add_argument("--out", default="analysis/masks", metavar="DIR", help="output folder")
    masks.add_argument("--seed", type=int, default=0, help="seed of the sampled masks (default: 0)")
    masks.set_defaults(run=_run_masks)

    plot = subparsers.add_parser("plot", help="loss / accuracy / learning-rate curves of a run as PNG",
                                 description="Plot RUN_DIR/metrics.jsonl (train and val) into OUT/curves.png.")
    plot.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding metrics.jsonl")
    plot.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RUN_DIR/plots)")
    plot.set_defaults(run=_run_plot)


# ------------------------------------------------------------------------------------ handlers


def _run_copy_baseline(args: argparse.Namespace) -> int:
    from vimpac.analysis.copy_baseline import (PICTURE_NAME, REPORT_FILE, CopyBaselineConfig, draw_setting,
                                               load_clips, run_copy_baseline)
    from vimpac.analysis.outputs import staged_outputs
    from vimpac.io import atomic_write_json
    from vimpac.store.reader import TokenStore
    from vimpac.tokenizer.base import load_tokenizer

    def work() -> int:
        config = CopyBaselineConfig(ratios=tuple(args.ratios), videos=args.videos, frames=args.frames, seed=args.seed)
        out = _check_out_dir(args.out)
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        store = TokenStore.open(args.store, expect_tokenizer_id=tokenizer.tokenizer_id if tokenizer else None)
        result = run_copy_baseline(load_clips(store, config.frames, config.videos, config.seed), config)
        report = {"store": str(store.root), **result.to_json(), "pictures": {}}
        # Pictures of an earlier run into the same folder (other ratios, or pictures this run does
        # not draw) go: the folder holds this run's report and only the pictures it lists.
        with staged_outputs(out, ours=PICTURE_NAME.fullmatch, report=REPORT_FILE) as staging:
            if tokenizer is not None:
                for setting in result.settings:
                    name = f"copy_{setting.name}.png"
                    draw_setting(tokenizer, result.clips, setting, staging / name, args.show)
                    report["pictures"][setting.name] = str(out / name)
            atomic_write_json(staging / REPORT_FILE, report)
        print(json.dumps(report, indent=2) if args.json else result.format_table())
        if not args.json:
            print(f"report: {out / REPORT_FILE}" + (f"; pictures: {out}/copy_*.png" if tokenizer else ""))
        return 0

    return _guarded(args, work)


def _run_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from vimpac.analysis.errors import AnalysisError
    from vimpac.analysis.outputs import staged_outputs
    from vimpac.analysis.reconstruct import (OUTPUT_FILES, check_tokenizer, load_video_clip, reconstruct_clip,
                                             resolve_model_folder, save_reconstruction)
    from vimpac.devices import usable_device
    from vimpac.model.vimpac import VimpacForPretraining
    from vimpac.tokenizer.base import load_tokenizer
    from vimpac.video.errors import VideoTooShortError

    def work() -> int:
        # Before loading anything: a bad or absent device would otherwise surface as a torch traceback.
        args.device = usable_device(args.device, "--device")
        out = _check_out_dir(args.out)
        folder = resolve_model_folder(args.checkpoint)
        model = VimpacForPretraining.from_pretrained(folder, map_location=args.device)
        tokenizer = load_tokenizer(args.tokenizer, device=args.device)
        check_tokenizer(folder, tokenizer)
        cfg = model.config
        # `is None`, not `or`: an explicit value is used as given (argparse already refused 0).
        frames = cfg.max_frames if args.frames is None else args.frames
        size = cfg.height * tokenizer.downsample if args.size is None else args.size
        if frames > cfg.max_frames:
            raise AnalysisError(f"--frames {frames}: the model takes at most {cfg.max_frames} frames")
        if size % tokenizer.downsample:
            raise AnalysisError(f"--size {size}: expected a multiple of the tokenizer's downsample "
                                f"{tokenizer.downsample}")
        grid = size // tokenizer.downsample
        if grid > min(cfg.height, cfg.width):
            raise AnalysisError(f"--size {size}: {grid} x {grid} tokens do not fit the model's "
                                f"{cfg.height} x {cfg.width} grid; the largest size is "
                                f"{min(cfg.height, cfg.width) * tokenizer.downsample}")
        try:
            clip = load_video_clip(args.video, args.fps, frames, size, args.start)
        except VideoTooShortError as exc:  # --frames defaults to max_frames: say which options make a shorter clip
            default = " (default: the model's max_frames)" if args.frames is None else ""
            raise AnalysisError(f"{exc}; pass a smaller --frames{default}, a higher --fps or an earlier "
                                "--start") from None
        rec = reconstruct_clip(model, tokenizer, clip, args.strategy, args.ratio,
                               torch.Generator().manual_seed(args.seed))
        with staged_outputs(out, ours=OUTPUT_FILES.__contains__) as staging:  # the PNG and GIF of one run
            png, gif = (out / path.name for path in save_reconstruction(rec, staging))
        print(f"{int(rec.mask.sum())} of {rec.mask.numel()} tokens masked ({args.strategy}); model predicted "
              f"{rec.accuracy:.1%} of them exactly")
        print(f"wrote {png} and {gif}")
        return 0

    return _guarded(args, work)


def _run_masks(args: argparse.Namespace) -> int:
    from vimpac.analysis.masks import OUTPUT_FILES, check_mask_size, check_picture_size, draw_masks, sample_masks
    from vimpac.analysis.outputs import staged_outputs
    from vimpac.io import atomic_write_json

    def work() -> int:
        out = _check_out_dir(args.out)
        # Before any work: a huge --cell, --grid or --frames would otherwise exhaust memory.
        check_mask_size(args.frames, tuple(args.grid), args.blocks)
        check_picture_size(args.samples, args.frames, tuple(args.grid), args.cell)
        samples = sample_masks(args.frames, tuple(args.grid), args.blocks, args.ratio, args.samples,
                               args.histogram_samples, args.seed)
        summary = samples.to_json()
        with staged_outputs(out, ours=OUTPUT_FILES.__contains__, report="masks.json") as staging:
            paths = {k: out / v.name for k, v in draw_masks(samples, staging, args.cell).items()}
            atomic_write_json(staging / "masks.json", {**summary, "pictures": {k: str(v) for k, v in paths.items()}})
        print(f"{summary['num_blocks']} blocks at {args.frames} x {args.grid[0]} x {args.grid[1]}: expected ratio "
              f"{summary['expected_block_ratio']:.2%}, sampled {summary['block_ratio_mean']:.2%} "
              f"+- {summary['block_ratio_std']:.2%} (std over {summary['histogram_samples']} clips); "
              f"i.i.d. {summary['iid_ratio_mean']:.2%} +- {summary['iid_ratio_std']:.2%}")
        for path in paths.values():
            print(f"wrote {path}")
        return 0

    return _guarded(args, work)


def _run_plot(args: argparse.Namespace) -> int:
    from vimpac.analysis.curves import plot_curves

    def warn(message: str) -> None:
        print(f"vimpac plot: warning: {message}", file=sys.stderr)

    def work() -> int:
        out = _check_out_dir(args.out) if args.out is not None else None
        print(f"wrote {plot_curves(args.run_dir, out, warn=warn)}")
        return 0

    return _guarded(args, work)


# ------------------------------------------------------------------------------------ helpers


def _guarded(args: argparse.Namespace, work) -> int:
    """Run `work`, turning the package's typed input errors and file-system errors (a path that
    cannot be read or written) into one line on stderr and exit 2."""
    from vimpac.analysis.errors import AnalysisError
    from vimpac.config import ConfigError
    from vimpac.io import describe_os_error
    from vimpac.model.errors import ModelError
    from vimpac.pretrain.errors import PretrainError
    from vimpac.store.errors import StoreError
    from vimpac.tokenizer.base import TokenizerError
    from vimpac.video.errors import VideoError

    try:
        return work()
    except (AnalysisError, ConfigError, ModelError, PretrainError, StoreError, TokenizerError, VideoError) as exc:
        return command_error(args, exc)
    except OSError as exc:
        return command_error(args, describe_os_error(exc))


def _check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """`path` as an output folder: refused up front (naming `option`) when it, or the nearest
    existing folder above it, is a file, which would otherwise fail half-way with an OSError."""
    from vimpac.analysis.errors import AnalysisError

    path = Path(path)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
                raise AnalysisError(f"{option} {path}: {where}; expected a folder")
            break
    return path


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _ratio_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios like 0.15,0.30, got {text!r}") from None
    if not values or any(not 0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"ratios must lie in (0, 1), got {text!r}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(f'{v:g}' for v in repeated)} given more than once in {text!r}")
    return values


def _blocks(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive block count or 'auto', got {text!r}")
    return value
