"""The `vimpac ...` command lines of README.md and docs/*.md parse with the real command line.

Taken from the ```bash / ```sh / ```shell / ```console blocks and from unlabelled blocks (a line
that starts a vimpac command), and from inline `vimpac ...` spans of the prose: a renamed or
removed option, a misspelt command or a bad option value in the docs fails here. Commands are
parsed with `vimpac.cli.build_parser()`, never run. A command that leaves something to the reader
(`...`, an optional `[--json]`) or an inline mention (`vimpac tokenize`) is parsed with every
argument optional; a complete command in a block must parse as written. Placeholder values
(`$VAR`, `<folder>`, `CKPT_DIR`) stand for any value: one the option accepts is put in. The
KEY=VALUE settings of `pretrain` and `demo` commands are applied to their preset, so a renamed
setting fails too.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from vimpac.cli import _leaf_commands, _parse_with_overrides, build_parser
from vimpac.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", ""}
FENCE = re.compile(r"^\s*```(\S*)\s*$")
INLINE_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
SEPARATORS = {"|", "||", "&&", ";", "&"}
ALTERNATIVE = "\x00"
PLACEHOLDER = re.compile(r"^(\$\{?\w+\}?|<[^>]*>|[A-Z][A-Z0-9_]*(\.\.\.)?/?)$")
ELISION = re.compile(r"\.\.\.|\[|\]")
MESSAGE = re.compile(r"^vimpac( [^\s:]+)*: ")
STARTS_A_COMMAND = re.compile(r"^(\w+=\S*\s+)*((\S*/)?vimpac\s|(\S*/)?(python\S*|torchrun)\s.*-m vimpac(\.cli)?\s)")


@dataclass
class DocCommand:
    where: str  # "docs/store.md:11"
    text: str  # the command line as the document gives it (continuations joined)
    lenient: bool  # parse with every argument optional


def vimpac_arguments(tokens: list[str]) -> list[str] | None:
    """The arguments after the program of a `vimpac ...`, `python -m vimpac ...` or `torchrun ...
    -m vimpac.cli ...` command (None for any other command); leading VAR=value assignments skipped."""
    while tokens and re.match(r"^\w+=", tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] == "vimpac" or tokens[0].endswith("/vimpac"):
        return tokens[1:]
    for i, token in enumerate(tokens[:-1]):
        if token == "-m" and tokens[i + 1] in ("vimpac", "vimpac.cli"):
            program = Path(tokens[0]).name
            if program.startswith("python") or program == "torchrun":
                return tokens[i + 2:]
    return None


def split_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (pipes, `&&`, `;` split it), as token lists; comments
    dropped. `<a placeholder>` counts as one token; alternatives written `a|b` (no spaces, not
    quoted: `--spatial-crops 3|1`, `store info|verify`) give one command per alternative."""
    line = re.sub(r"<[^<>]*>", lambda m: m.group(0).replace(" ", "_"), line)
    lexer = shlex.shlex(_mark_alternatives(line), posix=True, punctuation_chars="|&;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [variant for tokens in commands if tokens for variant in _alternatives(tokens)]


def _mark_alternatives(line: str) -> str:
    """`line` with each unquoted `|` between two non-blanks replaced by ALTERNATIVE."""
    out, quote = [], None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "|" and 0 < i < len(line) - 1 and not line[i - 1].isspace() and not line[i + 1].isspace():
            char = ALTERNATIVE
        out.append(char)
    return "".join(out)


def _alternatives(tokens: list[str]) -> list[list[str]]:
    count = max(token.count(ALTERNATIVE) + 1 for token in tokens)
    pick = lambda token, k: token.split(ALTERNATIVE)[min(k, token.count(ALTERNATIVE))]  # noqa: E731
    return [[pick(token, k) for token in tokens] for k in range(count)]


def block_commands(path: Path) -> list[DocCommand]:
    """The vimpac commands of the shell blocks of a document."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[DocCommand] = []
    language = None
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            language = fence.group(1) if language is None else None
            i += 1
            continue
        if language not in SHELL_LANGUAGES:
            i += 1
            continue
        start = i
        line = lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):  # a continued line
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        if language == "console" or line.startswith("$ "):
            if not line.startswith("$ "):
                continue  # the output of a command
            line = line[2:]
        if language == "" and not STARTS_A_COMMAND.match(line):
            continue  # an unlabelled block holds other text too: a file listing, output
        for tokens in split_commands(line):
            arguments = vimpac_arguments(tokens)
            if arguments is not None:
                found.append(DocCommand(f"{path.relative_to(REPO)}:{start + 1}", shlex.join(tokens),
                                        lenient=any(ELISION.search(t) for t in arguments)))
    return found


def inline_commands(path: Path) -> list[DocCommand]:
    """The `vimpac ...` spans of a document's prose (blocks left out; a span may wrap lines)."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^\s*```.*?^\s*```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)
    found = []
    for match in INLINE_SPAN.finditer(text):
        span = " ".join(match.group(1).replace("\\|", "|").split())
        if MESSAGE.match(span):
            continue  # a message quoted, `vimpac <command>: error: <what>`
        for tokens in split_commands(span):
            if vimpac_arguments(tokens) is not None:
                line = text[:match.start()].count("\n") + 1
                found.append(DocCommand(f"{path.relative_to(REPO)}:{line}", shlex.join(tokens), lenient=True))
    return found


def all_commands() -> list[DocCommand]:
    return [command for doc in DOCUMENTS for command in (*block_commands(doc), *inline_commands(doc))]


# ------------------------------------------------------------------------------------ parsing


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return _leaf_commands(parser._subparsers._group_actions[0])


def make_lenient(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`parser` with every option, group and positional argument optional."""
    for command in leaf_parsers(parser):
        for action in command._actions:
            action.required = False
            if not action.option_strings and action.nargs in (None, "+"):
                action.nargs = "?" if action.nargs is None else "*"
        for group in command._mutually_exclusive_groups:
            group.required = False
    return parser


def fill_placeholders(parser: argparse.ArgumentParser, arguments: list[str]) -> list[str]:
    """`arguments` with elisions dropped and each placeholder value of an option with a type or
    choices replaced by a value the option takes."""
    arguments = [a.strip("[]") for a in arguments]
    options: dict[str, argparse.Action] = {}
    for command in leaf_parsers(parser):
        if command.prog.split()[1:] == arguments[:len(command.prog.split()) - 1]:
            options = command._option_string_actions
    filled = []
    for argument in filter(None, arguments):
        action = options.get(filled[-1]) if filled else None
        takes_value = action is not None and action.nargs != 0
        if argument == "..." and not takes_value:
            continue  # "and so on": nothing to check
        if takes_value and (argument == "..." or PLACEHOLDER.match(argument)):
            argument = str(list(action.choices)[0]) if action.choices else "1" if action.type else "VALUE"
        filled.append(argument)
    return filled


def parse(command: DocCommand) -> argparse.Namespace:
    parser = build_parser()
    for leaf in leaf_parsers(parser):
        # A doc's `--train-per-class` must not pass as an abbreviation of a renamed `--train-per-class-x`.
        leaf.allow_abbrev = False
    if command.lenient:
        make_lenient(parser)
    arguments = vimpac_arguments(shlex.split(command.text))
    return _parse_with_overrides(parser, fill_placeholders(parser, arguments))


def check_overrides(args: argparse.Namespace) -> None:
    """The KEY=VALUE settings of `vimpac pretrain` / `vimpac demo` applied to the command's preset
    (ConfigError when a key or value is wrong); placeholders (`KEY=VALUE`) left out."""
    from vimpac.config import build_config
    from vimpac.demo.config import DEMO_PRESETS, DemoConfig
    from vimpac.pretrain.config import build_pretrain_config

    overrides = [item for item in getattr(args, "overrides", []) if not PLACEHOLDER.match(item.split("=", 1)[0])]
    command = getattr(args, "command_name", None)  # None: `vimpac` alone, `vimpac --help`
    if command == "vimpac pretrain" and not args.config:
        build_pretrain_config(args.preset or "tiny", overrides=overrides)
    elif command == "vimpac demo":
        build_config(DemoConfig, DEMO_PRESETS, "quick" if args.quick else "full", overrides=overrides)


# ------------------------------------------------------------------------------------ tests


def test_extraction_handles_continuations_comments_pipes_prompts_and_placeholders(tmp_path, monkeypatch):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\n"
        "vimpac tokenize --videos v/ \\\n    --list l.txt   # a comment --bogus\n"
        "make demo   # = .venv/bin/vimpac demo --nope\n"
        "python -m vimpac masking-table --json | head -3 && torchrun --nproc_per_node 2 -m vimpac.cli plot $RUN\n"
        "```\n\n"
        "```console\n$ vimpac store info <a store>\nvimpac output line\n```\n\n"
        "```python\nvimpac = 1\n```\n"
        "Prose with `vimpac finetune ... --resume` and `vimpac store\nverify` in it.\n"
        "| table | `vimpac store info\\|compact S` |\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    found = [(c.where, c.text, c.lenient) for c in (*block_commands(doc), *inline_commands(doc))]
    assert found == [
        ("doc.md:2", "vimpac tokenize --videos v/ --list l.txt", False),
        ("doc.md:5", "python -m vimpac masking-table --json", False),
        ("doc.md:5", "torchrun --nproc_per_node 2 -m vimpac.cli plot '$RUN'", False),
        ("doc.md:9", "vimpac store info '<a_store>'", False),
        ("doc.md:16", "vimpac finetune ... --resume", True),
        ("doc.md:16", "vimpac store verify", True),
        ("doc.md:18", "vimpac store info S", True),
        ("doc.md:18", "vimpac store compact S", True),
    ]


def test_parsing_catches_what_the_docs_could_get_wrong():
    def parses(text: str, lenient: bool = False) -> bool:
        try:
            parse(DocCommand("test", text, lenient))
        except SystemExit:
            return False
        return True

    assert parses("vimpac store info STORE") and parses("vimpac finetune ... --resume", lenient=True)
    assert parses("vimpac probe --checkpoint M --train-store A --val-store B --k K")  # K: a placeholder
    assert not parses("vimpac store info STORE --bogus")  # an unknown option
    assert not parses("vimpac store info STORE --js")  # an abbreviation (of --json): the docs give names in full
    assert not parses("vimpac finetune ... --resume-from x", lenient=True)  # an unknown one, even when lenient
    assert not parses("vimpac stor info STORE", lenient=True)  # a misspelt command
    assert not parses("vimpac probe --checkpoint M --train-store A --val-store B --k many")  # a bad value
    assert not parses("vimpac store info")  # a complete command lacking its argument
    check_overrides(parse(DocCommand("test", "vimpac pretrain --store S --out R train.lr=1e-4 KEY=VALUE", False)))
    with pytest.raises(ConfigError, match="unknown config field 'train.rl'"):  # a renamed setting
        check_overrides(parse(DocCommand("test", "vimpac pretrain --store S --out R train.rl=1e-4", False)))
    with pytest.raises(ConfigError, match="seeds"):
        check_overrides(parse(DocCommand("test", "vimpac demo seeds=a,b", False)))


def test_the_docs_have_commands_to_check():
    commands = all_commands()
    documents = {c.where.split(":")[0] for c in commands}
    # The README's blocks and its pipeline table hold the commands a new user tries first.
    assert "README.md" in documents and len(documents) >= 8 and len(commands) >= 60


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: f"{c.where} {c.text}")
def test_documented_command_parses(command, capsys):
    try:
        args = parse(command)
    except SystemExit as exc:
        if exc.code == 0:  # `vimpac --help`
            return
        pytest.fail(f"{command.where}: `{command.text}` does not parse: {capsys.readouterr().err.strip()}")
    try:
        check_overrides(args)
    except ConfigError as exc:
        pytest.fail(f"{command.where}: `{command.text}`: {exc}")
