"""Subcommands of the store area: `vimpac tokenize`, `vimpac store verify`, `vimpac store info`.

Only argparse here at import time; handlers import the pipeline (torch, PyAV) when they run.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    tok = subparsers.add_parser(
        "tokenize",
        help="decode videos at an FPS, make views, encode them into a token store (resumable)",
        description="Tokenize the videos of an annotation list into a sharded token store. Rerunning "
        "the same command resumes an interrupted run; under torchrun each rank takes its share.",
    )
    tok.add_argument("--videos", required=True, metavar="ROOT", help="folder the annotation paths are relative to")
    tok.add_argument("--list", required=True, metavar="ANNOTATIONS", help="annotation file or folder")
    tok.add_argument("--format", default="auto", help="annotation format (default: auto-detect)")
    tok.add_argument("--split", type=int, default=None, help="official split number (UCF101, HMDB51)")
    tok.add_argument("--subset", choices=("train", "test"), default=None, help="subset of the split")
    tok.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (tokenizer.json + model.safetensors)")
    tok.add_argument("--fps", type=float, required=True, help="frames per second to sample")
    tok.add_argument("--size", type=int, required=True, help="frame size S of the S x S views")
    tok.add_argument("--views", default="center", help="view set: center, all12, noflip6 (or view names, comma-separated)")
    tok.add_argument("--out", required=True, metavar="STORE", help="store folder (created, or resumed)")
    tok.add_argument("--workers", type=int, default=2, help="decoding processes (0: decode in the main process)")
    tok.add_argument("--batch-size", type=int, default=64, help="frames per encoder call (all full but the last; one input shape for the encoder)")
    tok.add_argument("--device", default="cpu", help="encoder device: cpu or cuda (cuda:LOCAL_RANK under torchrun)")
    tok.add_argument("--min-frames", type=int, default=1, help="videos with fewer frames at --fps are listed as failed")
    tok.add_argument("--retry-failed", action="store_true", help="retry videos that failed in an earlier run")
    tok.add_argument("--no-progress", action="store_true", help="no progress bar")
    tok.set_defaults(run=run_tokenize)

    store = subparsers.add_parser("store", help="inspect a token store (verify, info)")
    store_sub = store.add_subparsers(title="store commands", metavar="COMMAND")
    verify = store_sub.add_parser("verify", help="check every checksum, shard bounds and the manifest; exit 1 on problems")
    verify.add_argument("store", metavar="STORE")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(run=run_verify)
    info = store_sub.add_parser("info", help="summarise a store: videos, entries, frames, tokenizer, failures")
    info.add_argument("store", metavar="STORE")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(run=run_info)
    store.set_defaults(run=lambda args: _print_help(store))


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_tokenize(args: argparse.Namespace) -> int:
    from vimpac.data.annotations import AnnotationError, load_annotations
    from vimpac.engine.distributed import init_distributed
    from vimpac.store.errors import StoreError
    from vimpac.store.tokenize import tokenize_videos
    from vimpac.tokenizer.base import TokenizerError, load_tokenizer

    device = args.device
    try:
        dist = init_distributed("cpu")  # gloo: ranks only exchange barriers
        if device.startswith("cuda") and dist.enabled and ":" not in device:
            device = f"cuda:{dist.local_rank}"
        options = {}
        if args.split is not None:
            options["split"] = args.split
        if args.subset is not None:
            options["subset"] = args.subset
        annotations = load_annotations(args.format, args.list, **options)
        tokenizer = load_tokenizer(args.tokenizer, device=device)
        report = tokenize_videos(
            annotations, args.videos, tokenizer, fps=args.fps, size=args.size, views=args.views,
            out_dir=args.out, workers=args.workers, batch_size=args.batch_size, rank=dist.rank,
            world_size=dist.world_size, progress=not args.no_progress, retry_failed=args.retry_failed,
            min_frames=args.min_frames,
        )
    except (StoreError, AnnotationError, TokenizerError, ValueError) as exc:
        print(f"vimpac tokenize: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    if report.failures:
        print(f"{len(report.failures)} video(s) failed; reasons in {args.out}/failures.jsonl", file=sys.stderr)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from vimpac.store.verify import report_to_json, verify_store

    report = verify_store(args.store)
    if args.json:
        print(json.dumps(report_to_json(report), indent=2))
    else:
        for note in report.notes:
            print(f"note: {note}")
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
        status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"{report.store}: {report.videos} videos, {report.entries} entries, "
              f"{report.bytes_checked} token bytes checked: {status}")
    return 0 if report.ok else 1


def run_info(args: argparse.Namespace) -> int:
    from vimpac.store.errors import StoreError
    from vimpac.store.verify import format_info, store_info

    try:
        info = store_info(args.store)
    except StoreError as exc:
        print(f"vimpac store info: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
