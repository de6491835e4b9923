"""Temporal clip sampling: exact starts, seeded distribution checks, padding."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from vimpac.data.clips import (
    last_clip_start,
    random_clip_start,
    sample_clip_pair,
    take_clip,
    uniform_clip_starts,
    uniform_clips,
)
from vimpac.tokens import DALLE_VOCAB

PAD = DALLE_VOCAB.pad_id


def assert_uniform(values: np.ndarray, support: int, sigmas: float = 5.0) -> None:
    """Every value in 0..support-1 occurs, and each count is within `sigmas` binomial SDs."""
    counts = np.bincount(values, minlength=support)
    assert counts.shape == (support,), "values outside the support"
    n, p = len(values), 1.0 / support
    expected, sd = n * p, math.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - expected) <= sigmas * sd), counts


# ------------------------------------------------------------------------------ uniform starts


def test_uniform_starts_example_and_ends():
    # 30 frames, clips of 10: starts 0..20; five clips evenly at 0, 5, 10, 15, 20.
    assert uniform_clip_starts(30, 10, 5).tolist() == [0, 5, 10, 15, 20]
    assert uniform_clip_starts(30, 10, 1).tolist() == [0]
    assert uniform_clip_starts(4, 10, 3).tolist() == [0, 0, 0]  # shorter than a clip
    assert uniform_clip_starts(12, 10, 10).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert uniform_clip_starts(30, 10, 5).dtype == np.int64


@pytest.mark.parametrize("num_frames", [1, 5, 9, 10, 11, 17, 40, 301])
@pytest.mark.parametrize("num_clips", [1, 2, 3, 7, 10])
def test_uniform_starts_match_exact_rational_rule(num_frames, num_clips):
    clip_len = 10
    last = max(num_frames - clip_len, 0)
    expected = [math.floor(Fraction(i * last, max(num_clips - 1, 1))) for i in range(num_clips)]
    starts = uniform_clip_starts(num_frames, clip_len, num_clips)
    assert starts.tolist() == expected
    assert np.all(np.diff(starts) >= 0) and starts.min() >= 0 and starts.max() <= last
    if num_clips > 1:
        assert starts[0] == 0 and starts[-1] == last


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="clip_len: expected an integer >= 1, got 0"):
        uniform_clip_starts(10, 0, 3)
    with pytest.raises(ValueError, match="num_clips: expected an integer >= 1"):
        uniform_clip_starts(10, 2, 0)
    with pytest.raises(ValueError, match="num_frames: expected an integer >= 0"):
        last_clip_start(-1, 2)
    with pytest.raises(TypeError, match="clip_len: expected an integer"):
        last_clip_start(10, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_distance_frames: expected an integer >= 0"):
        sample_clip_pair(np.random.default_rng(0), 20, 5, -1)


# ------------------------------------------------------------------------------ random starts


def test_random_start_is_uniform_over_all_starts():
    rng = np.random.default_rng(1234)
    draws = np.array([random_clip_start(rng, 25, 15) for _ in range(22_000)])
    assert_uniform(draws, support=11)
    assert all(random_clip_start(rng, 3, 15) == 0 for _ in range(50))


def test_random_start_is_reproducible_with_a_seed():
    a = [random_clip_start(np.random.default_rng(7), 100, 5) for _ in range(3)]
    assert a[0] == a[1] == a[2]


# ------------------------------------------------------------------------------ clip pairs


def test_unrestricted_pairs_are_independent_and_uniform():
    rng = np.random.default_rng(0)
    support = 9  # 20 frames, clips of 12 -> starts 0..8
    pairs = np.array([sample_clip_pair(rng, 20, 12) for _ in range(27_000)])
    assert_uniform(pairs[:, 0], support)
    assert_uniform(pairs[:, 1], support)
    # Independence: the joint distribution is uniform over all 81 (first, second) cells.
    assert_uniform(pairs[:, 0] * support + pairs[:, 1], support * support)


def test_max_distance_constraint_and_conditional_uniformity():
    rng = np.random.default_rng(5)
    num_frames, clip_len, distance = 40, 10, 4  # starts 0..30
    pairs = np.array([sample_clip_pair(rng, num_frames, clip_len, distance) for _ in range(30_000)])
    first, second = pairs[:, 0], pairs[:, 1]
    assert np.all(np.abs(first - second) <= distance)
    assert second.min() == 0 and second.max() == 30
    assert_uniform(first, 31)
    # Given a first start away from the ends, the second is uniform over first-4..first+4.
    middle = second[first == 15] - (15 - distance)
    assert_uniform(middle, 2 * distance + 1)
    # Near an end the window is clipped to the video, not shifted: first = 1 -> 0..5.
    near_start = second[first == 1]
    assert set(near_start.tolist()) == set(range(0, 6))


def test_zero_distance_gives_the_same_clip_twice():
    rng = np.random.default_rng(3)
    pairs = [sample_clip_pair(rng, 50, 8, 0) for _ in range(500)]
    assert all(a == b for a, b in pairs)
    assert len({a for a, _ in pairs}) > 30  # the shared start still varies


def test_pairs_on_a_video_shorter_than_the_clip():
    rng = np.random.default_rng(0)
    assert {sample_clip_pair(rng, 3, 10) for _ in range(20)} == {(0, 0)}
    assert {sample_clip_pair(rng, 3, 10, 2) for _ in range(20)} == {(0, 0)}


# ------------------------------------------------------------------------------ take_clip


def video(num_frames: int, h: int = 2, w: int = 3) -> np.ndarray:
    # Frame t holds the values t*100 + position, so every frame is recognisable.
    return (np.arange(num_frames)[:, None, None] * 100 + np.arange(h * w).reshape(h, w)).astype(np.int16)


def test_take_clip_inside_the_video():
    tokens = video(8)
    clip = take_clip(tokens, 2, 4, PAD)
    np.testing.assert_array_equal(clip, tokens[2:6])
    assert clip.dtype == np.int16
    clip[0] = -1
    assert tokens[2, 0, 0] == 200  # a copy, never a view


def test_take_clip_pads_past_the_end():
    tokens = video(3)
    clip = take_clip(tokens, 1, 5, PAD)
    assert clip.shape == (5, 2, 3)
    np.testing.assert_array_equal(clip[:2], tokens[1:3])
    assert np.all(clip[2:] == PAD)
    assert np.all(take_clip(video(0), 0, 2, PAD) == PAD)


def test_take_clip_errors():
    with pytest.raises(ValueError, match=r"start: expected 0\.\.2 for a video of 3 frames, got 3"):
        take_clip(video(3), 3, 2, PAD)
    with pytest.raises(ValueError, match="pad_id: 8193 does not fit the token dtype int8"):
        take_clip(video(3).astype(np.int8), 0, 2, PAD)
    with pytest.raises(TypeError, match="tokens: expected a numpy array"):
        take_clip([1, 2, 3], 0, 2, PAD)  # type: ignore[arg-type]


def test_uniform_clips_stacks_the_evaluation_views():
    tokens = video(7)
    views = uniform_clips(tokens, 4, 3, PAD)  # starts 0, 1, 3
    assert views.shape == (3, 4, 2, 3)
    np.testing.assert_array_equal(views[0], tokens[0:4])
    np.testing.assert_array_equal(views[1], tokens[1:5])
    np.testing.assert_array_equal(views[2], tokens[3:7])
    short = uniform_clips(video(2), 4, 2, PAD)
    assert np.all(short[:, 2:] == PAD) and np.all(short[:, :2] == tokens[:2])
