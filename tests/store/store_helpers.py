"""Shared helpers of the store tests: a tiny deterministic tokenizer and tiny videos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vimpac.tokenizer.base import FrameTokenizer
from vimpac.video.writer import write_video


class PaletteTokenizer(FrameTokenizer):
    """Quantises each 8x8 patch's mean colour to 4 levels per channel: 64 codes.

    Deterministic and independent of batch composition, so tokens from a resumed run can be
    compared exactly with an uninterrupted one without trained weights.
    """

    kind = "palette"
    codebook_size = 64
    downsample = 8

    def encode(self, frames):
        x = torch.as_tensor(np.asarray(frames)).float()
        n, h, w, _ = x.shape
        means = x.reshape(n, h // 8, 8, w // 8, 8, 3).mean(dim=(2, 4))
        levels = (means // 64).clamp(0, 3).long()
        return levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2]

    def decode(self, ids):
        raise NotImplementedError("the test palette tokenizer only encodes")

    def save_pretrained(self, folder):
        raise NotImplementedError("the test palette tokenizer is not saved")

    @property
    def tokenizer_id(self) -> str:
        return "palette-64-test"


def make_video(path: Path, seed: int, frames: int = 8, height: int = 48, width: int = 64, fps: float = 8.0) -> Path:
    """A small video of moving coloured blocks (distinct per seed, so tokens differ per video)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
    base = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
    video = np.stack([np.roll(base, shift=4 * t, axis=1) for t in range(frames)])
    return write_video(path, video, fps=fps)


def make_corrupt_video(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an mp4 file" * 10)
    return path


def make_dataset(root: Path, num_videos: int, corrupt: tuple[int, ...] = (), frames: int = 8) -> Path:
    """Videos root/videos/vNN.mp4 plus an MMAction2 list root/list.txt (labels = index % 3)."""
    video_root = root / "videos"
    lines = []
    for i in range(num_videos):
        path = video_root / f"v{i:02d}.mp4"
        if i in corrupt:
            make_corrupt_video(path)
        else:
            make_video(path, seed=i, frames=frames)
        lines.append(f"v{i:02d}.mp4 {i % 3}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt"


STALL_S = 120.0
SLOW_CHUNK_S = 0.5  # a "_slow" video's wait before each of its chunks


def hang() -> None:
    """Wait for ever, as a decoder stuck on a stalled read or spinning inside FFmpeg."""
    import threading

    threading.Event().wait()


def decode_or_crash(job):
    """`decode_video_chunks`, except that a video whose key ends in "_crash" kills its process at
    once, as a segfault inside the decoder would, and one whose key ends in "_crash_late" does so
    after sending its first chunk; one whose key ends in "_crash_once" kills the first process
    that decodes it only, as the out-of-memory killer might (it leaves a file beside the video
    saying so); one whose key ends in "_stall" waits STALL_S before decoding, as a read from a
    stalled network mount would; one whose key ends in "_hang_once" never returns in the first
    process that decodes it (it leaves a file beside the video saying so), one whose key ends in
    "_hang_late" never returns after sending its first chunk; one whose key ends in "_slow" sends a
    chunk per frame, SLOW_CHUNK_S apart; one whose key ends in "_misdelivered" sends its chunks as
    another video's (a bug the receiver must catch). Module level: decode workers import it by name."""
    import time

    from vimpac.store.tokenize import decode_video_chunks

    if job.key.endswith("_crash"):
        os._exit(70)
    if job.key.endswith("_crash_once"):
        crashed = Path(job.path).with_name(f"{job.key}.crashed")
        if not crashed.exists():
            crashed.touch()
            os._exit(70)
    if job.key.endswith("_stall"):
        time.sleep(STALL_S)
    if job.key.endswith("_hang_once"):
        hung = Path(job.path).with_name(f"{job.key}.hung")
        if not hung.exists():
            hung.touch()
            hang()
    if job.key.endswith("_hang_late"):
        yield next(decode_video_chunks(job, chunk_frames=1))
        hang()
    if job.key.endswith("_slow"):
        for message in decode_video_chunks(job, chunk_frames=1):
            time.sleep(SLOW_CHUNK_S)
            yield message
        return
    if job.key.endswith("_crash_late"):
        yield next(decode_video_chunks(job, chunk_frames=1))
        time.sleep(0.5)  # the chunk reaches the main process (unsent messages die with the process)
        os._exit(70)
    if job.key.endswith("_misdelivered"):
        import dataclasses

        for message in decode_video_chunks(job):
            yield dataclasses.replace(message, job=dataclasses.replace(job, record=job.record + 1000))
        return
    yield from decode_video_chunks(job, chunk_frames=1 if job.key.endswith("_chunked") else None)
