"""`vimpac analyze masks`: mask pictures read back cell by cell, and the ratio histogram."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from vimpac.analysis.errors import AnalysisError
import vimpac.analysis.masks
from vimpac.analysis.masks import MASKED_RGB, VISIBLE_RGB, mask_picture, sample_masks
from vimpac.cli import main
from vimpac.pretrain.masking import induced_masking_ratio


def read_png(path) -> np.ndarray:
    return (imread(path)[..., :3] * 255).round().astype(np.uint8)


def cells_of(image: np.ndarray, layout, cell: int, left_margin: int = 0) -> np.ndarray:
    """The colour at the centre of every token cell: (rows, T, H, W, 3)."""
    out = []
    for r in range(layout.rows):
        frames = []
        for c in range(layout.cols):
            y0, x0, y1, x1 = layout.cell_box(r, c)
            frames.append(image[y0 + cell // 2:y1:cell, left_margin + x0 + cell // 2:left_margin + x1:cell])
        out.append(np.stack(frames))
    return np.stack(out)


def test_mask_picture_cells_follow_the_mask():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand((3, 4, 5, 6), generator=generator) < 0.3
    image, layout = mask_picture(masks, cell=6)
    assert image.shape[:2] == layout.shape
    centres = cells_of(image, layout, 6)
    assert centres.shape == (3, 4, 5, 6, 3)
    expected = np.where(masks.numpy()[..., None], MASKED_RGB, VISIBLE_RGB)
    assert np.array_equal(centres, expected)
    with pytest.raises(AnalysisError, match="bool masks"):
        mask_picture(masks.float())


def test_sampled_ratios_match_the_exact_expectation():
    samples = sample_masks(frames=5, grid=(8, 8), blocks="auto", ratio=0.3, samples=2, histogram_samples=4000, seed=1)
    expected = induced_masking_ratio(5, 8, 8, samples.num_blocks)
    assert samples.expected_block_ratio == expected
    standard_error = samples.block_ratios.std() / np.sqrt(samples.block_ratios.size)
    assert abs(samples.block_ratios.mean() - expected) < 5 * standard_error
    assert abs(samples.iid_ratios.mean() - 0.3) < 5 * samples.iid_ratios.std() / np.sqrt(samples.iid_ratios.size)
    # Block masks vary much more from clip to clip than i.i.d. masks at the same ratio.
    assert samples.block_ratios.std() > 2 * samples.iid_ratios.std()
    fixed = sample_masks(frames=5, grid=(8, 8), blocks=3, samples=2, histogram_samples=10)
    assert fixed.num_blocks == 3
    with pytest.raises(AnalysisError, match="ratio"):
        sample_masks(frames=5, grid=(8, 8), ratio=1.5)


def test_cli_writes_pictures_histogram_and_summary(tmp_path, capsys):
    out = tmp_path / "masks"
    code = main(["analyze", "masks", "--frames", "4", "--grid", "6", "8", "--samples", "3", "--cell", "5",
                 "--histogram-samples", "300", "--out", str(out), "--seed", "3"])
    assert code == 0
    assert "expected ratio" in capsys.readouterr().out
    summary = json.loads((out / "masks.json").read_text())
    samples = sample_masks(4, (6, 8), "auto", 0.15, 3, 300, seed=3)  # same seed: the same masks
    for name, masks in (("block_masks", samples.block), ("iid_masks", samples.iid)):
        image = read_png(out / f"{name}.png")
        _, layout = mask_picture(masks, cell=5)
        margin = image.shape[1] - layout.shape[1]  # labels sit left of the cells
        assert image.shape[0] == layout.shape[0] and margin > 0
        assert (image[:, :margin] < 128).any()  # some label text was drawn
        expected = np.where(masks.numpy()[..., None], MASKED_RGB, VISIBLE_RGB)
        assert np.array_equal(cells_of(image, layout, 5, margin), expected)
    assert summary["pictured_block_ratios"] == pytest.approx(samples.block.flatten(1).float().mean(1).tolist())

    histogram = read_png(out / "ratio_histogram.png")
    assert histogram.shape == (400, 700, 3)
    assert histogram.std() > 10  # not blank
    red = (histogram[..., 0] > 180) & (histogram[..., 1] < 120) & (histogram[..., 2] < 120)
    blue = (histogram[..., 2] > 150) & (histogram[..., 0] < 100)
    assert red.sum() > 100 and blue.sum() > 100  # both histograms (and their expected-ratio lines) drawn


def test_a_picture_over_the_pixel_bound_is_refused_before_drawing():
    # 16 x 16 tokens at 260 pixels each: a 4,168 x 4,168 picture, just over 4,096 x 4,096.
    masks = torch.zeros((1, 1, 16, 16), dtype=torch.bool)
    with pytest.raises(AnalysisError, match=r"would be 4,168 x 4,168 pixels, over the 16,777,216 allowed"):
        mask_picture(masks, cell=260)
    image, _ = mask_picture(masks, cell=255)  # 4,088 x 4,088: drawn
    assert image.shape == (4088, 4088, 3)


def test_histogram_masks_are_drawn_in_bounded_batches(monkeypatch):
    # One 16 x 64 x 64 mask with 7 blocks takes 7 x 16 x 64 + 16 x 64 x 64 intermediate values;
    # 500 of them at once would take 36 M, and a larger grid or count without limit.
    drawn = []

    def recording_block_mask(batch, T, H, W, count, generator):
        drawn.append((batch, count * T * H + T * H * W))
        return real_block_mask(batch, T, H, W, count, generator)

    real_block_mask = vimpac.analysis.masks.block_mask
    monkeypatch.setattr(vimpac.analysis.masks, "block_mask", recording_block_mask)
    samples = sample_masks(frames=16, grid=(64, 64), blocks=7, samples=1, histogram_samples=500)
    assert samples.block_ratios.shape == samples.iid_ratios.shape == (500,)
    assert sum(batch for batch, _ in drawn) == 1 + 500  # the pictured mask, then the histogram's
    assert len(drawn) > 2 and all(batch * values <= 1 << 24 for batch, values in drawn)
