"""`tokenize_videos` on tiny real videos with a deterministic palette tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from store_helpers import PaletteTokenizer, make_dataset, make_video
from vimpac.cli import main as cli_main
from vimpac.data.annotations import load_annotations
from vimpac.store import StoreError, TokenStore, tokenize_videos
from vimpac.store.format import PART_DIR, SHARD_DIR
from vimpac.video.reader import read_video_at_fps
from vimpac.video.views import make_views, resolve_views

VIEWS = "s1.00_center,s1.25_top_left_flip"


def expected_tokens(path: Path, fps: float, size: int) -> dict[str, np.ndarray]:
    """Tokens computed directly from the video, independently of the store pipeline."""
    views = make_views(read_video_at_fps(path, fps), size, resolve_views(VIEWS))
    return {name: PaletteTokenizer().encode(frames).numpy() for name, frames in views.items()}


@pytest.fixture
def dataset(tmp_path):
    list_path = make_dataset(tmp_path, num_videos=5, corrupt=(2,))
    return tmp_path, load_annotations("auto", list_path)


def run(dataset_root: Path, annotations, out: Path, **kwargs):
    settings = dict(fps=4, size=32, views=VIEWS, workers=0, batch_size=8, progress=False)
    settings.update(kwargs)
    return tokenize_videos(annotations, dataset_root / "videos", PaletteTokenizer(), out_dir=out, **settings)


def test_tokens_match_direct_encoding_and_failures_are_listed(dataset):
    root, annotations = dataset
    report = run(root, annotations, root / "store")
    assert (report.encoded_videos, len(report.failures), report.encoded_entries) == (4, 1, 8)
    assert report.encoded_frames == 4 * 2 * 4  # 4 videos x 2 views x 4 frames (1 s at 4 fps)
    store = TokenStore.open(root / "store", expect_tokenizer_id="palette-64-test", expect_fps=4, expect_size=32)
    assert store.keys() == ["v00", "v01", "v03", "v04"]
    assert store.class_names == ("class_0", "class_1", "class_2")
    assert list(store.labels) == [0, 0, 1, 1, 0, 0, 1, 1]
    for key in store.keys():
        for view, tokens in expected_tokens(root / "videos" / f"{key}.mp4", 4, 32).items():
            np.testing.assert_array_equal(store.tokens(store.index_of(key, view)), tokens)
    failures = [json.loads(line) for line in (root / "store" / "failures.jsonl").read_text().splitlines()]
    assert [(f["key"], f["path"], f["error"]) for f in failures] == [("v02", "v02.mp4", "decode")]
    assert "not a video" in failures[0]["reason"] or "Invalid data" in failures[0]["reason"]
    assert not list((root / "store" / PART_DIR).glob("*.json"))  # merged into manifest.json


def test_second_run_does_nothing_and_retry_failed_retries(dataset):
    root, annotations = dataset
    run(root, annotations, root / "store")
    again = run(root, annotations, root / "store")
    assert again.nothing_to_do and (again.already_done, again.skipped_failed) == (4, 1)
    assert "nothing to do" in again.summary()
    make_video(root / "videos" / "v02.mp4", seed=2)  # repair the broken video
    retried = run(root, annotations, root / "store", retry_failed=True)
    assert (retried.encoded_videos, len(retried.failures)) == (1, 0)
    store = TokenStore.open(root / "store")
    assert store.keys() == ["v00", "v01", "v02", "v03", "v04"] and store.failures == []
    assert (root / "store" / "failures.jsonl").read_text() == ""


def test_rerun_with_other_settings_is_a_clear_error(dataset):
    root, annotations = dataset
    run(root, annotations, root / "store")
    with pytest.raises(StoreError, match="fps=4.0, but this run uses fps=2.0"):
        run(root, annotations, root / "store", fps=2)
    with pytest.raises(StoreError, match="views"):
        run(root, annotations, root / "store", views="center")
    with pytest.raises(StoreError, match="size"):
        run(root, annotations, root / "store", size=48)
    (root / "other").mkdir()
    (root / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a token store"):
        run(root, annotations, root / "other")


def test_worker_processes_and_too_short_videos(dataset):
    root, annotations = dataset
    # min_frames=4 keeps the 1 s videos (4 frames at 4 fps); one 2-frame video is too short.
    make_video(root / "videos" / "v04.mp4", seed=4, frames=2)
    report = run(root, annotations, root / "store", workers=1, min_frames=4)
    assert sorted(f["error"] for f in report.failures) == ["decode", "too_short"]
    store = TokenStore.open(root / "store")
    assert store.keys() == ["v00", "v01", "v03"]
    np.testing.assert_array_equal(store.tokens(store.index_of("v03", "s1.00_center")),
                                  expected_tokens(root / "videos" / "v03.mp4", 4, 32)["s1.00_center"])


def test_verify_and_info_commands(dataset, capsys):
    root, annotations = dataset
    run(root, annotations, root / "store")
    store = str(root / "store")
    assert cli_main(["store", "verify", store]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli_main(["store", "info", store, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["videos"], info["entries"], info["frames"], info["failures"]) == (4, 8, 32, 1)
    assert (info["fps"], info["size"], info["grid"], info["tokens"]) == (4.0, 32, [4, 4], 32 * 16)
    assert info["tokenizer"]["id"] == "palette-64-test"
    assert cli_main(["store", "info", store]) == 0
    text = capsys.readouterr().out
    assert "videos     4" in text and "failures   1" in text
    shard = next((root / "store" / SHARD_DIR).glob("*.tok"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert cli_main(["store", "verify", store]) == 1
    assert "checksum mismatch" in capsys.readouterr().out


class RecordingTokenizer(PaletteTokenizer):
    """The palette tokenizer, remembering how many frames each encode call had."""

    def __init__(self):
        self.calls = []

    def encode(self, frames):
        self.calls.append(len(frames))
        return super().encode(frames)


def _decoded(index: int, lengths: dict[str, int]):
    from vimpac.store.tokenize import DecodedVideo, DecodeJob

    rng = np.random.default_rng(index)
    views = {name: rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8) for name, n in lengths.items()}
    job = DecodeJob(index, f"v{index}", None, f"v{index}.mp4", f"v{index}.mp4", 1.0, 16, (), 1)
    return DecodedVideo(job, views, None)


def test_full_batch_encoder_calls_are_full_and_videos_come_back_in_order():
    """Every encode call but the last has exactly batch_size frames (one input shape for the
    encoder's kernel caches), whatever the videos' lengths; each video comes back complete, in
    order, as soon as its last frame is encoded, with the tokens of encoding it alone."""
    from vimpac.store.tokenize import FullBatchEncoder

    tokenizer = RecordingTokenizer()
    encoder = FullBatchEncoder(tokenizer, ("a", "b"), batch_size=8)
    lengths = [3, 7, 1, 12, 5, 2]
    videos = [_decoded(i, {"a": n, "b": n}) for i, n in enumerate(lengths)]
    ends = np.cumsum([2 * n for n in lengths])            # frame count up to the end of each video
    returned = []
    for video, end in zip(videos, ends):
        returned += encoder.add(video)
        encoded_so_far = 8 * (end // 8)
        assert len(returned) == int((ends <= encoded_so_far).sum())
    returned += encoder.finish()
    total = 2 * sum(lengths)
    assert tokenizer.calls == [8] * (total // 8) + ([total % 8] if total % 8 else [])
    assert [v.key for v in returned] == [f"v{i}" for i in range(len(lengths))]
    for video, encoded in zip(videos, returned):
        for name in ("a", "b"):
            np.testing.assert_array_equal(encoded.views[name], PaletteTokenizer().encode(video.views[name]).numpy())
    assert encoder.finish() == []


def test_store_encoder_calls_span_videos(dataset, tmp_path):
    """The whole pipeline with a batch that does not divide the videos' frames: same tokens,
    and the encoder saw one batch size (plus one shorter last call)."""
    root, annotations = dataset
    tokenizer = RecordingTokenizer()
    report = tokenize_videos(annotations, root / "videos", tokenizer, out_dir=tmp_path / "store", fps=4, size=32,
                             views=VIEWS, workers=0, batch_size=3, progress=False)
    assert report.encoded_videos == 4 and report.encoded_frames == 32
    assert tokenizer.calls == [3] * 10 + [2]
    store = TokenStore.open(tmp_path / "store")
    for key in store.keys():
        for view, tokens in expected_tokens(root / "videos" / f"{key}.mp4", 4, 32).items():
            np.testing.assert_array_equal(store.tokens(store.index_of(key, view)), tokens)


def test_a_decoder_process_that_dies_fails_only_its_video(dataset):
    """A worker killed while decoding (here: os._exit, as a crash in FFmpeg would) fails that
    video with error "crash"; the videos in flight with it and after it are decoded, in order.
    (multiprocessing.Pool waited forever for the lost task.)"""
    from store_helpers import decode_or_crash
    from vimpac.store.tokenize import DecodeJob, _decode_in_order

    root, annotations = dataset
    views = tuple(resolve_views("s1.00_center"))
    keys = ["v00", "v01", "v03_crash", "v02", "v04", "v01_crash", "v03"]   # v02 is the corrupt file
    jobs = [DecodeJob(i, key, 0, f"{key[:3]}.mp4", str(root / "videos" / f"{key[:3]}.mp4"), 4.0, 32, views, 1)
            for i, key in enumerate(keys)]
    results = list(_decode_in_order(jobs, workers=2, decode=decode_or_crash))
    assert [r.job.key for r in results] == keys
    errors = {r.job.key: r.failure.error for r in results if r.failure is not None}
    assert errors == {"v03_crash": "crash", "v01_crash": "crash", "v02": "decode"}
    assert "decoding process died" in next(r for r in results if r.job.key == "v03_crash").failure.reason
    for r in results:
        if r.failure is None:
            assert r.views["s1.00_center"].shape == (4, 32, 32, 3)
