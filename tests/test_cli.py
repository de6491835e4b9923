"""The top-level command line: every subcommand parses, `--threads` applies to every command."""

import pytest
import torch

from vimpac.cli import build_parser, main


def test_every_command_has_help_and_a_threads_option():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"pretrain", "finetune", "tokenize", "train-tokenizer", "demo"} <= set(commands)
    for name, command in commands.items():
        assert "--threads" in command.format_usage(), name


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
