"""Folder scans skip tools' leftovers (hidden files and folders); an MP4 cut inside its index is
reported as truncated, not as a file without video; so is a WebM cut short."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_webm

from vimpac.cli import main as cli_main
from vimpac.video.errors import VideoDecodeError
from vimpac.video.reader import VideoReader, find_video_files, probe_video, scan_videos
from vimpac.video.writer import write_video


def _frames(count: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def test_folder_scans_skip_hidden_files_and_folders(tmp_path, capsys):
    root = tmp_path / ".cache" / "videos"  # a hidden folder *above* the root is not a leftover
    good = write_video(root / "walk" / "a.mp4", _frames(), fps=4)
    junk = b"\x00\x00\x00\x18ftypmp42 not a video"
    for leftover in (
        root / "walk" / ".a.mp4.k2x9q1zz.tmp.mp4",  # an interrupted atomic write's temporary
        root / "walk" / "._a.mp4",  # macOS AppleDouble metadata
        root / ".Trash" / "old.mp4",
    ):
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(junk)

    assert find_video_files(root) == [good]
    assert cli_main(["video-info", str(root)]) == 0
    assert "bad file" not in capsys.readouterr().err


def _moov_offset(data: bytes) -> int:
    offset = 0
    while data[offset + 4:offset + 8] != b"moov":
        offset += int.from_bytes(data[offset:offset + 4], "big")
    return offset


@pytest.fixture(scope="module")
def index_last_mp4(tmp_path_factory) -> bytes:
    path = write_video(tmp_path_factory.mktemp("mp4") / "clip.mp4", _frames(), fps=4)
    data = path.read_bytes()
    assert _moov_offset(data) > len(data) // 2  # PyAV writes the index (moov) after the frames
    return data


@pytest.mark.parametrize("cut", ["moov+16", "moov+150", "moov+320", "90%"])
def test_mp4_cut_inside_its_index_is_reported_as_truncated(index_last_mp4, tmp_path, cut):
    # FFmpeg opens such a file with the streams it had read so far: none (moov+16), a
    # codec-less stub (moov+150) or a video stream without decoder settings (moov+320).
    data = index_last_mp4
    end = int(len(data) * 0.9) if cut == "90%" else _moov_offset(data) + int(cut.split("+")[1])
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[:end])
    for call in (probe_video, VideoReader):
        with pytest.raises(VideoDecodeError) as caught:
            call(path)
        assert caught.value.kind == "decode"
        assert "truncated" in caught.value.reason, caught.value.reason
        assert "container holds" not in caught.value.reason


def test_video_info_names_the_truncation(index_last_mp4, tmp_path, capsys):
    path = tmp_path / "cut.mp4"
    path.write_bytes(index_last_mp4[:_moov_offset(index_last_mp4) + 16])
    assert cli_main(["video-info", str(path)]) == 1
    err = capsys.readouterr().err
    assert "[decode]" in err and "could not be parsed" in err and "'moov' box" in err


def test_webm_cut_short_is_reported_as_truncated(tmp_path):
    # A WebM / MKV declares a duration but no frame count, and FFmpeg reads a cut-off one up to
    # where it ends without an error: it was tokenized as a shorter video, silently.
    data = write_webm(tmp_path / "78687.webm", _frames(48), fps=12).read_bytes()
    with VideoReader(tmp_path / "78687.webm") as video:  # the whole file is fine
        assert video.num_frames == 48
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(VideoDecodeError) as caught:
        VideoReader(cut)
    assert caught.value.kind == "decode"
    assert "truncated: the container declares 4.000 s of video but its frames end at" in caught.value.reason
    infos, errors = scan_videos([cut], verify=True)
    assert infos == [] and "truncated" in errors[0].reason
