"""The merged manifest's columns file: less memory to open, stores of older versions, atomic
replacement, crafted files."""

from __future__ import annotations

import gc
import json
import tracemalloc

import numpy as np
import pytest

from vimpac.cli import main
from vimpac.store import StoreError, TokenStore
from vimpac.store import format as format_module
from vimpac.store.format import MANIFEST_FILE, PART_DIR, ManifestColumns, load_manifest, manifest_layout
from vimpac.store.verify import store_info, verify_store
from vimpac.store.writer import compact_store

from test_store_format import edit_manifest, new_store, random_video, write_manifest_as, write_videos
from test_store_reader import write_synthetic_manifest


def columns_files(root):
    return sorted(p.name for p in root.glob("manifest-*.safetensors"))


def store_contents(root):
    store = TokenStore.open(root)
    return store.keys(), store.labels.tolist(), [store.tokens(i).tolist() for i in range(len(store))]


@pytest.fixture
def old_store(tmp_path):
    """A finished store as vimpac wrote it before the columns file: manifest.json holds every number."""
    rng = np.random.default_rng(1)
    root = new_store(tmp_path / "store")
    write_videos(root, [random_video(rng, i, frames=1 + i % 3) for i in range(4)])
    compact_store(root)
    write_manifest_as(root, load_manifest(root)[0].to_json(), "json")
    assert manifest_layout(root) == "json" and not columns_files(root)
    return root, rng


def test_opening_a_compacted_store_does_not_build_a_python_object_per_value(tmp_path):
    """manifest.json held every number: json.load built a Python int per value (~36 bytes in a list,
    6 values an entry), freed once the columns were arrays, a peak of ~550 MiB for 2.4M entries
    in every rank and DataLoader worker."""
    root = tmp_path / "store"
    entries = write_synthetic_manifest(root, videos=5000, views=12)
    (root / PART_DIR).mkdir()
    (root / MANIFEST_FILE).rename(root / PART_DIR / "r000-000000.json")  # as a run left it
    compact_store(root)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = TokenStore.open(root)
        gc.collect()
        held, peak = (m - before for m in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    assert len(store) == entries
    # What opening needs beyond what it keeps: the rest of the int64 columns read (8 bytes a value).
    assert (peak - held) / entries < 8 * 8, f"{(peak - held) / entries:.0f} bytes per entry"


def test_a_store_of_an_older_version_opens_resumes_and_is_compacted(old_store):
    root, rng = old_store
    before = store_contents(root)
    assert len(before[0]) == 4
    more = [random_video(rng, i, frames=2) for i in range(4, 7)]
    write_videos(root, more)  # a resumed run: parts beside the old manifest.json
    assert TokenStore.open(root).keys() == before[0] + [v.key for v in more]
    compact_store(root)
    assert manifest_layout(root) == "columns" and len(columns_files(root)) == 1
    keys, labels, tokens = store_contents(root)
    assert keys == before[0] + [v.key for v in more] and tokens[:len(before[2])] == before[2]
    assert verify_store(root).ok and store_info(root)["videos"] == 7


def test_store_compact_rewrites_the_json_manifest_of_an_older_version(old_store, capsys):
    root, _rng = old_store
    before = store_contents(root)
    assert main(["store", "compact", str(root)]) == 0
    assert "rewrote the manifest.json of an older version with a columns file" in capsys.readouterr().out
    assert manifest_layout(root) == "columns" and len(columns_files(root)) == 1
    assert store_contents(root) == before
    assert main(["store", "compact", str(root)]) == 0
    assert "nothing to merge" in capsys.readouterr().out
    # A finished store is not rewritten at the end of a rerun (it may be on read-only storage).
    write_manifest_as(root, load_manifest(root)[0].to_json(), "json")
    compact_store(root)
    assert manifest_layout(root) == "json"


def test_an_interrupted_compaction_leaves_the_old_manifest_whole(store_with_videos, monkeypatch):
    """manifest.json is the commit: a columns file written before a crash is not read, and the
    next compaction deletes it."""
    root, videos = store_with_videos
    compact_store(root)
    before = store_contents(root)
    old_columns = columns_files(root)
    write_videos(root, [random_video(np.random.default_rng(2), 7, frames=2)])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(format_module, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        compact_store(root)
    monkeypatch.undo()
    assert len(columns_files(root)) == 2 and old_columns[0] in columns_files(root)
    assert json.loads((root / MANIFEST_FILE).read_text())["columns"]["file"] == old_columns[0]
    assert store_contents(root)[0] == before[0] + ["video007"]  # the old manifest.json and the part
    compact_store(root)
    assert len(columns_files(root)) == 1 and columns_files(root) != old_columns
    assert store_contents(root)[0] == before[0] + ["video007"]
    assert len(before[0]) == len(videos)


def test_a_reader_whose_columns_file_was_replaced_meanwhile_reads_the_new_manifest(store_with_videos, monkeypatch):
    """A compaction that replaces manifest.json between a reader's reading of it and of its columns
    deletes the columns file that reader is about to open: it reads the new manifest.json."""
    root, videos = store_with_videos
    compact_store(root)
    write_videos(root, [random_video(np.random.default_rng(3), 7, frames=2)])
    real = ManifestColumns.from_columns_json.__func__
    calls = []

    def compaction_in_between(cls, data, path, num_views=None):
        calls.append(data["columns"]["file"])
        if len(calls) == 1:
            compact_store(root)  # replaces manifest.json, deletes the columns file `data` names
        return real(cls, data, path, num_views)

    monkeypatch.setattr(ManifestColumns, "from_columns_json", classmethod(compaction_in_between))
    manifest, _ = format_module.load_manifest_columns(root)
    # The reader's read, the compaction's (of the same manifest.json), then the reader's of the new one.
    assert calls[0] == calls[1] != calls[2] == columns_files(root)[0]
    assert manifest.video_key == [v.key for v in videos] + ["video007"]


@pytest.mark.parametrize("name", ["../outside.safetensors", "/tmp/manifest-0123456789abcdef.safetensors",
                                  "manifest.json", 7])
def test_a_columns_file_outside_the_store_is_refused(store_with_videos, name):
    root, _videos = store_with_videos
    compact_store(root)
    data = json.loads((root / MANIFEST_FILE).read_text())
    data["columns"]["file"] = name
    (root / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(StoreError, match=rf"^{root / MANIFEST_FILE}: field 'columns.file' is "):
        TokenStore.open(root)


def damaged_columns(root, how):
    """Damage the columns file of a compacted store in one of the ways of `DAMAGES`."""
    from safetensors.numpy import save_file

    path = root / columns_files(root)[0]
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-9])
    elif how == "not safetensors":
        path.write_bytes(b"\xff" * 64)
    elif how == "wrong dtype":
        data = load_manifest(root)[0].to_json()
        save_file({"video_label": np.asarray(data["videos"]["label"], dtype=np.int32),
                   "video_record": np.asarray(data["videos"]["record"], dtype=np.int64),
                   **{f"entry_{c}": np.asarray(v, dtype=np.int64) for c, v in data["entries"].items()}}, str(path))
    elif how == "a column short":
        edit_manifest(root, lambda m: m["entries"]["crc32"].pop())
    elif how == "a column missing":
        edit_manifest(root, lambda m: m["entries"].pop("crc32"))
    elif how == "count differs from the keys":
        data = json.loads((root / MANIFEST_FILE).read_text())
        data["columns"]["videos"] += 1
        (root / MANIFEST_FILE).write_text(json.dumps(data))
        return root / MANIFEST_FILE
    return root / columns_files(root)[0] if columns_files(root) else path


DAMAGES = ["missing", "truncated", "not safetensors", "wrong dtype", "a column short", "a column missing",
           "count differs from the keys"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_columns_file_is_a_store_error_naming_it(store_with_videos, how):
    root, _videos = store_with_videos
    compact_store(root)
    named = damaged_columns(root, how)
    with pytest.raises(StoreError, match=rf"^{named}: "):
        TokenStore.open(root)
    problems = verify_store(root).problems
    assert len(problems) == 1 and problems[0].startswith(f"{named}: ")
