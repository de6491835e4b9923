"""README.md and docs/*.md agree with the code and with each other where that can drift.

- every relative link (and `#anchor`) between the documents resolves;
- every command `vimpac --help` lists is in the README's pipeline table and in its own document,
  and every option of a command is mentioned where that document describes the command (not
  merely somewhere in a document that also describes other commands);
- the pre-training settings tables of docs/pretraining.md list the config dataclasses' fields
  (and, where no preset changes them, their defaults);
- the demo numbers the README quotes are the ones docs/demo.md reports.

(The ```python blocks run in tests/test_docs_examples.py.)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from vimpac.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]

# The document(s) under docs/ that describe each command (the first word of `vimpac COMMAND`).
COMMAND_DOCS = {
    "video-info": ["video"],
    "sample-clips": ["video"],
    "make-synthetic": ["synthetic"],
    "convert-dalle": ["tokenizers"],
    "train-tokenizer": ["tokenizers"],
    "tokenize": ["store", "datasets"],
    "store": ["store"],
    "convert-original": ["model"],
    "model-info": ["model"],
    "pretrain": ["pretraining", "scaling"],
    "masking-table": ["pretraining"],
    "finetune": ["finetuning"],
    "evaluate": ["finetuning"],
    "probe": ["finetuning"],
    "embed": ["finetuning"],
    "demo": ["demo"],
    "analyze": ["analysis"],
    "plot": ["analysis"],
}
# Options every command has, documented once in the README.
COMMON_OPTIONS = {"--help", "--threads"}

LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*$", re.M)


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def heading_anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for title in HEADING.findall(FENCED.sub("", read(path))):
        anchor = heading_anchor(title)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        result.add(anchor if count == 0 else f"{anchor}-{count}")  # GitHub numbers repeated headings
    return result


def test_heading_anchor_follows_github():
    assert heading_anchor("Pre-training step (`bench/bench_pretrain_step.py`)") == \
        "pre-training-step-benchbench_pretrain_steppy"
    assert heading_anchor("Recipes (paper Table 4)") == "recipes-paper-table-4"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_resolve(document: Path):
    broken = []
    for target in LINK.findall(FENCED.sub("", read(document))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    assert not broken, f"{document.name}: " + "; ".join(broken)


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(words, parser) of every command that runs something: `pretrain`, `store verify`, ..."""
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        yield prefix, parser
        return
    for name, command in nested[0].choices.items():
        yield from leaf_commands(command, (*prefix, name))


COMMANDS = list(leaf_commands(build_parser()))
# The commands each document of COMMAND_DOCS describes (`store info`, `store verify`, ... apart).
DOCUMENT_COMMANDS = {name: [words for words, _ in COMMANDS if name in COMMAND_DOCS.get(words[0], ())]
                     for names in COMMAND_DOCS.values() for name in names}


def test_commands_are_found():
    names = {" ".join(words) for words, _ in COMMANDS}
    assert {"pretrain", "store verify", "analyze masks"} <= names


@pytest.mark.parametrize("words, parser", COMMANDS, ids=[" ".join(words) for words, _ in COMMANDS])
def test_every_command_is_in_the_readme_and_in_its_document(words, parser):
    command = " ".join(words)
    assert words[0] in COMMAND_DOCS, f"new command `vimpac {command}`: document it and add it to COMMAND_DOCS"
    readme = read(README)
    # The pipeline table names `vimpac store info|verify|compact` and `vimpac analyze a|b|c`.
    group = re.search(rf"`vimpac {re.escape(words[0])}(?: ([\w|\\-]+))?", readme)
    assert group, f"README.md does not mention `vimpac {words[0]}`"
    if len(words) > 1:
        assert words[1] in re.split(r"\\?\|", group.group(1) or ""), f"README.md does not list `vimpac {command}`"
    documents = " ".join(read(REPO / "docs" / f"{name}.md") for name in COMMAND_DOCS[words[0]])
    assert f"vimpac {command}" in documents, f"`vimpac {command}` is not in docs/{COMMAND_DOCS[words[0]][0]}.md"


HEADING_LINE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*$")
BLOCK_START = re.compile(r"^\s*(?:[-*+]|\d+\.)\s|^\s*\|")  # a list item or a table row


def markdown_blocks(text: str) -> list[tuple[tuple[str, ...], str]]:
    """(the headings in force, the block's text) for each block of a markdown text: a paragraph,
    a list item, a table row, or a command of a fenced block (a line with its backslash
    continuations)."""
    blocks: list[tuple[tuple[str, ...], str]] = []
    headings: list[tuple[int, str]] = []
    lines: list[str] = []
    fenced = False

    def end_block():
        if lines:
            blocks.append((tuple(title for _, title in headings), "\n".join(lines)))
            lines.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            end_block()
            fenced = not fenced
        elif fenced:
            lines.append(line)
            if not line.rstrip().endswith("\\"):
                end_block()
        elif heading := HEADING_LINE.match(line):
            end_block()
            level = len(heading.group(1))
            headings = [(lvl, title) for lvl, title in headings if lvl < level] + [(level, heading.group(2))]
        elif not line.strip():
            end_block()
        else:
            if BLOCK_START.match(line):
                end_block()
            lines.append(line)
    end_block()
    return blocks


def names_command(words: tuple[str, ...]) -> re.Pattern:
    """`vimpac WORDS` (or `-m vimpac.cli WORDS`), not a longer command that starts with them."""
    return re.compile(r"vimpac(?:\.cli)? " + re.escape(" ".join(words)) + r"(?![\w-])")


def text_about(words: tuple[str, ...], document: str, others: list[tuple[str, ...]]) -> str:
    """The parts of `document` about `vimpac WORDS`, when it also describes the commands `others`
    (all of it when it describes no other): the sections whose heading names the command (below
    the document's title), and outside the sections of other commands the blocks (paragraph, list
    item, table row, command line) that name it. So an option documented for another command of
    the same document does not count for this one, nor does a passing mention of this command in
    another command's section."""
    if not others:
        return document
    own, other = names_command(words), [names_command(o) for o in others]
    parts = []
    for headings, block in markdown_blocks(document):
        section = next((title for title in reversed(headings[1:])
                        if own.search(title) or any(p.search(title) for p in other)), None)
        if (own.search(section) if section is not None else own.search(block)):
            parts.append(block)
    return "\n".join(parts)


def test_text_about_a_command_is_its_sections_and_the_blocks_naming_it():
    document = ("# Two commands, `vimpac probe` and `vimpac embed`\n\n"
                "```bash\nvimpac embed --fps 2 \\\n    --size 64\nvimpac other --seed 1\n```\n\n"
                "| `--tokens` | for `vimpac embed` |\n| `--batch-size` | `vimpac probe` too |\n\n"
                "## `vimpac probe`\n\nIt takes `--k`.\n\n### More\n\n- `--temperature`, unlike `vimpac embed`\n\n"
                "## `vimpac embed`\n\nAlso, with\n`vimpac probe`: `--method`.\n\n## Notes\n\n"
                "With `vimpac probe`: `--out`.\n\nNot `vimpac probes`: `--x`.\n")
    probe = text_about(("probe",), document, [("embed",)])
    assert all(option in probe for option in ("--k", "--temperature", "--batch-size", "--out"))
    assert not any(option in probe for option in ("--fps", "--size", "--tokens", "--seed", "--method", "--x"))
    embed = text_about(("embed",), document, [("probe",)])
    assert all(option in embed for option in ("--fps", "--size", "--tokens", "--method"))
    assert not any(option in embed for option in ("--k", "--temperature", "--seed", "--batch-size", "--out"))
    assert text_about(("probe",), document, []) == document  # the document of one command is all about it


@pytest.mark.parametrize("words, parser", COMMANDS, ids=[" ".join(words) for words, _ in COMMANDS])
def test_every_option_is_in_its_commands_part_of_its_documents(words, parser):
    names = COMMAND_DOCS.get(words[0], ())
    text = "\n".join(text_about(words, read(REPO / "docs" / f"{name}.md"),
                                 [other for other in DOCUMENT_COMMANDS[name] if other != words]) for name in names)
    missing = [option for action in parser._actions for option in action.option_strings
               if option.startswith("--") and option not in COMMON_OPTIONS
               and not re.search(re.escape(option) + r"(?![\w-])", text)]
    assert not missing, (f"`vimpac {' '.join(words)}` options not mentioned where "
                         f"{', '.join(f'docs/{n}.md' for n in names)} describe that command (a section whose heading "
                         f"names `vimpac {' '.join(words)}`, or a paragraph, list item, table row or command line "
                         f"naming it): {missing}")


def test_readme_documents_the_common_options():
    assert "`--help`" in read(README) and "`--threads N`" in read(README)


# ------------------------------------------------------------------------ settings tables

def settings_table(text: str, first_header: str) -> dict[str, str]:
    """{field: default} of the markdown table whose header row starts with `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1]
    return rows


def documented_default(value) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`"
    return str(value)


def test_settings_table_reads_a_table():
    text = "x\n| field | default | meaning |\n|---|---|---|\n| `a` | `true` | yes |\n| `b` | 0.5 | no |\n\nafter\n"
    assert settings_table(text, "field") == {"a": "`true`", "b": "0.5"}


@pytest.mark.parametrize("header, config, exact_defaults", [
    ("field", "masking", True),
    ("`objective.*`", "objective", True),
    ("`data.*`", "data", False),  # presets change frames and the validation split
])
def test_pretraining_settings_tables_match_the_config(header, config, exact_defaults):
    from vimpac.pretrain.config import PretrainConfig

    config_class = {f.name: f for f in dataclasses.fields(PretrainConfig)}[config].default_factory
    defaults = {f.name: getattr(config_class(), f.name) for f in dataclasses.fields(config_class)}
    table = settings_table(read(REPO / "docs" / "pretraining.md"), header)
    assert set(table) == set(defaults), f"docs/pretraining.md's {config}.* table: {sorted(table)} vs {sorted(defaults)}"
    for name, default in defaults.items():
        documented = table[name] if exact_defaults else table[name].split(" (")[0]
        if default is None:
            assert documented == "`null`", name
        else:
            assert documented == documented_default(default), f"{config}.{name}: documented {documented}, is {default!r}"


def test_every_train_setting_is_named_in_the_pretraining_doc():
    from vimpac.engine.trainer import TrainConfig
    from vimpac.pretrain.config import PretrainConfig

    text = read(REPO / "docs" / "pretraining.md")
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    fields += [f.name for f in dataclasses.fields(PretrainConfig)
               if f.name not in ("model", "masking", "objective", "data", "train")]
    missing = [name for name in fields if f"`{name}`" not in text and f"train.{name}" not in text]
    assert not missing, f"docs/pretraining.md does not name these settings: {missing}"


# ------------------------------------------------------------------------ quoted numbers

def find(pattern: str, text: str, where: str) -> tuple[str, ...]:
    match = re.search(pattern, text)
    assert match, f"{where}: no text matching {pattern!r} (reworded? update this test)"
    return match.groups()


def test_demo_results_quoted_in_the_readme_are_those_of_the_demo_doc():
    readme, demo = read(README), read(REPO / "docs" / "demo.md")
    quoted = {
        "minutes": find(r"It took (\d+) minutes", readme, "README.md")[0],
        "chance": find(r"from chance \((\d+\.\d)%", readme, "README.md")[0],
        "MP only mean, min, max": find(r"stays\) to\s+(\d+\.\d)% averaged over three seeds \((\d+\.\d)-(\d+\.\d)\)",
                                       readme, "README.md"),
        "MP + CL mean, min, max": find(r"gives (\d+\.\d)%\s+\((\d+\.\d)-(\d+\.\d)\)", readme, "README.md"),
    }

    def over_seeds(row: str) -> tuple[str, str, str]:  # a row of docs/demo.md's seeds table
        *seeds, mean = find(rf"\| {re.escape(row)} \| (\S+) \| (\S+) \| (\S+) \| \**(\d+\.\d) ±", demo, "docs/demo.md")
        return mean, f"{min(map(float, seeds)):.1f}", f"{max(map(float, seeds)):.1f}"

    reported = {
        "minutes": str(round(float(find(r"= (\d+\.\d) minutes", demo, "docs/demo.md")[0]))),
        "chance": find(r"Chance is (\d+\.\d)%", demo, "docs/demo.md")[0],
        "MP only mean, min, max": over_seeds("MP only"),
        "MP + CL mean, min, max": over_seeds("VIMPAC (MP + CL)"),
    }
    assert quoted == reported
