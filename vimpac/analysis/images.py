"""Pictures shared by the analysis commands: pixel-exact frame grids, mask highlighting, GIFs,
and matplotlib on the Agg backend.

Frame grids are composed in numpy rather than drawn through matplotlib axes: every frame lands
at a known pixel offset (`GridLayout.cell_box`) at its native resolution, unresampled, so a
test (or a reader zooming in) can check exactly which cells are masked. Row labels go in a left
margin, outside the cells, drawn with Pillow's built-in font (Pillow comes with matplotlib).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vimpac.analysis.errors import AnalysisError
from vimpac.io import atomic_path

MASK_COLOR = (255, 0, 0)
"""Tint of masked cells (the paper's Figure 5 highlights the masked area)."""

_BACKGROUND = 255
_TEXT_COLOR = (0, 0, 0)


@dataclass(frozen=True)
class GridLayout:
    """Where each frame sits in a composed grid image (all sizes in pixels)."""

    rows: int
    cols: int
    cell_height: int
    cell_width: int
    left: int  # width of the label margin
    gap: int

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) of frame `col` of row `row`; slice the image as [y0:y1, x0:x1]."""
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise IndexError(f"cell ({row}, {col}) outside a {self.rows} x {self.cols} grid")
        y0 = self.gap + row * (self.cell_height + self.gap)
        x0 = self.left + self.gap + col * (self.cell_width + self.gap)
        return y0, x0, y0 + self.cell_height, x0 + self.cell_width

    @property
    def shape(self) -> tuple[int, int]:
        return (self.gap + self.rows * (self.cell_height + self.gap),
                self.left + self.gap + self.cols * (self.cell_width + self.gap))


def compose_grid(rows: Sequence[np.ndarray], labels: Sequence[str] | None = None,
                 gap: int = 4) -> tuple[np.ndarray, GridLayout]:
    """Rows of frames (each uint8 (T, h, w, 3), same shape) -> one uint8 RGB image and its layout."""
    if not rows:
        raise AnalysisError("compose_grid: no rows to draw")
    shape = np.asarray(rows[0]).shape
    for i, row in enumerate(rows):
        row = np.asarray(row)
        if row.dtype != np.uint8 or row.ndim != 4 or row.shape[-1] != 3 or row.shape != shape:
            raise AnalysisError(f"compose_grid: row {i}: expected uint8 frames {shape}, got {row.dtype} {row.shape}")
    if labels is not None and len(labels) != len(rows):
        raise AnalysisError(f"compose_grid: {len(labels)} labels for {len(rows)} rows")
    cols, height, width = shape[0], shape[1], shape[2]
    left = _label_margin(labels) if labels else 0
    layout = GridLayout(len(rows), cols, height, width, left, gap)
    image = np.full((*layout.shape, 3), _BACKGROUND, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c in range(cols):
            y0, x0, y1, x1 = layout.cell_box(r, c)
            image[y0:y1, x0:x1] = row[c]
    if labels:
        image = _draw_labels(image, layout, labels)
    return image, layout


def upsample_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """Token mask (T, h, w) -> pixel mask (T, h * factor, w * factor)."""
    mask = np.asarray(mask, dtype=bool)
    return mask.repeat(factor, axis=1).repeat(factor, axis=2)


def highlight(frames: np.ndarray, mask: np.ndarray, downsample: int, color: tuple[int, int, int] = MASK_COLOR,
              strength: float = 0.6) -> np.ndarray:
    """Frames (T, H, W, 3) with the cells of a token mask (T, H/downsample, W/downsample) tinted."""
    frames = np.asarray(frames)
    pixels = upsample_mask(mask, downsample)
    if pixels.shape != frames.shape[:3]:
        raise AnalysisError(f"highlight: a token mask {np.shape(mask)} x {downsample} does not cover frames {frames.shape}")
    out = frames.astype(np.float32)
    out[pixels] = (1.0 - strength) * out[pixels] + strength * np.asarray(color, dtype=np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 RGB image as PNG atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    return path


def save_gif(path: str | Path, frames: Sequence[np.ndarray], frame_ms: int = 500) -> Path:
    """Write uint8 RGB images as a looping animated GIF atomically."""
    from PIL import Image

    if not frames:
        raise AnalysisError(f"{path}: no frames to write")
    path = Path(path)
    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]
    with atomic_path(path, suffix=".gif") as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed); imported only when drawing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)
    return path


def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default()


def _label_margin(labels: Sequence[str]) -> int:
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return 8 + int(max(draw.textlength(label, font=_font()) for label in labels))


def _draw_labels(image: np.ndarray, layout: GridLayout, labels: Sequence[str]) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(labels):
        y0, _, y1, _ = layout.cell_box(r, 0)
        draw.text((4, (y0 + y1) // 2), label, fill=_TEXT_COLOR, font=_font(), anchor="lm")
    return np.asarray(canvas).copy()
