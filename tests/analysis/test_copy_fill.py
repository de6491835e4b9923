"""Nearest-visible-neighbour filling: hand-made grids, a brute-force reference, edge cases."""

from __future__ import annotations

import itertools

import pytest
import torch

from vimpac.analysis.copy_fill import NO_SOURCE, copy_accuracy, copy_fill, nearest_visible
from vimpac.analysis.errors import AnalysisError


def reference_source(mask: torch.Tensor, neighbourhood: str) -> torch.Tensor:
    """Plain loops over every pair: the nearest visible position, first in raster order on ties."""
    T, H, W = mask.shape
    out = torch.full((T, H, W), NO_SOURCE, dtype=torch.int64)
    cells = list(itertools.product(range(T), range(H), range(W)))
    for t, h, w in cells:
        if not mask[t, h, w]:
            continue
        best, best_d = NO_SOURCE, None
        for flat, (t2, h2, w2) in enumerate(cells):
            if mask[t2, h2, w2] or (neighbourhood == "spatial" and t2 != t):
                continue
            d = (t - t2) ** 2 + (h - h2) ** 2 + (w - w2) ** 2
            if best_d is None or d < best_d:
                best, best_d = flat, d
        out[t, h, w] = best
    return out


def test_hand_made_grid_copies_the_nearest_visible_neighbour():
    tokens = torch.tensor([[[10, 11, 12],
                            [13, 14, 15],
                            [16, 17, 18]]])[None]  # (1, 1, 3, 3)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, 0, 0, 1] = True  # neighbours at distance 1: 10 (left), 12 (right); 14 below is masked
    mask[0, 0, 1, 1] = True  # distance 1: 13, 15, 17 visible -> 13 comes first in raster order
    mask[0, 0, 2, 2] = True  # distance 1: 15 (up), 17 (left) -> 15 first in raster order
    filled = copy_fill(tokens, mask, "spatial").tokens
    assert filled.tolist() == [[[[10, 10, 12], [13, 13, 15], [16, 17, 15]]]]
    assert copy_accuracy(tokens, mask, filled) == (0, 3)


def test_nearer_beats_tie_order():
    # A 1 x 1 x 5 row: position 3 masked along with 2; 4 is at distance 1, 1 at distance 2.
    tokens = torch.tensor([1, 2, 3, 4, 5]).reshape(1, 1, 1, 5)
    mask = torch.tensor([False, False, True, True, False]).reshape(1, 1, 1, 5)
    assert copy_fill(tokens, mask, "spatial").tokens.flatten().tolist() == [1, 2, 2, 5, 5]


def test_spatial_never_copies_from_another_frame():
    # Frame 0 fully visible; frame 1 masked except its top-left corner. Spatially every masked token
    # of frame 1 can only copy that corner; spatio-temporally it copies the same place in frame 0.
    frame = torch.arange(16).reshape(4, 4)
    tokens = torch.stack([frame, frame + 100])[None]
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, 1] = True
    mask[0, 1, 0, 0] = False
    spatial = copy_fill(tokens, mask, "spatial")
    assert (spatial.tokens[0, 1] == 100).all()
    assert (spatial.source[0, 1][mask[0, 1]] == 16).all()  # flat index of (t=1, 0, 0)
    spatiotemporal = copy_fill(tokens, mask, "spatiotemporal").tokens
    expected = frame.clone()
    expected[0, 0] = 100
    assert torch.equal(spatiotemporal[0, 1], expected)


def test_fully_masked_frame_has_no_spatial_source_and_counts_wrong():
    tokens = torch.zeros(1, 2, 2, 2, dtype=torch.int64)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, 1] = True
    spatial = copy_fill(tokens, mask, "spatial")
    assert (spatial.tokens[0, 1] == NO_SOURCE).all() and (spatial.source[0, 1] == NO_SOURCE).all()
    assert copy_accuracy(tokens, mask, spatial.tokens) == (0, 4)
    assert copy_accuracy(tokens, mask, copy_fill(tokens, mask, "spatiotemporal").tokens) == (4, 4)


@pytest.mark.parametrize("neighbourhood", ["spatial", "spatiotemporal"])
@pytest.mark.parametrize("ratio", [0.2, 0.6, 0.95])
def test_matches_brute_force_reference(neighbourhood, ratio):
    generator = torch.Generator().manual_seed(int(ratio * 100))
    mask = torch.rand((3, 5, 6), generator=generator) < ratio
    # Tiny chunks exercise the chunked path as well.
    assert torch.equal(nearest_visible(mask, neighbourhood, chunk_elements=7), reference_source(mask, neighbourhood))


def test_visible_tokens_are_kept_and_batches_are_independent():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (3, 4, 5, 5), generator=generator)
    mask = torch.rand(tokens.shape, generator=generator) < 0.4
    filled = copy_fill(tokens, mask, "spatiotemporal").tokens
    assert torch.equal(filled[~mask], tokens[~mask])
    for b in range(3):  # each sample alone gives the same fill: no copying across the batch
        assert torch.equal(copy_fill(tokens[b:b + 1], mask[b:b + 1], "spatiotemporal").tokens[0], filled[b])


def test_bad_input_is_a_typed_error():
    with pytest.raises(AnalysisError, match="bool mask"):
        copy_fill(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), "spatial")
    with pytest.raises(AnalysisError, match="neighbourhood"):
        nearest_visible(torch.zeros(2, 2, 2, dtype=torch.bool), "temporal")
