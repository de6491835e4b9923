"""Videos whose frames encode their own index, so a test can tell exactly which frame it got.

Each frame shows its index as 8 binary digits, one 32x32 black or white block per bit (2 rows
x 4 columns on a 64x128 frame). Blocks that big survive H.264 / MPEG-4 compression, and
every frame differs from its neighbours, which makes the encoder use P- and B-frames.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from vimpac.video.writer import encode_frames, write_video

BLOCK = 32
ROWS, COLS = 2, 4
HEIGHT, WIDTH = ROWS * BLOCK, COLS * BLOCK
MAX_INDEX = 2 ** (ROWS * COLS) - 1


def index_frames(count: int) -> np.ndarray:
    """uint8 (count, 64, 128, 3) frames; frame i shows i in binary (bit 0 at the top-left)."""
    if count > MAX_INDEX + 1:
        raise ValueError(f"at most {MAX_INDEX + 1} distinct frames")
    frames = np.zeros((count, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for i in range(count):
        for bit in range(ROWS * COLS):
            if (i >> bit) & 1:
                r, c = divmod(bit, COLS)
                frames[i, r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = 255
    return frames


def decode_indices(frames: np.ndarray) -> np.ndarray:
    """The index each decoded frame shows (reads the centre of every block)."""
    frames = np.asarray(frames)
    values = np.zeros(len(frames), dtype=np.int64)
    quarter = BLOCK // 4
    for bit in range(ROWS * COLS):
        r, c = divmod(bit, COLS)
        patch = frames[:, r * BLOCK + quarter : (r + 1) * BLOCK - quarter, c * BLOCK + quarter : (c + 1) * BLOCK - quarter]
        values |= (patch.reshape(len(frames), -1).mean(axis=1) > 127).astype(np.int64) << bit
    return values


def write_webm(path: Path, frames: np.ndarray, fps: int) -> Path:
    """VP9 in WebM (millisecond timestamps), as SSv2 and YouTube distribute; the project writer
    makes only MP4."""
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8"}
        stream.codec_context.gop_size = fps  # several clusters, as in real files
        encode_frames(container, stream, frames)
    return path


def has_b_frames(path: Path) -> bool:
    """True when some packet is stored out of presentation order (a B-frame)."""
    with av.open(str(path)) as container:
        pts = [p.pts for p in container.demux(video=0) if p.size]
    return pts != sorted(pts)


@pytest.fixture(scope="session")
def index_video(tmp_path_factory):
    """Factory: write (once per session) an index video with the given codec, fps, length, GOP."""
    folder = tmp_path_factory.mktemp("index_videos")
    made: dict[tuple, Path] = {}

    def make(codec: str = "h264", fps: float = 25, count: int = 100, gop: int | None = None) -> Path:
        key = (codec, fps, count, gop)
        if key not in made:
            path = folder / f"index_{codec}_{fps}fps_{count}f_gop{gop}.mp4"
            made[key] = write_video(path, index_frames(count), fps=fps, codec=codec, gop_size=gop)
        return made[key]

    return make
