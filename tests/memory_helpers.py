"""Peak memory of a call, and a video big enough for it to matter: for the tests that bound
what decoding a long video costs."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vimpac.video.writer import write_video


def traced_peak(call: Callable[[], Any]) -> tuple[Any, int]:
    """(result, peak bytes allocated during the call) as tracemalloc sees them: numpy arrays and
    Python objects, not torch's or FFmpeg's own buffers. Runs the call once before measuring, so
    that lazy imports and first-call caches do not count."""
    call()
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def write_sliding_blocks(path: Path, frames: int, height: int, width: int, fps: float, seed: int = 0) -> Path:
    """Random 8x8 colour blocks sliding right by 4 px a frame (cheap to encode at any size)."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8),
                   np.ones((8, 8, 1), dtype=np.uint8))
    return write_video(path, np.stack([np.roll(base, shift=4 * t, axis=1) for t in range(frames)]), fps=fps)
