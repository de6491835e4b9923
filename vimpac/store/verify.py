"""`verify_store` (every checksum, shard bounds, manifest consistency) and `store_info`."""

from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vimpac.store.errors import StoreError
from vimpac.store.format import (
    FAILURES_FILE, MANIFEST_FILE, PART_DIR, SHARD_DIR, TOKEN_DTYPE, load_manifest,
    parse_shard_name, read_meta,
)


@dataclass
class VerifyReport:
    store: str
    entries: int = 0
    videos: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: str | os.PathLike) -> VerifyReport:
    """Check a store end to end; problems are collected (not raised) so all are reported.

    Problems: unreadable store.json / manifest, an entry outside its shard, overlapping
    entries, a missing shard, a video lacking one of the store's views, a label outside the
    class list, a checksum mismatch, a video listed twice or out of record order. Notes (not problems): bytes past the last committed entry
    of a shard (left by an interrupted run; the next run truncates them), unmerged parts.
    """
    root = Path(path)
    report = VerifyReport(store=str(root))
    try:
        meta = read_meta(root)
        manifest, parts = load_manifest(root)
    except StoreError as exc:
        report.problems.append(str(exc))
        return report
    report.entries, report.videos = manifest.num_entries, len(manifest.video_key)
    if parts:
        report.notes.append(f"{len(parts)} manifest part(s) not yet merged into {MANIFEST_FILE} "
                            "(a run is in progress, was interrupted, or ranks ran without torch.distributed; "
                            "once no run writes the store, `vimpac store compact` merges them)")
    per_frame = meta.tokens_per_frame * TOKEN_DTYPE.itemsize
    shard_sizes: dict[int, int | None] = {}
    for s, name in enumerate(manifest.shards):
        shard_path = root / SHARD_DIR / name
        shard_sizes[s] = shard_path.stat().st_size if shard_path.is_file() else None
        if shard_sizes[s] is None:
            report.problems.append(f"{shard_path}: shard named by the manifest is missing")
    views_of: dict[int, list[int]] = {}
    spans: dict[int, list[tuple[int, int, int]]] = {}
    handles: dict[int, Any] = {}
    try:
        for i in range(manifest.num_entries):
            video, view = manifest.entry_video[i], manifest.entry_view[i]
            key = manifest.video_key[video]
            where = f"entry {i} ({key}, view {view})"
            views_of.setdefault(video, []).append(view)
            if not 0 <= view < len(meta.views):
                report.problems.append(f"{where}: view index outside the store's {len(meta.views)} views")
            shard = manifest.entry_shard[i]
            offset, frames = manifest.entry_offset[i], manifest.entry_frames[i]
            nbytes = frames * per_frame
            size = shard_sizes[shard]
            if size is None:
                continue
            if frames < 1 or offset < 0 or offset % TOKEN_DTYPE.itemsize or offset + nbytes > size:
                report.problems.append(f"{where}: bytes [{offset}, {offset + nbytes}) do not fit shard "
                                       f"{manifest.shards[shard]} ({size} bytes)")
                continue
            spans.setdefault(shard, []).append((offset, offset + nbytes, i))
            if shard not in handles:
                handles[shard] = open(root / SHARD_DIR / manifest.shards[shard], "rb")
            handle = handles[shard]
            handle.seek(offset)
            data = handle.read(nbytes)
            report.bytes_checked += len(data)
            if zlib.crc32(data) != manifest.entry_crc32[i]:
                report.problems.append(f"{where}: checksum mismatch in shard {manifest.shards[shard]} at "
                                       f"offset {offset} (crc32 {zlib.crc32(data):08x}, manifest says "
                                       f"{manifest.entry_crc32[i]:08x})")
    finally:
        for handle in handles.values():
            handle.close()
    for shard, items in spans.items():
        items.sort()
        for (start_a, end_a, a), (start_b, _end_b, b) in zip(items, items[1:]):
            if start_b < end_a:
                report.problems.append(f"shard {manifest.shards[shard]}: entries {a} and {b} overlap")
        end = max(e for _, e, _ in items)
        if shard_sizes[shard] is not None and shard_sizes[shard] > end:
            report.notes.append(f"shard {manifest.shards[shard]}: {shard_sizes[shard] - end} uncommitted "
                                "byte(s) after the last entry (an interrupted run; the next run truncates them)")
    expected = list(range(len(meta.views)))
    for video, views in views_of.items():
        if sorted(views) != expected:
            report.problems.append(f"video {manifest.video_key[video]!r}: has views {sorted(views)}, "
                                   f"expected each of {expected} once")
    report.problems.extend(_record_order_problems(manifest))
    if meta.class_names is not None:
        n = len(meta.class_names)
        for video, label in enumerate(manifest.video_label):
            if label >= n:
                report.problems.append(f"video {manifest.video_key[video]!r}: label {label} outside the "
                                       f"{n} class names")
    for path in (root / SHARD_DIR).glob("*.tok") if (root / SHARD_DIR).is_dir() else []:
        if parse_shard_name(path.name) and path.name not in manifest.shards and path.stat().st_size:
            report.notes.append(f"shard {path.name}: {path.stat().st_size} byte(s) that no entry names "
                                "(an interrupted run; the next run truncates them)")
    return report


MAX_LISTED = 10  # per kind of record problem; a store mixed from two lists could have millions


def _record_order_problems(manifest: Any) -> list[str]:
    """Videos must be listed once each, by strictly increasing record number (their position
    in the annotation list). A repeated record number or a step back means the store holds
    videos of two different annotation lists (a resume after the list changed)."""
    problems: list[str] = []
    counts = {"duplicate key": 0, "same record": 0, "out of order": 0}
    seen: dict[str, int] = {}

    def add(kind: str, text: str) -> None:
        counts[kind] += 1
        if counts[kind] <= MAX_LISTED:
            problems.append(text)

    keys, records = manifest.video_key, manifest.video_record
    for video, key in enumerate(keys):
        if key in seen:
            add("duplicate key", f"video {key!r}: listed twice (videos {seen[key]} and {video})")
        seen.setdefault(key, video)
        if video == 0:
            continue
        before, now = records[video - 1], records[video]
        if now == before:
            add("same record", f"videos {keys[video - 1]!r} and {key!r}: both have record number {now} "
                "(the store mixes two annotation lists)")
        elif now < before:
            add("out of order", f"video {key!r}: record number {now} after {before} ({keys[video - 1]!r}); "
                "videos must follow the annotation list (the store mixes two annotation lists)")
    for kind, count in counts.items():
        if count > MAX_LISTED:
            problems.append(f"... and {count - MAX_LISTED} more video(s) with the problem '{kind}'")
    return problems


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-able summary of a store (no checksums read: see `verify_store`)."""
    root = Path(path)
    meta = read_meta(root)
    manifest, parts = load_manifest(root)
    frames = sum(manifest.entry_frames)
    disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {
        "store": str(root),
        "videos": len(manifest.video_key),
        "entries": manifest.num_entries,
        "views": list(meta.views),
        "frames": frames,
        "tokens": frames * meta.tokens_per_frame,
        "disk_bytes": disk,
        "shards": len(manifest.shards),
        "unmerged_parts": len(parts),
        "tokenizer": {"id": meta.tokenizer_id, "kind": meta.tokenizer_kind,
                      "codebook_size": meta.codebook_size, "downsample": meta.downsample},
        "fps": meta.fps,
        "size": meta.size,
        "grid": list(meta.grid),
        "source": meta.source,
        "num_classes": None if meta.class_names is None else len(meta.class_names),
        "labelled_videos": sum(1 for label in manifest.video_label if label >= 0),
        "failures": len(manifest.failures),
        "failure_kinds": _count(f.get("error", "?") for f in manifest.failures),
        "created": meta.created,
    }


def format_info(info: dict[str, Any]) -> str:
    tok = info["tokenizer"]
    lines = [
        f"store      {info['store']}",
        f"videos     {info['videos']}  ({info['labelled_videos']} labelled"
        + (f", {info['num_classes']} classes)" if info["num_classes"] is not None else ")"),
        f"entries    {info['entries']}  ({len(info['views'])} view(s): {', '.join(info['views'])})",
        f"frames     {info['frames']}  ({info['tokens']} tokens, grid {info['grid'][0]}x{info['grid'][1]})",
        f"disk       {_human(info['disk_bytes'])} in {info['shards']} shard(s)",
        f"tokenizer  {tok['kind']} {tok['id']} ({tok['codebook_size']} codes, /{tok['downsample']})",
        f"fps        {info['fps']:g}",
        f"size       {info['size']}",
        f"source     {info['source']}",
        f"failures   {info['failures']}" + (f"  {info['failure_kinds']}  (see {FAILURES_FILE})"
                                             if info["failures"] else ""),
    ]
    if info["unmerged_parts"]:
        lines.append(f"note       {info['unmerged_parts']} unmerged manifest part(s) in {PART_DIR}/ (once no run "
                     f"writes the store, `vimpac store compact {info['store']}` merges them)")
    return "\n".join(lines)


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[str(item)] = counts.get(str(item), 0) + 1
    return counts


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def report_to_json(report: VerifyReport) -> dict[str, Any]:
    return {**asdict(report), "ok": report.ok}


__all__ = ["VerifyReport", "verify_store", "store_info", "format_info", "report_to_json"]
