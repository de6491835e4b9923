"""Appending tokens to a store: one writer per rank, crash-safe, resumable.

Commit protocol (what makes kill -9 at any point safe):

1. append the token bytes of a batch of videos to the rank's current shard file;
2. flush and fsync the shard;
3. write a manifest part naming those bytes (atomically: temp file, fsync, rename).

A video is in the store exactly when a part names it. On start the writer reads the committed
manifest, truncates each of its shard files to the end of its last committed entry (dropping
bytes of a batch whose part never appeared) and continues appending there. Only the rank's own
files are touched, and a lock file keeps two processes from writing as the same rank.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from vimpac.io import atomic_write_json, atomic_write_text, fsync_dir
from vimpac.store.errors import StoreError
from vimpac.store.format import (
    FAILURES_FILE, MANIFEST_FILE, PART_DIR, SHARD_DIR, TOKEN_DTYPE, Manifest, ManifestColumns, StoreMeta,
    list_parts, load_manifest_columns, manifest_layout, parse_part_name, parse_shard_name, part_name, read_meta,
    shard_name, write_manifest,
)

DEFAULT_SHARD_BYTES = 1 << 30  # start a new shard file after 1 GiB


@dataclass
class EncodedVideo:
    """A video's tokens for every view of the store, ready to commit."""

    record: int
    key: str
    label: int | None
    views: dict[str, np.ndarray]  # view name -> (T, h, w) integer tokens


@dataclass
class FailedVideo:
    record: int
    key: str
    path: str
    reason: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"record": self.record, "key": self.key, "path": self.path, "reason": self.reason,
                "error": self.error}


class RankWriter:
    """Appends committed batches of videos to this rank's shards; use as a context manager."""

    def __init__(self, root: Path, meta: StoreMeta, rank: int,
                 committed: Manifest | ManifestColumns | Mapping[str, int], shard_bytes: int = DEFAULT_SHARD_BYTES):
        """`committed`: the manifest the caller read (`load_manifest_columns`), or all this needs of
        it, its `committed_ends`."""
        self.root = root
        self.meta = meta
        self.rank = rank
        self.shard_bytes = shard_bytes
        (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        (root / PART_DIR).mkdir(parents=True, exist_ok=True)
        fsync_dir(root)  # the folders' entries: a part is durable only once its folder is
        self._new_shard_file = False  # created since the last commit: its folder is fsynced then
        self._lock = self._acquire_lock()
        try:
            # Inside the try: a refused start must release the lock, or a retry from the same
            # Python process is told that another process is writing this rank.
            ends = dict(committed) if isinstance(committed, Mapping) else self._ends(committed)
            self._check_not_stale(ends)
            self._shard_index, self._file = self._recover(ends)
        except BaseException:
            os.close(self._lock)
            raise
        seqs = [parse_part_name(p.name) for p in list_parts(root)]
        self._next_seq = 1 + max((s for r, s in seqs if r == rank), default=-1)

    # ------------------------------------------------------------------ set-up

    def _acquire_lock(self) -> int:
        path = self.root / SHARD_DIR / f"r{self.rank:03d}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{path}: another process is writing rank {self.rank} of this store") from None
        return fd

    def _ends(self, committed: Manifest | ManifestColumns) -> dict[str, int]:
        if isinstance(committed, Manifest):
            committed = ManifestColumns.from_manifest(committed)
        return committed_ends(committed, self.meta.tokens_per_frame * TOKEN_DTYPE.itemsize)

    def _check_not_stale(self, ends: dict[str, int]) -> None:
        """`ends` (of the manifest read before the lock was ours) must still be those of this rank's shards.

        Another run writing as this rank may have committed more and exited between the
        caller's read and our lock; truncating to `committed` would then cut its videos out
        of the shard under a manifest that still names them. Other ranks' commits do not
        matter: they write only their own shards. (The manifest read now is dropped once its
        ends are known: millions of entries are not held twice.)
        """
        def own(ends: dict[str, int]) -> dict[str, int]:
            return {name: end for name, end in ends.items()
                    if (parsed := parse_shard_name(name)) is not None and parsed[0] == self.rank}

        if own(self._ends(load_manifest_columns(self.root)[0])) != own(ends):
            raise StoreError(f"{self.root}: another process committed to rank {self.rank} of this store after this "
                             "run read its manifest; rerun the same command to resume from what is committed now")

    def _recover(self, ends: dict[str, int]):
        """Truncate own shards to their committed `ends`; open the last one for appending."""
        own = {}
        for path in (self.root / SHARD_DIR).iterdir():
            parsed = parse_shard_name(path.name)
            if parsed and parsed[0] == self.rank:
                own[parsed[1]] = path
        # A lost shard would be created anew by a roll-over, and new videos written at the
        # offsets the manifest gives its committed ones.
        for name, end in sorted(ends.items()):
            parsed = parse_shard_name(name)
            if end > 0 and parsed is not None and parsed[0] == self.rank and parsed[1] not in own:
                raise StoreError(f"{self.root / SHARD_DIR / name}: shard named by the manifest is missing; "
                                 "the store is damaged: restore the file, or tokenize into a new --out folder")
        for index, path in own.items():
            committed_end = ends.get(path.name, 0)
            if path.stat().st_size < committed_end:
                raise StoreError(f"{path}: shard is shorter ({path.stat().st_size} bytes) than its "
                                 f"committed entries ({committed_end} bytes); the store is damaged")
            if path.stat().st_size != committed_end:
                with open(path, "r+b") as f:
                    f.truncate(committed_end)
                    os.fsync(f.fileno())
        used = [i for i, p in own.items() if ends.get(p.name, 0) > 0]
        index = max(used, default=0)
        path = self.root / SHARD_DIR / shard_name(self.rank, index)
        self._new_shard_file = not path.exists()
        handle = open(path, "ab")
        return index, handle

    # ------------------------------------------------------------------ writing

    def commit(self, videos: Sequence[EncodedVideo], failures: Sequence[FailedVideo] = ()) -> Path | None:
        """Append `videos`, make the bytes durable, then write the part that commits them."""
        if not videos and not failures:
            return None
        part = Manifest()
        h, w = self.meta.grid
        for video in videos:
            missing = [v for v in self.meta.views if v not in video.views]
            if missing:
                raise StoreError(f"video {video.key!r}: no tokens for view(s) {missing}")
            if self._file.tell() >= self.shard_bytes:
                self._roll_over()
            shard = shard_name(self.rank, self._shard_index)
            rows = []
            for view_index, view in enumerate(self.meta.views):
                tokens = np.asarray(video.views[view])
                if tokens.ndim != 3 or tokens.shape[1:] != (h, w):
                    raise StoreError(f"video {video.key!r} view {view!r}: tokens must be (T, {h}, {w}), "
                                     f"got {tokens.shape}")
                if tokens.size and (tokens.min() < 0 or tokens.max() >= self.meta.codebook_size):
                    raise StoreError(f"video {video.key!r} view {view!r}: token ids outside "
                                     f"[0, {self.meta.codebook_size})")
                data = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).tobytes()
                offset = self._file.tell()
                with _resumable_write_error(Path(self._file.name)):
                    self._file.write(data)
                rows.append((view_index, tokens.shape[0], shard, offset, zlib.crc32(data)))
            part.add_video(video.key, video.label, video.record, rows)
        part.failures = [f.to_json() for f in failures]
        with _resumable_write_error(Path(self._file.name)):
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._new_shard_file:
            # fsync of the file does not make its name durable: a power loss could keep the part
            # below and lose the shard it names.
            fsync_dir(self.root / SHARD_DIR)
            self._new_shard_file = False
        path = self.root / PART_DIR / part_name(self.rank, self._next_seq)
        with _resumable_write_error(path):
            atomic_write_json(path, part.to_json())
        self._next_seq += 1
        return path

    def _roll_over(self) -> None:
        self._file.close()
        self._shard_index += 1
        self._file = open(self.root / SHARD_DIR / shard_name(self.rank, self._shard_index), "ab")
        self._new_shard_file = True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(OSError):
            os.close(self._lock)

    def __enter__(self) -> "RankWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def committed_ends(committed: ManifestColumns, per_frame: int) -> dict[str, int]:
    """Shard name -> end of its last committed entry, for every shard the entries name;
    `per_frame`: bytes per frame."""
    shard, offset, frames = committed.entry_shard, committed.entry_offset, committed.entry_frames
    # An end past int64 (only in a damaged manifest: frames are not bounded there) is computed
    # as a Python int, so that it is reported as past the shard's end, not wrapped around.
    huge = np.flatnonzero(frames > (np.iinfo(np.int64).max - offset) // per_frame)
    if len(huge):
        shard, offset, frames = (np.delete(column, huge) for column in (shard, offset, frames))
    last = np.full(len(committed.shards), -1, dtype=np.int64)
    np.maximum.at(last, shard, offset + frames * per_frame)
    ends = {committed.shards[s]: int(last[s]) for s in np.flatnonzero(last >= 0).tolist()}
    for i in huge.tolist():
        name = committed.shards[committed.entry_shard[i]]
        ends[name] = max(ends.get(name, 0), int(committed.entry_offset[i]) + int(committed.entry_frames[i]) * per_frame)
    return ends


@contextlib.contextmanager
def _resumable_write_error(path: Path) -> Iterator[None]:
    """An OSError while committing (a full disk: errno 28, which names no file) becomes a
    StoreError naming the file and saying that what is committed stays and a rerun resumes."""
    try:
        yield
    except OSError as exc:
        raise StoreError(f"{path}: cannot write: {exc.strerror or exc}; the videos committed so far are kept: "
                         "make room (or fix the folder) and rerun the same command to resume") from exc


COMPACT_LOCK = "compact.lock"  # in shards/, beside the ranks' lock files
_RANK_LOCK_RE = re.compile(r"^r(\d{3,})\.lock$")


def compact_store(root: Path, rewrite_manifest: bool = False) -> ManifestColumns:
    """Fold all manifest parts into manifest.json and rewrite failures.jsonl.

    Safe to interrupt: manifest.json is replaced atomically before the parts it absorbed are
    deleted, and a part that is read twice merges to the same video. Only call it when no
    writer is running on the store (single process, or rank 0 after a barrier). A finished
    store (no parts) is left untouched, so a rerun over one on read-only storage works, unless
    `rewrite_manifest` (the caller found manifest.json in the JSON layout of older versions): then
    it is rewritten with a columns file (`vimpac store compact`).
    Compactions take turns (a lock file): two at once could both read manifest.json, and the
    one writing it last would drop the parts the other merged and deleted.
    """
    if not rewrite_manifest and not list_parts(root) and (root / MANIFEST_FILE).exists():
        manifest, _ = load_manifest_columns(root)
    else:
        (root / SHARD_DIR).mkdir(exist_ok=True)  # absent while no video was committed
        with _file_lock(root / SHARD_DIR / COMPACT_LOCK, wait=True):
            manifest, parts = load_manifest_columns(root)
            if parts or rewrite_manifest or not (root / MANIFEST_FILE).exists():
                write_manifest(root, manifest)
            for part in parts:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
    write_failures_report(root, manifest)
    return manifest


def compact_idle_store(root: Path) -> tuple[ManifestColumns, int, bool]:
    """`vimpac store compact`: `compact_store` for a store that no run is writing (ranks that ran
    as separate jobs, an interrupted run), also rewriting a manifest.json of the older JSON layout.
    A run writing any rank (its lock is held) is refused with a StoreError; the ranks' locks are
    held while merging, so none of them starts meanwhile. Returns the merged manifest, the number
    of parts merged and whether a manifest.json of the JSON layout was rewritten."""
    read_meta(root)  # a StoreError when `root` is not a store
    locks = sorted(p for p in (root / SHARD_DIR).glob("r*.lock") if _RANK_LOCK_RE.match(p.name))
    with contextlib.ExitStack() as held:
        for path in locks:
            try:
                held.enter_context(_file_lock(path, wait=False))
            except BlockingIOError:
                rank = int(_RANK_LOCK_RE.match(path.name).group(1))
                raise StoreError(f"{path}: a run is writing rank {rank} of this store; compact it once every "
                                 "rank has finished (a torchrun run merges its parts itself at the end)") from None
        parts = len(list_parts(root))
        # Looked at once (parsing an old JSON manifest is the expensive part of this command).
        rewrite = manifest_layout(root) == "json"
        return compact_store(root, rewrite_manifest=rewrite), parts, rewrite


@contextlib.contextmanager
def _file_lock(path: Path, wait: bool) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing); BlockingIOError when not `wait`ing and
    another process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def write_failures_report(root: Path, manifest: Manifest | ManifestColumns) -> None:
    """failures.jsonl: one JSON object per video that is not in the store, with the reason
    (not rewritten when it already says that)."""
    text = "".join(json.dumps(f, sort_keys=True) + "\n" for f in manifest.failures)
    path = root / FAILURES_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if path.read_text() == text:
            return
    atomic_write_text(path, text)
