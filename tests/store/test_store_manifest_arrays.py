"""`store info`, `store verify`, a resume's committed-entries check and merging manifest parts on
the manifest's int64 columns give the same results as the list-based code of before
(`manifest_reference`): on random stores, sound and damaged, of both manifest.json layouts and
with unmerged parts. (Their memory: test_store_manifest_memory.py.)"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import manifest_reference as reference
from vimpac.data.annotations import VideoRecord
from vimpac.store import StoreError
from vimpac.store.format import (
    PART_DIR, SHARD_DIR, ManifestColumns, load_manifest, load_manifest_columns, part_name,
)
from vimpac.store.tokenize import _check_committed_match_list
from vimpac.store.verify import format_info, report_to_json, store_info, verify_store
from vimpac.store.writer import committed_ends

from test_store_format import make_meta, new_store, write_manifest_as

VIEWS = ("v0", "v1", "v2")
GRID = (1, 2)
PER_FRAME = GRID[0] * GRID[1] * 2  # bytes
SHARDS = ("r000-0000.tok", "r000-0001.tok", "r001-0000.tok", "r002-0000.tok")
# "clips//video_a": keyed by an older vimpac as its list spelled it (the list now says clips/video_a).
KEYS = tuple(f"video{i:02d}" for i in range(10)) + ("clips//video_a",)


def random_store(root: Path, rng: np.random.Generator, layout: str | None, parts: int, damage: float) -> Path:
    """store.json, shards of random bytes and a manifest in pieces: manifest.json in `layout`
    ("json", "columns"; None: none) and `parts` parts. With probability `damage` each, what
    the checks look for: a key listed again, records shared or out of order, labels below -1
    or past the class names, views missing, repeated or outside the store's, entries past their
    shard, overlapping or of no frames, entries not in video order, wrong checksums, a missing
    shard, failures of videos that have entries. (Uncommitted and unnamed shard bytes come with
    any store.)"""
    new_store(root, make_meta(views=VIEWS, grid=GRID, class_names=("a", "b", "c")))
    (root / SHARD_DIR).mkdir()
    data = {}
    for name in SHARDS:
        data[name] = rng.integers(0, 256, size=2 * int(rng.integers(0, 60)), dtype=np.uint8).tobytes()
        (root / SHARD_DIR / name).write_bytes(data[name])
    keys = list(rng.permutation(KEYS))
    next_record = 0

    def chance() -> bool:
        return bool(rng.random() < damage)

    def piece(most_videos: int) -> dict:
        nonlocal next_record
        shards = [str(s) for s in rng.permutation(SHARDS)[:int(rng.integers(1, len(SHARDS) + 1))]]
        videos = {"key": [], "label": [], "record": []}
        entries = {name: [] for name in ("video", "view", "frames", "shard", "offset", "crc32")}
        for video in range(int(rng.integers(0, most_videos + 1))):
            key = str(rng.choice(KEYS)) if chance() else (str(keys.pop()) if keys else f"more{next_record:03d}")
            record = next_record + int(rng.integers(-3, 1)) if chance() else next_record
            next_record += int(rng.integers(1, 3))
            label = int(rng.integers(-3, 5)) if chance() else int(rng.integers(-1, 3))
            videos["key"].append(key), videos["label"].append(label), videos["record"].append(record)
            views = list(range(len(VIEWS)))
            if chance():
                views = list(rng.choice(len(VIEWS) + 1, size=int(rng.integers(0, 5))))
            for view in rng.permutation(views):
                s = int(rng.integers(len(shards)))
                size = len(data[shards[s]])
                frames = int(rng.integers(0 if chance() else 1, 5))
                last_start = max(size - frames * PER_FRAME, 0)
                offset = 2 * int(rng.integers(0, size // 2 + 3)) if chance() else 2 * int(rng.integers(0, last_start // 2 + 1))
                stored = data[shards[s]][offset:offset + frames * PER_FRAME]
                crc = int(rng.integers(0, 2**32)) if chance() else zlib.crc32(stored)
                for name, value in zip(entries, (video, int(view), frames, s, offset, crc)):
                    entries[name].append(value)
        if chance():  # entries not video by video (a hand-edited manifest.json)
            order = rng.permutation(len(entries["video"]))
            entries = {name: [values[i] for i in order] for name, values in entries.items()}
        failures = [{"record": int(rng.integers(0, 20)), "key": str(rng.choice(KEYS)) if chance() else f"failed{i}",
                     "path": "x.mp4", "reason": "broken", "error": str(rng.choice(["decode", "not_found"]))}
                    for i in range(int(rng.integers(0, 3)))]
        return {"shards": shards, "videos": videos, "entries": entries, "failures": failures}

    if layout is not None:
        write_manifest_as(root, piece(40), layout)
    if parts:
        (root / PART_DIR).mkdir()
    for seq in range(parts):
        (root / PART_DIR / part_name(int(rng.integers(0, 3)), seq)).write_text(json.dumps(piece(4)))
    if chance():
        (root / SHARD_DIR / str(rng.choice(SHARDS))).unlink()
    return root


# The functions of this version, as `manifest_reference` names those of before.
CURRENT = SimpleNamespace(store_info=store_info, verify_store=verify_store, load_manifest=load_manifest)


def outputs(code, root: Path) -> dict[str, str]:
    """What `vimpac store info [--json]` and `vimpac store verify --json` print (or the error),
    and the merged manifest (as the reader checks it, and as verify does), from `code`'s functions."""
    result = {}
    try:
        info = code.store_info(root)
        result["info --json"], result["info"] = json.dumps(info, indent=2), format_info(info)
    except StoreError as exc:
        result["info error"] = str(exc)
    report = code.verify_store(root)
    result["verify --json"] = json.dumps(report_to_json(report), indent=2)
    for num_views in (None, len(VIEWS)):
        try:
            result[f"manifest {num_views}"] = json.dumps(code.load_manifest(root, num_views)[0].to_json())
        except StoreError as exc:
            result[f"manifest {num_views}"] = str(exc)
    return result


CASES = [(layout, parts, damage, seed) for layout in ("columns", "json", None) for parts, damage in
         ((0, 0.0), (1, 0.0), (3, 0.0), (0, 0.15), (2, 0.15), (4, 0.3), (0, 0.6)) for seed in range(4)]


@pytest.mark.parametrize("layout, parts, damage, seed", CASES)
def test_info_verify_and_merging_give_what_the_list_code_gave(tmp_path, layout, parts, damage, seed):
    root = random_store(tmp_path / "store", np.random.default_rng(seed), layout, parts, damage)
    assert outputs(CURRENT, root) == outputs(reference, root)


def list_for(manifest, rng: np.random.Generator, change: str) -> list[VideoRecord]:
    """An annotation list that the committed videos come from (each at its record number, with
    its label), and then `change`d."""
    size = max([0, *manifest.video_record, *(int(f["record"]) for f in manifest.failures)]) + 2
    records = [VideoRecord(f"other{i}.mp4", int(rng.integers(0, 3)), f"other{i}") for i in range(size)]
    for failure in manifest.failures:
        records[int(failure["record"])] = VideoRecord("f.mp4", 0, failure["key"])
    for key, record, label in zip(manifest.video_key, manifest.video_record, manifest.video_label):
        if record >= 0:
            records[record] = VideoRecord(f"{key}.mp4", None if label < 0 else label, key)
    i = int(rng.integers(0, len(records)))
    if change == "label":
        records[i] = VideoRecord(records[i].path, 7 if records[i].label is None else None, records[i].key)
    elif change == "order":
        records.insert(i, VideoRecord("new.mp4", 0, "new"))
    elif change == "dropped":
        del records[i]
    elif change == "renamed":
        records = [VideoRecord(r.path, r.label, r.key.replace("//", "/")) for r in records]
    elif change == "negative labels":  # never equal to a stored label, not even a negative one
        records = [VideoRecord(r.path, -2 if r.label is None else r.label, r.key) for r in records]
    elif change == "numpy label":
        records[i] = VideoRecord(records[i].path, np.int64(-1 if records[i].label is None else records[i].label),
                                 records[i].key)
    return records


def refusal(check, root: Path, committed, records: list[VideoRecord]) -> str | None:
    """The StoreError by which `check` refuses to resume `root` with `records`, or None."""
    try:
        check(root, committed, records)
    except StoreError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("change", ["none", "label", "order", "dropped", "renamed", "negative labels", "numpy label"])
@pytest.mark.parametrize("parts", [0, 2])
@pytest.mark.parametrize("seed", range(6))
def test_the_resume_check_gives_what_the_list_code_gave(tmp_path, change, parts, seed):
    rng = np.random.default_rng(seed)
    root = random_store(tmp_path / "store", rng, "columns", parts, damage=0.15 * (seed % 3))
    try:
        manifest, _ = reference.load_manifest(root)
    except StoreError:
        pytest.skip("a manifest damaged past reading")
    records = list_for(manifest, rng, change)
    columns, _ = load_manifest_columns(root)
    expected = refusal(reference._check_committed_match_list, root, manifest, records)
    assert refusal(_check_committed_match_list, root, columns, records) == expected
    assert committed_ends(columns, PER_FRAME) == reference.committed_ends(manifest, PER_FRAME)


@pytest.mark.parametrize("edit", ["label -2 in both", "record -1, not in the list"])
def test_the_resume_check_of_negative_numbers_gives_what_the_list_code_gave(tmp_path, edit):
    """A stored label below -1 is no label; a negative list label is not one either, and does not
    match it. A stored record -1 is no position in the list."""
    rng = np.random.default_rng(2)
    root = random_store(tmp_path / "store", rng, "columns", 0, damage=0.0)
    manifest, _ = reference.load_manifest(root)
    manifest.failures = []
    records = list_for(manifest, rng, "none")
    v = len(manifest.video_key) // 2
    key, record = manifest.video_key[v], manifest.video_record[v]
    if edit == "label -2 in both":
        manifest.video_label[v] = -2
        records[record] = VideoRecord(records[record].path, -2, key)
    else:
        manifest.video_record[v] = -1
        records[record] = VideoRecord("someone_else.mp4", 0, "someone_else")
    expected = refusal(reference._check_committed_match_list, root, manifest, records)
    assert expected is not None and f"video {key!r}" in expected
    assert refusal(_check_committed_match_list, root, ManifestColumns.from_manifest(manifest), records) == expected


def test_the_resume_check_of_a_list_that_fits_passes_and_one_label_changed_is_refused(tmp_path):
    root = random_store(tmp_path / "store", np.random.default_rng(0), "columns", 2, damage=0.0)
    columns, _ = load_manifest_columns(root)
    columns.failures = []  # their record numbers are drawn at random, some those of videos
    records = list_for(columns.to_manifest(), np.random.default_rng(0), "none")
    _check_committed_match_list(root, columns, records)
    v = len(columns.video_key) // 2
    key, label = columns.video_key[v], int(columns.video_label[v])
    records[int(columns.video_record[v])] = VideoRecord("x.mp4", 2 if label < 0 else None, key)
    with pytest.raises(StoreError, match=f"video '{key}' has label"):
        _check_committed_match_list(root, columns, records)


def test_committed_ends_past_int64_are_not_wrapped(tmp_path):
    """frames are not bounded in a manifest: an end past int64 must stay past every shard's end."""
    root = random_store(tmp_path / "store", np.random.default_rng(1), "columns", 0, damage=0.0)
    columns, _ = load_manifest_columns(root)
    assert columns.num_entries
    columns.entry_frames[0] = np.iinfo(np.int64).max // 3
    expected = reference.committed_ends(columns.to_manifest(), PER_FRAME)
    assert committed_ends(columns, PER_FRAME) == expected and max(expected.values()) > np.iinfo(np.int64).max
