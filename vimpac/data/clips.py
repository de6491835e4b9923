"""Temporal clip sampling on token arrays (T_video, h, w), shared by pre-training and fine-tuning.

Conventions follow the authors' data loader (a SlowFast-style start-index rule):

- a video of T frames and a clip of L frames have `max(T - L, 0) + 1` possible starts;
- training takes one start uniformly at random;
- multi-view evaluation takes N starts evenly spread from the first (0) to the last
  (T - L) start, rounded down, so the first and the last clip both touch the video's ends;
- a video shorter than the clip gives start 0 and the missing frames are [PAD] tokens;
- contrastive pre-training takes two clips of the same video (paper Sec. 3.2): both starts
  uniform and independent over the whole video, or, with a maximum distance d_max between
  their starts (paper Table 10), the second start uniform within d_max of the first.

Everything is plain numpy and takes an explicit `np.random.Generator`, so data-loader
workers can each own a seeded generator and results are reproducible.
"""

from __future__ import annotations

import numpy as np


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def last_clip_start(num_frames: int, clip_len: int) -> int:
    """The largest start index of a `clip_len` clip (0 when the video is shorter than the clip)."""
    num_frames = _check_int("num_frames", num_frames, 0)
    clip_len = _check_int("clip_len", clip_len, 1)
    return max(num_frames - clip_len, 0)


def uniform_clip_starts(num_frames: int, clip_len: int, num_clips: int) -> np.ndarray:
    """Start indices of `num_clips` evenly spaced clips, for multi-view evaluation.

    Clip i starts at floor(i * (T - L) / (N - 1)): the first at 0, the last at T - L. With
    N = 1 the single clip starts at 0 (as in the authors' code, not centred). Starts repeat
    when the video has fewer than N distinct starts. Returns int64 of shape (num_clips,).
    """
    last = last_clip_start(num_frames, clip_len)
    num_clips = _check_int("num_clips", num_clips, 1)
    steps = np.arange(num_clips, dtype=np.int64)
    # Integer arithmetic: exact floor without float rounding at multiples.
    return (steps * last) // max(num_clips - 1, 1)


def random_clip_start(rng: np.random.Generator, num_frames: int, clip_len: int) -> int:
    """A start index drawn uniformly from 0..max(T - L, 0) (training's random temporal crop)."""
    return int(rng.integers(0, last_clip_start(num_frames, clip_len) + 1))


def sample_clip_pair(
    rng: np.random.Generator,
    num_frames: int,
    clip_len: int,
    max_distance_frames: int | None = None,
) -> tuple[int, int]:
    """Start indices of the two positive clips of one video for the contrastive loss.

    Without `max_distance_frames` (the paper's default, d_max = infinity) the two starts are
    independent and uniform over the whole video. With it, the first start is uniform and the
    second is uniform over the starts within that distance of the first, clipped to the
    video (the authors' "relevance range" rule); `max_distance_frames=0` gives the same clip
    twice. Convert the paper's d_max in seconds with `round(d_max * fps)`.
    """
    last = last_clip_start(num_frames, clip_len)
    first = int(rng.integers(0, last + 1))
    if max_distance_frames is None:
        return first, int(rng.integers(0, last + 1))
    distance = _check_int("max_distance_frames", max_distance_frames, 0)
    low, high = max(first - distance, 0), min(first + distance, last)
    return first, int(rng.integers(low, high + 1))


def take_clip(tokens: np.ndarray, start: int, clip_len: int, pad_id: int) -> np.ndarray:
    """Frames start..start+clip_len-1 of `tokens` (T, ...), padded with `pad_id` past the end.

    Always returns a new array of shape (clip_len, ...) with the dtype of `tokens`, so a
    caller may modify it (e.g. write [MASK] ids) without touching a memory-mapped store.
    """
    if not isinstance(tokens, np.ndarray) or tokens.ndim < 1:
        raise TypeError(f"tokens: expected a numpy array of shape (T, ...), got {type(tokens).__name__}")
    clip_len = _check_int("clip_len", clip_len, 1)
    start = _check_int("start", start, 0)
    num_frames = tokens.shape[0]
    if start > max(num_frames - 1, 0):
        raise ValueError(f"start: expected 0..{max(num_frames - 1, 0)} for a video of {num_frames} frames, got {start}")
    if np.issubdtype(tokens.dtype, np.integer):
        info = np.iinfo(tokens.dtype)
        if not info.min <= pad_id <= info.max:
            raise ValueError(f"pad_id: {pad_id} does not fit the token dtype {tokens.dtype}")
    clip = np.full((clip_len, *tokens.shape[1:]), pad_id, dtype=tokens.dtype)
    available = tokens[start : start + clip_len]
    clip[: available.shape[0]] = available
    return clip


def uniform_clips(tokens: np.ndarray, clip_len: int, num_clips: int, pad_id: int) -> np.ndarray:
    """The `num_clips` evaluation views of one video stacked: (num_clips, clip_len, ...)."""
    starts = uniform_clip_starts(tokens.shape[0], clip_len, num_clips)
    return np.stack([take_clip(tokens, int(s), clip_len, pad_id) for s in starts])
