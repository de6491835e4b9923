"""Bad options and unusable paths given to `vimpac analyze ...` / `vimpac plot`: one line on stderr
naming the option or path, exit code 2, no traceback; and the reconstruct tokenizer check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vimpac.cli import main
from vimpac.video.writer import write_video

sys.path.insert(0, str(Path(__file__).parent))
from analysis_helpers import save_tiny_pretraining_model, smooth_token_videos, tiny_vqvae, write_token_store  # noqa: E402

CODES = 16


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of `vimpac ARGV`, argparse's own exits included."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusing an option value
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture(scope="module")
def recon_run(tmp_path_factory):
    """A run folder (model/ + pretrain.json naming tokenizer A), tokenizers A and B with the same
    codebook size but different weights, and a short video."""
    root = tmp_path_factory.mktemp("recon_check")
    save_tiny_pretraining_model(root / "run" / "model", CODES)
    tok_a, tok_b = tiny_vqvae(CODES, seed=0), tiny_vqvae(CODES, seed=1)
    assert tok_a.tokenizer_id != tok_b.tokenizer_id
    tok_a.save_pretrained(root / "tok_a")
    tok_b.save_pretrained(root / "tok_b")
    (root / "run" / "pretrain.json").write_text(json.dumps({"tokenizer_id": tok_a.tokenizer_id}))
    x = np.arange(48)[None, :, None]
    frames = np.stack([np.where(((x + 4 * t) // 8) % 2 == 0, 230, 30) * np.ones((32, 48, 3)) for t in range(8)])
    video = write_video(root / "bars.mp4", frames.astype(np.uint8), fps=4)
    return root, video, tok_a.tokenizer_id, tok_b.tokenizer_id


def test_reconstruct_refuses_a_tokenizer_other_than_the_runs(recon_run, capsys):
    root, video, id_a, id_b = recon_run
    for checkpoint in (root / "run", root / "run" / "model"):  # pretrain.json in it, or beside it
        code, err = run_cli(["analyze", "reconstruct", str(checkpoint), str(video), "--tokenizer", str(root / "tok_b"),
                             "--fps", "2", "--out", str(root / "out_b")], capsys)
        assert code == 2
        assert id_a in err and id_b in err and "pretrain.json" in err
        assert not (root / "out_b").exists()
    code, err = run_cli(["analyze", "reconstruct", str(root / "run"), str(video), "--tokenizer", str(root / "tok_a"),
                         "--fps", "2", "--out", str(root / "out_a")], capsys)
    assert code == 0, err
    assert (root / "out_a" / "reconstruction.png").exists()


@pytest.mark.parametrize("option, value, expected", [
    ("--size", "60", "--size 60: expected a multiple of the tokenizer's downsample 8"),
    ("--size", "40", "--size 40: 5 x 5 tokens do not fit the model's 4 x 4 grid"),
    ("--frames", "5", "--frames 5: the model takes at most 4 frames"),
    ("--size", "-8", "argument --size: expected an integer >= 1, got '-8'"),
    ("--size", "0", "argument --size: expected an integer >= 1, got '0'"),
    ("--frames", "0", "argument --frames: expected an integer >= 1, got '0'"),
    ("--fps", "0", "argument --fps: expected a positive number, got '0'"),
    ("--fps", "inf", "argument --fps: expected a number, got 'inf'"),
    ("--start", "-1", "argument --start: expected a number >= 0"),
    ("--ratio", "1.5", "argument --ratio: expected a ratio in (0, 1)"),
    ("--device", "bogus", "--device: expected cpu, cuda or cuda:N, got 'bogus'"),
    ("--device", "cuda:99", "--device: 'cuda:99' asked, but"),  # no such GPU here, with or without CUDA
])
def test_reconstruct_option_values_are_checked_up_front(recon_run, capsys, option, value, expected):
    root, video, _, _ = recon_run
    code, err = run_cli(["analyze", "reconstruct", str(root / "run"), str(video), "--tokenizer", str(root / "tok_a"),
                         "--fps", "2", option, value, "--out", str(root / "out_opts")], capsys)
    assert code == 2
    assert expected in err
    assert not (root / "out_opts").exists()


def test_reconstruct_of_a_video_shorter_than_the_clip_names_the_options(recon_run, capsys):
    # bars.mp4 lasts 2 s: the default clip (the model's 4 frames at 1 FPS) does not fit in it.
    root, video, _, _ = recon_run
    code, err = run_cli(["analyze", "reconstruct", str(root / "run"), str(video), "--tokenizer", str(root / "tok_a"),
                         "--out", str(root / "out_short")], capsys)
    assert code == 2
    assert f"{video}: too short" in err
    assert "pass a smaller --frames (default: the model's max_frames), a higher --fps or an earlier --start" in err
    assert not (root / "out_short").exists()
    code, err = run_cli(["analyze", "reconstruct", str(root / "run"), str(video), "--tokenizer", str(root / "tok_a"),
                         "--frames", "4", "--fps", "2", "--start", "1", "--out", str(root / "out_short")], capsys)
    assert code == 2
    assert "pass a smaller --frames, a higher --fps or an earlier --start" in err


@pytest.mark.parametrize("argv, expected", [
    (["analyze", "masks", "--cell", "-3"], "argument --cell: expected an integer >= 1, got '-3'"),
    (["analyze", "masks", "--cell", "0"], "argument --cell: expected an integer >= 1, got '0'"),
    (["analyze", "masks", "--grid", "4", "0"], "argument --grid: expected an integer >= 1"),
    (["analyze", "masks", "--histogram-samples", "1"], "argument --histogram-samples: expected an integer >= 2"),
    (["analyze", "masks", "--ratio", "0"], "argument --ratio: expected a ratio in (0, 1)"),
    # Sizes that would exhaust memory are refused before anything is sampled or drawn.
    (["analyze", "masks", "--cell", "1000"], "a mask picture of --samples 4 x --frames 5 frames of --grid 16 x 16 "
                                             "tokens at --cell 1000 pixels per token would be 80,024 x 64,020 pixels"),
    (["analyze", "masks", "--grid", "224", "224"], "--grid 224 x 224 tokens at --cell 8"),
    (["analyze", "masks", "--frames", "1", "--grid", "2000", "1"], "--frames 1 --grid 2000 1: 1 x 2000 x 1 tokens "
                                                                   "per mask; expected at most 1024 along each axis"),
    (["analyze", "masks", "--frames", "64", "--grid", "256", "256", "--cell", "1", "--samples", "1"],
     "64 x 256 x 256 tokens per mask; expected at most 1024 along each axis and 1,048,576 in all"),
    (["analyze", "masks", "--blocks", "5000"], "--blocks 5000: expected 'auto' or a block count from 1 to 4096"),
    (["analyze", "masks", "--frames", "1000", "--grid", "1000", "1", "--cell", "1", "--samples", "1",
      "--blocks", "4000"], "--blocks 4000: one mask of 4000 blocks over 1000 x 1000 x 1 tokens takes"),
    (["analyze", "copy-baseline", "--store", "s", "--show", "0"], "argument --show: expected an integer >= 1"),
    (["analyze", "copy-baseline", "--store", "s", "--videos", "0"], "argument --videos: expected an integer >= 1"),
])
def test_masks_and_copy_baseline_option_values_are_checked(tmp_path, capsys, monkeypatch, argv, expected):
    import vimpac.analysis.masks

    def refuse(*args, **kwargs):
        raise AssertionError("the options should have been refused before any mask was sampled")

    monkeypatch.setattr(vimpac.analysis.masks, "block_mask", refuse)
    code, err = run_cli([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert expected in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    return write_token_store(tmp_path_factory.mktemp("store") / "store", smooth_token_videos(2, 5, 4, CODES), CODES)


@pytest.fixture(scope="module")
def run_with_metrics(tmp_path_factory):
    run = tmp_path_factory.mktemp("plot") / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) + "\n" for s in range(1, 6)))
    return run


def _commands_writing_to(out: Path, store: Path, run: Path) -> dict[str, list[str]]:
    return {
        "analyze copy-baseline": ["analyze", "copy-baseline", "--store", str(store), "--frames", "4",
                                  "--out", str(out)],
        "analyze masks": ["analyze", "masks", "--histogram-samples", "10", "--out", str(out)],
        "plot": ["plot", str(run), "--out", str(out)],
    }


def test_out_that_is_a_file_or_below_a_file_is_a_one_line_error(tmp_path, small_store, run_with_metrics, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    for out, expected in ((afile, f"--out {afile}: is a file; expected a folder"),
                          (afile / "sub", f"--out {afile / 'sub'}: cannot be created: {afile} is a file")):
        for name, argv in _commands_writing_to(out, small_store, run_with_metrics).items():
            code, err = run_cli(argv, capsys)
            assert code == 2, name
            assert err.startswith(f"vimpac {name}: error: ") and expected in err, err
            assert err.count("\n") == 1
    assert afile.read_text() == "not a folder\n"


def test_unwritable_out_is_a_one_line_error(tmp_path, small_store, run_with_metrics, capsys):
    # /proc refuses new folders: the OSError itself reaches the handler, which names the path.
    for name, argv in _commands_writing_to(Path("/proc/vimpac-test/out"), small_store, run_with_metrics).items():
        code, err = run_cli(argv, capsys)
        assert code == 2, name
        assert err.startswith(f"vimpac {name}: error: /proc/vimpac-test") and err.count("\n") == 1, err


def test_plot_given_the_metrics_file_names_the_run_folder(run_with_metrics, capsys):
    code, err = run_cli(["plot", str(run_with_metrics / "metrics.jsonl")], capsys)
    assert code == 2
    assert "is a file; expected the run folder" in err and f"(pass {run_with_metrics})" in err


def test_plot_of_a_binary_metrics_file_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(b'{"step": 1, "split": "train", "loss": 1.0}\n\xff\xfe\x00garbage\n')
    code, err = run_cli(["plot", str(run)], capsys)
    assert code == 2
    assert f"{run / 'metrics.jsonl'}: not UTF-8 text" in err
