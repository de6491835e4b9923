"""Subcommands of the store area: `vimpac tokenize`, `vimpac store verify|info|compact`.

Only argparse here at import time; handlers import the pipeline (torch, PyAV) when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vimpac.argtypes import at_least, nonnegative_float, positive_float, positive_int
from vimpac.cli import command_error
from vimpac.data.annotations import FORMATS, KINETICS_LAYOUTS  # standard library only: cheap at start-up

# The tokenize options each annotation format takes. Any other option given is refused by
# name: passed on, it surfaced as a TypeError from the reader.
FORMAT_OPTIONS: dict[str, tuple[str, ...]] = {
    "mmaction": ("--class-names",),
    "ucf101": ("--split", "--subset"),
    "hmdb51": ("--split", "--subset"),
    "ssv2": ("--labels-json",),
    "diving48": ("--labels-json",),
    "kinetics400": ("--subset", "--class-names", "--layout", "--underscore-labels"),
    "howto100m": ("--extension",),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    tok = subparsers.add_parser(
        "tokenize",
        help="decode videos at an FPS, make views, encode them into a token store (resumable)",
        description="Tokenize the videos of an annotation list into a sharded token store. Rerunning "
        "the same command resumes an interrupted run; under torchrun each rank takes its share.",
    )
    tok.add_argument("--videos", required=True, metavar="ROOT", help="folder the annotation paths are relative to")
    tok.add_argument("--list", required=True, metavar="ANNOTATIONS", help="annotation file or folder")
    tok.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                     help="annotation format (default: auto-detect)")
    tok.add_argument("--split", type=positive_int, default=None, help="official split number (ucf101, hmdb51)")
    tok.add_argument("--subset", choices=("train", "val", "test"), default=None,
                     help="subset of the split: train|test (ucf101, hmdb51), or the rows of the CSV's split "
                          "column to keep (kinetics400)")
    tok.add_argument("--class-names", default=None, metavar="FILE",
                     help="class names, one per line, line i naming label i (mmaction, kinetics400); without "
                          "it an MMAction2 list gets class_0..class_<max label>, which is too few when a split "
                          "lacks the highest classes")
    tok.add_argument("--labels-json", default=None, metavar="FILE",
                     help="the label-name json: SSv2's something-something-v2-labels.json, Diving48's "
                          "Diving48_vocab.json (default: found next to the list)")
    tok.add_argument("--layout", choices=KINETICS_LAYOUTS, default=None,
                     help="kinetics400: folders of the videos under ROOT (default split/label)")
    tok.add_argument("--underscore-labels", action="store_true",
                     help="kinetics400: label folders use '_' for spaces")
    tok.add_argument("--extension", default=None, metavar=".EXT",
                     help="howto100m: file suffix of the videos (default .mp4)")
    tok.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (tokenizer.json + model.safetensors)")
    tok.add_argument("--fps", type=positive_float, required=True, help="frames per second to sample")
    tok.add_argument("--size", type=positive_int, required=True, help="frame size S of the S x S views")
    tok.add_argument("--views", default="center", help="view set: center, all12, noflip6 (or view names, comma-separated)")
    tok.add_argument("--out", required=True, metavar="STORE", help="store folder (created, or resumed)")
    tok.add_argument("--workers", type=at_least(0), default=2, help="decoding processes (0: decode in the main process)")
    tok.add_argument("--decode-timeout", type=nonnegative_float, default=None, metavar="SECONDS",
                     help="a decoding worker that sends no frames for this long (a stalled read, a decoder that "
                          "hangs) is stopped and its video listed as failed, error timeout (default 600; 0: no "
                          "limit); needs --workers 1 or more: with 0 the main process decodes and cannot stop itself")
    tok.add_argument("--batch-size", type=positive_int, default=64, help="frames per encoder call (all full but the last; one input shape for the encoder)")
    tok.add_argument("--device", default="cpu",
                     help="encoder device: cpu (default), cuda, cuda:N or auto (cuda is cuda:LOCAL_RANK under torchrun)")
    tok.add_argument("--min-frames", type=positive_int, default=1, help="videos with fewer frames at --fps are listed as failed")
    tok.add_argument("--retry-failed", action="store_true",
                     help="retry videos that failed in an earlier run (a missing file is retried by itself once it exists)")
    tok.add_argument("--no-progress", action="store_true", help="no progress bar")
    tok.set_defaults(run=run_tokenize)

    store = subparsers.add_parser("store", help="inspect a token store (verify, info), merge its manifest (compact)")
    store_sub = store.add_subparsers(title="store commands", metavar="COMMAND")
    verify = store_sub.add_parser("verify", help="check every checksum, shard bounds and the manifest; exit 1 on problems "
                                  "(2 when STORE is not a store)")
    verify.add_argument("store", metavar="STORE", help="token store folder")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(run=run_verify)
    info = store_sub.add_parser("info", help="summarise a store: videos, entries, frames, tokenizer, failures")
    info.add_argument("store", metavar="STORE", help="token store folder")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(run=run_info)
    compact = store_sub.add_parser(
        "compact", help="merge the manifest parts into manifest.json (after ranks ran as separate jobs, "
        "or an interrupted run), rewriting a manifest.json of older versions with a columns file; refused "
        "while a run writes the store")
    compact.add_argument("store", metavar="STORE", help="token store folder")
    compact.set_defaults(run=run_compact)
    store.set_defaults(run=lambda args: _print_help(store))


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_tokenize(args: argparse.Namespace) -> int:
    from vimpac.config import ConfigError
    from vimpac.data.annotations import AnnotationError, load_annotations
    from vimpac.devices import usable_device
    from vimpac.engine.distributed import init_distributed
    from vimpac.signals import exit_code
    from vimpac.store.errors import StoreError
    from vimpac.store.tokenize import RANK_WAIT_LIMIT, check_decode_timeout, tokenize_videos
    from vimpac.tokenizer.base import TokenizerError, load_tokenizer

    device = args.device
    try:
        check_decode_timeout(args.decode_timeout, args.workers)  # before the list and the tokenizer are loaded
        device = usable_device(device, "--device")
        fmt, options = _reader_options(args)
        dist = init_distributed("cpu", timeout=RANK_WAIT_LIMIT)  # gloo: ranks only exchange barriers
        if device.startswith("cuda") and dist.enabled and ":" not in device:
            device = f"cuda:{dist.local_rank}"
        annotations = load_annotations(fmt, args.list, **options)
        for note in annotations.notes if dist.is_main else ():
            print(f"vimpac tokenize: note: {note}", file=sys.stderr)
        tokenizer = load_tokenizer(args.tokenizer, device=device)
        report = tokenize_videos(
            annotations, args.videos, tokenizer, fps=args.fps, size=args.size, views=args.views,
            out_dir=args.out, workers=args.workers, batch_size=args.batch_size, rank=dist.rank,
            world_size=dist.world_size, progress=not args.no_progress, retry_failed=args.retry_failed,
            min_frames=args.min_frames, annotation_files=[args.list], stop_on_signals=True,
            decode_timeout=args.decode_timeout,
        )
    except (StoreError, AnnotationError, TokenizerError, ConfigError, ValueError) as exc:
        return command_error(args, exc)
    except KeyboardInterrupt:  # a second Ctrl-C / SIGTERM: stopped at once
        print(f"vimpac tokenize: interrupted; the videos committed so far are kept in {args.out}; "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    print(report.summary())
    if report.failures:
        print(f"{len(report.failures)} video(s) failed; reasons in {args.out}/failures.jsonl", file=sys.stderr)
    if report.interrupted is not None:
        print(f"vimpac tokenize: stopped by {report.interrupted} after committing what was decoded; rerun "
              "the same command to resume", file=sys.stderr)
        return exit_code(report.interrupted)
    if report.all_failed:
        first = report.failures[0]
        return command_error(args, f"every video of this run failed ({len(report.failures)}); check --videos "
                                   f"{args.videos} (the annotation paths are relative to it) and the list. First: "
                                   f"{first.get('path')}: {first.get('reason')}", code=1)
    return 0


def _reader_options(args: argparse.Namespace) -> tuple[str, dict]:
    """(format, reader keyword arguments) from the tokenize options; an option that the
    (given or detected) format does not take is a ValueError naming it."""
    from vimpac.data.annotations import detect_format, read_class_names

    fmt = args.format
    detected = ""
    if fmt == "auto":
        fmt, _implied = detect_format(args.list)
        detected = f" (detected from {args.list}; --format sets it)"
    given = {"--split": args.split, "--subset": args.subset, "--class-names": args.class_names,
             "--labels-json": args.labels_json, "--layout": args.layout,
             "--underscore-labels": args.underscore_labels or None, "--extension": args.extension}
    accepted = FORMAT_OPTIONS[fmt]
    refused = [name for name, value in given.items() if value is not None and name not in accepted]
    if refused:
        takes = ", ".join(accepted) if accepted else "none of them"
        raise ValueError(f"{', '.join(refused)}: not an option of the {fmt} annotation format{detected}; "
                         f"{fmt} takes {takes}")
    if args.subset == "val" and fmt in ("ucf101", "hmdb51"):
        raise ValueError(f"--subset val: {fmt} has the subsets train and test")
    options: dict = {}
    if args.split is not None:
        options["split"] = args.split
    if args.subset is not None:
        options["subset"] = args.subset
    if args.class_names is not None:
        if fmt == "mmaction":
            options["class_names_path"] = args.class_names
        else:
            options["class_names"] = read_class_names(args.class_names)
    if args.labels_json is not None:
        options["labels_json" if fmt == "ssv2" else "vocab_json"] = args.labels_json
    if args.layout is not None:
        options["layout"] = args.layout
    if args.underscore_labels:
        options["underscore_labels"] = True
    if args.extension is not None:
        options["extension"] = args.extension
    if fmt == "mmaction" and args.class_names is None:
        beside = Path(args.list).parent / "classes.txt"
        if beside.is_file():
            print(f"vimpac tokenize: note: class names will be class_0..class_<max label>; pass "
                  f"--class-names {beside} to use the names in it", file=sys.stderr)
    return fmt, options


def run_verify(args: argparse.Namespace) -> int:
    from vimpac.store.errors import StoreError
    from vimpac.store.verify import report_to_json, verify_store

    try:
        report = verify_store(args.store)
    except StoreError as exc:  # not a store at all; a store's own problems are in the report
        return command_error(args, exc)
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
        return command_error(args, exc)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def run_compact(args: argparse.Namespace) -> int:
    from vimpac.store.errors import StoreError
    from vimpac.store.format import MANIFEST_FILE
    from vimpac.store.writer import compact_idle_store

    try:
        manifest, parts, rewritten = compact_idle_store(Path(args.store))
    except StoreError as exc:
        return command_error(args, exc)
    done = (f"merged {parts} manifest part(s) into {MANIFEST_FILE}" if parts
            else f"rewrote the {MANIFEST_FILE} of an older version with a columns file (less memory to open)"
            if rewritten else f"nothing to merge: {MANIFEST_FILE} is up to date")
    print(f"{args.store}: {done}; {len(manifest.video_key)} videos, {manifest.num_entries} entries, "
          f"{len(manifest.failures)} failed")
    return 0
