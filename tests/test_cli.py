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


def test_threads_must_be_positive():
    with pytest.raises(SystemExit, match="--threads: expected a positive number, got 0"):
        main(["masking-table", "--threads", "0"])
