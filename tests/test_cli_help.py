"""Every option and positional argument of every command says what it does in `--help`."""

import argparse

from vimpac.cli import _leaf_commands, build_parser


def test_every_argument_of_every_command_has_help_text():
    parser = build_parser()
    missing = [f"{command.prog} {action.option_strings[0] if action.option_strings else action.dest}"
               for command in _leaf_commands(parser._subparsers._group_actions[0])
               for action in command._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not missing, f"arguments without help text: {missing}"
