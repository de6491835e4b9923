"""Reading a token store: O(1), zero-copy access to (T, h, w) uint16 token arrays.

    store = TokenStore.open("tokens/ucf101-train", expect_tokenizer_id=tok.tokenizer_id, expect_fps=2)
    clip = store.clip(i, start=3, length=5)          # (5, h, w) uint16, padded past the end
    for key in store.keys(): views = store.entries_of(key)   # {"s0-center-noflip": 17, ...}

Each shard is memory-mapped once as a flat uint16 array; an entry is a slice of it, so
`tokens(i)` costs a few look-ups and a reshape, whatever the size of the store. The hot path
indexes `array.array` columns, which give Python ints, and a list of each entry's shard map:
numpy scalars are several times slower to index and compute with (it decides whether > 20,000
clips/s per core is reachable), and lists of Python ints cost ~40 bytes an entry, which every
forked DataLoader worker copies as it touches their reference counts (bench/bench_store_open.py,
docs/benchmarks.md).
"""

from __future__ import annotations

import array
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vimpac.store.errors import StoreError
from vimpac.store.format import (
    SHARD_DIR, TOKEN_DTYPE, Manifest, ManifestColumns, StoreMeta, load_manifest_columns, read_meta, same_fps,
)
from vimpac.tokens import Vocab


@dataclass(frozen=True)
class StoreEntry:
    """Metadata of one (video, view) token array."""

    index: int
    key: str
    label: int | None
    view: str
    num_frames: int
    fps: float
    size: int
    grid: tuple[int, int]
    tokenizer_id: str
    shard: str
    offset: int
    nbytes: int
    crc32: int


# array.array type codes of the hot-path columns, and the numpy types of the same size.
_NUMPY_TYPE = {"i": np.intc, "q": np.longlong}


def _compact(values: np.ndarray, typecode: str) -> array.array:
    """`values` as an array.array: indexing one gives a Python int nearly as fast as a list does
    (numpy scalars are several times slower), at 4 or 8 bytes an entry and with no Python
    object per entry."""
    out = array.array(typecode)
    out.frombytes(np.ascontiguousarray(values, dtype=_NUMPY_TYPE[typecode]).tobytes())
    return out


class TokenStore:
    """A read-only, memory-mapped view of a finished (or partly written) token store."""

    def __init__(self, root: Path, meta: StoreMeta, manifest: Manifest | ManifestColumns):
        self.root = root
        self.meta = meta
        h, w = meta.grid
        self._grid = (h, w)
        self._per_frame = h * w
        self._vocab = Vocab(meta.codebook_size)
        m = manifest
        if not isinstance(m, ManifestColumns):  # `open` checked its columns against the file already
            m = ManifestColumns.from_manifest(manifest)
            m.check_entries(f"{root}: manifest", len(meta.views))
        self._shard_names = list(m.shards)
        self._keys = list(m.video_key)
        self._video_label = m.video_label
        self._video_record = m.video_record
        self._failures = list(m.failures)
        self._video_of = m.entry_video
        self._crc32 = m.entry_crc32
        start = m.entry_offset // TOKEN_DTYPE.itemsize
        self._maps: list[np.ndarray] = [self._map_shard(name) for name in m.shards]
        shard_tokens = np.array([shard.shape[0] for shard in self._maps], dtype=np.int64)
        # frames * per_frame > tokens after start, without the product overflowing int64.
        beyond = np.flatnonzero(m.entry_frames > (shard_tokens[m.entry_shard] - start) // max(self._per_frame, 1))
        if len(beyond):
            i = int(beyond[0])
            raise StoreError(f"{root / SHARD_DIR / m.shards[m.entry_shard[i]]}: entry {i} "
                             f"({m.video_key[m.entry_video[i]]}) ends past the end of the shard; "
                             "run `vimpac store verify` for details")
        # Hot-path columns (see module docstring); the bounds check above keeps frames and shard
        # numbers within int32.
        self._frames = _compact(m.entry_frames, "i")
        self._shard = _compact(m.entry_shard, "i")
        self._start = _compact(start, "q")
        self._view_of = _compact(m.entry_view, "i")
        self._set_entry_maps()
        # Entries grouped by video: a video's entries are order[first[v]:first[v + 1]]. A merged
        # manifest lists them video by video already, so `order` is needed only for other ones.
        video = m.entry_video
        self._order = None if np.all(video[1:] >= video[:-1]) else np.argsort(video, kind="stable")
        first = np.zeros(len(self._keys) + 1, dtype=np.int64)
        np.cumsum(np.bincount(video, minlength=len(self._keys)), out=first[1:])
        self._first = _compact(first, "q")
        self._video_index_cache: dict[str, int] | None = None  # key -> video, built on first use

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (a DataLoader worker under spawn): the columns, not the mapped shards, which
        # the copy maps again from the same files.
        state = dict(self.__dict__)
        del state["_maps"], state["_entry_map"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._maps = [self._map_shard(name) for name in self._shard_names]
        self._set_entry_maps()

    def _set_entry_maps(self) -> None:
        # Each entry's mapped shard: one list look-up on the hot path instead of two (shard number,
        # then map). 8 bytes an entry, all pointing at a few map objects, so reading it writes
        # only those objects' reference counts.
        self._entry_map = [self._maps[shard] for shard in self._shard]

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        expect_tokenizer_id: str | None = None,
        expect_fps: float | None = None,
        expect_size: int | None = None,
        expect_views: str | tuple[str, ...] | list[str] | None = None,
        expect_codebook_size: int | None = None,
    ) -> "TokenStore":
        """Open a store; each `expect_*` that differs from the store's record is a StoreError.

        `expect_views` is the store's view names in order; a single str is one view name.
        """
        root = Path(path)
        if isinstance(expect_views, str):
            # tuple("s1.00_center") would be its characters.
            expect_views = (expect_views,)
        elif expect_views is not None and not isinstance(expect_views, (tuple, list)):
            raise TypeError(f"expect_views: expected a view name or a tuple/list of view names, "
                            f"got {type(expect_views).__name__}")
        meta = read_meta(root)
        checks: list[tuple[str, Any, Any]] = [
            ("tokenizer_id", expect_tokenizer_id, meta.tokenizer_id),
            ("fps", expect_fps, meta.fps),
            ("size", expect_size, meta.size),
            ("views", None if expect_views is None else tuple(expect_views), meta.views),
            ("codebook_size", expect_codebook_size, meta.codebook_size),
        ]
        for name, expected, actual in checks:
            if expected is None:
                continue
            same = same_fps(expected, actual) if name == "fps" else expected == actual
            if not same:
                raise StoreError(f"{root}: store was made with {name}={actual!r}, but {expected!r} "
                                 f"was expected (store.json field '{name}')")
        manifest, _ = load_manifest_columns(root, num_views=len(meta.views))
        return cls(root, meta, manifest)

    def _map_shard(self, name: str) -> np.ndarray:
        """The whole shard as a flat read-only uint16 array backed by mmap.

        A plain ndarray over an `mmap` rather than `np.memmap`: slicing an np.memmap runs
        Python-level `__array_finalize__` on every view, which costs ~40% of a clip read.
        """
        path = self.root / SHARD_DIR / name
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < TOKEN_DTYPE.itemsize:  # mmap refuses empty files
                    return np.zeros(0, dtype=TOKEN_DTYPE)
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise StoreError(f"{path}: shard named by the manifest is missing") from None
        # The array keeps `mapped` alive; the file descriptor is not needed after mapping.
        return np.frombuffer(mapped, dtype=TOKEN_DTYPE, count=size // TOKEN_DTYPE.itemsize)

    # ------------------------------------------------------------------ metadata

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def views(self) -> tuple[str, ...]:
        return self.meta.views

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.meta.class_names

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def pad_id(self) -> int:
        """The [PAD] id of the model vocabulary built on this store's codebook."""
        return self._vocab.pad_id

    @property
    def num_videos(self) -> int:
        return len(self._keys)

    @property
    def manifest(self) -> Manifest:
        """The manifest as `Manifest` lists: a new copy per call (memory of a Python int per
        value: on a big store use the arrays of `num_frames`, `labels`, `video_of`...)."""
        return Manifest(
            shards=list(self._shard_names), video_key=list(self._keys), failures=list(self._failures),
            video_label=self._video_label.tolist(), video_record=self._video_record.tolist(),
            entry_video=self._video_of.tolist(), entry_view=self._view_of.tolist(),
            entry_frames=self._frames.tolist(), entry_shard=self._shard.tolist(),
            entry_offset=[start * TOKEN_DTYPE.itemsize for start in self._start], entry_crc32=self._crc32.tolist(),
        )

    @property
    def num_frames(self) -> np.ndarray:
        """Frames of every entry (int64, aligned with entry indexes)."""
        return np.frombuffer(self._frames, dtype=_NUMPY_TYPE["i"]).astype(np.int64)

    @property
    def labels(self) -> np.ndarray:
        """Label of every entry (int64, -1 where the video has none)."""
        return self._video_label[self._video_of]

    @property
    def video_of(self) -> np.ndarray:
        """Video number (position in `keys()`) of every entry."""
        return self._video_of

    @property
    def failures(self) -> list[dict[str, Any]]:
        return list(self._failures)

    def keys(self) -> list[str]:
        """Video keys, one per video, in store order (the annotation list's order)."""
        return list(self._keys)

    def entry(self, index: int) -> StoreEntry:
        i = self._check_index(index)
        video = int(self._video_of[i])
        label = int(self._video_label[video])
        frames = self._frames[i]
        return StoreEntry(
            index=i, key=self._keys[video], label=None if label < 0 else label,
            view=self.meta.views[self._view_of[i]], num_frames=frames, fps=self.meta.fps,
            size=self.meta.size, grid=self._grid, tokenizer_id=self.meta.tokenizer_id,
            shard=self._shard_names[self._shard[i]], offset=self._start[i] * TOKEN_DTYPE.itemsize,
            nbytes=frames * self._per_frame * TOKEN_DTYPE.itemsize, crc32=int(self._crc32[i]),
        )

    def _video_number(self, key: str) -> int:
        if self._video_index_cache is None:
            self._video_index_cache = {k: v for v, k in enumerate(self._keys)}
        try:
            return self._video_index_cache[key]
        except KeyError:
            raise KeyError(f"{self.root}: no video {key!r} in the store") from None

    def _entries_of_video(self, video: int) -> list[int]:
        first, end = self._first[video], self._first[video + 1]
        if self._order is None:
            return list(range(first, end))
        return self._order[first:end].tolist()

    def index_of(self, key: str, view: str) -> int:
        entries = self._entries_of_video(self._video_number(key))
        views = self.meta.views
        for i in reversed(entries):  # the last, as a dict of (key, view) kept it
            if views[self._view_of[i]] == view:
                return i
        raise KeyError(f"{self.root}: video {key!r} has no view {view!r}; views: {list(views)}")

    def find(self, key: str, view: str) -> StoreEntry:
        return self.entry(self.index_of(key, view))

    def entries_of(self, key: str) -> dict[str, int]:
        """All views of one video: view name -> entry index."""
        views, view_of = self.meta.views, self._view_of
        return {views[view_of[i]]: i for i in self._entries_of_video(self._video_number(key))}

    def entries_for_view(self, view: str) -> tuple[np.ndarray, np.ndarray]:
        """The videos that have `view` and the entry index of that view of each: two int64 arrays,
        in video (`keys()`) order. One pass over the entry columns instead of `entries_of` per
        video (1M videos: a Python dict per video). A video listed with the view twice gives its
        last entry, as `entries_of` and `index_of` do."""
        if view not in self.meta.views:
            raise KeyError(f"{self.root}: no view {view!r}; views: {list(self.meta.views)}")
        entries = np.flatnonzero(np.frombuffer(self._view_of, dtype=_NUMPY_TYPE["i"]) == self.meta.views.index(view))
        entries = entries[::-1]  # np.unique gives each video's first occurrence: here its last entry
        videos, first = np.unique(self._video_of[entries], return_index=True)
        return videos.astype(np.int64), entries[first].astype(np.int64)

    def groups(self) -> list[np.ndarray]:
        """Entry indexes grouped by video (one int64 array per video, in `keys()` order)."""
        if not self._keys:
            return []
        order = np.arange(len(self), dtype=np.int64) if self._order is None else self._order
        return np.split(order, self._first[1:-1].tolist())

    # ------------------------------------------------------------------ tokens

    def tokens(self, index: int) -> np.ndarray:
        """The (T, h, w) uint16 tokens of entry `index`: a read-only view of the shard (no copy)."""
        frames = self._frames[index]  # IndexError for a bad index, as for a list
        start = self._start[index]
        flat = self._entry_map[index][start:start + frames * self._per_frame]
        return flat.reshape(frames, self._grid[0], self._grid[1])

    def clip(self, index: int, start: int, length: int, pad_id: int | None = None) -> np.ndarray:
        """Frames [start, start + length) of entry `index`, padded with `pad_id` past the end.

        Returns a read-only view when the clip lies inside the video and a new array when it
        needs padding. `pad_id` defaults to the vocabulary's [PAD] id (`self.pad_id`).
        """
        if start < 0 or length < 0:
            raise ValueError(f"clip start and length must be >= 0, got start={start}, length={length}")
        frames = self._frames[index]
        h, w = self._grid
        per_frame = self._per_frame
        first = self._start[index] + start * per_frame
        shard = self._entry_map[index]
        end = start + length
        if end <= frames:  # the common case: slice the shard directly, no copy
            return shard[first:first + length * per_frame].reshape(length, h, w)
        out = np.full((length, h, w), self.pad_id if pad_id is None else pad_id, dtype=TOKEN_DTYPE)
        available = max(0, frames - start)
        if available:
            out[:available] = shard[first:first + available * per_frame].reshape(available, h, w)
        return out

    def _check_index(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"entry index {index} out of range for a store of {n} entries")
        return i

    def __repr__(self) -> str:
        return (f"TokenStore({str(self.root)!r}, videos={self.num_videos}, entries={len(self)}, "
                f"views={len(self.views)}, fps={self.meta.fps:g}, size={self.meta.size}, "
                f"tokenizer={self.meta.tokenizer_kind}:{self.meta.tokenizer_id})")
