"""Every kind of bad input gives its typed VideoError (with the path), never a hang or a wrong frame."""

from __future__ import annotations

import json
import os
import pickle

import av
import numpy as np
import pytest
from conftest import decode_indices

import vimpac.video.reader as reader_module
from vimpac.cli import main as cli_main
from vimpac.video.errors import (
    EmptyVideoFileError,
    NoVideoStreamError,
    VideoDecodeError,
    VideoError,
    VideoNotFoundError,
    VideoTooShortError,
    VideoUnreadableError,
)
from vimpac.video.reader import VideoReader, probe_video, read_clip, read_frames, scan_videos


def _write_audio_only(path):
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _remux_faststart(src, dst):
    """Copy the packets into an MP4 whose index (moov) comes first, as streaming sites serve."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in inp.demux(in_stream):
            if packet.size:
                packet.stream = out_stream
                out.mux(packet)
    return dst


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, index_video):
    """One file of each bad kind, plus two good ones, in one folder."""
    folder = tmp_path_factory.mktemp("mixed")
    good = index_video("h264", fps=25, count=100, gop=24)
    files = {}
    files["good"] = folder / "good.mp4"
    files["good"].write_bytes(good.read_bytes())
    files["good_mpeg4"] = folder / "good_mpeg4.mp4"
    files["good_mpeg4"].write_bytes(index_video("mpeg4", fps=25, count=50).read_bytes())
    files["empty"] = folder / "empty.mp4"
    files["empty"].write_bytes(b"")
    data = good.read_bytes()
    files["truncated"] = folder / "truncated.mp4"  # index at the end: cut in half loses it
    files["truncated"].write_bytes(data[: len(data) // 2])
    faststart = _remux_faststart(good, folder / "faststart_full.tmp")
    fast_data = faststart.read_bytes()
    faststart.unlink()
    files["truncated_faststart"] = folder / "truncated_faststart.mp4"  # index survives, frames do not
    files["truncated_faststart"].write_bytes(fast_data[: len(fast_data) // 2])
    files["text"] = folder / "notes.mp4"
    files["text"].write_text("this is not a video\n" * 100)
    files["random"] = folder / "random.mp4"
    files["random"].write_bytes(np.random.default_rng(0).bytes(50_000))
    files["audio"] = _write_audio_only(folder / "audio_only.m4a")
    files["missing"] = folder / "missing.mp4"
    files["directory"] = folder / "folder.mp4"
    files["directory"].mkdir()
    return files


def _raises(kind, path, call=probe_video):
    with pytest.raises(kind) as caught:
        call(path)
    assert caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert caught.value.reason
    return caught.value


def test_error_family_and_message():
    error = VideoTooShortError("a.mp4", needed=5, available=3)
    assert isinstance(error, VideoError) and str(error) == "a.mp4: too short: needed 5 frames, only 3 available"
    clone = pickle.loads(pickle.dumps(error))  # crosses DataLoader worker processes intact
    assert (type(clone), clone.path, clone.needed, clone.available, str(clone)) == (
        VideoTooShortError, "a.mp4", 5, 3, str(error))
    for cls in (VideoNotFoundError, VideoUnreadableError, EmptyVideoFileError, VideoDecodeError, NoVideoStreamError):
        assert issubclass(cls, VideoError)
        assert pickle.loads(pickle.dumps(cls("x.mp4", "why"))).reason == "why"


def test_missing_file(bad_files):
    _raises(VideoNotFoundError, bad_files["missing"])
    _raises(VideoNotFoundError, bad_files["missing"], lambda p: read_frames(p, [0]))


def test_directory_is_not_a_video(bad_files):
    assert "directory" in _raises(VideoNotFoundError, bad_files["directory"]).reason


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_rejected_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # opening a FIFO with no writer would block forever
    assert "regular file" in _raises(VideoNotFoundError, fifo).reason


def test_unreadable_file(bad_files, monkeypatch):
    # Tests run as root, which chmod 000 does not stop; simulate the OS refusing the read.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(reader_module, "open", refuse, raising=False)
    error = _raises(VideoUnreadableError, bad_files["good"])
    assert "Permission denied" in error.reason


def test_zero_byte_file(bad_files):
    _raises(EmptyVideoFileError, bad_files["empty"])


def test_truncated_file(bad_files):
    _raises(VideoDecodeError, bad_files["truncated"])
    _raises(VideoDecodeError, bad_files["truncated"], lambda p: read_frames(p, [0]))


def test_truncated_file_with_index_first_never_returns_wrong_frames(bad_files):
    path = bad_files["truncated_faststart"]
    error = _raises(VideoDecodeError, path, VideoReader)
    assert "truncated" in error.reason


@pytest.mark.parametrize("kind", ["text", "random"])
def test_not_a_video(bad_files, kind):
    _raises(VideoDecodeError, bad_files[kind])
    _raises(VideoDecodeError, bad_files[kind], lambda p: read_frames(p, [0]))


def test_audio_only(bad_files):
    error = _raises(NoVideoStreamError, bad_files["audio"])
    assert "audio" in error.reason


@pytest.mark.parametrize("call", [probe_video, VideoReader], ids=["probe_video", "VideoReader"])
def test_frames_larger_than_the_reader_decodes_are_refused_before_decoding(bad_files, monkeypatch, call):
    info = probe_video(bad_files["good"])
    pixels = info.width * info.height
    monkeypatch.setattr(reader_module, "MAX_FRAME_PIXELS", pixels - 1)
    monkeypatch.setattr(reader_module, "_decode_first_frame", lambda *a: pytest.fail("decoded a frame first"))
    error = _raises(VideoDecodeError, bad_files["good"], call)
    assert f"declares {info.width}x{info.height} frames" in error.reason
    monkeypatch.undo()
    monkeypatch.setattr(reader_module, "MAX_FRAME_PIXELS", pixels)
    call(bad_files["good"])  # exactly at the limit: read


def test_shorter_than_clip(bad_files):
    error = _raises(VideoTooShortError, bad_files["good"], lambda p: read_clip(p, fps=2, num_frames=10))
    assert (error.needed, error.available) == (10, 8)  # 100 frames at 25 fps = 4 s -> 8 samples


def test_scan_videos_over_a_mixed_folder(bad_files):
    paths = sorted(bad_files.values())
    infos, errors = scan_videos(paths)
    assert sorted(i.path for i in infos) == sorted(
        str(bad_files[k]) for k in ("good", "good_mpeg4", "truncated_faststart"))  # header-only probe
    kinds = {e.path: type(e) for e in errors}
    assert kinds == {
        str(bad_files["empty"]): EmptyVideoFileError,
        str(bad_files["truncated"]): VideoDecodeError,
        str(bad_files["text"]): VideoDecodeError,
        str(bad_files["random"]): VideoDecodeError,
        str(bad_files["audio"]): NoVideoStreamError,
        str(bad_files["missing"]): VideoNotFoundError,
        str(bad_files["directory"]): VideoNotFoundError,
    }
    infos, errors = scan_videos(paths, verify=True)  # also reads the packets: finds the cut file
    assert sorted(i.path for i in infos) == sorted(str(bad_files[k]) for k in ("good", "good_mpeg4"))
    assert str(bad_files["truncated_faststart"]) in {e.path for e in errors}


def test_good_file_in_the_mixed_folder_still_reads(bad_files):
    np.testing.assert_array_equal(decode_indices(read_frames(bad_files["good"], [99, 0, 50])), [99, 0, 50])


def test_video_info_command(bad_files, capsys):
    good, empty = str(bad_files["good"]), str(bad_files["empty"])
    assert cli_main(["video-info", good]) == 0
    assert good in capsys.readouterr().out
    assert cli_main(["video-info", "--json", good, empty]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [v["num_frames"] for v in report["videos"]] == [100]
    assert report["errors"] == [{"path": empty, "kind": "empty", "reason": "file is empty (0 bytes)"}]
    # a folder is searched for video files; bad ones are listed on stderr with their reason
    assert cli_main(["video-info", str(bad_files["good"].parent)]) == 1
    captured = capsys.readouterr()
    assert "[empty]" in captured.err and "notes.mp4" in captured.err
    assert "audio_only.m4a" not in captured.err  # .m4a is not a video extension: not searched
