"""TokenStore on big and on damaged manifests: memory per entry, entry order, pickling, bad values."""

from __future__ import annotations

import gc
import json
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from vimpac.store import StoreError, TokenStore
from vimpac.store.format import MANIFEST_FILE, PART_DIR, SHARD_DIR, load_manifest
from vimpac.store.writer import EncodedVideo, RankWriter, compact_store

from test_store_format import GRID, VIEWS, edit_manifest, make_meta, new_store, random_video, write_videos


def write_synthetic_manifest(root: Path, videos: int, views: int) -> int:
    """store.json, a manifest.json of `videos` x `views` entries and a sparse shard; returns entries."""
    meta = make_meta(views=tuple(f"view{v}" for v in range(views)), class_names=None)
    new_store(root, meta)
    n = videos * views
    frames = np.full(n, 4)
    offsets = np.arange(n) * (4 * GRID[0] * GRID[1] * 2)
    (root / SHARD_DIR).mkdir()
    with open(root / SHARD_DIR / "r000-0000.tok", "wb") as f:
        f.truncate(int(offsets[-1]) + 4 * GRID[0] * GRID[1] * 2)
    manifest = {
        "shards": ["r000-0000.tok"],
        "videos": {"key": [f"some/folder/video_{i:07d}" for i in range(videos)],
                   "label": [i % 400 for i in range(videos)], "record": list(range(videos))},
        "entries": {"video": np.repeat(np.arange(videos), views).tolist(), "view": np.tile(np.arange(views), videos).tolist(),
                    "frames": frames.tolist(), "shard": [0] * n, "offset": offsets.tolist(),
                    "crc32": (np.arange(n) * 7919 + 2**31).tolist()},
        "failures": [],
    }
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))
    return n


def test_an_open_store_keeps_a_few_bytes_per_entry(tmp_path):
    """The reader held the manifest as lists of Python ints, a (key, view) -> entry dict and a
    list per video: ~1 GB for 2.4M entries, in every rank and every DataLoader worker."""
    entries = write_synthetic_manifest(tmp_path / "store", videos=5000, views=12)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = TokenStore.open(tmp_path / "store")
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == entries
    # Columns of 4-8 bytes (video, view, frames, shard, start, crc32: 36 bytes) plus each video's
    # key, label and record shared by its 12 entries; a Python int in a list alone takes 36.
    assert held / entries < 80, f"{held / entries:.0f} bytes per entry"
    # The key look-up works (built on first use).
    assert store.index_of("some/folder/video_0004321", "view7") == 4321 * 12 + 7


def test_entries_listed_out_of_video_order_are_grouped_by_video(tmp_path):
    """A hand-edited manifest.json need not list each video's entries together."""
    rng = np.random.default_rng(5)
    videos = [random_video(rng, i, frames=1 + i) for i in range(4)]
    root = new_store(tmp_path / "store")
    write_videos(root, videos)
    compact_store(root)
    order = np.random.default_rng(0).permutation(len(videos) * len(VIEWS)).tolist()
    edit_manifest(root, lambda data: data.__setitem__(
        "entries", {name: [column[i] for i in order] for name, column in data["entries"].items()}))

    store = TokenStore.open(root)
    assert [sorted(store.entries_of(v.key)) for v in videos] == [sorted(VIEWS)] * len(videos)
    for video in videos:
        for view, index in store.entries_of(video.key).items():
            assert store.index_of(video.key, view) == index
            np.testing.assert_array_equal(store.tokens(index), video.views[view])
            assert store.entry(index).key == video.key and store.entry(index).view == view
    groups = store.groups()
    assert [sorted(store.video_of[g].tolist()) for g in groups] == [[v] * len(VIEWS) for v in range(len(videos))]
    assert store.labels.tolist() == [videos[v].label for v in store.video_of]


def test_entries_for_view_match_entries_of_every_video(tmp_path):
    """Pre-training's set-up takes one view's entry of every video in one pass (an `entries_of`
    dict per video took seconds at 1M videos): the same entries, also where the manifest lists
    them out of order, a video lacks the view, or a video has it twice (the last counts)."""
    write_synthetic_manifest(tmp_path / "store", videos=40, views=3)
    path = tmp_path / "store" / MANIFEST_FILE
    data = json.loads(path.read_text())
    columns = data["entries"]
    rng = np.random.default_rng(3)
    keep = [i for i in range(len(columns["video"])) if not (columns["view"][i] == 1 and columns["video"][i] % 3 == 0)]
    keep += [4 * 3 + 2, 7 * 3 + 1]  # videos 4 and 7 list views 2 and 1 twice
    order = [keep[i] for i in rng.permutation(len(keep))]
    data["entries"] = {name: [column[i] for i in order] for name, column in columns.items()}
    path.write_text(json.dumps(data))

    store = TokenStore.open(tmp_path / "store")
    for view in store.views:
        videos, entries = store.entries_for_view(view)
        expected = [(v, store.entries_of(key)[view]) for v, key in enumerate(store.keys())
                    if view in store.entries_of(key)]
        assert list(zip(videos.tolist(), entries.tolist())) == expected
        assert videos.dtype == entries.dtype == np.int64
        assert all(store.entry(e).view == view for e in entries.tolist())
    assert len(store.entries_for_view("view1")[0]) == 40 - 14
    with pytest.raises(KeyError, match="no view 'view9'"):
        store.entries_for_view("view9")


def test_a_pickled_store_maps_the_shards_again_instead_of_copying_them(tmp_path):
    """A DataLoader worker under spawn gets the store pickled: the columns, not the tokens."""
    rng = np.random.default_rng(6)
    video = EncodedVideo(0, "long", 1, {name: rng.integers(0, 100, size=(2000, *GRID)) for name in VIEWS})
    root = new_store(tmp_path / "store")
    committed, _ = load_manifest(root)
    with RankWriter(root, make_meta(), 0, committed) as writer:
        writer.commit([video])
    store = TokenStore.open(root)
    data = pickle.dumps(store)
    shard_bytes = (root / SHARD_DIR / "r000-0000.tok").stat().st_size
    assert len(data) < shard_bytes / 10
    restored = pickle.loads(data)
    for view, index in restored.entries_of("long").items():
        tokens = restored.clip(index, 1990, 20)
        np.testing.assert_array_equal(tokens[:10], video.views[view][1990:])
        assert (tokens[10:] == store.pad_id).all()
        assert not restored.tokens(index).flags.writeable  # a view of the mapped file, as before pickling


def damage(path: Path, column: str, entry: int, value: int) -> None:
    data = json.loads(path.read_text())
    data["entries"][column][entry] = value
    path.write_text(json.dumps(data))


def test_a_damaged_part_is_named(store_with_videos):
    """The error named the store folder only (tests/store/test_store_crafted_files.py checks
    manifest.json's values); a store of separate rank jobs has thousands of part files."""
    root, _videos = store_with_videos
    part = sorted((root / PART_DIR).glob("*.json"))[1]
    damage(part, "view", 0, 5)
    with pytest.raises(StoreError, match=rf"^{part}: entry 0 \(video 'video002'\) has view number 5, outside"):
        TokenStore.open(root)
