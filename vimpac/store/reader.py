"""Reading a token store: O(1), zero-copy access to (T, h, w) uint16 token arrays.

    store = TokenStore.open("tokens/ucf101-train", expect_tokenizer_id=tok.tokenizer_id, expect_fps=2)
    clip = store.clip(i, start=3, length=5)          # (5, h, w) uint16, padded past the end
    for key in store.keys(): views = store.entries_of(key)   # {"s0-center-noflip": 17, ...}

Each shard is memory-mapped once as a flat uint16 array; an entry is a slice of it, so
`tokens(i)` costs a few list look-ups and a reshape, whatever the size of the store. The hot
path reads Python lists rather than numpy scalars because indexing those is several times
faster (it decides whether > 20,000 clips/s per core is reachable).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vimpac.store.errors import StoreError
from vimpac.store.format import SHARD_DIR, TOKEN_DTYPE, Manifest, StoreMeta, load_manifest, read_meta, same_fps
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


class TokenStore:
    """A read-only, memory-mapped view of a finished (or partly written) token store."""

    def __init__(self, root: Path, meta: StoreMeta, manifest: Manifest):
        self.root = root
        self.meta = meta
        self.manifest = manifest
        h, w = meta.grid
        self._grid = (h, w)
        self._per_frame = h * w
        self._vocab = Vocab(meta.codebook_size)
        m = manifest
        # Hot-path columns as plain lists (see module docstring).
        self._frames: list[int] = list(m.entry_frames)
        self._start: list[int] = [offset // TOKEN_DTYPE.itemsize for offset in m.entry_offset]
        self._shard: list[int] = list(m.entry_shard)
        self._maps: list[np.ndarray] = [self._map_shard(name) for name in m.shards]
        num_views = len(meta.views)
        for i, (shard, start, frames) in enumerate(zip(self._shard, self._start, self._frames)):
            offset, view = m.entry_offset[i], m.entry_view[i]
            if frames < 0 or offset < 0 or offset % TOKEN_DTYPE.itemsize or not 0 <= view < num_views:
                # Negative sizes would slice tokens from the wrong place without an error.
                raise StoreError(f"{root}: manifest entry {i} ({m.video_key[m.entry_video[i]]}) has "
                                 f"frames {frames}, byte offset {offset}, view {view}; expected frames >= 0, an "
                                 f"even offset >= 0 and a view below {num_views}; run `vimpac store verify` for details")
            if start + frames * self._per_frame > self._maps[shard].shape[0]:
                raise StoreError(f"{root / SHARD_DIR / m.shards[shard]}: entry {i} "
                                 f"({m.video_key[m.entry_video[i]]}) ends past the end of the shard; "
                                 "run `vimpac store verify` for details")
        self._index: dict[tuple[str, str], int] = {
            (m.video_key[v], meta.views[view]): i
            for i, (v, view) in enumerate(zip(m.entry_video, m.entry_view))
        }
        self._video_of = np.asarray(m.entry_video, dtype=np.int64)
        groups: list[list[int]] = [[] for _ in m.video_key]
        for i, v in enumerate(m.entry_video):
            groups[v].append(i)
        self._groups = [np.asarray(g, dtype=np.int64) for g in groups]
        self._video_index = {key: v for v, key in enumerate(m.video_key)}

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
        manifest, _ = load_manifest(root)
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
        return len(self.manifest.video_key)

    @property
    def num_frames(self) -> np.ndarray:
        """Frames of every entry (int64, aligned with entry indexes)."""
        return np.asarray(self._frames, dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        """Label of every entry (int64, -1 where the video has none)."""
        return np.asarray(self.manifest.video_label, dtype=np.int64)[self._video_of]

    @property
    def video_of(self) -> np.ndarray:
        """Video number (position in `keys()`) of every entry."""
        return self._video_of

    @property
    def failures(self) -> list[dict[str, Any]]:
        return list(self.manifest.failures)

    def keys(self) -> list[str]:
        """Video keys, one per video, in store order (the annotation list's order)."""
        return list(self.manifest.video_key)

    def entry(self, index: int) -> StoreEntry:
        i = self._check_index(index)
        m = self.manifest
        video = m.entry_video[i]
        label = m.video_label[video]
        frames = m.entry_frames[i]
        return StoreEntry(
            index=i, key=m.video_key[video], label=None if label < 0 else label,
            view=self.meta.views[m.entry_view[i]], num_frames=frames, fps=self.meta.fps,
            size=self.meta.size, grid=self._grid, tokenizer_id=self.meta.tokenizer_id,
            shard=m.shards[m.entry_shard[i]], offset=m.entry_offset[i],
            nbytes=frames * self._per_frame * TOKEN_DTYPE.itemsize, crc32=m.entry_crc32[i],
        )

    def index_of(self, key: str, view: str) -> int:
        try:
            return self._index[(key, view)]
        except KeyError:
            if key not in self._video_index:
                raise KeyError(f"{self.root}: no video {key!r} in the store") from None
            raise KeyError(f"{self.root}: video {key!r} has no view {view!r}; views: "
                           f"{list(self.views)}") from None

    def find(self, key: str, view: str) -> StoreEntry:
        return self.entry(self.index_of(key, view))

    def entries_of(self, key: str) -> dict[str, int]:
        """All views of one video: view name -> entry index."""
        try:
            group = self._groups[self._video_index[key]]
        except KeyError:
            raise KeyError(f"{self.root}: no video {key!r} in the store") from None
        return {self.meta.views[self.manifest.entry_view[i]]: int(i) for i in group}

    def groups(self) -> list[np.ndarray]:
        """Entry indexes grouped by video (one int64 array per video, in `keys()` order)."""
        return list(self._groups)

    # ------------------------------------------------------------------ tokens

    def tokens(self, index: int) -> np.ndarray:
        """The (T, h, w) uint16 tokens of entry `index`: a read-only view of the shard (no copy)."""
        frames = self._frames[index]  # IndexError for a bad index, as for a list
        start = self._start[index]
        flat = self._maps[self._shard[index]][start:start + frames * self._per_frame]
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
        shard = self._maps[self._shard[index]]
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
