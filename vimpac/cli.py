"""The `vimpac` command line.

Each area of the package keeps its own subcommands in `vimpac/<area>/commands.py`, which
defines `register(subparsers)`. Those modules import only argparse-level code at the top, so
`vimpac --help` stays fast; the work (torch, PyAV, ...) is imported inside each handler.
A handler is stored with `parser.set_defaults(run=handler)` and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vimpac import __version__

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
