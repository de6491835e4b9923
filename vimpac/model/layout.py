"""Attention layouts: the string grammar and what it means.

A layout string lists the attention blocks of one layer, separated by commas. Each block lists
one or more *parallel* attentions separated by `|`; they split the block's heads and width
between them and share one output projection. Each attention attends over a set of grid axes
joined by `x`:

    "T,H|W"   temporal block, then a spatial block whose heads are split between height and width
              (the paper's default and the authors' code)
    "T,H,W"   three sequential 1-D blocks (axial attention)
    "T,HxW"   temporal block, then attention over each whole frame (TimeSformer's divided
              space-time)
    "TxHxW"   one joint block over every token of the clip

Everything the original code accepts ("T", "T,H", "H|W,T", ...) is a special case. Grid axes are
numbered as in the token tensor (B, T, H, W): T = 1, H = 2, W = 3.
"""

from __future__ import annotations

from dataclasses import dataclass

from vimpac.model.errors import ModelError

AXIS_NAMES = "THW"
AXIS_INDEX = {"T": 1, "H": 2, "W": 3}

# The layouts of the paper's Table 13, in its order.
PAPER_LAYOUTS = ("TxHxW", "T,HxW", "T,H,W", "T,H|W")


@dataclass(frozen=True)
class AttentionSpec:
    """One attention inside a block: the grid axes (1..3, ascending) it attends over."""

    axes: tuple[int, ...]

    @property
    def name(self) -> str:
        return "x".join(AXIS_NAMES[a - 1] for a in self.axes)


@dataclass(frozen=True)
class BlockSpec:
    """One attention block: parallel attentions sharing the heads, width and output dense."""

    attentions: tuple[AttentionSpec, ...]

    @property
    def name(self) -> str:
        return "|".join(a.name for a in self.attentions)


def parse_layout(layout: str) -> tuple[BlockSpec, ...]:
    """Parse a layout string such as "T,H|W" into block specs; a bad string is a `ModelError`."""
    if not isinstance(layout, str) or not layout.strip():
        raise ModelError(f"layout: expected a string such as 'T,H|W', got {layout!r}")
    blocks = []
    for group in layout.replace(" ", "").split(","):
        if not group:
            raise ModelError(f"layout {layout!r}: empty block between commas")
        attentions = []
        for part in group.split("|"):
            letters = part.upper().split("X")
            if not part or any(letter not in AXIS_INDEX for letter in letters):
                raise ModelError(
                    f"layout {layout!r}: {part!r} is not an axis set; use T, H, W joined by 'x' (e.g. HxW)")
            axes = tuple(AXIS_INDEX[letter] for letter in letters)
            if len(set(axes)) != len(axes):
                raise ModelError(f"layout {layout!r}: axis repeated in {part!r}")
            attentions.append(AttentionSpec(tuple(sorted(axes))))
        blocks.append(BlockSpec(tuple(attentions)))
    return tuple(blocks)


def canonical_layout(layout: str) -> str:
    """The layout string in canonical spelling ("t, h|w" -> "T,H|W")."""
    return ",".join(block.name for block in parse_layout(layout))
