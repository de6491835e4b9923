"""`tokenize_videos` on tiny real videos with a deterministic palette tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import av

import numpy as np
import pytest

from memory_helpers import traced_peak, write_sliding_blocks
from store_helpers import PaletteTokenizer, make_dataset, make_video
from vimpac.cli import main as cli_main
from vimpac.data.annotations import load_annotations
from vimpac.store import StoreError, TokenStore, tokenize_videos
from vimpac.store import tokenize as tokenize_module
from vimpac.store.format import PART_DIR, SHARD_DIR
from vimpac.store.tokenize import DecodeJob, decode_video
from vimpac.video.reader import read_video_at_fps
from vimpac.video.views import make_views, resolve_views
from vimpac.video.writer import write_video

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


def test_rerunning_a_finished_store_writes_nothing(dataset, monkeypatch):
    """A finished store on a read-only file system (shared storage): the rerun said
    "Read-only file system" for a manifest.json it rewrote unchanged, instead of nothing to do."""
    import errno

    from vimpac.store import writer as writer_module

    root, annotations = dataset
    run(root, annotations, root / "store")
    before = {p: p.stat().st_mtime_ns for p in (root / "store").rglob("*") if p.is_file()}

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(writer_module, "atomic_write_json", read_only)
    monkeypatch.setattr(writer_module, "atomic_write_text", read_only)
    again = run(root, annotations, root / "store")
    assert again.nothing_to_do
    assert {p: p.stat().st_mtime_ns for p in (root / "store").rglob("*") if p.is_file()} == before


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


def test_full_batch_encoder_takes_chunks_drops_a_failed_video_and_restarts_a_decoded_again_one():
    """Videos in chunks, as the decoding workers send them: a video that fails after some chunks
    is dropped (also its frames already encoded in calls shared with others), one whose worker
    died and that comes again from its first chunk starts over; calls stay full."""
    from vimpac.store.tokenize import FullBatchEncoder

    def chunks(video, size):
        count = len(video.views["a"])
        for start in range(0, count, size):
            yield {name: frames[start : start + size] for name, frames in video.views.items()}, start, count

    tokenizer = RecordingTokenizer()
    encoder = FullBatchEncoder(tokenizer, ("a", "b"), batch_size=8)
    videos = [_decoded(i, {"a": n, "b": n}) for i, n in enumerate([5, 9, 6, 4])]
    returned = []
    for chunk in chunks(videos[0], 2):
        returned += encoder.add_chunk(videos[0].job, *chunk)
    for chunk in list(chunks(videos[1], 2))[:3]:  # 12 of its frames, some encoded with video 0's
        returned += encoder.add_chunk(videos[1].job, *chunk)
    assert [v.key for v in returned] == ["v0"]
    encoder.drop_unfinished()  # it failed
    returned += encoder.add_chunk(videos[2].job, *next(chunks(videos[2], 4)))
    for chunk in chunks(videos[2], 4):  # its worker died; decoded again from the start
        returned += encoder.add_chunk(videos[2].job, *chunk)
    for chunk in chunks(videos[3], 3):
        returned += encoder.add_chunk(videos[3].job, *chunk)
    returned += encoder.finish()
    assert [v.key for v in returned] == ["v0", "v2", "v3"]
    for video in returned:
        for name in ("a", "b"):
            whole = videos[int(video.key[1:])].views[name]
            np.testing.assert_array_equal(video.views[name], PaletteTokenizer().encode(whole).numpy())
    # Also encoded: 6 of video 1's frames (the 2nd call: with the last 6 of video 0's 10) and the
    # 8 of video 2's first chunk, before it came again.
    assert set(tokenizer.calls[:-1]) == {8} and sum(tokenizer.calls) == 2 * (5 + 6 + 4) + 6 + 8
    with pytest.raises(ValueError, match="a chunk of video 'v1' came without the chunks before it"):
        encoder.add_chunk(videos[1].job, *list(chunks(videos[1], 2))[1])


@pytest.mark.parametrize("bad", [-1, 70000])
def test_token_ids_that_do_not_fit_the_store_are_an_error_naming_the_tokenizer(dataset, bad):
    # The encoder keeps a video's tokens as uint16 until it is complete: -1 or 70000 must not wrap.
    class Broken(PaletteTokenizer):
        def encode(self, frames):
            return super().encode(frames) * 0 + bad

    root, annotations = dataset
    with pytest.raises(StoreError, match=rf"tokenizer palette-64-test: .*not integers in \[0, 65535\] .*{bad} to {bad}"):
        tokenize_videos(annotations, root / "videos", Broken(), 4, 32, VIEWS, root / "store", workers=0, progress=False)


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


def gather(messages) -> tuple[list[str], dict[str, object]]:
    """The keys of `_decode_in_order`'s messages in order of arrival, and per video its views
    (its chunks put together; a first chunk starts the video over) or its failure."""
    from vimpac.store.tokenize import DecodedChunk

    keys, results = [], {}
    for message in messages:
        key = message.job.key
        keys.append(key)
        if not isinstance(message, DecodedChunk):
            results[key] = message.failure
        elif message.first:
            results[key] = {name: [frames] for name, frames in message.views.items()}
        else:
            for name, frames in message.views.items():
                results[key][name].append(frames)
    return keys, {key: got if not isinstance(got, dict) else {name: np.concatenate(parts) for name, parts in got.items()}
                  for key, got in results.items()}


def test_a_decoder_process_that_dies_fails_only_its_video(dataset):
    """A worker killed while decoding (here: os._exit, as a crash in FFmpeg would), before or
    after sending a chunk, fails that video with error "crash"; the videos in flight with it and
    after it are decoded, in order. (multiprocessing.Pool waited forever for the lost task.)"""
    from store_helpers import decode_or_crash
    from vimpac.store.tokenize import DecodeJob, _decode_in_order

    root, annotations = dataset
    views = tuple(resolve_views("s1.00_center"))
    keys = ["v00", "v01_chunked", "v03_crash", "v02", "v04_chunked", "v00_crash_late", "v01_crash", "v03"]
    jobs = [DecodeJob(i, key, 0, f"{key[:3]}.mp4", str(root / "videos" / f"{key[:3]}.mp4"), 4.0, 32, views, 1)
            for i, key in enumerate(keys)]   # v02 is the corrupt file
    arrived, results = gather(_decode_in_order(jobs, workers=2, decode=decode_or_crash))
    assert list(dict.fromkeys(arrived)) == keys
    assert arrived.count("v01_chunked") == 4   # one message a frame
    assert arrived.count("v00_crash_late") == 3  # its first chunk, again from a fresh process, its failure
    errors = {key: got.error for key, got in results.items() if not isinstance(got, dict)}
    assert errors == {"v03_crash": "crash", "v00_crash_late": "crash", "v01_crash": "crash", "v02": "decode"}
    assert "decoding process died" in results["v03_crash"].reason
    for key, got in results.items():
        if key not in errors:
            whole = decode_video(DecodeJob(0, key, 0, "", str(root / "videos" / f"{key[:3]}.mp4"), 4.0, 32, views, 1))
            assert got["s1.00_center"].shape == (4, 32, 32, 3)
            np.testing.assert_array_equal(got["s1.00_center"], whole.views["s1.00_center"])


def test_videos_after_two_decoder_deaths_of_one_worker_come_once_each_and_in_order(dataset):
    """A fresh process decodes the dead one's video alone, then is sent the videos held back
    meanwhile. Those were listed again among its jobs, so when that process died too (two
    out-of-memory kills, say), its replacement decoded an already received video again in place
    of the one being awaited: that one was never decoded, the other was committed twice, and no
    failure said so (the store silently lacked a video)."""
    from store_helpers import decode_or_crash
    from vimpac.store.tokenize import DecodeJob, _decode_in_order

    root, _ = dataset
    views = tuple(resolve_views("s1.00_center"))
    keys = ["v00_crash_once", "v01", "v03_crash_once", "v04", "v00", "v01_crash_once", "v03"]
    jobs = [DecodeJob(i, key, 0, f"{key[:3]}.mp4", str(root / "videos" / f"{key[:3]}.mp4"), 4.0, 32, views, 1)
            for i, key in enumerate(keys)]
    arrived, results = gather(_decode_in_order(jobs, workers=1, decode=decode_or_crash))
    assert arrived == keys  # one chunk each; nothing came from the processes that died
    assert all((root / "videos" / f"{key}.crashed").exists() for key in keys if key.endswith("_crash_once"))
    for key, got in results.items():
        whole = decode_video(DecodeJob(0, key, 0, "", str(root / "videos" / f"{key[:3]}.mp4"), 4.0, 32, views, 1))
        np.testing.assert_array_equal(got["s1.00_center"], whole.views["s1.00_center"])


def test_a_message_of_another_video_than_the_one_awaited_stops_the_run(dataset):
    """Messages are received in job order, one worker at a time; one of another video would lose
    a video or store one twice without a word, so it is an error (a bug in the hand-out)."""
    from store_helpers import decode_or_crash
    from vimpac.store.tokenize import DecodeJob, _decode_in_order

    root, _ = dataset
    views = tuple(resolve_views("s1.00_center"))
    keys = ["v00", "v01_misdelivered", "v03"]
    jobs = [DecodeJob(i, key, 0, f"{key[:3]}.mp4", str(root / "videos" / f"{key[:3]}.mp4"), 4.0, 32, views, 1)
            for i, key in enumerate(keys)]
    with pytest.raises(RuntimeError, match=r"entry 1001 \('v01_misdelivered'\) came while entry 1 \('v01_misdelivered'\) was awaited"):
        gather(_decode_in_order(jobs, workers=2, decode=decode_or_crash))


def test_a_script_without_main_guard_fails_no_video(dataset):
    """A script calling tokenize_videos(workers=1) at top level, without a `__main__` guard: the
    spawned decoder re-runs that call and dies on start-up. That used to commit every video as a
    "crash" failure (so the corrected script's rerun skipped them all); now the run stops with an
    error naming the guard, and nothing is marked as failed."""
    from process_helpers import script_error_line

    root, annotations = dataset
    script = root / "tokenize_script.py"
    script.write_text(
        "from store_helpers import PaletteTokenizer\n"
        "from vimpac.data.annotations import load_annotations\n"
        "from vimpac.store import tokenize_videos\n"
        f"annotations = load_annotations('auto', {str(root / 'list.txt')!r})\n"
        f"tokenize_videos(annotations, {str(root / 'videos')!r}, PaletteTokenizer(), fps=4, size=32,\n"
        f"                views='s1.00_center', out_dir={str(root / 'store')!r}, workers=1, progress=False)\n")
    tests_store = Path(__file__).resolve().parent
    error_line = script_error_line(script, root, [tests_store.parents[1], tests_store],
                                   "vimpac.store.errors.StoreError")
    assert error_line.startswith("vimpac.store.errors.StoreError: decoding: worker processes die")
    assert 'if __name__ == "__main__":' in error_line

    report = run(root, annotations, root / "store", views="s1.00_center")  # the guarded rerun
    assert report.skipped_failed == 0 and report.encoded_videos == 4
    assert [f["error"] for f in report.failures] == ["decode"]  # only the corrupt file



def test_a_replacement_worker_killed_before_it_is_ready_is_a_crash_not_a_missing_main_guard(dataset, monkeypatch):
    """The fresh process that decodes a dead worker's video again, killed before it was ready
    (the out-of-memory killer, say), stopped the run with the "`__main__` guard" error, meant for
    a script whose workers all die on start-up; a worker of the run had been ready, so it is a
    crash like any other: that video fails, the others are decoded."""
    from store_helpers import decode_or_crash
    from vimpac.store.tokenize import DecodeJob, _decode_in_order, _DecodeProcess

    root, _ = dataset
    real = _DecodeProcess.replacement
    killed = []

    def killed_as_it_starts(self, context, decode, failed):
        fresh = real(self, context, decode, failed)
        if not killed:
            fresh.process.kill()
            killed.append(fresh)
        return fresh

    monkeypatch.setattr(_DecodeProcess, "replacement", killed_as_it_starts)
    views = tuple(resolve_views("s1.00_center"))
    keys = ["v00", "v01_crash", "v03", "v04"]
    jobs = [DecodeJob(i, key, 0, f"{key[:3]}.mp4", str(root / "videos" / f"{key[:3]}.mp4"), 4.0, 32, views, 1)
            for i, key in enumerate(keys)]
    arrived, results = gather(_decode_in_order(jobs, workers=1, decode=decode_or_crash))
    assert killed and not killed[0].started
    assert arrived == keys
    assert results["v01_crash"].error == "crash"
    for key in ("v00", "v03", "v04"):
        whole = decode_video(DecodeJob(0, key, 0, "", str(root / "videos" / f"{key}.mp4"), 4.0, 32, views, 1))
        np.testing.assert_array_equal(results[key]["s1.00_center"], whole.views["s1.00_center"])


def test_a_decoder_that_sends_nothing_for_the_timeout_fails_only_its_video(dataset):
    """A decoder that never returned (a read stalled on a network mount, FFmpeg spinning on a
    file) hung the run for ever. Now its worker is killed once it has sent nothing for
    decode_timeout seconds: that video fails with error "timeout" (its chunks sent before are
    superseded by the failure), and the others, also the one the same worker held, come in order.
    A slow video that keeps sending chunks is never cut, though it takes longer than that in all."""
    from store_helpers import SLOW_CHUNK_S, decode_or_crash
    from vimpac.store.tokenize import DecodeJob, _decode_in_order

    root, _ = dataset
    views = tuple(resolve_views("s1.00_center"))
    fps, timeout = 8.0, 5 * SLOW_CHUNK_S
    keys = ["v00", "v01_hang_late", "v03_slow", "v04", "v00_again"]
    jobs = [DecodeJob(i, key, 0, f"{key[:3]}.mp4", str(root / "videos" / f"{key[:3]}.mp4"), fps, 32, views, 1)
            for i, key in enumerate(keys)]  # two workers: v04 is held by the one stuck on v01
    arrived, results = gather(_decode_in_order(jobs, workers=2, decode=decode_or_crash, decode_timeout=timeout))
    assert list(dict.fromkeys(arrived)) == keys
    assert arrived.count("v01_hang_late") == 2  # its first chunk, then its failure
    failure = results.pop("v01_hang_late")
    assert failure.error == "timeout"
    assert failure.reason.startswith(f"no frames decoded for {timeout:g} s;") and "--decode-timeout" in failure.reason
    slow_chunks = arrived.count("v03_slow")
    assert slow_chunks * SLOW_CHUNK_S > timeout  # longer than the timeout in all
    for key, got in results.items():
        whole = decode_video(DecodeJob(0, key, 0, "", str(root / "videos" / f"{key[:3]}.mp4"), fps, 32, views, 1))
        assert len(whole.views["s1.00_center"]) == slow_chunks
        np.testing.assert_array_equal(got["s1.00_center"], whole.views["s1.00_center"])


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_while_a_decoding_worker_starts_does_not_kill_it(dataset, signal_name):
    """Ctrl-C (which reaches the whole process group) or SLURM's SIGTERM to every process of the
    job, while a decoding worker was still starting (importing, before it ignores them), killed
    it, and the run stopped with "worker processes die as they start ... `__main__` guard"
    (exit 2) instead of committing what was decoded and exiting 130 / 143."""
    import multiprocessing
    import os
    import signal
    import threading

    from vimpac.store.tokenize import DecodedChunk, _DecodeProcess, decode_video_chunks

    root, _ = dataset
    views = tuple(resolve_views("s1.00_center"))
    job = DecodeJob(0, "v00", 0, "v00.mp4", str(root / "videos" / "v00.mp4"), 4.0, 32, views, 1)
    worker = _DecodeProcess(multiprocessing.get_context("spawn"), decode_video_chunks)
    try:
        os.kill(worker.process.pid, getattr(signal, signal_name))  # it has not even imported vimpac yet
        worker.assign(job)
        message = worker.receive(threading.Event())
        assert isinstance(message, DecodedChunk), "the worker died as it started"
        assert message.last
        np.testing.assert_array_equal(message.views["s1.00_center"], decode_video(job).views["s1.00_center"])
    finally:
        worker.close(kill=True)


# ------------------------------------------------------------------ the annotation list on resume


def rewrite_list(root: Path, lines: list[str]) -> object:
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return load_annotations("auto", root / "list.txt")


def test_resume_with_a_changed_annotation_list_is_refused(dataset):
    """It added the new videos with stale record numbers (duplicates, out of order) and kept
    the old labels of committed videos; verify said OK."""
    root, annotations = dataset
    list_path = root / "list.txt"
    original = list_path.read_text().splitlines()
    run(root, annotations, root / "store", annotation_files=[list_path])
    make_video(root / "videos" / "v05.mp4", seed=5)
    longer = rewrite_list(root, original[:2] + ["v05.mp4 1"] + original[2:])
    with pytest.raises(StoreError, match=r"annotation list's contents .*5 records then, 6 now.*new --out"):
        run(root, longer, root / "store", annotation_files=[list_path])
    relabelled = rewrite_list(root, [original[0], "v01.mp4 2", *original[2:]])
    with pytest.raises(StoreError, match="annotation list's contents"):
        run(root, relabelled, root / "store", annotation_files=[list_path])
    # The same contents from another place (a cluster job staging the list per attempt) resume.
    (root / "copy").mkdir()
    (root / "copy" / "list.txt").write_text("\n".join(original) + "\n")
    rewrite_list(root, original)
    assert run(root, annotations, root / "store", annotation_files=[root / "copy" / "list.txt"]).nothing_to_do


def test_store_without_a_list_fingerprint_still_resumes_and_checks_the_list(dataset):
    """Stores of older versions have no fingerprint: the committed videos' record numbers
    and labels are checked against the list instead."""
    root, annotations = dataset
    original = (root / "list.txt").read_text().splitlines()
    run(root, annotations, root / "store")
    meta_path = root / "store" / "store.json"
    meta = json.loads(meta_path.read_text())
    for name in ("annotations_sha256", "annotations_records", "annotation_files"):
        del meta[name]
    meta_path.write_text(json.dumps(meta))
    assert TokenStore.open(root / "store").num_videos == 4
    assert run(root, annotations, root / "store").nothing_to_do
    make_video(root / "videos" / "v05.mp4", seed=5)
    with pytest.raises(StoreError, match="'v01' is record 1 in the store but record 2 in this annotation list"):
        run(root, rewrite_list(root, original[:1] + ["v05.mp4 1"] + original[1:]), root / "store")
    with pytest.raises(StoreError, match="'v03' has label 0 in the store but 2 in this annotation list"):
        run(root, rewrite_list(root, original[:3] + ["v03.mp4 2", original[4]]), root / "store")
    with pytest.raises(StoreError, match="'v04' is not in this annotation list"):
        run(root, rewrite_list(root, original[:4]), root / "store")


def test_an_older_store_keyed_by_unnormalised_paths_says_why_it_cannot_resume(dataset):
    # Before list paths were normalised, "./v00.mp4" gave the key "./v00".
    from vimpac.data.annotations import AnnotationSet, VideoRecord

    root, annotations = dataset
    old_records = [VideoRecord(path="./" + r.path, label=r.label, key="./" + r.key) for r in annotations.records]
    run(root, AnnotationSet(records=old_records, class_names=annotations.class_names, source=annotations.source),
        root / "store")
    meta_path = root / "store" / "store.json"
    meta = json.loads(meta_path.read_text())
    for name in ("annotations_sha256", "annotations_records", "annotation_files"):
        del meta[name]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"'./v00' was keyed as its list spelled it by an older vimpac.*new --out"):
        run(root, annotations, root / "store")


def test_one_video_under_two_spellings_is_refused(dataset):
    # The list readers give both spellings one key (and refuse the duplicate); records built in
    # code can still differ, so tokenize checks the files too.
    from vimpac.data.annotations import AnnotationError, AnnotationSet, VideoRecord

    root, annotations = dataset
    with pytest.raises(AnnotationError, match="duplicate video key 'v00'"):
        rewrite_list(root, ["v00.mp4 0", "./v00.mp4 0"])
    twice = AnnotationSet(records=[VideoRecord(path="v00.mp4", label=0, key="v00"),
                                   VideoRecord(path="./v00.mp4", label=0, key="./v00")],
                          class_names=annotations.class_names, source="test")
    with pytest.raises(StoreError, match=r"records 0 \('v00.mp4'\) and 1 \('./v00.mp4'\) name the same video"):
        run(root, twice, root / "store")
    assert not (root / "store").exists()


def test_two_videos_under_one_key_are_refused_before_anything_is_written(dataset):
    # Records built in code (the list readers refuse duplicate keys): the store is indexed by
    # key, so the second video was tokenized and then dropped from the manifest, and the rerun
    # was refused with "is record 0 in the store but record 1 in this annotation list".
    from vimpac.data.annotations import AnnotationSet, VideoRecord

    root, annotations = dataset
    clash = AnnotationSet(records=[VideoRecord(path="v00.mp4", label=0, key="clip"),
                                   VideoRecord(path="v01.mp4", label=1, key="clip")],
                          class_names=annotations.class_names, source="test")
    with pytest.raises(StoreError, match=r"records 0 \('v00.mp4'\) and 1 \('v01.mp4'\) have the same key 'clip'"):
        run(root, clash, root / "store")
    assert not (root / "store").exists()


def test_a_codebook_whose_pad_id_does_not_fit_uint16_is_refused_before_anything_is_written(dataset):
    # 65535 codes were accepted, and then every clip that needed padding ([PAD] = 65536) failed
    # in training with "OverflowError: Python integer 65536 out of bounds for uint16".
    class LargeCodebook(PaletteTokenizer):
        codebook_size = 65535

    root, annotations = dataset
    with pytest.raises(StoreError, match=r"codebook_size 65535 does not fit uint16 tokens \(max 65534"):
        tokenize_videos(annotations, root / "videos", LargeCodebook(), 4, 32, "center", root / "store",
                        workers=0, progress=False)
    assert not (root / "store").exists()


def test_bad_fps_video_root_and_out_are_refused_before_anything_is_written(dataset):
    root, annotations = dataset
    for fps in (float("nan"), float("inf"), 0.0):
        with pytest.raises(StoreError, match="fps must be a finite number > 0"):
            run(root, annotations, root / "store", fps=fps)
    with pytest.raises(StoreError, match=r"video root .*nowhere does not exist.*--videos"):
        tokenize_videos(annotations, root / "nowhere", PaletteTokenizer(), 4, 32, VIEWS, root / "store",
                        workers=0, progress=False)
    assert not (root / "store").exists()
    (root / "afile").write_text("x")
    with pytest.raises(StoreError, match="afile: exists and is not a folder"):
        run(root, annotations, root / "afile")


def test_missing_files_are_retried_once_they_exist(dataset):
    root, annotations = dataset
    (root / "videos" / "v04.mp4").rename(root / "v04.mp4")
    first = run(root, annotations, root / "store")
    assert sorted(f["error"] for f in first.failures) == ["decode", "not_found"]
    (root / "v04.mp4").rename(root / "videos" / "v04.mp4")
    again = run(root, annotations, root / "store")
    assert (again.encoded_videos, again.failures, again.skipped_failed) == (1, [], 1)  # v02 stays failed
    assert TokenStore.open(root / "store").keys() == ["v00", "v01", "v03", "v04"]


def test_a_video_downloaded_with_another_container_extension_is_found(dataset):
    """Kinetics / HowTo100M lists name x.mp4 while a YouTube download may be x.webm or x.mkv."""
    root, annotations = dataset
    expected = run(root, annotations, root / "store_mp4")
    (root / "videos" / "v01.mp4").rename(root / "videos" / "v01.mkv")
    (root / "videos" / "v03.mp4").rename(root / "videos" / "v03.webm")
    found = run(root, annotations, root / "store")
    assert found.failures == expected.failures  # only the corrupt v02, no not_found
    same, other = TokenStore.open(root / "store_mp4"), TokenStore.open(root / "store")
    assert other.keys() == same.keys() == ["v00", "v01", "v03", "v04"]
    for key in ("v01", "v03"):
        for view in VIEWS.split(","):
            np.testing.assert_array_equal(other.tokens(other.index_of(key, view)),
                                          same.tokens(same.index_of(key, view)))


def test_a_run_from_a_wrong_video_root_is_finished_from_the_right_one(dataset):
    """Every video failed as missing; the rerun with the right root said "nothing to do"."""
    root, annotations = dataset
    (root / "elsewhere" / "videos").mkdir(parents=True)
    wrong = run(root / "elsewhere", annotations, root / "store", annotation_files=[root / "list.txt"])
    assert wrong.all_failed and {f["error"] for f in wrong.failures} == {"not_found"}
    right = run(root, annotations, root / "store", annotation_files=[root / "list.txt"])
    assert (right.encoded_videos, [f["key"] for f in right.failures]) == (4, ["v02"])
    # Retrying the one broken video of a store that holds the rest is not "everything failed".
    retry = run(root, annotations, root / "store", annotation_files=[root / "list.txt"], retry_failed=True)
    assert retry.encoded_videos == 0 and len(retry.failures) == 1 and not retry.all_failed


def signal_after(monkeypatch, number: int, sig: int):
    """Make tokenize's decoder send `sig` to this process while yielding video `number`;
    returns the real decoder (to put back)."""
    import os

    from vimpac.store import tokenize as tokenize_module

    real = tokenize_module._decode_in_order

    def decode_then_signal(jobs, workers, **options):
        for index, decoded in enumerate(real(jobs, workers, **options)):
            if index == number:
                os.kill(os.getpid(), sig)
            yield decoded

    monkeypatch.setattr(tokenize_module, "_decode_in_order", decode_then_signal)
    return real


def test_without_stop_on_signals_ctrl_c_raises_and_keeps_what_was_committed(dataset, monkeypatch):
    # The library default: a caller that does not look at report.interrupted (the demo) must not
    # take an interrupted run for a finished one.
    import signal

    from vimpac.store import tokenize as tokenize_module

    root, annotations = dataset
    real = tokenize_module._decode_in_order
    handlers = []

    def decode_then_ctrl_c(jobs, workers, **options):
        for index, decoded in enumerate(real(jobs, workers, **options)):
            if index == 2:
                # What Python's own SIGINT handler does, raised here rather than by os.kill, which
                # raises nothing where SIGINT is ignored (see below).
                handlers.append(signal.getsignal(signal.SIGINT))
                raise KeyboardInterrupt
            yield decoded

    monkeypatch.setattr(tokenize_module, "_decode_in_order", decode_then_ctrl_c)
    # Python's own handler, or SIG_IGN where the test process was started in the background by a
    # shell without job control (POSIX: such jobs ignore SIGINT, and Python then installs none).
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run(root, annotations, root / "store", batch_size=1)
    assert handlers == [before]  # tokenize left Ctrl-C alone
    monkeypatch.setattr(tokenize_module, "_decode_in_order", real)
    rest = run(root, annotations, root / "store")
    assert rest.already_done >= 1 and rest.already_done + rest.encoded_videos == 4


def test_sigterm_commits_what_is_decoded_and_the_rerun_finishes(dataset, monkeypatch):
    """SIGTERM (timeout, SLURM) killed the run without a word; now it stops taking videos,
    commits the decoded ones and reports the interruption."""
    import signal

    from vimpac.store import tokenize as tokenize_module

    root, annotations = dataset
    real = signal_after(monkeypatch, 1, signal.SIGTERM)
    report = run(root, annotations, root / "store", stop_on_signals=True)
    assert report.interrupted == "SIGTERM" and "stopped by SIGTERM" in report.summary()
    assert report.encoded_videos == 2 and not report.nothing_to_do
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    assert TokenStore.open(root / "store").keys() == ["v00", "v01"]
    monkeypatch.setattr(tokenize_module, "_decode_in_order", real)
    rest = run(root, annotations, root / "store")
    assert (rest.already_done, rest.encoded_videos, len(rest.failures)) == (2, 2, 1)



def test_a_signal_while_a_decoder_is_stuck_stops_the_run_without_waiting_for_it(tmp_path, monkeypatch):
    """SIGTERM (SLURM's pre-emption, `timeout`) was noticed only once the next chunk came: a
    decoding worker stuck on a file (a stalled network mount) kept the run going until the
    scheduler's SIGKILL, a repeated SIGTERM being ignored by design. Now the run stops waiting,
    commits what came before and leaves the stuck video for the rerun."""
    import functools
    import os
    import signal
    import threading
    import time

    from store_helpers import STALL_S, decode_or_crash
    from vimpac.data.annotations import VideoRecord

    keys = ["v0", "v1", "v2_stall", "v3"]
    for seed in range(len(keys)):
        make_video(tmp_path / "videos" / f"v{seed}.mp4", seed=seed)
    records = [VideoRecord(path=f"v{i}.mp4", label=0, key=key) for i, key in enumerate(keys)]
    real = tokenize_module._decode_in_order
    monkeypatch.setattr(tokenize_module, "_decode_in_order", functools.partial(real, decode=decode_or_crash))
    run_over = threading.Event()

    def sigterm_while_v2_is_awaited():
        while len(list((tmp_path / "store" / PART_DIR).glob("*.json"))) < 2:  # v0 and v1 committed
            if run_over.wait(0.01):
                return
        if not run_over.wait(1.0):  # the run waits for v2's chunk now
            os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=sigterm_while_v2_is_awaited, daemon=True)
    sender.start()
    started = time.monotonic()
    try:
        report = tokenize_videos(records, tmp_path / "videos", PaletteTokenizer(), 4, 32, VIEWS, tmp_path / "store",
                                 workers=1, batch_size=1, progress=False, stop_on_signals=True)
    finally:
        run_over.set()
        sender.join()
    assert report.interrupted == "SIGTERM" and not report.failures
    assert TokenStore.open(tmp_path / "store").keys() == ["v0", "v1"]
    assert time.monotonic() - started < STALL_S

# ------------------------------------------------------------------ the tokenize command


def cli_args(root: Path, out: Path, *extra: str) -> list[str]:
    (root / "tokenizer").mkdir(exist_ok=True)
    return ["tokenize", "--videos", str(root / "videos"), "--list", str(root / "list.txt"),
            "--tokenizer", str(root / "tokenizer"), "--fps", "4", "--size", "32", "--out", str(out),
            "--workers", "0", "--no-progress", *extra]


@pytest.fixture
def palette_cli(monkeypatch):
    """`vimpac tokenize` with the palette tokenizer (no trained weights needed)."""
    import vimpac.tokenizer.base as tokenizer_base

    monkeypatch.setattr(tokenizer_base, "load_tokenizer", lambda folder, device="cpu": PaletteTokenizer())


@pytest.mark.parametrize("extra, message", [
    (["--split", "1"], "--split: not an option of the mmaction annotation format (detected from"),
    (["--subset", "train", "--layout", "flat"], "--subset, --layout: not an option of the mmaction"),
    (["--format", "howto100m", "--class-names", "c.txt"], "howto100m takes --extension"),
    (["--format", "ucf101", "--subset", "val"], "--subset val: ucf101 has the subsets train and test"),
    (["--device", "tpu"], "--device: expected cpu, cuda or cuda:N, got 'tpu'"),
    (["--decode-timeout", "30"], "decode_timeout 30 (--decode-timeout) needs decoding workers: with workers=0 "
                                 "(--workers 0) the main process decodes"),
])
def test_tokenize_refuses_options_with_a_message(dataset, palette_cli, capsys, extra, message):
    root, _ = dataset
    assert cli_main(cli_args(root, root / "store", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (root / "store").exists()


@pytest.mark.parametrize("fps", ["nan", "inf", "-1"])
def test_tokenize_refuses_a_fps_that_is_not_finite_and_positive(dataset, palette_cli, fps, capsys):
    root, _ = dataset
    args = cli_args(root, root / "store")
    args[args.index("--fps") + 1] = fps
    with pytest.raises(SystemExit):
        cli_main(args)
    assert "argument --fps" in capsys.readouterr().err


def test_tokenize_class_names_and_a_run_where_every_video_fails(dataset, palette_cli, capsys):
    root, _ = dataset
    (root / "classes.txt").write_text("walk\nrun\njump\nswim\n")
    assert cli_main(cli_args(root, root / "store", "--class-names", str(root / "classes.txt"))) == 0
    assert TokenStore.open(root / "store").class_names == ("walk", "run", "jump", "swim")
    for video in (root / "videos").iterdir():
        video.rename(root / video.name)
    assert cli_main(cli_args(root, root / "empty", "--class-names", str(root / "classes.txt"))) == 1
    err = capsys.readouterr().err
    assert "every video of this run failed (5); check --videos" in err


def test_tokenize_fails_a_video_whose_decoder_hangs_and_retry_failed_tries_it_again(tmp_path, palette_cli, monkeypatch,
                                                                                    capsys):
    """`vimpac tokenize --decode-timeout`: the run over a video whose decoder never returns
    finishes, with the others stored and that one listed as failed (error "timeout"); a plain
    rerun skips it, one with --retry-failed decodes it again (this time it does not hang)."""
    import functools

    from store_helpers import decode_or_crash

    keys = ["v0", "v1_hang_once", "v2", "v3"]
    for seed, key in enumerate(keys):
        make_video(tmp_path / "videos" / f"{key}.mp4", seed=seed)
    (tmp_path / "list.txt").write_text("".join(f"{key}.mp4 {i % 2}\n" for i, key in enumerate(keys)))
    monkeypatch.setattr(tokenize_module, "_decode_in_order",
                        functools.partial(tokenize_module._decode_in_order, decode=decode_or_crash))
    args = cli_args(tmp_path, tmp_path / "store", "--workers", "2", "--decode-timeout", "3")
    assert cli_main(args) == 0
    out, err = capsys.readouterr()
    assert "tokenized 3 videos" in out and "1 failed" in out and "1 video(s) failed" in err
    assert TokenStore.open(tmp_path / "store").keys() == ["v0", "v2", "v3"]
    failures = [json.loads(line) for line in (tmp_path / "store" / "failures.jsonl").read_text().splitlines()]
    assert [(f["key"], f["error"]) for f in failures] == [("v1_hang_once", "timeout")]
    reason = failures[0]["reason"]
    assert reason.startswith("no frames decoded for 3 s;") and "--decode-timeout" in reason

    assert cli_main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert cli_main([*args, "--retry-failed"]) == 0
    assert "tokenized 1 videos" in capsys.readouterr().out
    store = TokenStore.open(tmp_path / "store")
    assert store.keys() == keys and store.failures == []


def test_a_decode_timeout_needs_workers_and_a_number_of_seconds(dataset):
    # With workers=0 the main process decodes: nothing could stop a decoder that hangs there.
    root, annotations = dataset
    with pytest.raises(StoreError, match=r"decode_timeout 30 \(--decode-timeout\) needs decoding workers"):
        run(root, annotations, root / "store", decode_timeout=30)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(StoreError, match="decode_timeout .* must be a finite number of seconds >= 0"):
            run(root, annotations, root / "store", workers=1, decode_timeout=bad)
    assert not (root / "store").exists()
    assert run(root, annotations, root / "store", decode_timeout=0).encoded_videos == 4  # 0: no limit


def test_tokenize_takes_each_video_of_a_howto100m_csv_with_a_row_per_clip_once(tmp_path, palette_cli, capsys):
    """A HowTo100M-style CSV with a row per clip lists a video several times: it was refused at
    its second row, though the rows are the same unlabelled video."""
    for video_id in ("vidA", "vidB"):
        make_video(tmp_path / "videos" / f"{video_id}.mp4", seed=len(video_id))
    (tmp_path / "clips.csv").write_text("video_id,start,end\nvidA,0,4\nvidA,4,8\nvidB,0,3\nvidA,8,9\n")
    args = ["tokenize", "--videos", str(tmp_path / "videos"), "--list", str(tmp_path / "clips.csv"),
            "--tokenizer", str(tmp_path), "--fps", "4", "--size", "32", "--out", str(tmp_path / "store"),
            "--workers", "0", "--no-progress"]
    assert cli_main(args) == 0
    assert sorted(TokenStore.open(tmp_path / "store").keys()) == ["vidA", "vidB"]
    assert ("note: " f"{tmp_path / 'clips.csv'}: 2 row(s) repeat a video listed on an earlier row (first: 'vidA' on "
            "line 3, listed on line 2); each video is taken once, 2 videos in all") in capsys.readouterr().err


def test_tokenize_kinetics_subset_val_and_class_names(tmp_path, palette_cli):
    """--subset val, --class-names, --layout reach the Kinetics reader."""
    rows = ["label,youtube_id,time_start,time_end,split"]
    lines = []
    for i, (label, split) in enumerate([("a", "train"), ("b", "train"), ("c", "train"), ("a", "val")]):
        youtube_id = f"id{i:08d}xx"[:11]
        rows.append(f"{label},{youtube_id},0,10,{split}")
        make_video(tmp_path / "videos" / split / f"{youtube_id}_000000_000010.mp4", seed=i)
        lines.append(label)
    (tmp_path / "k400.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    args = ["tokenize", "--videos", str(tmp_path / "videos"), "--list", str(tmp_path / "k400.csv"),
            "--tokenizer", str(tmp_path), "--fps", "4", "--size", "32", "--out", str(tmp_path / "val"),
            "--workers", "0", "--no-progress", "--subset", "val", "--layout", "split",
            "--class-names", str(tmp_path / "classes.txt")]
    assert cli_main(args) == 0
    store = TokenStore.open(tmp_path / "val")
    assert store.class_names == ("a", "b", "c") and store.num_videos == 1  # not just ("a",)


# ------------------------------------------------------------------------------ long videos


@pytest.fixture(scope="module")
def one_gop_video(tmp_path_factory):
    """60 frames at 8 FPS, H.264 with B-frames and a single keyframe."""
    rng = np.random.default_rng(5)
    base = np.kron(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    frames = np.stack([np.roll(base, shift=2 * t, axis=1) for t in range(60)])
    path = write_video(tmp_path_factory.mktemp("long_gop") / "one_gop.mp4", frames, fps=8, gop_size=1000)
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert sum(p.is_keyframe for p in packets) == 1
    assert [p.pts for p in packets] != sorted(p.pts for p in packets)  # B-frames: stored out of order
    return path


@pytest.mark.parametrize("chunk_frames", [1, 6, 7, 1000])  # 30, 60 and 90 samples: divided by 6, not by 7
@pytest.mark.parametrize("fps", [4, 8, 12])  # below, at and above the video's 8 FPS (repeated frames)
def test_decoding_in_chunks_gives_the_views_of_the_whole_video(one_gop_video, monkeypatch, chunk_frames, fps):
    monkeypatch.setattr(tokenize_module, "DECODE_CHUNK_FRAMES", chunk_frames)
    views = resolve_views("all12")
    decoded = decode_video(DecodeJob(0, "v", None, "v.mp4", str(one_gop_video), fps, 32, views, 1))
    assert decoded.failure is None
    expected = make_views(read_video_at_fps(one_gop_video, fps), 32, views)
    assert list(decoded.views) == list(expected)
    for name, frames in expected.items():
        assert frames.shape[0] == round(7.5 * fps)
        np.testing.assert_array_equal(decoded.views[name], frames)


def test_decoding_holds_one_chunk_of_full_resolution_frames(tmp_path):
    # read_video_at_fps held the whole video at full resolution: 7.5 GB per worker for a
    # 10-minute 1080p video at 2 FPS, which the out-of-memory killer turned into "crash" failures.
    height, width, count = 240, 320, 160
    path = write_sliding_blocks(tmp_path / "long.mp4", count, height, width, fps=20)
    job = DecodeJob(0, "long", None, "long.mp4", str(path), 20.0, 32, resolve_views("center"), 1)
    decoded, peak = traced_peak(lambda: decode_video(job))
    assert decoded.failure is None and decoded.views["s1.00_center"].shape == (count, 32, 32, 3)
    frame_bytes = height * width * 3
    assert peak < count * frame_bytes / 2  # far from the whole video
    views_bytes = decoded.views["s1.00_center"].nbytes
    # One chunk, the frame being converted, the output views, and slack for small objects.
    assert peak < (tokenize_module.DECODE_CHUNK_FRAMES + 2) * frame_bytes + views_bytes + 2**20


def test_progress_without_a_terminal_is_lines_not_a_bar(dataset, capsys):
    # Under pytest stderr is no terminal, as in a cluster job's log: a tqdm bar there was one
    # endless line of carriage returns.
    root, annotations = dataset
    run(root, annotations, root / "store", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("tokenize r0: ")]
    assert lines and lines[-1].startswith("tokenize r0: 5/5 video (100%)") and lines[-1].endswith("failed 1")


# ------------------------------------------------------------------ long videos through the store


def one_video(root: Path, name: str, frames: int, fps: float):
    from vimpac.data.annotations import AnnotationSet, VideoRecord

    write_sliding_blocks(root / "videos" / f"{name}.mp4", frames, 48, 64, fps=fps)
    return AnnotationSet(records=[VideoRecord(path=f"{name}.mp4", label=0, key=name)], class_names=("a",), source="test")


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_a_long_video_is_tokenized_in_memory_that_does_not_grow_with_it(tmp_path, workers):
    # A worker returned all of a video's views at once, pickled to the main process and queued
    # there whole: an hour with the all12 views was ~4 GB in each of the two processes, and the
    # run died of MemoryError or the out-of-memory killer. Now chunks of views flow through.
    import itertools

    frames, fps, size = 1200, 20, 32  # 60 s; 38 chunks of DECODE_CHUNK_FRAMES sampled frames
    annotations = one_video(tmp_path, "long", frames, fps)
    attempt = itertools.count()  # traced_peak calls twice: each call into a new store
    report, peak = traced_peak(lambda: tokenize_videos(
        annotations, tmp_path / "videos", PaletteTokenizer(), fps, size, VIEWS, tmp_path / f"store{next(attempt)}",
        workers=workers, batch_size=8, progress=False))
    assert (report.encoded_videos, report.encoded_frames) == (1, 2 * frames)
    views_bytes = 2 * frames * size * size * 3  # the video's two views, which the main process held whole
    assert peak < views_bytes / 4
    store = TokenStore.open(tmp_path / "store1")
    for view, tokens in expected_tokens(tmp_path / "videos" / "long.mp4", fps, size).items():
        np.testing.assert_array_equal(store.tokens(store.index_of("long", view)), tokens)


@pytest.fixture
def long_and_short(tmp_path):
    """Videos of 1, 2 and 9 chunks (8 FPS, 48 x 64) with a corrupt file among them."""
    from vimpac.data.annotations import AnnotationSet, VideoRecord

    lengths = {"a": 20, "b": 264, "c": 8, "d": 0, "e": 50}  # frames; "d" is not a video
    for seed, (name, frames) in enumerate(lengths.items()):
        path = tmp_path / "videos" / f"{name}.mp4"
        if frames:
            write_sliding_blocks(path, frames, 48, 64, fps=8, seed=seed)
        else:
            path.write_bytes(b"not a video" * 20)
    records = [VideoRecord(path=f"{name}.mp4", label=i % 2, key=name) for i, name in enumerate(lengths)]
    return tmp_path, AnnotationSet(records=records, class_names=("x", "y"), source="test")


def store_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / SHARD_DIR).glob("*.tok"))}


@pytest.mark.slow
def test_videos_of_many_chunks_give_the_same_store_with_any_number_of_workers(long_and_short):
    """Chunks of views from the workers, encoded as they come: the tokens of encoding each whole
    video at once, and the same shard bytes with 0, 1 or 2 workers and any batch size."""
    root, annotations = long_and_short
    views = "s1.00_center,s1.25_top_left_flip,s1.25_bottom_right"
    shards = {}
    for workers, batch_size in [(0, 64), (1, 7), (2, 64)]:
        out = root / f"store-{workers}"
        report = tokenize_videos(annotations, root / "videos", PaletteTokenizer(), 8, 32, views, out,
                                 workers=workers, batch_size=batch_size, progress=False)
        assert report.encoded_videos == 4 and [f["key"] for f in report.failures] == ["d"]
        shards[workers] = store_files(out)
        assert cli_main(["store", "verify", str(out)]) == 0
    assert shards[1] == shards[0] and shards[2] == shards[0]
    store = TokenStore.open(root / "store-0")
    assert store.keys() == ["a", "b", "c", "e"]
    for key in store.keys():
        frames = read_video_at_fps(root / "videos" / f"{key}.mp4", 8)
        for name, view in make_views(frames, 32, views).items():
            np.testing.assert_array_equal(store.tokens(store.index_of(key, name)), PaletteTokenizer().encode(view).numpy())


def fail_midway(monkeypatch, key: str, after_chunks: int):
    """Make video `key` fail after sending `after_chunks` chunks, as a file damaged in its middle."""
    from vimpac.store.tokenize import DecodedVideo
    from vimpac.store.writer import FailedVideo

    real = tokenize_module.decode_video_chunks

    def decode(job, chunk_frames=None):
        for index, message in enumerate(real(job, chunk_frames)):
            if job.key == key and index == after_chunks:
                yield DecodedVideo(job, None, FailedVideo(job.record, job.key, job.rel_path, "bad data midway", "decode"))
                return
            yield message

    monkeypatch.setattr(tokenize_module, "decode_video_chunks", decode)


def test_a_video_that_fails_midway_leaves_nothing_of_it_in_the_store(long_and_short, monkeypatch):
    # Its first chunks are encoded in batches shared with the videos before and after it.
    root, annotations = long_and_short
    monkeypatch.setattr(tokenize_module, "DECODE_CHUNK_FRAMES", 3)
    fail_midway(monkeypatch, "b", after_chunks=4)
    tokenizer = RecordingTokenizer()
    report = tokenize_videos(annotations, root / "videos", tokenizer, 8, 32, VIEWS, root / "store", workers=0,
                             batch_size=5, progress=False)
    assert [f["key"] for f in report.failures] == ["b", "d"] and report.failures[0]["reason"] == "bad data midway"
    assert report.encoded_frames == 2 * (20 + 8 + 50)
    assert report.encoded_frames < sum(tokenizer.calls) <= report.encoded_frames + 2 * 4 * 3  # some of b's 4 chunks
    store = TokenStore.open(root / "store")
    assert store.keys() == ["a", "c", "e"] and len(store) == 6
    for key in store.keys():
        for view, tokens in expected_tokens(root / "videos" / f"{key}.mp4", 8, 32).items():
            np.testing.assert_array_equal(store.tokens(store.index_of(key, view)), tokens)
    assert cli_main(["store", "verify", str(root / "store")]) == 0


def test_a_signal_while_a_video_is_arriving_commits_the_videos_before_it(long_and_short, monkeypatch):
    import os
    import signal

    root, annotations = long_and_short
    monkeypatch.setattr(tokenize_module, "DECODE_CHUNK_FRAMES", 16)  # "b": 264 frames, 17 chunks
    real = tokenize_module._decode_in_order

    def decode_then_signal(jobs, workers, **options):
        for message in real(jobs, workers, **options):
            if message.job.key == "b" and message.start == 5 * 16:
                os.kill(os.getpid(), signal.SIGTERM)
            yield message

    monkeypatch.setattr(tokenize_module, "_decode_in_order", decode_then_signal)
    report = run(root, annotations, root / "store", fps=8, batch_size=8, stop_on_signals=True)
    assert report.interrupted == "SIGTERM" and report.encoded_videos == 1
    assert TokenStore.open(root / "store").keys() == ["a"]
    monkeypatch.setattr(tokenize_module, "_decode_in_order", real)
    rest = run(root, annotations, root / "store", fps=8)
    assert (rest.already_done, rest.encoded_videos, len(rest.failures)) == (1, 3, 1)
    whole = run(root, annotations, root / "uninterrupted", fps=8)
    assert whole.encoded_videos == 4
    assert store_files(root / "store") == store_files(root / "uninterrupted")


class RecordingBar:
    """A progress bar that records what tokenize tells it: ("update", n) and ("postfix", {...})."""

    def __init__(self, calls: list):
        self.calls = calls

    def update(self, n=1):
        self.calls.append(("update", n))

    def set_postfix(self, ordered_dict=None, **kwargs):
        self.calls.append(("postfix", {**(ordered_dict or {}), **kwargs}))

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_the_progress_bar_shows_the_frames_decoded_of_a_long_video(long_and_short, monkeypatch):
    """The bar counted committed videos only, so it stood still for the whole of an hour-long
    video; now its postfix shows the frames decoded of a video of several chunks as they come.
    The counts, and the report, are what they were; the postfix is set before the count moves, so
    that a log file's line (printed by the update) has the numbers of that commit."""
    import vimpac.progress

    root, annotations = long_and_short
    quiet = run(root, annotations, root / "quiet", fps=8, progress=False)
    calls: list = []
    monkeypatch.setattr(vimpac.progress, "progress_bar", lambda total, *args, **kwargs: RecordingBar(calls))
    report = run(root, annotations, root / "store", fps=8, progress=True)
    timeless = ("store", "seconds", "videos_per_s", "frames_per_s")
    assert {k: v for k, v in report.to_json().items() if k not in timeless} == \
        {k: v for k, v in quiet.to_json().items() if k not in timeless}

    chunk = tokenize_module.DECODE_CHUNK_FRAMES
    store = TokenStore.open(root / "store")
    totals = [store.entry(store.index_of(key, VIEWS.split(",")[0])).num_frames for key in store.keys()]
    assert max(totals) > 2 * chunk  # "b": several chunks
    shown, counted, counts_when_shown = [], 0, []
    for what, value in calls:
        if what == "update":
            counted += value
        elif "video_frames" in value:
            shown.append(value["video_frames"])
            counts_when_shown.append(counted)
    assert shown == [f"{end}/{total}" for total in totals for end in range(chunk, total, chunk)]
    assert counted == report.encoded_videos + len(report.failures)
    assert len(set(counts_when_shown)) < len(counts_when_shown)  # the postfix moved while the count stood
    last_update = max(i for i, (what, value) in enumerate(calls) if what == "update" and value)
    last_postfix = next(value for what, value in reversed(calls[:last_update]) if what == "postfix")
    assert last_postfix["failed"] == len(report.failures) and "video_frames" not in last_postfix
