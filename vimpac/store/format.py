"""On-disk layout of a token store, and reading / merging its manifest.

A store is a folder:

    store.json                 what the tokens are: tokenizer, fps, frame size, grid, views,
                               source annotation, class names (`StoreMeta`)
    shards/r000-0000.tok       raw little-endian uint16 tokens, appended by rank 0
    shards/r001-0000.tok       ... by rank 1 (every rank writes only its own shard files)
    manifest/r000-000012.json  manifest parts, one per committed batch of videos
    manifest.json              the merged manifest (parts are folded into it at the end): shard
                               names, video keys, failures, and the name of ...
    manifest-<16 hex>.safetensors  ... its numeric columns (int64 arrays)
    failures.jsonl             one JSON line per video that could not be tokenized

A shard is a plain concatenation of (T, h, w) arrays, so it is memory-mapped as one flat
uint16 array and an entry is a slice of it. The manifest is columnar (one array per field,
videos separate from their view entries). The merged manifest keeps its numbers in a
safetensors file, read straight into numpy arrays: `json.load` of millions of entries (the
format of manifest.json before, still read, and of the parts) builds a Python object per value
first, several times the memory of the arrays, in every rank and DataLoader worker.

Atomicity: token bytes are appended and fsynced first; only then is the manifest part naming
them written (atomically, via `vimpac.io`). A part is the commit record: bytes that no part
names are garbage from an interrupted run and are truncated by the next writer. manifest.json
is the merged manifest's commit record: its columns file gets a new name each time and is
written first, so a reader sees the old manifest.json with its old columns or the new with
the new ones, never a mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from vimpac.io import atomic_path, atomic_write_json, parse_json
from vimpac.store.errors import StoreError

FORMAT_NAME = "vimpac-token-store"
FORMAT_VERSION = 1
TOKEN_DTYPE = np.dtype("<u2")
# Token ids 0..K-1 and the [PAD] id K + 1 that `TokenStore.clip` fills past a video's end must
# fit uint16.
MAX_CODEBOOK = int(np.iinfo(np.uint16).max) - 1

META_FILE = "store.json"
MANIFEST_FILE = "manifest.json"
FAILURES_FILE = "failures.jsonl"
SHARD_DIR = "shards"
PART_DIR = "manifest"

_SHARD_RE = re.compile(r"^r(\d{3,})-(\d{4,})\.tok$")
_PART_RE = re.compile(r"^r(\d{3,})-(\d{6,})\.json$")
_COLUMNS_RE = re.compile(r"^manifest-[0-9a-f]{16}\.safetensors$")


def shard_name(rank: int, index: int) -> str:
    return f"r{rank:03d}-{index:04d}.tok"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """(rank, index) of a shard file name, or None if it is not one."""
    match = _SHARD_RE.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def part_name(rank: int, seq: int) -> str:
    return f"r{rank:03d}-{seq:06d}.json"


def parse_part_name(name: str) -> tuple[int, int] | None:
    match = _PART_RE.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


# --------------------------------------------------------------------------------------------
# store.json


@dataclass(frozen=True)
class StoreMeta:
    """Everything that must match for two runs to write into the same store.

    `settings()` lists the fields compared when a run (or a reader with expectations) meets an
    existing store; `created` and `vimpac_version` are informational only.
    """

    tokenizer_id: str
    tokenizer_kind: str
    codebook_size: int
    downsample: int
    fps: float
    size: int
    grid: tuple[int, int]
    views: tuple[str, ...]
    source: str | None = None  # the annotation set's description, e.g. "ucf101 split 1 train"
    class_names: tuple[str, ...] | None = None
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    dtype: str = TOKEN_DTYPE.str
    checksum: str = "crc32"
    created: str = ""
    vimpac_version: str = ""
    # Which annotation list the store was made from (None in stores of older versions): a
    # resume must not mix two lists. See `annotation_difference`.
    annotations_sha256: str | None = None
    annotations_records: int | None = None
    annotation_files: tuple[str, ...] | None = None

    # Compared on reuse, in this order (the first difference is reported).
    SETTINGS = ("format", "version", "tokenizer_id", "tokenizer_kind", "codebook_size",
                "downsample", "fps", "size", "grid", "views", "class_names", "source")

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["grid"] = list(self.grid)
        data["views"] = list(self.views)
        data["class_names"] = None if self.class_names is None else list(self.class_names)
        data["annotation_files"] = None if self.annotation_files is None else list(self.annotation_files)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> "StoreMeta":
        if not isinstance(data, dict):
            raise StoreError(f"{where}: expected a JSON object")
        if data.get("format") != FORMAT_NAME:
            raise StoreError(f"{where}: field 'format' is {data.get('format')!r}, expected {FORMAT_NAME!r}")
        if data.get("version") != FORMAT_VERSION:
            raise StoreError(f"{where}: field 'version' is {data.get('version')!r}; this vimpac reads "
                             f"version {FORMAT_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise StoreError(f"{where}: unknown field(s) {unknown}")
        try:
            kwargs = dict(data)
            kwargs["grid"] = tuple(int(v) for v in _json_list(data["grid"], "grid"))
            kwargs["views"] = tuple(str(v) for v in _json_list(data["views"], "views"))
            kwargs["fps"] = float(data["fps"])
            kwargs["size"] = int(data["size"])
            kwargs["codebook_size"] = int(data["codebook_size"])
            kwargs["downsample"] = int(data["downsample"])
            if data.get("class_names") is not None:
                kwargs["class_names"] = tuple(str(v) for v in _json_list(data["class_names"], "class_names"))
            if data.get("annotation_files") is not None:
                kwargs["annotation_files"] = tuple(str(v) for v in _json_list(data["annotation_files"], "annotation_files"))
            meta = cls(**kwargs)
        except KeyError as exc:
            raise StoreError(f"{where}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{where}: malformed field: {exc}") from None
        if len(meta.grid) != 2:
            raise StoreError(f"{where}: field 'grid' must be [h, w], got {list(meta.grid)}")
        # Readers size their arrays by these: a negative grid reshapes tokens into nonsense, a
        # codebook beyond uint16 cannot have been written (tokens are stored as uint16).
        if min(meta.grid) < 1 or meta.size < 1 or meta.downsample < 1:
            raise StoreError(f"{where}: fields 'grid', 'size' and 'downsample' must be positive, got grid "
                             f"{list(meta.grid)}, size {meta.size}, downsample {meta.downsample}")
        if not 1 <= meta.codebook_size <= MAX_CODEBOOK:
            raise StoreError(f"{where}: field 'codebook_size' must be in 1..{MAX_CODEBOOK} (uint16 tokens), "
                             f"got {meta.codebook_size}")
        if meta.dtype != TOKEN_DTYPE.str:
            raise StoreError(f"{where}: field 'dtype' is {meta.dtype!r}, expected {TOKEN_DTYPE.str!r}")
        return meta

    def first_difference(self, other: "StoreMeta") -> tuple[str, Any, Any] | None:
        """(field, self's value, other's value) of the first differing setting, or None."""
        for name in self.SETTINGS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "fps":
                if not same_fps(mine, theirs):
                    return name, mine, theirs
            elif mine != theirs:
                return name, mine, theirs
        return None

    def annotation_difference(self, other: "StoreMeta") -> tuple[str, Any, Any] | None:
        """Like `first_difference`, for the annotation list's contents (its records in order, their
        labels and paths, the class names). Where the list file lies is recorded but not compared:
        a cluster job may stage it elsewhere for each attempt, and a list with the same contents
        makes the same store (another dataset with identically named videos would find them
        all done, not mix). The video root is not compared either: a run with a wrong --videos
        fails every video, and the rerun with the right one must go on.

        None when this store predates the fingerprint (it has no `annotations_sha256`): such
        stores fall back to comparing `source` and to checking the committed videos against
        the list (`vimpac.store.tokenize`).
        """
        if self.annotations_sha256 is None:
            return None
        if other.annotations_sha256 is not None and other.annotations_sha256 != self.annotations_sha256:
            return "annotations_sha256", self.annotations_sha256, other.annotations_sha256
        return None


def same_fps(a: float, b: float) -> bool:
    """Equal frame rates; NaN equals nothing (a store.json with NaN must not match any run)."""
    a, b = float(a), float(b)
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-9


def annotations_fingerprint(records: Sequence[Any], class_names: Sequence[str] | None) -> str:
    """sha256 of the annotation list as tokenized: every record's (key, label, path) in order,
    and the class names. Record numbers are positions in this list, so any change to it
    (added, removed, reordered or relabelled videos) changes the fingerprint."""
    digest = hashlib.sha256()
    digest.update(json.dumps(None if class_names is None else list(class_names)).encode())
    for record in records:
        digest.update(b"\n")
        digest.update(json.dumps([record.key, record.label, record.path]).encode())
    return digest.hexdigest()


def read_meta(root: Path) -> StoreMeta:
    path = root / META_FILE
    try:
        data = parse_json(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{root}: not a token store ({META_FILE} not found)") from None
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8, nested too deeply
        raise StoreError(f"{path}: cannot read: {exc}") from None
    return StoreMeta.from_json(data, str(path))


# --------------------------------------------------------------------------------------------
# The manifest


@dataclass
class Manifest:
    """Columnar manifest: videos and their (video, view) entries, plus failed videos.

    `record` is the video's position in the annotation list (for a stable order whatever the
    ranks or interruptions); `label` is -1 for unlabelled videos. Entry columns are aligned;
    `entry_video` indexes the video columns, `entry_view` the store's view names and
    `entry_shard` the `shards` names.
    """

    shards: list[str] = field(default_factory=list)
    video_key: list[str] = field(default_factory=list)
    video_label: list[int] = field(default_factory=list)
    video_record: list[int] = field(default_factory=list)
    entry_video: list[int] = field(default_factory=list)
    entry_view: list[int] = field(default_factory=list)
    entry_frames: list[int] = field(default_factory=list)
    entry_shard: list[int] = field(default_factory=list)
    entry_offset: list[int] = field(default_factory=list)
    entry_crc32: list[int] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    ENTRY_COLUMNS = ("video", "view", "frames", "shard", "offset", "crc32")
    VIDEO_COLUMNS = ("key", "label", "record")

    @property
    def num_entries(self) -> int:
        return len(self.entry_video)

    def add_video(self, key: str, label: int | None, record: int,
                  views: Sequence[tuple[int, int, str, int, int]]) -> None:
        """Append a video and its entries: views = [(view index, frames, shard, offset, crc32)]."""
        video = len(self.video_key)
        self.video_key.append(key)
        self.video_label.append(-1 if label is None else int(label))
        self.video_record.append(int(record))
        for view, frames, shard, offset, crc in views:
            if shard not in self.shards:
                self.shards.append(shard)
            self.entry_video.append(video)
            self.entry_view.append(int(view))
            self.entry_frames.append(int(frames))
            self.entry_shard.append(self.shards.index(shard))
            self.entry_offset.append(int(offset))
            self.entry_crc32.append(int(crc))

    def to_json(self) -> dict[str, Any]:
        return {
            "shards": self.shards,
            "videos": {"key": self.video_key, "label": self.video_label, "record": self.video_record},
            "entries": {name: getattr(self, f"entry_{name}") for name in self.ENTRY_COLUMNS},
            "failures": self.failures,
        }

    @classmethod
    def from_json(cls, data: Any, where: str, num_views: int | None = None) -> "Manifest":
        """Parse and check a manifest (`ManifestColumns.from_json`); StoreError naming `where`."""
        return ManifestColumns.from_json(data, where, num_views).to_manifest()


@dataclass
class ManifestColumns:
    """The manifest's numeric columns as int64 arrays (same fields as `Manifest`).

    What a reader of a big store keeps: 8 bytes a value, where a list holds a pointer plus a
    32-byte int object per value, and a forked DataLoader worker copies the pages of every
    int object whose reference count it touches.
    """

    shards: list[str]
    video_key: list[str]
    video_label: np.ndarray
    video_record: np.ndarray
    entry_video: np.ndarray
    entry_view: np.ndarray
    entry_frames: np.ndarray
    entry_shard: np.ndarray
    entry_offset: np.ndarray
    entry_crc32: np.ndarray
    failures: list[dict[str, Any]]

    @property
    def num_entries(self) -> int:
        return len(self.entry_video)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "ManifestColumns":
        def column(values: list[int]) -> np.ndarray:
            return np.fromiter(values, dtype=np.int64, count=len(values))

        return cls(
            shards=list(manifest.shards), video_key=list(manifest.video_key), failures=list(manifest.failures),
            video_label=column(manifest.video_label), video_record=column(manifest.video_record),
            **{f"entry_{name}": column(getattr(manifest, f"entry_{name}")) for name in Manifest.ENTRY_COLUMNS},
        )

    def to_manifest(self) -> Manifest:
        return Manifest(
            shards=list(self.shards), video_key=list(self.video_key), failures=list(self.failures),
            video_label=self.video_label.tolist(), video_record=self.video_record.tolist(),
            **{f"entry_{name}": getattr(self, f"entry_{name}").tolist() for name in Manifest.ENTRY_COLUMNS},
        )

    @classmethod
    def from_json(cls, data: Any, where: str, num_views: int | None = None) -> "ManifestColumns":
        """Parse a manifest's JSON and check every value that readers index with: video, shard
        and view numbers in range (views only when `num_views` is given), frames >= 0, offsets
        >= 0 and whole tokens. A bad value is a StoreError naming `where` and the entry."""
        def column(values: Any, name: str) -> np.ndarray:
            # np.fromiter converts each value with int(), as a list of int() would, at C speed.
            return np.fromiter(_json_list(values, name, copy=False), dtype=np.int64)

        try:
            videos, entries = data["videos"], data["entries"]
            columns = cls(
                shards=[str(s) for s in data["shards"]],
                video_key=[str(k) for k in videos["key"]],
                video_label=column(videos["label"], "label"),
                video_record=column(videos["record"], "record"),
                failures=_json_list(data.get("failures", []), "failures"),
                **{f"entry_{name}": column(entries[name], name) for name in Manifest.ENTRY_COLUMNS},
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None
        columns._check(where, num_views)
        return columns

    @classmethod
    def from_columns_json(cls, data: dict[str, Any], path: Path, num_views: int | None = None) -> "ManifestColumns":
        """A manifest.json of the columnar format (its numbers in the columns file it names) with
        the checks of `from_json`; a bad value is a StoreError naming the file that holds it.
        FileNotFoundError when the columns file is missing (replaced by a compaction meanwhile?)."""
        where = str(path)
        try:
            spec = data["columns"]
            name, counts = spec["file"], {"video": spec["videos"], "entry": spec["entries"]}
            shards = [str(s) for s in _json_list(data["shards"], "shards")]
            keys = [str(k) for k in _json_list(data["videos"]["key"], "videos.key", copy=False)]
            failures = _json_list(data.get("failures", []), "failures")
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None
        # Opened as a file beside manifest.json: only the names writers give, as for shards.
        if not isinstance(name, str) or not _COLUMNS_RE.match(name):
            raise StoreError(f"{where}: field 'columns.file' is {name!r}, expected a file name like "
                             "'manifest-0123456789abcdef.safetensors' (in the store's folder)")
        if not all(type(n) is int and n >= 0 for n in counts.values()):
            raise StoreError(f"{where}: fields 'columns.videos' and 'columns.entries' must be counts (integers "
                             f">= 0), got {counts['video']!r} and {counts['entry']!r}")
        if len(keys) != counts["video"]:
            raise StoreError(f"{where}: field 'videos.key' lists {len(keys)} videos, but 'columns.videos' says "
                             f"{counts['video']}")
        file = path.parent / name
        arrays = _read_columns_file(file, {column: counts[column.split("_")[0]] for column in COLUMN_NAMES})
        columns = cls(shards=shards, video_key=keys, failures=failures, **arrays)
        columns._check(where, num_views, values_where=str(file))
        return columns

    def _check(self, where: str, num_views: int | None, values_where: str | None = None) -> None:
        """The checks of `from_json` on parsed columns; `values_where` names the file of the
        numeric columns when it is not `where`."""
        lengths = {len(self.video_key), len(self.video_label), len(self.video_record)}
        entry_lengths = {len(getattr(self, f"entry_{n}")) for n in Manifest.ENTRY_COLUMNS}
        if len(lengths) != 1 or len(entry_lengths) != 1:
            raise StoreError(f"{where}: manifest columns have different lengths")
        # Shards are opened as `shards/<name>`: only the names writers give (r000-0000.tok), so a
        # manifest cannot point readers at '../..' or an absolute path (any file, or a FIFO that
        # blocks the open forever) nor writers at files outside the store.
        bad_shards = [name for name in self.shards if parse_shard_name(name) is None]
        if bad_shards:
            raise StoreError(f"{where}: shard name {bad_shards[0]!r} is not a shard file name "
                             "like 'r000-0000.tok' (shards live in the store's shards/ folder)")
        if not all(isinstance(failure, dict) for failure in self.failures):
            raise StoreError(f"{where}: field 'failures' must be a list of objects")
        self.check_entries(values_where or where, num_views)

    def check_entries(self, where: str, num_views: int | None) -> None:
        """StoreError naming `where` and the first entry with an out-of-range value (see `from_json`)."""
        n_videos, n_shards = len(self.video_key), len(self.shards)
        video, view = self.entry_video, self.entry_view
        if num_views is None:
            bad_view, view_text = view < 0, "has view number {}, expected >= 0"
        else:
            bad_view = (view < 0) | (view >= num_views)
            view_text = f"has view number {{}}, outside the store's {num_views} views (0..{num_views - 1})"
        checks = [
            ((video < 0) | (video >= n_videos), "video", f"names video {{}}, but the manifest lists {n_videos} videos"),
            ((self.entry_shard < 0) | (self.entry_shard >= n_shards), "shard",
             f"names shard {{}}, but the manifest lists {n_shards} shards"),
            (bad_view, "view", view_text),
            (self.entry_frames < 0, "frames", "has {} frames, expected >= 0"),
            ((self.entry_offset < 0) | (self.entry_offset % TOKEN_DTYPE.itemsize != 0), "offset",
             f"has byte offset {{}}, expected a multiple of {TOKEN_DTYPE.itemsize} (whole uint16 tokens) >= 0"),
        ]
        for bad, name, text in checks:
            found = np.flatnonzero(bad)
            if not len(found):
                continue
            i = int(found[0])
            value = int(getattr(self, f"entry_{name}")[i])
            what = f"entry {i}" + (f" (video {self.video_key[video[i]]!r})" if name != "video" else "")
            more = f"; {len(found) - 1} more entries have a bad '{name}'" if len(found) > 1 else ""
            raise StoreError(f"{where}: {what} {text.format(value)}{more}; the manifest is damaged "
                             "(run `vimpac store verify`)")


# The tensors of a columns file: int64 arrays, named as the `ManifestColumns` fields.
COLUMN_NAMES = ("video_label", "video_record") + tuple(f"entry_{name}" for name in Manifest.ENTRY_COLUMNS)


def _read_columns_file(path: Path, lengths: dict[str, int]) -> dict[str, np.ndarray]:
    """The int64 arrays of a columns file, each checked (from the header, before reading it)
    to have the length in `lengths`; StoreError naming the file, FileNotFoundError if missing."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            names = sorted(f.keys())
            if names != sorted(lengths):
                raise StoreError(f"{path}: holds the tensors {names}, expected {sorted(lengths)}")
            for name, length in lengths.items():
                tensor = f.get_slice(name)
                if tensor.get_dtype() != "I64" or tensor.get_shape() != [length]:
                    raise StoreError(f"{path}: tensor {name!r} is {tensor.get_dtype()} {tensor.get_shape()}, "
                                     f"expected I64 [{length}] (the count manifest.json gives)")
        # One mapping of the file per tensor: the mapped pages a tensor is copied from stay
        # resident until the file is closed, so reading all through one mapping peaked at twice
        # the columns (`store info` of 2.4M entries, 110 MiB of arrays: 246 MiB of RSS, now 165).
        arrays = {}
        for name in lengths:
            with safe_open(str(path), framework="numpy") as f:
                arrays[name] = f.get_tensor(name)
        return arrays
    except FileNotFoundError:
        raise
    except (OSError, SafetensorError) as exc:
        raise StoreError(f"{path}: cannot read manifest columns: {exc}") from None


def _json_list(value: Any, name: str, copy: bool = True) -> list:
    # list() of a string or an object would silently give its characters or keys.
    if not isinstance(value, list):
        raise TypeError(f"field {name!r} must be a list, got {type(value).__name__}")
    return list(value) if copy else value


def merge_manifests(parts: Iterable[Manifest]) -> Manifest:
    """`merge_manifest_columns` of `Manifest`s (lists); see there."""
    return merge_manifest_columns(ManifestColumns.from_manifest(part) for part in parts).to_manifest()


def merge_manifest_columns(pieces: Iterable[ManifestColumns]) -> ManifestColumns:
    """One manifest from many: each video once, ordered by (record, key); a video's entries by
    (view, frames, shard name, offset, crc32), which is view order. The pieces' entry columns
    are moved into the result (the pieces are left without entries).

    A video's entries are committed together, so the first copy of a video is complete; a later
    copy (possible only after an interrupted compaction) is identical and dropped. A negative
    label becomes -1 (no label). Shards are numbered in the order the merged entries first name
    them. A failure is dropped when the video has entries (it was retried successfully); of
    repeated failures the last one is kept.

    On the columns, one at a time: Python objects per video (its key is one already) but not per
    entry, so that merging parts into the manifest.json of millions of entries (a resumed run,
    ranks that ran as separate jobs) holds the entry columns plus about one more, not a Python
    int per value.
    """
    pieces = list(pieces)
    keys = [key for piece in pieces for key in piece.video_key]
    # key -> its first video (the reversed pairs leave each key's first one in the dict).
    first_of = dict(zip(reversed(keys), range(len(keys) - 1, -1, -1)))
    kept = np.sort(np.fromiter(first_of.values(), dtype=np.int64, count=len(first_of)))
    record = _concatenate([piece.video_record for piece in pieces])[kept]
    label = _concatenate([piece.video_label for piece in pieces])[kept]
    by_record = np.argsort(record, kind="stable")
    if np.any(np.diff(record[by_record]) == 0):  # records shared by videos (two lists mixed): then by key
        by_record = np.array(sorted(range(len(kept)), key=lambda v: (int(record[v]), keys[kept[v]])), dtype=np.int64)
    video_order = kept[by_record]  # the merged manifest's videos, as numbers of the concatenated ones
    new_video = np.full(len(keys), -1, dtype=np.int64)  # -1: a later copy, dropped
    new_video[video_order] = np.arange(len(video_order))

    shard_names = sorted({name for piece in pieces for name in piece.shards})
    entries = _merged_entries(pieces, new_video, shard_names)
    # Shards numbered in the order the merged entries first name them.
    used = np.array(first_appearances(entries["shard"], len(shard_names)), dtype=np.int64)
    renumber = np.zeros(len(shard_names), dtype=np.int64)
    renumber[used] = np.arange(len(used))
    entries["shard"] = renumber[entries["shard"]]

    failures: dict[str, dict[str, Any]] = {}
    for piece in pieces:
        for failure in piece.failures:
            failures[str(failure.get("key"))] = failure
    merged_failures = [f for k, f in failures.items() if k not in first_of]
    merged_failures.sort(key=lambda f: (int(f.get("record", -1)), str(f.get("key"))))
    return ManifestColumns(
        shards=[shard_names[s] for s in used.tolist()], video_key=[keys[v] for v in video_order.tolist()],
        video_label=np.where(label[by_record] < 0, -1, label[by_record]), video_record=record[by_record],
        failures=merged_failures, **{f"entry_{name}": entries[name] for name in Manifest.ENTRY_COLUMNS},
    )


def _merged_entries(pieces: list[ManifestColumns], new_video: np.ndarray, shard_names: list[str]) -> dict[str, np.ndarray]:
    """The entry columns of the kept videos of all pieces, ordered by (video, view, frames,
    shard, offset, crc32): "video" their video in the merged manifest (`new_video` of the
    concatenated videos, -1 for those dropped) and "shard" the number of their shard's name in
    the sorted `shard_names`, so that shard numbers compare as the names do. Built column by
    column, each taken out of the pieces (the arrays of millions of entries are not held twice)."""
    number = {name: s for s, name in enumerate(shard_names)}
    first_video = 0
    for piece in pieces:
        piece.entry_video = new_video[first_video:][piece.entry_video]
        piece.entry_shard = np.array([number[name] for name in piece.shards], dtype=np.int64)[piece.entry_shard]
        first_video += len(piece.video_key)

    def take(name: str) -> np.ndarray:
        """The pieces' column `name` joined, without the entries of dropped copies (`keep`)."""
        arrays = [getattr(piece, f"entry_{name}") for piece in pieces]
        for piece in pieces:
            setattr(piece, f"entry_{name}", np.zeros(0, dtype=np.int64))
        joined = _concatenate(arrays)
        return joined if keep is None else joined[keep]

    keep = None  # which entries to keep (None: all), known once the video column is
    video = take("video")
    keep = None if np.all(video >= 0) else video >= 0
    columns = {"video": video if keep is None else video[keep], "view": take("view")}
    # Usually in order already (one manifest.json, then parts of later videos): no copy then.
    # Otherwise (video, view), unique in a sound store, decides; the other columns only break ties.
    order = None
    if not strictly_ordered(columns["video"], columns["view"]):
        order = np.lexsort((columns["view"], columns["video"]))
        if np.any((np.diff(columns["video"][order]) == 0) & (np.diff(columns["view"][order]) == 0)):
            columns.update((name, take(name)) for name in ("frames", "shard", "offset", "crc32"))
            order = np.lexsort(tuple(columns[name] for name in ("crc32", "offset", "shard", "frames", "view", "video")))
    for name in Manifest.ENTRY_COLUMNS:
        if name not in columns:
            columns[name] = take(name)
        if order is not None:
            columns[name] = columns[name][order]
    return columns


def strictly_ordered(major: np.ndarray, minor: np.ndarray, chunk: int = 1 << 14) -> bool:
    """Whether the pairs (major[i], minor[i]) strictly increase: sorted, none repeated. Looked at
    `chunk` pairs at a time, so that the steps of millions are not held at once."""
    for start in range(0, len(major) - 1, chunk):
        step_major, step_minor = np.diff(major[start:start + chunk + 1]), np.diff(minor[start:start + chunk + 1])
        if not np.all((step_major > 0) | ((step_major == 0) & (step_minor > 0))):
            return False
    return True


def first_appearances(values: np.ndarray, count: int, chunk: int = 1 << 14) -> list[int]:
    """The distinct values of `values` (each in 0..count - 1) in the order they first appear,
    looked for `chunk` values at a time (a few, such as shard numbers, among millions: the
    temporaries stay small, and the search ends once all `count` have appeared)."""
    found: list[int] = []
    seen = np.zeros(count, dtype=bool)
    for start in range(0, len(values), chunk):
        distinct, first = np.unique(values[start:start + chunk], return_index=True)
        new = ~seen[distinct]
        found += distinct[new][np.argsort(first[new])].tolist()
        seen[distinct] = True
        if len(found) == count:
            break
    return found


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays one after the other (a single non-empty one: itself, not a copy)."""
    arrays = [array for array in arrays if len(array)]
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)


def read_manifest_file(path: Path, num_views: int | None = None) -> Manifest:
    return read_manifest_columns(path, num_views).to_manifest()


def read_manifest_columns(path: Path, num_views: int | None = None) -> ManifestColumns:
    """A manifest file (a part, or manifest.json of either format) as checked int64 columns."""
    missing = None
    for _attempt in range(10):
        try:
            data = parse_json(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: cannot read manifest: {exc}") from None
        if not (isinstance(data, dict) and "columns" in data):  # a part, or manifest.json of an older version
            return ManifestColumns.from_json(data, str(path), num_views)
        try:
            return ManifestColumns.from_columns_json(data, path, num_views)
        except FileNotFoundError:
            # A compaction replaced manifest.json and deleted the columns file it named after we
            # read it: read the new one. The same name twice is a file that is really missing.
            if data["columns"]["file"] == missing:
                raise StoreError(f"{path.parent / missing}: columns file named by {path} is missing; the "
                                 "store is damaged: restore the file") from None
            missing = data["columns"]["file"]
    raise StoreError(f"{path}: replaced again and again while being read (compactions?); try again")


def manifest_layout(root: Path) -> str | None:
    """"columns" for a manifest.json naming a columns file, "json" for one in the JSON layout of
    older versions (or unreadable: reading it reports why), None when there is none."""
    try:
        data = parse_json((root / MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "json"
    return "columns" if isinstance(data, dict) and "columns" in data else "json"


def write_manifest(root: Path, manifest: Manifest | ManifestColumns) -> None:
    """Write the merged manifest: a new columns file, then manifest.json naming it (atomically:
    the commit), then delete the columns files it no longer names.

    Call with the compaction lock held (`vimpac.store.writer.compact_store`).
    """
    from safetensors.numpy import save_file

    columns = manifest if isinstance(manifest, ManifestColumns) else ManifestColumns.from_manifest(manifest)
    name = f"manifest-{secrets.token_hex(8)}.safetensors"
    with atomic_path(root / name, suffix=".safetensors") as tmp:
        save_file({column: np.ascontiguousarray(getattr(columns, column), dtype=np.int64)
                   for column in COLUMN_NAMES}, str(tmp))
    atomic_write_json(root / MANIFEST_FILE, {
        "columns": {"file": name, "videos": len(columns.video_key), "entries": columns.num_entries},
        "shards": list(columns.shards),
        "videos": {"key": list(columns.video_key)},
        "failures": list(columns.failures),
    })
    for path in root.iterdir():
        if _COLUMNS_RE.match(path.name) and path.name != name:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def list_parts(root: Path) -> list[Path]:
    """Committed manifest parts (temporary files of interrupted writes are not parts)."""
    folder = root / PART_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if parse_part_name(p.name) is not None)


def load_manifest(root: Path, num_views: int | None = None) -> tuple[Manifest, list[Path]]:
    """`load_manifest_columns` as `Manifest` lists: a Python int per value, so several times the
    memory of the columns (tests and small stores)."""
    columns, parts = load_manifest_columns(root, num_views)
    return columns.to_manifest(), parts


def load_manifest_columns(root: Path, num_views: int | None = None) -> tuple[ManifestColumns, list[Path]]:
    """The merged view of manifest.json and all parts as int64 columns, and the part files that
    went into it.

    `num_views`: the store's number of views, to check every entry's view number against.
    A finished store's manifest.json (no parts) is read straight into arrays. A run that
    finishes merges its parts into manifest.json and then deletes them; a part that vanished
    between listing and reading is therefore in the manifest.json written since, and the store
    is read again.
    """
    for _attempt in range(10):
        pieces = []
        parts = list_parts(root)
        if (root / MANIFEST_FILE).exists():
            merged = read_manifest_columns(root / MANIFEST_FILE, num_views)
            if not parts:  # a finished store: manifest.json is already merged and ordered
                return merged, parts
            pieces.append(merged)
        try:
            pieces.extend(read_manifest_columns(p, num_views) for p in parts)
        except StoreError:
            if all(p.exists() for p in parts):
                raise
            continue
        return merge_manifest_columns(pieces), parts
    raise StoreError(f"{root / PART_DIR}: manifest parts kept vanishing while being read (a run merging "
                     "them?); try again")
