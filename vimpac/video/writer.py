"""Write uint8 RGB frames to a video file with PyAV (H.264 or MPEG-4).

Used by the synthetic benchmark and by tests that need real encoded videos on disk.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vimpac.io import atomic_path

CODECS = {"h264": "libx264", "mpeg4": "mpeg4"}


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    codec: str = "h264",
    crf: int = 18,
    gop_size: int | None = None,
) -> Path:
    """Encode `frames` (T, H, W, 3) uint8 RGB as an .mp4 at `fps`; returns the path.

    H and W must be even (4:2:0 chroma). `crf` sets H.264 quality (lower is better);
    `gop_size` sets the keyframe interval (default: the encoder's). The file appears
    atomically: an interrupted write leaves no partial video behind.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame height and width must be even for 4:2:0 video, got {frames.shape[1:3]}")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path, suffix=path.suffix) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(CODECS[codec], rate=rate)
            stream.width = frames.shape[2]
            stream.height = frames.shape[1]
            stream.pix_fmt = "yuv420p"
            if codec == "h264":
                # mbtree=0: x264's macroblock-tree rate control made the same frames encode to
                # different bytes from run to run (5-8 of 21 test clips, even with one thread),
                # so a seeded synthetic benchmark was not reproducible; without it the output is.
                stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
            else:
                stream.bit_rate = 4_000_000
            if gop_size is not None:
                stream.codec_context.gop_size = gop_size
            encode_frames(container, stream, frames)
    return path


def encode_frames(container: av.container.OutputContainer, stream: av.video.stream.VideoStream,
                  frames: np.ndarray) -> None:
    """Encode uint8 RGB `frames` (T, H, W, 3) on `stream` and mux every packet, the encoder's
    delayed ones included (for callers that set up other containers or codecs themselves)."""
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
