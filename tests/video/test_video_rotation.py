"""Videos with a display rotation (phone videos shot upright): frames come out upright, as
FFmpeg's tools show them."""

from __future__ import annotations

import av
import numpy as np
import pytest

from vimpac.cli import main
from vimpac.video.reader import VideoReader, probe_video, read_video_at_fps
from vimpac.video.writer import encode_frames

WIDTH, HEIGHT = 64, 32


def _write_rotated(path, degrees_ccw: int, frames: int = 8) -> None:
    """A landscape H.264 video whose display matrix turns it `degrees_ccw` counterclockwise
    (FFmpeg's `-display_rotation`; an upright phone video is stored with -90). A white square
    marks the stored image's top-left corner."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:8, :8] = 255
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.set_display_rotation(degrees_ccw)
        encode_frames(container, stream, np.repeat(image[None], frames, axis=0))


def _marker(frame: np.ndarray) -> tuple[int, int]:
    """Which corner of `frame` holds the white square: (0 or 1 for top / bottom, 0 or 1 for left / right)."""
    rows, cols = np.nonzero(frame.mean(-1) > 128)
    return int(rows.mean() > frame.shape[0] / 2), int(cols.mean() > frame.shape[1] / 2)


@pytest.mark.parametrize("degrees, rotation, shape, corner", [
    (-90, 270, (WIDTH, HEIGHT), (0, 1)),  # a phone's portrait video: turned clockwise, top-left -> top-right
    (90, 90, (WIDTH, HEIGHT), (1, 0)),    # counterclockwise: top-left -> bottom-left
    (180, 180, (HEIGHT, WIDTH), (1, 1)),
    (0, 0, (HEIGHT, WIDTH), (0, 0)),
])
def test_frames_come_out_upright(tmp_path, degrees, rotation, shape, corner):
    path = tmp_path / "phone.mp4"
    _write_rotated(path, degrees)
    with VideoReader(path) as video:
        assert (video.info.height, video.info.width, video.info.rotation) == (*shape, rotation)
        frames = video.read_frames([0, 5, 2])
        assert frames.shape == (3, *shape, 3) and frames.flags["C_CONTIGUOUS"]
        assert all(_marker(frame) == corner for frame in frames)
        assert video.read_frames([]).shape == (0, *shape, 3)
    probed = probe_video(path)
    assert (probed.height, probed.width, probed.rotation) == (*shape, rotation)
    assert read_video_at_fps(path, 4).shape == (4, *shape, 3)


def test_video_info_reports_the_rotation(tmp_path, capsys):
    path = tmp_path / "phone.mp4"
    _write_rotated(path, -90)
    assert main(["video-info", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"rotation": 270' in out and '"width": 32' in out and '"height": 64' in out
