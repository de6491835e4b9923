"""Pictures of sampled masks over (T, H, W), and the induced-ratio histogram (`vimpac analyze masks`).

    samples = sample_masks(frames=5, grid=(16, 16), blocks="auto", ratio=0.15, samples=4,
                           histogram_samples=2000, seed=0)
    paths = draw_masks(samples, "out/masks")

Each mask picture has one row per sample and one column per frame; every token is a
`cell` x `cell` pixel square, masked tokens in `MASKED_RGB`, visible ones in `VISIBLE_RGB`, so
the picture can be read back exactly (`GridLayout.cell_box`). The histogram shows the per-clip
masked fraction of many sampled block masks (and i.i.d. masks at the same ratio), with the
exact expected ratio (`induced_masking_ratio`) marked: block masks vary far more from clip to
clip, which is one reason to report the expectation rather than a single draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vimpac.analysis.errors import AnalysisError
from vimpac.analysis.images import GridLayout, compose_grid, pyplot, save_figure, save_png
from vimpac.pretrain.masking import (MAX_AUTO_BLOCKS, MAX_AXIS_TOKENS, MAX_CLIP_TOKENS, auto_num_blocks, block_mask,
                                     iid_mask, induced_masking_ratio)

MASKED_RGB = (200, 30, 30)
VISIBLE_RGB = (235, 235, 235)
BLOCK_COLOR = "tab:red"
IID_COLOR = "tab:blue"
OUTPUT_FILES = ("block_masks.png", "iid_masks.png", "ratio_histogram.png", "masks.json")
_GAP = 4
"""Pixels between the frames of a mask picture."""

# Bounds on what is drawn and sampled, so that a slip (--grid in pixels, a huge --cell) is a clear
# error rather than memory exhausted; the mask sizes' bounds are masking's (MAX_AXIS_TOKENS,
# MAX_CLIP_TOKENS), shared with `masking-table`.
MAX_MASK_VALUES = 1 << 26
"""Intermediate values of drawing one block mask: blocks x T x H + T x H x W (`boxes_to_mask`)."""
MAX_PICTURE_PIXELS = 1 << 24
"""Pixels of one mask picture (16.8 M, 4096 x 4096; 50 MB as RGB)."""
_HISTOGRAM_CHUNK_VALUES = 1 << 24
"""The histogram's masks are drawn in batches of about this many intermediate values."""


@dataclass(frozen=True)
class MaskSamples:
    block: torch.Tensor  # (samples, T, H, W) bool: the masks drawn as pictures
    iid: torch.Tensor  # (samples, T, H, W) bool
    num_blocks: int
    ratio: float  # i.i.d. probability, and the target "auto" picks the block count for
    expected_block_ratio: float  # exact expectation for `num_blocks` blocks
    block_ratios: np.ndarray  # (histogram_samples,) per-clip masked fraction of block masks
    iid_ratios: np.ndarray  # (histogram_samples,)

    def to_json(self) -> dict[str, Any]:
        T, H, W = self.block.shape[1:]
        return {
            "frames": T, "grid": [H, W], "num_blocks": self.num_blocks, "ratio": self.ratio,
            "expected_block_ratio": self.expected_block_ratio,
            "block_ratio_mean": float(self.block_ratios.mean()), "block_ratio_std": float(self.block_ratios.std()),
            "iid_ratio_mean": float(self.iid_ratios.mean()), "iid_ratio_std": float(self.iid_ratios.std()),
            "histogram_samples": int(self.block_ratios.size),
            "pictured_block_ratios": self.block.flatten(1).float().mean(1).tolist(),
            "pictured_iid_ratios": self.iid.flatten(1).float().mean(1).tolist(),
        }


def sample_masks(frames: int, grid: tuple[int, int], blocks: int | Literal["auto"] = "auto", ratio: float = 0.15,
                 samples: int = 4, histogram_samples: int = 2000, seed: int = 0) -> MaskSamples:
    """Draw `samples` masks of each kind to picture and `histogram_samples` more for the histogram."""
    H, W = grid
    if samples < 1 or histogram_samples < 2:
        raise AnalysisError(f"samples must be >= 1 and histogram_samples >= 2, got {samples} and {histogram_samples}")
    if not 0.0 < ratio < 1.0:
        raise AnalysisError(f"ratio: expected a value in (0, 1), got {ratio!r}")
    check_mask_size(frames, grid, blocks)
    count = auto_num_blocks(frames, H, W, ratio) if blocks == "auto" else int(blocks)
    check_mask_size(frames, grid, count)  # the 'auto' count, now known
    generator = torch.Generator().manual_seed(seed)
    pictured_block = block_mask(samples, frames, H, W, count, generator)
    pictured_iid = iid_mask(samples, frames, H, W, ratio, generator)
    # In batches: all histogram masks at once would take histogram_samples times one mask's memory.
    batch = max(1, _HISTOGRAM_CHUNK_VALUES // _mask_values(frames, H, W, count))
    sizes = [min(batch, histogram_samples - begin) for begin in range(0, histogram_samples, batch)]
    block_ratios = torch.cat([block_mask(n, frames, H, W, count, generator).flatten(1).double().mean(1)
                              for n in sizes])
    iid_ratios = torch.cat([iid_mask(n, frames, H, W, ratio, generator).flatten(1).double().mean(1) for n in sizes])
    return MaskSamples(pictured_block, pictured_iid, count, ratio, induced_masking_ratio(frames, H, W, count),
                       block_ratios.numpy(), iid_ratios.numpy())


def check_mask_size(frames: int, grid: tuple[int, int], blocks: int | Literal["auto"] = "auto") -> None:
    """Refuse masks too large to sample: an axis over `MAX_AXIS_TOKENS`, a clip over
    `MAX_CLIP_TOKENS`, more than `MAX_AUTO_BLOCKS` blocks, or a block count whose mask takes
    more than `MAX_MASK_VALUES` intermediate values."""
    H, W = grid
    shape = f"{frames} x {H} x {W} tokens"
    if max(frames, H, W) > MAX_AXIS_TOKENS or frames * H * W > MAX_CLIP_TOKENS:
        raise AnalysisError(f"--frames {frames} --grid {H} {W}: {shape} per mask; expected at most "
                            f"{MAX_AXIS_TOKENS} along each axis and {MAX_CLIP_TOKENS:,} in all "
                            "(--grid counts tokens, not pixels: 16 16 for 128-pixel frames)")
    if blocks == "auto":
        return
    if isinstance(blocks, bool) or not isinstance(blocks, (int, np.integer)) or not 1 <= blocks <= MAX_AUTO_BLOCKS:
        raise AnalysisError(f"--blocks {blocks!r}: expected 'auto' or a block count from 1 to {MAX_AUTO_BLOCKS}")
    if _mask_values(frames, H, W, blocks) > MAX_MASK_VALUES:
        raise AnalysisError(f"--blocks {blocks}: one mask of {blocks} blocks over {shape} takes "
                            f"{_mask_values(frames, H, W, blocks):,} intermediate values, at most "
                            f"{MAX_MASK_VALUES:,}; use fewer blocks or a smaller --frames / --grid")


def check_picture_size(samples: int, frames: int, grid: tuple[int, int], cell: int) -> None:
    """Refuse a mask picture (`samples` rows of `frames` frames of `grid` tokens, `cell` pixels
    each) over `MAX_PICTURE_PIXELS`, before anything is drawn."""
    H, W = grid
    layout = GridLayout(samples, frames, H * cell, W * cell, left=0, gap=_GAP)
    height, width = layout.shape
    if height * width > MAX_PICTURE_PIXELS:
        raise AnalysisError(f"a mask picture of --samples {samples} x --frames {frames} frames of --grid {H} x {W} "
                            f"tokens at --cell {cell} pixels per token would be {width:,} x {height:,} pixels, over "
                            f"the {MAX_PICTURE_PIXELS:,} allowed; pass a smaller --cell, --samples, --frames or --grid")


def _mask_values(frames: int, H: int, W: int, blocks: int) -> int:
    return blocks * frames * H + frames * H * W


def mask_picture(masks: torch.Tensor, labels: list[str] | None = None, cell: int = 8) -> tuple[np.ndarray, GridLayout]:
    """Masks (N, T, H, W) -> an RGB image with a row per sample and a column per frame."""
    if masks.dim() != 4 or masks.dtype != torch.bool:
        raise AnalysisError(f"mask_picture: expected bool masks (N, T, H, W), got {masks.dtype} {tuple(masks.shape)}")
    N, T, H, W = masks.shape
    check_picture_size(N, T, (H, W), cell)
    palette = np.asarray([VISIBLE_RGB, MASKED_RGB], dtype=np.uint8)
    rows = []
    for mask in masks.numpy():
        pixels = mask.repeat(cell, axis=1).repeat(cell, axis=2)
        rows.append(palette[pixels.astype(np.int64)])
    return compose_grid(rows, labels, gap=_GAP)


def draw_masks(samples: MaskSamples, out_dir: str | Path, cell: int = 8) -> dict[str, Path]:
    """block_masks.png, iid_masks.png and ratio_histogram.png in `out_dir`."""
    out_dir = Path(out_dir)
    paths = {}
    for name, masks, describe in (
        ("block_masks", samples.block, f"{samples.num_blocks} blocks"),
        ("iid_masks", samples.iid, f"iid p={samples.ratio:g}"),
    ):
        labels = [f"{describe}: {float(m.float().mean()):.0%} masked" for m in masks]
        image, _ = mask_picture(masks, labels, cell)
        paths[name] = save_png(out_dir / f"{name}.png", image)
    paths["ratio_histogram"] = draw_ratio_histogram(samples, out_dir / "ratio_histogram.png")
    return paths


def draw_ratio_histogram(samples: MaskSamples, path: str | Path) -> Path:
    plt = pyplot()
    T, H, W = samples.block.shape[1:]
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0.0, max(samples.block_ratios.max(), samples.iid_ratios.max()) * 1.05, 50)
    ax.hist(samples.block_ratios, bins=bins, color=BLOCK_COLOR, alpha=0.6,
            label=f"block masking, {samples.num_blocks} blocks")
    ax.hist(samples.iid_ratios, bins=bins, color=IID_COLOR, alpha=0.6, label=f"i.i.d. masking, p = {samples.ratio:g}")
    ax.axvline(samples.expected_block_ratio, color=BLOCK_COLOR, linestyle="--", linewidth=2,
               label=f"exact expected block ratio {samples.expected_block_ratio:.2%}")
    ax.axvline(samples.ratio, color=IID_COLOR, linestyle=":", linewidth=2, label=f"i.i.d. ratio {samples.ratio:.0%}")
    ax.set_xlabel("masked fraction of a clip")
    ax.set_ylabel(f"clips (of {samples.block_ratios.size})")
    ax.set_title(f"Induced masking ratio, T x H x W = {T} x {H} x {W}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
