"""The `vimpac` command line.

Each area of the package keeps its own subcommands in `vimpac/<area>/commands.py`, which
defines `register(subparsers)`. Those modules import only argparse-level code at the top, so
`vimpac --help` stays fast; the work (torch, PyAV, ...) is imported inside each handler.
A handler is stored with `parser.set_defaults(run=handler)` and returns an exit code; a command
whose KEY=VALUE overrides are a positional `overrides` list also sets `positional_overrides=True`,
so overrides may follow options as well as precede them.

Every command reports a bad input as one line on stderr in argparse's own form,
`vimpac <command>: error: <what>`, through `command_error`, so that one pattern finds the
failures of every command in a cluster job's log.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from vimpac import __version__
from vimpac.argtypes import positive_int

# The areas in data-flow order; `vimpac --help` lists their subcommands in this order.
COMMAND_MODULES = (
    "vimpac.video.commands",
    "vimpac.data.commands",
    "vimpac.tokenizer.commands",
    "vimpac.store.commands",
    "vimpac.model.commands",
    "vimpac.pretrain.commands",
    "vimpac.finetune.commands",
    "vimpac.demo.commands",
    "vimpac.analysis.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vimpac",
        description="VIMPAC video pre-training: videos -> tokens -> pre-training -> fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"vimpac {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for command in _leaf_commands(subparsers):
        # The name `command_error` puts in front of a message: "vimpac store info".
        command.set_defaults(command_name=command.prog)
        command.add_argument(
            "--threads", type=positive_int, default=None, metavar="N",
            help="torch CPU threads (default: torch's choice, one per core; on a machine shared with other "
                 "jobs 1 is often several times faster, as competing threads wait on each other)")
    return parser


def command_error(args: argparse.Namespace, message: object, code: int = 2) -> int:
    """Print `message` as `vimpac <command>: error: <message>` on stderr, the form of argparse's own
    errors, and return `code` (the handler's exit code)."""
    print(f"{args.command_name}: error: {message}", file=sys.stderr)
    return code


def _leaf_commands(subparsers: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """The parsers that run something: `pretrain`, and `store verify` rather than `store`."""
    leaves = []
    for command in subparsers.choices.values():
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        leaves += _leaf_commands(nested[0]) if nested else [command]
    return leaves


def _parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting KEY=VALUE overrides come after options too (`... train.lr=1 --threads 1
    train.seed=3`): argparse takes one run of positionals and leaves the later ones unrecognised."""
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "positional_overrides", False) and all(
            "=" in item and not item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        # Reported by the command's own parser ("vimpac pretrain: error: ..."), like every other
        # error of the command, rather than by the top-level one ("vimpac: error: ...").
        _command_parser(parser, getattr(args, "command_name", None)).error(
            f"unrecognized arguments: {' '.join(extra)}")
    return args


def _command_parser(parser: argparse.ArgumentParser, prog: str | None) -> argparse.ArgumentParser:
    """The leaf command parser whose prog is `prog`; `parser` itself when there is none."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return next((c for c in _leaf_commands(subparsers[0]) if c.prog == prog), parser)


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse_with_overrides(parser, argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    _set_threads(getattr(args, "threads", None))
    try:
        code = int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`vimpac masking-table | head`): stop quietly, as other tools do.
        # Python would report the pipe again when it flushes stdout at exit, so point it elsewhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # A path that cannot be read or written (a file where a folder is expected, no permission,
        # a full disk): the message names the path; a traceback would only bury it.
        from vimpac.io import describe_os_error

        return command_error(args, describe_os_error(exc))
    if "torch.distributed" in sys.modules:  # only commands that imported torch can have joined a group
        from vimpac.engine.distributed import shutdown

        shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
