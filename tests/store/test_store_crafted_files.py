"""A store folder from someone else: its manifest and store.json must not make a reader open files
outside the store, hand out tokens from the wrong place, or fail with a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vimpac.store import StoreError, TokenStore
from vimpac.store.format import MANIFEST_FILE, META_FILE
from vimpac.store.verify import verify_store
from vimpac.store.writer import compact_store

from test_store_format import edit_manifest, new_store, random_video, write_videos


@pytest.fixture(params=["columns", "json"])
def layout(request):
    """The merged manifest's layout: manifest.json with a columns file, or the JSON of older versions."""
    return request.param


@pytest.fixture
def store(tmp_path, layout):
    rng = np.random.default_rng(0)
    root = new_store(tmp_path / "store")
    write_videos(root, [random_video(rng, i, frames=2) for i in range(3)])
    compact_store(root)
    edit_manifest(root, lambda m: None, layout)
    assert verify_store(root).ok
    return root


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name", ["../../outside.tok", "/ABSOLUTE/outside.tok", "r000-0000.tok/../../outside.tok"])
def test_shard_names_outside_the_shards_folder_are_refused(store, layout, tmp_path, name):
    # A file the reader would otherwise map and hand out as tokens.
    outside = tmp_path / "outside.tok"
    outside.write_bytes(np.arange(64, dtype="<u2").tobytes())
    name = name.replace("/ABSOLUTE/outside.tok", str(outside))
    edit_manifest(store, lambda m: m.__setitem__("shards", [name]), layout)
    with pytest.raises(StoreError, match=rf"{MANIFEST_FILE}: shard name .* is not a shard file name"):
        TokenStore.open(store)
    problems = verify_store(store).problems
    assert len(problems) == 1 and "is not a shard file name" in problems[0]


@pytest.mark.parametrize("column, value", [("frames", -1), ("offset", -24), ("offset", 3), ("view", 2)])
def test_entries_with_negative_sizes_or_unknown_views_are_refused_on_open(store, layout, column, value):
    def change(m):
        m["entries"][column][0] = value
    numbers = edit_manifest(store, change, layout)  # manifest.json, or the columns file it names
    with pytest.raises(StoreError, match=rf"^{numbers}: entry 0 \(video 'video000'\) has "):
        TokenStore.open(store)


@pytest.mark.parametrize("field, value", [("grid", [-2, -3]), ("grid", [0, 3]), ("grid", "23"), ("size", 0),
                                          ("downsample", -8), ("codebook_size", 0), ("codebook_size", 70000),
                                          ("views", "ab"), ("class_names", "abc")])
def test_store_json_sizes_and_lists_are_checked(store, field, value):
    _edit(store / META_FILE, lambda m: m.__setitem__(field, value))
    with pytest.raises(StoreError, match=rf"{META_FILE}: .*{field}"):
        TokenStore.open(store)


@pytest.mark.parametrize("failures", ["abc", [1], {"key": "x"}])
def test_failures_must_be_a_list_of_objects(store, layout, failures):
    edit_manifest(store, lambda m: m.__setitem__("failures", failures), layout)
    with pytest.raises(StoreError, match=rf"{MANIFEST_FILE}: .*'failures' must be a list"):
        TokenStore.open(store)
