"""The store format without video: write with RankWriter, read with TokenStore, verify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vimpac.cli import main as cli_main
from vimpac.store import StoreError, TokenStore
from vimpac.store import writer as writer_module
from vimpac.store.format import MANIFEST_FILE, PART_DIR, SHARD_DIR, StoreMeta, load_manifest
from vimpac.store.verify import store_info, verify_store
from vimpac.store.writer import EncodedVideo, FailedVideo, RankWriter, compact_store

VIEWS = ("center", "center_flip")
GRID = (2, 3)


def make_meta(**changes) -> StoreMeta:
    fields = dict(tokenizer_id="tok-a", tokenizer_kind="test", codebook_size=100, downsample=8, fps=2.0,
                  size=16, grid=(2, 3), views=VIEWS, source="unit test", class_names=("a", "b", "c"))
    fields.update(changes)
    return StoreMeta(**fields)


def random_video(rng: np.random.Generator, record: int, frames: int) -> EncodedVideo:
    views = {name: rng.integers(0, 100, size=(frames, *GRID)) for name in VIEWS}
    return EncodedVideo(record=record, key=f"video{record:03d}", label=record % 3, views=views)


def new_store(root: Path, meta: StoreMeta | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "store.json").write_text(json.dumps((meta or make_meta()).to_json()))
    return root


def write_manifest_as(root: Path, data: dict, layout: str) -> Path:
    """Make `data` (a manifest in the JSON layout of the parts, maybe damaged on purpose) the store's
    merged manifest, by hand as docs/store.md describes it, in `layout`: "json" (manifest.json of
    vimpac before the columns file) or "columns" (manifest.json naming a columns file). Returns
    the file that holds the numbers."""
    for old in root.glob("manifest-*.safetensors"):
        old.unlink()
    if layout == "json":
        (root / MANIFEST_FILE).write_text(json.dumps(data))
        return root / MANIFEST_FILE
    assert layout == "columns", layout
    from safetensors.numpy import save_file

    name = "manifest-0123456789abcdef.safetensors"
    numbers = {"video_label": data["videos"]["label"], "video_record": data["videos"]["record"],
               **{f"entry_{column}": values for column, values in data["entries"].items()}}
    save_file({column: np.asarray(values, dtype=np.int64) for column, values in numbers.items()}, str(root / name))
    (root / MANIFEST_FILE).write_text(json.dumps({
        "columns": {"file": name, "videos": len(data["videos"]["label"]), "entries": len(data["entries"]["video"])},
        "shards": data["shards"], "videos": {"key": data["videos"]["key"]}, "failures": data["failures"],
    }))
    return root / name


def edit_manifest(root: Path, change, layout: str = "columns") -> Path:
    """Apply `change` to the store's merged manifest (as a dict of the JSON layout) and write it
    back in `layout` (`write_manifest_as`)."""
    data = load_manifest(root)[0].to_json()
    change(data)
    return write_manifest_as(root, data, layout)


def write_videos(root: Path, videos, rank: int = 0, per_commit: int = 2, **kwargs) -> None:
    committed, _ = load_manifest(root)
    with RankWriter(root, make_meta(), rank, committed, **kwargs) as writer:
        for start in range(0, len(videos), per_commit):
            writer.commit(videos[start:start + per_commit])


def test_roundtrip_tokens_and_metadata(store_with_videos):
    root, videos = store_with_videos
    compact_store(root)
    store = TokenStore.open(root)
    assert len(store) == 7 * len(VIEWS)
    assert store.num_videos == 7
    assert store.keys() == [v.key for v in videos]
    assert store.views == VIEWS and store.class_names == ("a", "b", "c")
    for video in videos:
        for view in VIEWS:
            entry = store.find(video.key, view)
            assert (entry.key, entry.view, entry.label) == (video.key, view, video.label)
            assert entry.num_frames == video.views[view].shape[0]
            assert (entry.fps, entry.size, entry.tokenizer_id) == (2.0, 16, "tok-a")
            tokens = store.tokens(entry.index)
            assert tokens.dtype == np.uint16 and tokens.shape == video.views[view].shape
            np.testing.assert_array_equal(tokens, video.views[view])
        assert set(store.entries_of(video.key)) == set(VIEWS)
    labels = store.labels
    assert labels.shape == (len(store),)
    assert [labels[g[0]] for g in store.groups()] == [v.label for v in videos]
    assert all(len(g) == len(VIEWS) for g in store.groups())


def test_tokens_are_zero_copy_read_only_views(store_with_videos):
    root, videos = store_with_videos
    store = TokenStore.open(root)  # parts not merged yet: merged lazily at open
    shard_map = store._maps[0]
    for i in np.random.default_rng(1).permutation(len(store)):  # any order: direct access
        tokens = store.tokens(int(i))
        assert np.shares_memory(tokens, shard_map)
        assert not tokens.flags.writeable
    with pytest.raises(IndexError):
        store.tokens(len(store))
    with pytest.raises(KeyError, match="no video"):
        store.find("nope", "center")
    with pytest.raises(KeyError, match="no view"):
        store.find("video000", "sideways")


def test_clip_pads_past_the_end(store_with_videos):
    root, videos = store_with_videos
    store = TokenStore.open(root)
    i = store.index_of("video003", "center")  # 4 frames
    full = videos[3].views["center"]
    inside = store.clip(i, 1, 3)
    np.testing.assert_array_equal(inside, full[1:4])
    assert np.shares_memory(inside, store._maps[0])
    padded = store.clip(i, 2, 5)
    assert padded.shape == (5, *GRID)
    np.testing.assert_array_equal(padded[:2], full[2:4])
    assert (padded[2:] == store.pad_id).all() and store.pad_id == 101  # codebook 100 -> [PAD] 101
    assert (store.clip(i, 10, 2, pad_id=7) == 7).all()
    with pytest.raises(ValueError):
        store.clip(i, -1, 2)


def test_expectations_on_open_name_the_field(store_with_videos):
    root, _ = store_with_videos
    TokenStore.open(root, expect_tokenizer_id="tok-a", expect_fps=2, expect_size=16)
    with pytest.raises(StoreError, match="tokenizer_id"):
        TokenStore.open(root, expect_tokenizer_id="tok-b")
    with pytest.raises(StoreError, match="fps"):
        TokenStore.open(root, expect_fps=4)
    with pytest.raises(StoreError, match="size"):
        TokenStore.open(root, expect_size=128)
    with pytest.raises(StoreError, match="not a token store"):
        TokenStore.open(root / "missing")


def test_flipped_byte_is_found_by_verify(store_with_videos):
    root, _ = store_with_videos
    assert verify_store(root).ok
    shard = next((root / SHARD_DIR).glob("*.tok"))
    data = bytearray(shard.read_bytes())
    data[37] ^= 0x01
    shard.write_bytes(bytes(data))
    report = verify_store(root)
    assert not report.ok
    assert len(report.problems) == 1 and "checksum mismatch" in report.problems[0]


@pytest.mark.parametrize("what", ["missing", "a file", "a folder without store.json"])
def test_verify_of_what_is_not_a_store_is_a_usage_error(tmp_path, capsys, what):
    """It was a PROBLEM line and exit 1, as for a damaged store; every other command says
    `vimpac <command>: error: ...` and exits 2 for a wrong path."""
    path = tmp_path / "store"
    if what == "a file":
        path.write_text("x")
    elif what == "a folder without store.json":
        path.mkdir()
    with pytest.raises(StoreError, match=str(path)):
        verify_store(path)
    assert cli_main(["store", "verify", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert not out and err.startswith(f"vimpac store verify: error: {path}: ") and err.count("\n") == 1, err


def test_verify_of_a_store_with_a_damaged_store_json_reports_a_problem(store_with_videos, capsys):
    root, _ = store_with_videos
    (root / "store.json").write_text("{not json")
    assert cli_main(["store", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"PROBLEM: {root / 'store.json'}: cannot read") and out.endswith(": 1 problem(s)\n"), out


def test_truncated_shard_is_a_problem(store_with_videos):
    root, _ = store_with_videos
    shard = next((root / SHARD_DIR).glob("*.tok"))
    shard.write_bytes(shard.read_bytes()[:-10])
    assert any("do not fit shard" in p for p in verify_store(root).problems)
    with pytest.raises(StoreError, match="past the end of the shard"):
        TokenStore.open(root)


def test_crash_before_commit_is_rolled_back(tmp_path, monkeypatch):
    """Bytes written but never committed (crash between fsync and the part) are truncated."""
    rng = np.random.default_rng(2)
    videos = [random_video(rng, i, frames=3) for i in range(4)]
    root = new_store(tmp_path / "store")
    write_videos(root, videos[:2])
    committed_size = (root / SHARD_DIR / "r000-0000.tok").stat().st_size

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill after the shard fsync")

    monkeypatch.setattr(writer_module, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        write_videos(root, videos[2:3])
    monkeypatch.undo()
    assert (root / SHARD_DIR / "r000-0000.tok").stat().st_size > committed_size
    assert any("uncommitted" in note for note in verify_store(root).notes)
    write_videos(root, videos[2:])  # the restart truncates, then appends
    store = TokenStore.open(root)
    assert store.keys() == [v.key for v in videos]
    for video in videos:
        np.testing.assert_array_equal(store.tokens(store.index_of(video.key, "center_flip")),
                                      video.views["center_flip"])
    report = verify_store(root)
    assert report.ok and not report.notes[1:]


def test_a_full_disk_names_the_file_and_says_a_rerun_resumes(tmp_path, monkeypatch):
    """It was 'vimpac: [Errno 28] No space left on device': no file, no word on the store's state."""
    import errno

    rng = np.random.default_rng(6)
    videos = [random_video(rng, i, frames=2) for i in range(4)]
    root = new_store(tmp_path / "store")
    write_videos(root, videos[:2])

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a failing write(): no file name

    monkeypatch.setattr(writer_module, "atomic_write_json", disk_full)
    with pytest.raises(StoreError, match=r"manifest/r000-000001.json: cannot write: No space left on device; the "
                                         r"videos committed so far are kept: .* rerun the same command to resume"):
        write_videos(root, videos[2:])
    monkeypatch.undo()
    write_videos(root, videos[2:])
    assert verify_store(root).ok and TokenStore.open(root).keys() == [v.key for v in videos]


def test_opening_while_the_writer_merges_its_parts_reads_the_merged_manifest(tmp_path, monkeypatch):
    """A reader (a training job started as tokenizing ends) that listed the parts just before
    the run merged them into manifest.json and deleted them failed with 'cannot read manifest:
    No such file or directory' for a store that was fine."""
    from vimpac.store import format as format_module

    rng = np.random.default_rng(8)
    videos = [random_video(rng, i, frames=2) for i in range(4)]
    root = new_store(tmp_path / "store")
    write_videos(root, videos, per_commit=1)
    list_parts = format_module.list_parts
    merged = []

    def list_then_merge(folder):
        listed = list_parts(folder)
        if not merged:  # the writer's final merge runs right after the reader listed the parts
            merged.append(True)
            compact_store(root)
        return listed

    monkeypatch.setattr(format_module, "list_parts", list_then_merge)
    store = TokenStore.open(root)
    assert merged and not list_parts(root)
    assert store.keys() == [v.key for v in videos]


def test_second_writer_for_the_same_rank_is_refused(tmp_path):
    root = new_store(tmp_path / "store")
    committed, _ = load_manifest(root)
    with RankWriter(root, make_meta(), 0, committed):
        with pytest.raises(StoreError, match="another process"):
            RankWriter(root, make_meta(), 0, committed)
        RankWriter(root, make_meta(), 1, committed).close()  # other ranks are independent


def test_a_writer_whose_manifest_went_stale_before_it_got_the_lock_truncates_nothing(tmp_path):
    """Two runs on one store: B reads the manifest, A commits more and exits (releasing the
    rank's lock), then B takes the lock. B truncated the shard to its stale view, destroying A's
    committed videos (verify: entries past the end of the shard)."""
    rng = np.random.default_rng(5)
    videos = [random_video(rng, i, frames=2) for i in range(4)]
    root = new_store(tmp_path / "store")
    write_videos(root, videos[:2])
    stale, _ = load_manifest(root)  # run B plans its work from this
    write_videos(root, videos[2:])  # run A commits two more videos meanwhile and exits
    compact_store(root)
    with pytest.raises(StoreError, match="another process committed to rank 0 of this store after this run "
                                         "read its manifest; rerun"):
        RankWriter(root, make_meta(), 0, stale)
    assert verify_store(root).ok
    assert TokenStore.open(root).keys() == [v.key for v in videos]
    # Other ranks committing meanwhile is normal (a torchrun job) and does not stop this one.
    stale, _ = load_manifest(root)
    write_videos(root, [random_video(rng, 9, frames=2)], rank=1)
    RankWriter(root, make_meta(), 0, stale).close()
    assert verify_store(root).ok


def test_ranks_merge_into_one_ordered_store_with_failures(tmp_path):
    rng = np.random.default_rng(3)
    videos = [random_video(rng, i, frames=2) for i in range(6)]
    root = new_store(tmp_path / "store")
    write_videos(root, videos[1::2], rank=1, per_commit=1)
    write_videos(root, videos[0::2], rank=0, per_commit=3)
    committed, _ = load_manifest(root)
    with RankWriter(root, make_meta(), 0, committed) as writer:
        writer.commit([], [FailedVideo(9, "broken", "broken.mp4", "not a video", "decode")])
    assert len(list((root / PART_DIR).glob("*.json"))) == 5
    manifest = compact_store(root)
    assert not list((root / PART_DIR).glob("*.json")) and (root / MANIFEST_FILE).exists()
    assert [f["key"] for f in manifest.failures] == ["broken"]
    assert json.loads((root / "failures.jsonl").read_text())["reason"] == "not a video"
    store = TokenStore.open(root)
    assert store.keys() == [v.key for v in videos]  # annotation order, whatever the rank
    assert sorted(store.manifest.shards) == ["r000-0000.tok", "r001-0000.tok"]
    info = store_info(root)
    assert (info["videos"], info["entries"], info["frames"], info["failures"]) == (6, 12, 24, 1)
    assert info["tokens"] == 24 * 6
    assert verify_store(root).ok


def test_shards_roll_over_at_the_size_limit(tmp_path):
    rng = np.random.default_rng(4)
    videos = [random_video(rng, i, frames=4) for i in range(5)]
    root = new_store(tmp_path / "store")
    write_videos(root, videos, per_commit=1, shard_bytes=90)  # one video is 2*4*6*2 = 96 bytes
    store = TokenStore.open(root)
    assert len(store.manifest.shards) == 5
    for video in videos:
        np.testing.assert_array_equal(store.tokens(store.index_of(video.key, "center")), video.views["center"])
    assert verify_store(root).ok


def test_a_resume_with_a_committed_shard_missing_is_refused_and_overwrites_nothing(tmp_path):
    """A committed shard lost on the way (a partial copy to another machine, a deleted file):
    the resumed writer rolled over into that shard name again and wrote new videos at the
    offsets the manifest gives the lost ones, which then read other videos' tokens."""
    rng = np.random.default_rng(7)
    videos = [random_video(rng, i, frames=4) for i in range(4)]
    root = new_store(tmp_path / "store")
    write_videos(root, videos[:2], per_commit=1, shard_bytes=90)  # one video per shard
    lost = root / SHARD_DIR / "r000-0001.tok"
    lost.unlink()
    with pytest.raises(StoreError, match=r"r000-0001.tok: shard named by the manifest is missing"):
        write_videos(root, videos[2:], per_commit=1, shard_bytes=90)
    assert not lost.exists()
    assert any("r000-0001.tok: shard named by the manifest is missing" in p for p in verify_store(root).problems)
    # The refused writer let go of the rank's lock: the same process may try again.
    with pytest.raises(StoreError, match="is missing"):
        write_videos(root, videos[2:], per_commit=1, shard_bytes=90)


def test_out_of_range_tokens_are_refused(tmp_path):
    root = new_store(tmp_path / "store")
    bad = EncodedVideo(0, "bad", 0, {name: np.full((1, *GRID), 100) for name in VIEWS})
    with pytest.raises(StoreError, match="outside"):
        write_videos(root, [bad])


def test_malformed_store_json_names_the_field(tmp_path):
    root = new_store(tmp_path / "store")
    data = json.loads((root / "store.json").read_text())
    data["version"] = 99
    (root / "store.json").write_text(json.dumps(data))
    with pytest.raises(StoreError, match="'version'"):
        TokenStore.open(root)


def test_verify_finds_repeated_and_out_of_order_record_numbers(tmp_path):
    """A resume after the annotation list changed (before the list fingerprint existed) left
    manifests with record numbers [.., 3, 4, 4, 5, ..] and videos out of order; verify said OK."""
    rng = np.random.default_rng(0)
    root = new_store(tmp_path / "store")
    write_videos(root, [random_video(rng, i, frames=2) for i in range(5)])
    compact_store(root)
    assert verify_store(root).ok
    edit_manifest(root, lambda data: data["videos"].__setitem__("record", [0, 2, 2, 5, 1]))  # as the stale resume wrote them
    problems = verify_store(root).problems
    assert len(problems) == 2, problems
    assert "'video001' and 'video002': both have record number 2" in problems[0]
    assert "'video004': record number 1 after 5" in problems[1]


def test_fps_nan_is_never_the_same_fps(tmp_path):
    assert make_meta(fps=float("nan")).first_difference(make_meta(fps=2.0))[0] == "fps"
    assert make_meta(fps=float("nan")).first_difference(make_meta(fps=float("nan")))[0] == "fps"
    assert make_meta(fps=2.0).first_difference(make_meta(fps=2.0)) is None


def test_expect_views_takes_one_view_name_as_a_str(store_with_videos):
    root, _ = store_with_videos
    single = new_store(root.parent / "single", make_meta(views=("center",)))
    assert TokenStore.open(single, expect_views="center").views == ("center",)
    with pytest.raises(StoreError, match="views"):
        TokenStore.open(root, expect_views="center")  # the store has two views: not 6 characters
    with pytest.raises(TypeError, match="expect_views"):
        TokenStore.open(root, expect_views={"center", "center_flip"})


def test_a_new_shard_files_folder_is_fsynced_before_the_part_that_names_it(tmp_path, monkeypatch):
    """A part is made durable (its folder fsynced after the rename), but the shard file it names
    was created by open() with no fsync of shards/: a power loss could keep the part and lose the
    shard's name, a committed video without its tokens."""
    import os

    from vimpac import io as io_module

    events = []
    real_fsync_dir, real_replace = io_module.fsync_dir, os.replace

    def fsync_dir(folder):
        events.append(("fsync_dir", Path(folder).name))
        real_fsync_dir(folder)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(io_module, "fsync_dir", fsync_dir)
    monkeypatch.setattr(writer_module, "fsync_dir", fsync_dir, raising=False)
    monkeypatch.setattr(os, "replace", replace)
    root = new_store(tmp_path / "store")
    rng = np.random.default_rng(4)
    write_videos(root, [random_video(rng, i, frames=2) for i in range(3)], per_commit=1, shard_bytes=1)
    assert sorted(p.name for p in (root / SHARD_DIR).glob("*.tok")) == ["r000-0000.tok", "r000-0001.tok", "r000-0002.tok"]
    parts = [i for i, event in enumerate(events) if event[0] == "replace" and event[1].endswith(".json")]
    assert len(parts) == 3
    for start, part in zip([0] + parts, parts):  # each commit made a new shard (shard_bytes=1)
        assert ("fsync_dir", SHARD_DIR) in events[start:part], events
    # The shards/ and manifest/ folders themselves, made by the first writer.
    assert events[0] == ("fsync_dir", "store")
