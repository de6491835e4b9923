"""Every command reports a bad input as one line in argparse's form, `vimpac <command>: error: ...`,
so that one pattern finds the failures of any command in a job's log."""

from __future__ import annotations

import pytest

from vimpac.cli import _leaf_commands, build_parser, main

# A cheap bad input per command (run in an empty folder holding `afile` and `empty/`) and the
# exit code documented for it (docs/development.md).
BAD_INPUTS: dict[str, tuple[list[str], int]] = {
    "video-info": (["empty"], 1),
    "sample-clips": ([], 1),  # with no sample clips installed (see the test)
    "make-synthetic": (["--out", "synthetic", "--workers", "0"], 2),
    "convert-dalle": (["missing_enc.pkl", "missing_dec.pkl", "out"], 2),
    "train-tokenizer": (["empty", "--out", "afile"], 2),
    "tokenize": (["--videos", "empty", "--list", "missing.txt", "--tokenizer", "empty", "--fps", "1",
                  "--size", "64", "--out", "store"], 2),
    "store info": (["missing"], 2),
    "store verify": (["missing"], 2),  # a store's own problems are its report (PROBLEM lines, exit 1)
    "store compact": (["missing"], 2),
    "convert-original": (["missing", "out"], 2),
    "model-info": (["--preset", "nosuch"], 2),
    "pretrain": (["--store", "missing", "--out", "run", "--preset", "nosuch"], 2),
    "masking-table": (["--downsample", "0"], 2),
    "finetune": (["--train-store", "missing", "--from-scratch", "--out", "run"], 2),
    "evaluate": (["--checkpoint", "missing", "--store", "missing", "--out", "eval"], 2),
    "probe": (["--checkpoint", "missing", "--train-store", "missing", "--val-store", "missing"], 2),
    "embed": (["missing", "clip.mp4", "--tokenizer", "missing", "--out", "features.npy"], 2),
    "demo": (["--out", "demo", "nosuch=1"], 2),
    "analyze copy-baseline": (["--store", "missing", "--out", "copy"], 2),
    "analyze reconstruct": (["missing", "clip.mp4", "--tokenizer", "missing", "--out", "recon"], 2),
    "analyze masks": (["--out", "afile"], 2),
    "plot": (["missing"], 2),
}
def leaf_command_names() -> set[str]:
    parser = build_parser()
    return {command.prog.removeprefix("vimpac ") for command in _leaf_commands(parser._subparsers._group_actions[0])}


def test_every_command_has_a_bad_input_here():
    assert leaf_command_names() == set(BAD_INPUTS)


@pytest.mark.parametrize("command", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_with_the_command_prefix(command, tmp_path, monkeypatch, capsys):
    argv, expected_code = BAD_INPUTS[command]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "empty").mkdir()
    if command == "sample-clips":
        import vimpac.video.samples

        monkeypatch.setattr(vimpac.video.samples, "available_sample_clips", lambda: {})
    code = main([*command.split(), *argv])
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert err.startswith(f"vimpac {command}: error: ") and err.count("\n") == 1, err


def test_unrecognized_arguments_are_reported_by_the_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["store", "info", "somewhere", "--bogus"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "vimpac store info: error: unrecognized arguments: --bogus"
