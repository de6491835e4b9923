"""The list-based manifest code of vimpac before the manifest was handled as columns (main at
14a9869), kept verbatim as the oracle that the column versions must agree with: `store info`'s
summary, `store verify`'s report, a resume's committed-entries check and the merged manifest.
Only the imports differ, and `committed_ends` is `RankWriter._committed_ends` as a function."""

from __future__ import annotations

import os
import posixpath
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

from vimpac.store.errors import StoreError
from vimpac.store.format import (
    MANIFEST_FILE, PART_DIR, SHARD_DIR, TOKEN_DTYPE, Manifest, list_parts, parse_shard_name, read_manifest_file,
    read_meta,
)
from vimpac.store.verify import MAX_LISTED, VerifyReport, _count


def merge_manifests(parts: Iterable[Manifest]) -> Manifest:
    """One manifest from many: each video once, ordered by (record, key); views in store order.

    A video's entries are committed together, so the first copy of a video is complete; a later
    copy (possible only after an interrupted compaction) is identical and dropped. A failure is
    dropped when the video has entries (it was retried successfully); of repeated failures the
    last one is kept.
    """
    videos: dict[str, tuple[int, int, list[tuple[int, int, str, int, int]]]] = {}
    failures: dict[str, dict[str, Any]] = {}
    for part in parts:
        by_video: dict[int, list[tuple[int, int, str, int, int]]] = {}
        for i in range(part.num_entries):
            by_video.setdefault(part.entry_video[i], []).append(
                (part.entry_view[i], part.entry_frames[i], part.shards[part.entry_shard[i]],
                 part.entry_offset[i], part.entry_crc32[i]))
        for v, key in enumerate(part.video_key):
            if key not in videos:
                videos[key] = (part.video_record[v], part.video_label[v], sorted(by_video.get(v, [])))
        for failure in part.failures:
            failures[str(failure.get("key"))] = failure
    merged = Manifest()
    for key in sorted(videos, key=lambda k: (videos[k][0], k)):
        record, label, views = videos[key]
        merged.add_video(key, None if label < 0 else label, record, views)
    merged.failures = [f for k, f in failures.items() if k not in videos]
    merged.failures.sort(key=lambda f: (int(f.get("record", -1)), str(f.get("key"))))
    return merged


def load_manifest(root: Path, num_views: int | None = None) -> tuple[Manifest, list[Path]]:
    """The merged view of manifest.json and all parts, and the part files that went into it.

    `num_views`: the store's number of views, to check every entry's view number against.
    A run that finishes merges its parts into manifest.json and then deletes them; a part that
    vanished between listing and reading is therefore in the manifest.json written since, and
    the store is read again.
    """
    for _attempt in range(10):
        pieces = []
        parts = list_parts(root)
        if (root / MANIFEST_FILE).exists():
            merged = read_manifest_file(root / MANIFEST_FILE, num_views)
            if not parts:  # a finished store: manifest.json is already merged and ordered
                return merged, parts
            pieces.append(merged)
        try:
            pieces.extend(read_manifest_file(p, num_views) for p in parts)
        except StoreError:
            if all(p.exists() for p in parts):
                raise
            continue
        return merge_manifests(pieces), parts
    raise StoreError(f"{root / PART_DIR}: manifest parts kept vanishing while being read (a run merging "
                     "them?); try again")


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


def _check_committed_match_list(root: Path, committed: Manifest, records: Sequence[Any]) -> None:
    """Every video (and failure) in the store must have the record number and label it has in
    this list. Catches a changed list even in stores that predate the list fingerprint."""
    position = {record.key: index for index, record in enumerate(records)}
    checks = [(key, record, None if label < 0 else label) for key, record, label in
              zip(committed.video_key, committed.video_record, committed.video_label)]
    checks += [(str(f.get("key")), f.get("record"), ...) for f in committed.failures]  # ...: no label kept
    for key, record, label in checks:
        index = position.get(key)
        if index is None and posixpath.normpath(key) in position:
            raise StoreError(f"{root}: video {key!r} was keyed as its list spelled it by an older vimpac; "
                             f"list paths are now normalised (to {posixpath.normpath(key)!r}), so this "
                             "store cannot be resumed: tokenize into a new --out folder")
        if index is None:
            problem = "is not in this annotation list"
        elif index != record:
            problem = f"is record {record} in the store but record {index} in this annotation list"
        elif label is not ... and records[index].label != label:
            problem = f"has label {label} in the store but {records[index].label} in this annotation list"
        else:
            continue
        raise StoreError(f"{root}: video {key!r} {problem}: the store was made from another annotation "
                         "list, and resuming would mix the two; write to a new --out folder, or rerun "
                         "with the list the store was made from")


def committed_ends(committed: Manifest, per_frame: int) -> dict[str, int]:
    """`RankWriter._committed_ends`, `per_frame` its bytes per frame."""
    ends: dict[str, int] = {}
    for i in range(committed.num_entries):
        name = committed.shards[committed.entry_shard[i]]
        end = committed.entry_offset[i] + committed.entry_frames[i] * per_frame
        ends[name] = max(ends.get(name, 0), end)
    return ends
