"""`vimpac train-tokenizer` end to end on tiny generated videos, and its input handling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from memory_helpers import traced_peak, write_sliding_blocks

from vimpac.cli import main
from vimpac.tokenizer.base import load_tokenizer
from vimpac.tokenizer.train import (
    TokenizerTrainingError, TrainConfig, _read_frames, discover_videos, split_videos, train_vqvae,
)
from vimpac.tokenizer.vqvae import VQVAEConfig, VQVAETokenizer
from vimpac.video.reader import DEFAULT_CHUNK_FRAMES, VideoReader
from vimpac.video.views import ViewSpec, make_view
from vimpac.video.writer import write_video
from vqvae_test_frames import fast_train_args, render_video

FAST_ARGS = fast_train_args(steps=6)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for i in range(3):
        write_video(folder / "clips" / f"video{i}.mp4", render_video(8, 48, seed=i), fps=4)
    (folder / "clips" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not really a video")
    (folder / "train.txt").write_text("clips/video0.mp4 0\nclips/video1.mp4 1\nclips/broken.mp4 0\n")
    return folder


def test_train_tokenizer_end_to_end_skips_and_reports_the_corrupt_file(video_folder, tmp_path, capsys):
    out = tmp_path / "tok"
    rc = main(["train-tokenizer", str(video_folder / "clips"), "--out", str(out), *FAST_ARGS])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "broken.mp4" in captured.err  # listed, not fatal

    report = json.loads((out / "train_report.json").read_text())
    assert [item["path"] for item in report["videos"]["skipped"]] == [str(video_folder / "clips" / "broken.mp4")]
    assert report["videos"]["skipped"][0]["reason"]
    assert len(report["videos"]["train"]) == 2 and len(report["videos"]["held_out"]) == 1
    held_out = report["held_out"]
    assert held_out["num_frames"] == 8 and held_out["source"] == "held-out videos"
    assert 0 < held_out["codes_used_fraction"] <= 1 and held_out["perplexity"] >= 1 and held_out["psnr_db"] > 0
    assert report["training"]["steps_done"] == 6
    assert report["config"]["model"]["codebook_size"] == 16 and report["config"]["model"]["width"] == 8

    tok = load_tokenizer(out)
    assert isinstance(tok, VQVAETokenizer) and tok.codebook_size == 16
    assert tok.tokenizer_id == report["tokenizer_id"]
    assert tok.encode(render_video(2, 32, seed=9)).shape == (2, 4, 4)


def test_list_files_resolve_relative_to_their_folder(video_folder):
    videos = discover_videos([video_folder / "train.txt"])
    assert videos == sorted(video_folder / "clips" / name for name in ("video0.mp4", "video1.mp4", "broken.mp4"))
    # A folder and a list naming the same files are not counted twice.
    assert len(discover_videos([video_folder / "clips", video_folder / "train.txt"])) == 4


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    rc = main(["train-tokenizer", str(tmp_path / "nope"), "--out", str(tmp_path / "tok"), *FAST_ARGS])
    assert rc == 2
    assert "nope: no such video, folder or list file" in capsys.readouterr().err
    with pytest.raises(TokenizerTrainingError, match="bad.txt"):
        (tmp_path / "bad.txt").write_text("clips/a.mp4 0\nclips/b.mp4\n")
        discover_videos([tmp_path / "bad.txt"])


def test_only_corrupt_videos_fails_cleanly(tmp_path, capsys):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"garbage")
    rc = main(["train-tokenizer", str(tmp_path / "v"), "--out", str(tmp_path / "tok"), *FAST_ARGS])
    assert rc == 2
    assert "no usable training frames" in capsys.readouterr().err
    assert not (tmp_path / "tok" / "tokenizer.json").exists()


def test_bad_settings_are_reported(video_folder, tmp_path, capsys):
    rc = main(["train-tokenizer", str(video_folder / "clips"), "--out", str(tmp_path / "tok"), *FAST_ARGS, "--size", "30"])
    assert rc == 2
    assert "multiple of 8" in capsys.readouterr().err


@pytest.mark.parametrize("fps", ["inf", "nan", "0"])
def test_a_fps_that_is_not_finite_and_positive_is_refused_before_decoding(video_folder, tmp_path, capsys, fps):
    # inf was accepted, then every video was skipped ("target_fps must be a positive number")
    # and the run ended with "no usable training frames".
    rc = main(["train-tokenizer", str(video_folder / "clips"), "--out", str(tmp_path / "tok"), *FAST_ARGS, "--fps", fps])
    err = capsys.readouterr().err
    assert rc == 2 and "fps must be a finite number > 0" in err and "skipped" not in err


def test_split_holds_out_whole_videos_deterministically(tmp_path):
    videos = [tmp_path / f"{i}.mp4" for i in range(20)]
    train, val = split_videos(videos, 0.1, seed=3)
    assert len(val) == 2 and set(train).isdisjoint(val) and len(train) + len(val) == 20
    assert split_videos(videos, 0.1, seed=3) == (train, val)
    assert split_videos(videos[:1], 0.5, seed=0) == (videos[:1], [])


def test_max_minutes_stops_training_early():
    frames = render_video(4, 16, seed=0)
    cfg = VQVAEConfig(width=4, channel_mult=(1, 1, 1), codebook_size=8, code_dim=4)
    result = train_vqvae(frames, cfg, TrainConfig(steps=1000, batch_size=2, max_minutes=1e-9), progress=False)
    assert result.stopped_early and result.steps_done == 1
    with pytest.raises(TokenizerTrainingError, match="no training frames"):
        train_vqvae(frames[:0], cfg, TrainConfig(steps=1), progress=False)


@pytest.mark.parametrize("max_frames", [7, 1000])  # evenly spaced samples of the 160, or all of them
def test_training_frames_of_a_long_video_hold_one_chunk_at_full_resolution(tmp_path, max_frames):
    # All kept frames were decoded at full resolution before resizing: a large
    # max_frames_per_video of a long HD video did not fit in memory.
    height, width, count = 240, 320, 160
    path = write_sliding_blocks(tmp_path / "long.mp4", count, height, width, fps=20)
    frames, peak = traced_peak(lambda: _read_frames(path, 20.0, 32, max_frames))
    with VideoReader(path) as video:  # the sampling, spelled out
        indices = video.frame_indices_at_fps(20.0)
        if len(indices) > max_frames:
            indices = indices[np.linspace(0, len(indices) - 1, max_frames).round().astype(int)]
        expected = make_view(video.read_frames(indices), 32, ViewSpec(1.0, "center"))
    np.testing.assert_array_equal(frames, expected)
    assert len(frames) == min(max_frames, count)
    frame_bytes = height * width * 3
    assert peak < (DEFAULT_CHUNK_FRAMES + 2) * frame_bytes + frames.nbytes + 2**20


def test_progress_without_a_terminal_is_lines_not_a_bar(video_folder, tmp_path, capsys):
    # Under pytest stderr is no terminal, as in a cluster job's log: the bars of decoding and
    # training there were one endless line of carriage returns.
    args = [arg for arg in FAST_ARGS if arg != "--quiet"]
    assert main(["train-tokenizer", str(video_folder / "clips"), "--out", str(tmp_path / "tok"), *args]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert any(line.startswith("decode train: 3/3 video (100%)") for line in lines)
    steps = [line for line in lines if line.startswith("train-tokenizer: ")]
    assert steps and steps[-1].startswith("train-tokenizer: 6/6 step (100%)") and "; loss " in steps[-1]
