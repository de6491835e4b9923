"""Rendering of the synthetic benchmark: determinism, exact time reversal, and that each class
name means what it says (checked on plain backgrounds by measuring the object mask)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vimpac.config import ConfigError
from vimpac.data.synthetic import (
    CLASS_NAMES,
    REVERSED_PAIRS,
    SyntheticConfig,
    partner,
    render_uncurated,
    render_video,
    uncurated_schedule,
    video_rng,
)
from vimpac.data.synthetic_render import SHAPES, draw_shape

# Full nuisance (photo backgrounds, shake, noise, distractors) at a tiny size.
NOISY = SyntheticConfig(num_frames=10, height=32, width=32)
# Clean stage for measuring motion: one colour background, no shake, no noise, no distractors.
CLEAN = SyntheticConfig(num_frames=16, height=64, width=64, backgrounds="plain", noise_std=0.0,
                        camera_jitter=0.0, distractor_prob=0.0)


def test_class_list_has_reversed_pairs() -> None:
    assert len(CLASS_NAMES) >= 12
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert {name for pair in REVERSED_PAIRS for name in pair} == set(CLASS_NAMES)
    assert partner("moving_left") == "moving_right" and partner("moving_right") == "moving_left"


def test_render_is_deterministic_by_seed() -> None:
    a = render_video("objects_meeting", video_rng(3, "train", 5, "objects_meeting"), NOISY)
    b = render_video("objects_meeting", video_rng(3, "train", 5, "objects_meeting"), NOISY)
    assert a.dtype == np.uint8 and a.shape == (10, 32, 32, 3)
    assert a.tobytes() == b.tobytes()
    for other in (video_rng(4, "train", 5, "objects_meeting"), video_rng(3, "val", 5, "objects_meeting"),
                  video_rng(3, "train", 6, "objects_meeting"), video_rng(3, "train", 5, "objects_separating")):
        assert not np.array_equal(a, render_video("objects_meeting", other, NOISY))


@pytest.mark.parametrize("forward,backward", REVERSED_PAIRS)
def test_partner_is_exact_time_reverse(forward: str, backward: str) -> None:
    # Same generator state -> same frames, opposite order: the frame distributions are equal.
    for seed in range(3):
        ahead = render_video(forward, np.random.default_rng(seed), NOISY)
        behind = render_video(backward, np.random.default_rng(seed), NOISY)
        assert np.array_equal(behind, ahead[::-1])
        assert not np.array_equal(ahead, ahead[::-1])  # the video does change over time


def _masks(video: np.ndarray) -> np.ndarray:
    """Per-frame object masks on a plain background: pixels far from the background colour."""
    background = np.median(video[0].reshape(-1, 3), axis=0)
    return np.abs(video.astype(np.int32) - background).sum(axis=-1) > 40


def _centroids(masks: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[: masks.shape[1], : masks.shape[2]]
    area = masks.sum(axis=(1, 2))
    return np.stack([(masks * xs).sum(axis=(1, 2)) / area, (masks * ys).sum(axis=(1, 2)) / area], axis=1)


def _clean(class_name: str, seed: int) -> np.ndarray:
    return _masks(render_video(class_name, np.random.default_rng(seed), CLEAN))


@pytest.mark.parametrize("seed", range(4))
def test_translation_directions(seed: int) -> None:
    for name, axis, sign in (("moving_right", 0, 1), ("moving_left", 0, -1), ("moving_down", 1, 1), ("moving_up", 1, -1)):
        c = _centroids(_clean(name, seed))
        assert sign * (c[-1, axis] - c[0, axis]) > 0.2 * 64, name


@pytest.mark.parametrize("seed", range(4))
def test_scale_fade_and_meeting(seed: int) -> None:
    area = _clean("approaching", seed).sum(axis=(1, 2))
    assert area[-1] > 2.5 * area[0]
    area = _clean("receding", seed).sum(axis=(1, 2))
    assert area[0] > 2.5 * area[-1]
    area = _clean("appearing", seed).sum(axis=(1, 2))
    assert area[0] == 0 and area[-1] > 40
    area = _clean("disappearing", seed).sum(axis=(1, 2))
    assert area[-1] == 0 and area[0] > 40

    def spread(masks: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(masks)
        return xs.var() + ys.var()

    meeting = _clean("objects_meeting", seed)
    assert spread(meeting[-1]) < 0.7 * spread(meeting[0])
    separating = _clean("objects_separating", seed)
    assert spread(separating[0]) < 0.7 * spread(separating[-1])


@pytest.mark.parametrize("seed", range(4))
def test_speed_changes(seed: int) -> None:
    for name, later_faster in (("speeding_up", True), ("slowing_down", False)):
        steps = np.linalg.norm(np.diff(_centroids(_clean(name, seed)), axis=0), axis=1)
        early, late = steps[:4].sum(), steps[-4:].sum()
        assert (late > 2 * early) if later_faster else (early > 2 * late), name


def _orientation(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    xs, ys = xs - xs.mean(), ys - ys.mean()
    # Principal axis angle in image coordinates (y down): increasing = clockwise on screen.
    return 0.5 * np.arctan2(2 * (xs * ys).mean(), (xs * xs).mean() - (ys * ys).mean())


@pytest.mark.parametrize("seed", range(4))
def test_rotation_direction(seed: int) -> None:
    for name, sign in (("rotating_clockwise", 1), ("rotating_counterclockwise", -1)):
        angles = np.array([_orientation(m) for m in _clean(name, seed)])
        steps = (np.diff(angles) + np.pi / 2) % np.pi - np.pi / 2  # axis angles are mod 180 degrees
        assert sign * steps.sum() > 0.5 * np.pi, name


def test_every_shape_draws_inside_its_box() -> None:
    for shape in SHAPES:
        canvas = np.zeros((40, 40, 3), dtype=np.float32)
        draw_shape(canvas, shape, 20.0, 20.0, 10.0, 1.0, 0.3, np.ones(3, dtype=np.float32), 1.0)
        filled = canvas[..., 0] > 0.5
        assert 60 < filled.sum() < np.pi * 10.5**2, shape
        ys, xs = np.nonzero(filled)
        assert xs.min() >= 9 and xs.max() <= 31 and ys.min() >= 9 and ys.max() <= 31, shape


def test_uncurated_schedule_covers_the_video() -> None:
    cfg = dataclasses.replace(NOISY, uncurated_seconds=6.0, event_seconds=(1.0, 2.0))
    events = uncurated_schedule(0, cfg)
    assert events == uncurated_schedule(0, cfg)
    assert events[0].start == 0 and events[-1].end == cfg.uncurated_frames == 48
    assert all(a.end == b.start for a, b in zip(events, events[1:]))
    assert all(e.end - e.start >= 4 for e in events) and events[0].cut
    assert len(events) >= 3 and len({e.class_name for e in events}) >= 2
    video = render_uncurated(0, cfg)
    assert video.shape == (48, 32, 32, 3) and video.dtype == np.uint8
    assert np.array_equal(video, render_uncurated(0, cfg))


def _camera_move(a: np.ndarray, b: np.ndarray, reach: int) -> tuple[int, int]:
    """The (dy, dx) with b[y, x] == a[y + dy, x + dx] on most pixels: how far the camera moved
    from frame a to frame b. Exact on a noise-free background, which is a crop of one plate."""
    h, w = a.shape[:2]
    matches = {}
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            crop_a = a[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
            crop_b = b[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
            matches[dy, dx] = np.mean(np.all(crop_a == crop_b, axis=-1))
    best = max(matches, key=matches.get)
    assert matches[best] > 0.8, matches[best]  # the background, all but the objects, lines up
    return best


def test_the_camera_goes_on_across_events_without_a_cut() -> None:
    """Each event drew a new camera offset, so the whole scene jumped (up to 2 x the shake
    margin) where one event followed another in front of the same background."""
    cfg = SyntheticConfig(height=48, width=48, backgrounds="noise", noise_std=0.0, distractor_prob=0.0,
                          camera_jitter=0.1, cut_prob=0.0, uncurated_seconds=12.0, event_seconds=(1.0, 1.5))
    margin = round(cfg.camera_jitter * cfg.height)
    video = render_uncurated(0, cfg)
    events = uncurated_schedule(0, cfg)
    assert len(events) >= 6 and not any(e.cut for e in events[1:])
    # Frame to frame, within an event or across the start of one, the camera moves a step of
    # its random walk (a pixel or two), never a jump.
    moves = {start: _camera_move(video[start - 1], video[start], 2 * margin) for start in range(1, len(video))}
    assert max(max(abs(dy), abs(dx)) for dy, dx in moves.values()) <= 2, \
        {e.start: moves[e.start] for e in events[1:]}
    assert any(move != (0, 0) for move in moves.values())  # the camera does move


@pytest.mark.parametrize(
    "changes,field",
    [({"classes": ("moving_sideways",)}, "classes"), ({"height": 33}, "height"), ({"num_frames": 2}, "num_frames"),
     ({"backgrounds": "video"}, "backgrounds"), ({"distractor_prob": 1.5}, "distractor_prob"),
     ({"event_seconds": (0.2, 1.0)}, "event_seconds"), ({"train_per_class": -1}, "train_per_class")],
)
def test_bad_config_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SyntheticConfig(**changes)
