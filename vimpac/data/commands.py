"""Subcommands of the data area (`vimpac make-synthetic`, ...)."""

from __future__ import annotations

import argparse
import sys

from vimpac.cli import command_error


def _size(text: str) -> tuple[int, int]:
    """'128x96' -> (128, 96) as (height, width); '128' -> (128, 128). Each side even (H.264's
    4:2:0 chroma) and >= 32 (what `SyntheticConfig` accepts)."""
    expected = f"expected HxW in pixels, each side even and >= 32 (e.g. 128x128), got {text!r}"
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(expected) from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or any(v < 32 or v % 2 for v in values):
        raise argparse.ArgumentTypeError(expected)
    return values[0], values[1]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-synthetic",
        help="generate the synthetic temporally-heavy benchmark (labelled clips + uncurated long videos)",
        description=(
            "Render a labelled video benchmark whose classes differ only in motion and temporal order "
            "(moving left vs right, approaching vs receding, ...), as H.264 .mp4 files with MMAction2-style "
            "train.txt / val.txt / classes.txt, plus long unlabelled 'uncurated' videos for pre-training. "
            "Re-running into the same folder resumes: existing videos are kept."
        ),
    )
    parser.add_argument("--out", required=True,
                        help="output folder: new, empty, or one make-synthetic wrote (resumed)")
    parser.add_argument(
        "--preset", default="default", choices=("default", "small", "tiny"),
        help="starting config: default (128x128), small (64x64) or tiny (seconds to make); flags below override it",
    )
    parser.add_argument("--train-per-class", type=int, metavar="N", help="training clips per class (default 40)")
    parser.add_argument("--val-per-class", type=int, metavar="N", help="validation clips per class (default 15)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--frames", type=int, metavar="N", help="frames per labelled clip (default 32)")
    length.add_argument("--seconds", type=float, metavar="S", help="seconds per labelled clip (default 4)")
    parser.add_argument("--fps", type=float, metavar="F", help="source frame rate of every video (default 8)")
    parser.add_argument("--size", type=_size, metavar="HxW",
                        help="frame size in pixels, each side even and >= 32 (default 128x128)")
    parser.add_argument("--seed", type=int, metavar="S", help="base seed; every video is seeded from (seed, split, class, index)")
    parser.add_argument("--classes", metavar="A,B,...", help="comma-separated subset of the class names (default: all 14)")
    parser.add_argument("--backgrounds", choices=("photos", "plain", "noise"), help="background kind (default photos)")
    parser.add_argument("--codec", choices=("h264", "mpeg4"), help="video codec (default h264)")
    parser.add_argument("--uncurated-videos", type=int, metavar="N", help="long unlabelled videos (default 40; 0 = none)")
    parser.add_argument("--uncurated-seconds", type=float, metavar="S", help="length of each uncurated video (default 30)")
    parser.add_argument("--workers", type=int, metavar="N", help="parallel processes (default min(2, CPU count))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_make_synthetic)


def _run_make_synthetic(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from vimpac.config import ConfigError
    from vimpac.data.synthetic import (
        SYNTHETIC_PRESETS,
        BackgroundError,
        SyntheticError,
        check_output_folder,
        generate_benchmark,
        generate_uncurated,
        remove_uncurated_lists,
    )

    base = SYNTHETIC_PRESETS[args.preset]
    changes: dict[str, object] = {}
    for arg, name in (
        ("train_per_class", "train_per_class"), ("val_per_class", "val_per_class"), ("frames", "num_frames"),
        ("fps", "fps"), ("seed", "seed"), ("backgrounds", "backgrounds"), ("codec", "codec"),
        ("uncurated_videos", "uncurated_videos"), ("uncurated_seconds", "uncurated_seconds"),
    ):
        if getattr(args, arg) is not None:
            changes[name] = getattr(args, arg)
    if args.seconds is not None:
        changes["num_frames"] = int(round(args.seconds * changes.get("fps", base.fps)))
    if args.size is not None:
        changes["height"], changes["width"] = args.size
    if args.classes:
        changes["classes"] = tuple(name.strip() for name in args.classes.split(",") if name.strip())
    if args.workers is not None and args.workers < 1:
        return command_error(args, "--workers: expected >= 1")
    try:
        cfg = dataclasses.replace(base, **changes)
        check_output_folder(args.out)
        summary = generate_benchmark(args.out, cfg, progress=not args.no_progress, workers=args.workers)
        if cfg.uncurated_videos:
            summary = summary.merge(generate_uncurated(args.out, cfg, progress=not args.no_progress, workers=args.workers))
        else:
            removed = remove_uncurated_lists(args.out)
    except (ConfigError, SyntheticError, BackgroundError) as exc:
        return command_error(args, exc)
    print(summary.format_table())
    if not cfg.uncurated_videos and removed:
        print(f"note: removed {' and '.join(removed)} of an earlier run (--uncurated-videos 0); its videos stay in "
              f"{Path(args.out) / 'uncurated'}, unlisted", file=sys.stderr)
    return 0
