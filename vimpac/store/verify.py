"""`verify_store` (every checksum, shard bounds, manifest consistency) and `store_info`."""

from __future__ import annotations

import itertools
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vimpac.store.errors import StoreError
from vimpac.store.format import (
    FAILURES_FILE, MANIFEST_FILE, META_FILE, PART_DIR, SHARD_DIR, TOKEN_DTYPE, ManifestColumns,
    first_appearances, load_manifest_columns, parse_shard_name, read_meta, strictly_ordered,
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
    A StoreError when `path` is not a store at all (no folder, or no store.json in it).

    The manifest is held as int64 columns; the checks run on them, and entries are turned into
    Python ints VERIFY_CHUNK at a time to read their bytes, so memory does not grow by a Python
    int per value (a list-based verify of 2.4M entries peaked at 794 MiB, now 188: docs/benchmarks.md).
    """
    root = Path(path)
    _check_is_store(root)
    report = VerifyReport(store=str(root))
    try:
        meta = read_meta(root)
        manifest, parts = load_manifest_columns(root)
    except StoreError as exc:
        report.problems.append(str(exc))
        return report
    report.entries, report.videos = manifest.num_entries, len(manifest.video_key)
    if parts:
        report.notes.append(f"{len(parts)} manifest part(s) not yet merged into {MANIFEST_FILE} "
                            "(a run is in progress, was interrupted, or ranks ran without torch.distributed; "
                            "once no run writes the store, `vimpac store compact` merges them)")
    per_frame = meta.tokens_per_frame * TOKEN_DTYPE.itemsize
    shard_sizes: list[int | None] = []
    for name in manifest.shards:
        shard_path = root / SHARD_DIR / name
        shard_sizes.append(shard_path.stat().st_size if shard_path.is_file() else None)
        if shard_sizes[-1] is None:
            report.problems.append(f"{shard_path}: shard named by the manifest is missing")
    inside = _check_entries(root, manifest, len(meta.views), per_frame, shard_sizes, report)
    _check_overlaps(manifest, inside, per_frame, shard_sizes, report)
    report.problems.extend(_view_problems(manifest, len(meta.views)))
    report.problems.extend(_record_order_problems(manifest))
    if meta.class_names is not None:
        n = len(meta.class_names)
        for video in np.flatnonzero(manifest.video_label >= n).tolist():
            report.problems.append(f"video {manifest.video_key[video]!r}: label {int(manifest.video_label[video])} "
                                   f"outside the {n} class names")
    for path in (root / SHARD_DIR).glob("*.tok") if (root / SHARD_DIR).is_dir() else []:
        if parse_shard_name(path.name) and path.name not in manifest.shards and path.stat().st_size:
            report.notes.append(f"shard {path.name}: {path.stat().st_size} byte(s) that no entry names "
                                "(an interrupted run; the next run truncates them)")
    return report


VERIFY_CHUNK = 1 << 12  # entries whose columns are Python ints at a time while their bytes are read


def _check_is_store(root: Path) -> None:
    """A StoreError unless `root` is a folder with a store.json: a wrong path is a usage error,
    not a problem of a store."""
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise StoreError(f"{root}: {what}; expected a token store folder")
    if not (root / META_FILE).exists():
        raise StoreError(f"{root}: not a token store ({META_FILE} not found)")


def _check_entries(root: Path, manifest: ManifestColumns, num_views: int, per_frame: int,
                   shard_sizes: list[int | None], report: VerifyReport) -> np.ndarray:
    """Entry by entry: its view number, that its bytes lie inside its shard, and their crc32.
    Returns which entries lie inside their shards (a bool per entry)."""
    inside = np.zeros(manifest.num_entries, dtype=bool)
    handles: dict[int, Any] = {}
    names = ("video", "view", "shard", "offset", "frames", "crc32")
    try:
        for first in range(0, manifest.num_entries, VERIFY_CHUNK):
            chunk = slice(first, first + VERIFY_CHUNK)
            columns = [getattr(manifest, f"entry_{name}")[chunk].tolist() for name in names]
            for i, video, view, shard, offset, frames, crc in zip(itertools.count(first), *columns):
                if not 0 <= view < num_views:
                    report.problems.append(f"{_where(manifest, i, video, view)}: view index outside the store's "
                                           f"{num_views} views")
                nbytes = frames * per_frame
                size = shard_sizes[shard]
                if size is None:
                    continue
                if frames < 1 or offset < 0 or offset % TOKEN_DTYPE.itemsize or offset + nbytes > size:
                    report.problems.append(f"{_where(manifest, i, video, view)}: bytes [{offset}, {offset + nbytes}) "
                                           f"do not fit shard {manifest.shards[shard]} ({size} bytes)")
                    continue
                inside[i] = True
                if shard not in handles:
                    handles[shard] = open(root / SHARD_DIR / manifest.shards[shard], "rb")
                handle = handles[shard]
                handle.seek(offset)
                data = handle.read(nbytes)
                report.bytes_checked += len(data)
                if zlib.crc32(data) != crc:
                    report.problems.append(f"{_where(manifest, i, video, view)}: checksum mismatch in shard "
                                           f"{manifest.shards[shard]} at offset {offset} (crc32 "
                                           f"{zlib.crc32(data):08x}, manifest says {crc:08x})")
    finally:
        for handle in handles.values():
            handle.close()
    return inside


def _where(manifest: ManifestColumns, i: int, video: int, view: int) -> str:
    return f"entry {i} ({manifest.video_key[video]}, view {view})"


def _check_overlaps(manifest: ManifestColumns, inside: np.ndarray, per_frame: int,
                    shard_sizes: list[int | None], report: VerifyReport) -> None:
    """Entries (those inside their shards) that overlap, as problems, and bytes after a shard's
    last entry, as notes; shard by shard in the order the entries first name them."""
    entries = np.flatnonzero(inside)
    shard = manifest.entry_shard[entries]
    used = first_appearances(shard, len(manifest.shards))
    if not strictly_ordered(shard, entries):  # ranks' shards interleaved: group them (a merged rank's are in order)
        by_shard = np.argsort(shard, kind="stable")
        entries, shard = entries[by_shard], shard[by_shard]
    bounds = [(np.searchsorted(shard, s, side="left"), np.searchsorted(shard, s, side="right")) for s in used]
    del shard
    for s, (lo, hi) in zip(used, bounds):
        of_shard = entries[lo:hi]
        start = manifest.entry_offset[of_shard]
        end = manifest.entry_frames[of_shard]
        end *= per_frame  # inside a shard: no overflow
        end += start
        if not np.all(start[1:] > start[:-1]):  # by (start, end, entry), the order overlaps are looked for in
            order = np.lexsort((of_shard, end, start))
            of_shard, start, end = of_shard[order], start[order], end[order]
        for k in np.flatnonzero(start[1:] < end[:-1]).tolist():
            report.problems.append(f"shard {manifest.shards[s]}: entries {int(of_shard[k])} and "
                                   f"{int(of_shard[k + 1])} overlap")
        last = int(end.max())
        if shard_sizes[s] is not None and shard_sizes[s] > last:
            report.notes.append(f"shard {manifest.shards[s]}: {shard_sizes[s] - last} uncommitted "
                                "byte(s) after the last entry (an interrupted run; the next run truncates them)")


def _view_problems(manifest: ManifestColumns, num_views: int) -> list[str]:
    """Videos with entries that lack a view or have one twice (or one outside the store's), in
    the order the entries first name them."""
    video, view = manifest.entry_video, manifest.entry_view
    if not len(video):
        return []
    if not strictly_ordered(video, view):  # a merged manifest is: by video, then view
        order = np.lexsort((view, video))
        video, view = video[order], view[order]
    counts = np.bincount(video, minlength=len(manifest.video_key))
    first = np.cumsum(counts) - counts  # where each video's entries start, sorted
    # Sorted, a video's views must be 0, 1, ..., num_views - 1.
    misplaced = view != np.arange(len(view)) - first[video]
    bad = (counts > 0) & ((counts != num_views) | (np.bincount(video[misplaced], minlength=len(counts)) > 0))
    if not bad.any():
        return []
    expected = list(range(num_views))
    return [f"video {manifest.video_key[v]!r}: has views {view[first[v]:first[v] + counts[v]].tolist()}, "
            f"expected each of {expected} once"
            for v in first_appearances(manifest.entry_video, len(manifest.video_key)) if bad[v]]


MAX_LISTED = 10  # per kind of record problem; a store mixed from two lists could have millions


def _record_order_problems(manifest: ManifestColumns) -> list[str]:
    """Videos must be listed once each, by strictly increasing record number (their position
    in the annotation list). A repeated record number or a step back means the store holds
    videos of two different annotation lists (a resume after the list changed).

    Found on the columns; the first MAX_LISTED videos of each kind are described, in video order."""
    keys, records = manifest.video_key, manifest.video_record
    # key -> its first video, only when some key repeats (the reversed pairs leave the first one).
    first_of = {} if len(set(keys)) == len(keys) else dict(zip(reversed(keys), range(len(keys) - 1, -1, -1)))
    step = np.diff(records)
    repeated = [video for video, key in enumerate(keys) if first_of[key] != video] if first_of else []
    found = {"duplicate key": np.array(repeated, dtype=np.int64), "same record": np.flatnonzero(step == 0) + 1,
             "out of order": np.flatnonzero(step < 0) + 1}
    kinds = list(found)
    listed = sorted((int(video), kinds.index(kind)) for kind, videos in found.items() for video in videos[:MAX_LISTED])
    problems = []
    for video, kind in listed:
        key, before, now = keys[video], int(records[video - 1]), int(records[video])
        if kinds[kind] == "duplicate key":
            problems.append(f"video {key!r}: listed twice (videos {first_of[key]} and {video})")
        elif kinds[kind] == "same record":
            problems.append(f"videos {keys[video - 1]!r} and {key!r}: both have record number {now} "
                            "(the store mixes two annotation lists)")
        else:
            problems.append(f"video {key!r}: record number {now} after {before} ({keys[video - 1]!r}); "
                            "videos must follow the annotation list (the store mixes two annotation lists)")
    for kind, videos in found.items():
        if len(videos) > MAX_LISTED:
            problems.append(f"... and {len(videos) - MAX_LISTED} more video(s) with the problem '{kind}'")
    return problems


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-able summary of a store (no checksums read: see `verify_store`)."""
    root = Path(path)
    meta = read_meta(root)
    manifest, parts = load_manifest_columns(root)
    frames = _exact_sum(manifest.entry_frames)
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
        "labelled_videos": int(np.count_nonzero(manifest.video_label >= 0)),
        "failures": len(manifest.failures),
        "failure_kinds": _count(f.get("error", "?") for f in manifest.failures),
        "created": meta.created,
    }


def _exact_sum(values: np.ndarray) -> int:
    """The sum of non-negative int64 values as a Python int, also where int64 would overflow
    (a damaged manifest's frame counts)."""
    if len(values) and int(values.max()) > np.iinfo(np.int64).max // len(values):
        return sum(values.tolist())
    return int(values.sum())


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
