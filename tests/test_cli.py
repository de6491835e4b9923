"""The top-level command line: every subcommand parses, `--threads` applies to every command."""

import pytest
import torch

from vimpac.cli import _leaf_commands, build_parser, main


def test_every_command_has_a_threads_option():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"pretrain", "finetune", "tokenize", "train-tokenizer", "demo"} <= set(commands)
    leaves = _leaf_commands(parser._subparsers._group_actions[0])
    assert len(leaves) > len(commands)  # `store verify`, `analyze reconstruct`, ... count themselves
    for command in leaves:
        assert "--threads" in command.format_usage(), command.prog


def test_nested_commands_take_threads_after_their_name():
    args = build_parser().parse_args(["store", "info", "some/store", "--threads", "1"])
    assert args.threads == 1


def test_threads_option_sets_torch_threads(capsys):
    before = torch.get_num_threads()
    try:
        assert main(["masking-table", "--threads", "3", "--json"]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert capsys.readouterr().out.lstrip().startswith("[")


def test_threads_must_be_positive(capsys):
    # Refused by the parser, like every other bad option value: exit code 2, argparse's one-line error.
    with pytest.raises(SystemExit) as info:
        main(["masking-table", "--threads", "0"])
    assert info.value.code == 2
    assert "argument --threads: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_overrides_may_follow_options():
    from vimpac.cli import _parse_with_overrides

    parser = build_parser()
    args = _parse_with_overrides(parser, ["pretrain", "--store", "s", "--out", "o", "train.lr=1", "--threads", "1",
                                          "train.seed=3"])
    assert args.overrides == ["train.lr=1", "train.seed=3"] and args.threads == 1
    with pytest.raises(SystemExit):  # other commands keep refusing stray words
        _parse_with_overrides(parser, ["masking-table", "--json", "dim=3"])
    with pytest.raises(SystemExit):
        _parse_with_overrides(parser, ["pretrain", "--store", "s", "--out", "o", "train.lr=1", "--threads", "1", "x"])


def test_file_system_errors_are_one_line_messages(tmp_path, capsys, monkeypatch):
    import vimpac.pretrain.commands as pretrain_commands

    (tmp_path / "afile").write_text("x")

    def write_below_a_file(args):
        (tmp_path / "afile" / "sub").mkdir(parents=True)

    monkeypatch.setattr(pretrain_commands, "_run_pretrain", write_below_a_file)
    assert main(["pretrain", "--store", "s", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vimpac pretrain: error: ") and str(tmp_path / "afile") in err and "Traceback" not in err


def test_option_values_are_checked_by_the_parser(capsys):
    parser = build_parser()
    for argv in (["masking-table", "--monte-carlo", "1"], ["probe", "--checkpoint", "m", "--train-store", "a",
                                                            "--val-store", "b", "--k", "0"],
                 ["embed", "m", "v.mp4", "--tokenizer", "t", "--out", "o.npy", "--fps", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert "expected 0 (off) or at least 2 samples" in capsys.readouterr().err


def test_usable_device_resolves_auto_and_checks_the_rest():
    import torch

    from vimpac.config import ConfigError
    from vimpac.devices import usable_device

    assert usable_device("auto", "--device") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert usable_device("cpu", "--device") == "cpu"
    with pytest.raises(ConfigError, match="--device: expected cpu, cuda or cuda:N, got 'tpu'"):
        usable_device("tpu", "--device")
