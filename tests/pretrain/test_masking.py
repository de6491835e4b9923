"""Block / i.i.d. masking, the replacement step, and the induced ratio against the paper."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from vimpac.config import ConfigError, build_config
from vimpac.pretrain.errors import PretrainError
from vimpac.pretrain.masking import (
    IGNORE_INDEX,
    MASKING_PRESETS,
    MaskingConfig,
    apply_mask,
    auto_num_blocks,
    block_length_limits,
    block_mask,
    iid_mask,
    induced_masking_ratio,
    mask_tokens,
    masking_table,
    monte_carlo_masking_ratio,
    sample_blocks,
)
from vimpac.tokens import Vocab

# Paper Table 2 (ratios in %, (T, S) -> {blocks: ratio}); the T=5, S=128 row's empty cells are
# filled from Tables 9 / 15 (5 blocks -> 14.5%).
TABLE_2 = {
    (5, 128): {4: 11.9, 5: 14.5, 6: 17.0, 8: 21.7},
    (5, 256): {4: 10.6, 5: 13.1, 6: 15.2, 7: 17.5, 8: 19.5},
    (10, 128): {4: 10.4, 5: 12.8, 6: 15.0, 7: 17.1, 8: 19.2},
    (10, 256): {4: 9.3, 5: 11.4, 6: 13.4, 7: 15.4, 8: 17.2},
}
# Table 15: block ratios of the block-masking rows at T=5, S=128.
TABLE_15 = {4: 11.9, 5: 14.5, 6: 17.0}

VOCAB = Vocab(64)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("key", sorted(TABLE_2))
def test_exact_ratio_reproduces_table_2(key):
    T, S = key
    for blocks, paper in TABLE_2[key].items():
        ours = 100 * induced_masking_ratio(T, S // 8, S // 8, blocks)
        assert abs(ours - paper) <= 0.5, (T, S, blocks, ours, paper)


def test_exact_ratio_reproduces_table_15_and_floor_not_ceil():
    for blocks, paper in TABLE_15.items():
        assert abs(100 * induced_masking_ratio(5, 16, 16, blocks) - paper) <= 0.5
    # "2/3, round up" would allow 4-frame blocks at T=5; that gives 14.5% at 4 blocks, not 11.9%.
    assert block_length_limits(5, 16, 16) == (3, 8, 8)
    assert block_length_limits(10, 32, 32) == (6, 16, 16)


def test_exact_ratio_matches_brute_force_enumeration():
    """Independent check of the closed form: enumerate every box on a tiny grid with its
    probability, then E|A u B| for two independent blocks = sum_ab w_a w_b (|A|+|B|-|A n B|)."""
    T, H, W = 3, 4, 5
    limits = block_length_limits(T, H, W)
    axis_options = []
    for size, limit in zip((T, H, W), limits):
        options = []
        for length in range(1, limit + 1):
            for start in range(size - length + 1):
                indicator = np.zeros(size)
                indicator[start : start + length] = 1
                options.append((indicator, 1 / (limit * (size - length + 1))))
        axis_options.append(options)
    boxes, weights = [], []
    for (it, wt), (ih, wh), (iw, ww) in itertools.product(*axis_options):
        boxes.append(np.einsum("t,h,w->thw", it, ih, iw).ravel())
        weights.append(wt * wh * ww)
    boxes, weights = np.array(boxes), np.array(weights)
    assert math.isclose(weights.sum(), 1.0)
    sizes = boxes.sum(1)
    one = weights @ sizes / (T * H * W)
    union_two = (2 * one * (T * H * W) - weights @ (boxes @ boxes.T) @ weights) / (T * H * W)
    assert induced_masking_ratio(T, H, W, 1) == pytest.approx(one, abs=1e-12)
    assert induced_masking_ratio(T, H, W, 2) == pytest.approx(union_two, abs=1e-12)


@pytest.mark.parametrize("T,side,blocks", [(5, 16, 4), (5, 16, 5), (5, 16, 6), (10, 32, 7), (3, 4, 2)])
def test_sampler_matches_exact_ratio(T, side, blocks):
    samples = 6000 if T * side * side <= 5 * 16 * 16 else 1500  # keep the file fast on 2 cores
    mean, stderr = monte_carlo_masking_ratio(T, side, side, blocks, samples=samples, generator=_gen(blocks))
    exact = induced_masking_ratio(T, side, side, blocks)
    assert abs(mean - exact) < 4.5 * stderr + 1e-4, (mean, exact, stderr)


def test_sampler_reproduces_table_2_cells_within_half_a_point():
    for blocks, paper in TABLE_2[(5, 128)].items():
        mean, _ = monte_carlo_masking_ratio(5, 16, 16, blocks, samples=4000, generator=_gen(7))
        assert abs(100 * mean - paper) <= 0.5


def test_single_block_is_a_box_with_lengths_in_bounds():
    T, H, W = 5, 12, 10
    masks = block_mask(3000, T, H, W, num_blocks=1, generator=_gen(3))
    limits = block_length_limits(T, H, W)
    seen_lengths = [set(), set(), set()]
    for mask in masks[:400]:
        coords = mask.nonzero()
        low, high = coords.min(0).values, coords.max(0).values
        lengths = (high - low + 1).tolist()
        assert mask.sum() == math.prod(lengths)  # the bounding box is completely filled
        for axis, length in enumerate(lengths):
            assert 1 <= length <= limits[axis]
            seen_lengths[axis].add(length)
    assert seen_lengths == [set(range(1, limit + 1)) for limit in limits]


def test_block_bounds_are_uniform():
    T, H, W = 6, 8, 8
    starts, lengths = sample_blocks(4000, T, H, W, 5, _gen(11))
    assert starts.shape == lengths.shape == (4000, 5, 3)
    limits = torch.tensor(block_length_limits(T, H, W))
    assert (lengths >= 1).all() and (lengths <= limits).all()
    assert (starts >= 0).all() and (starts + lengths <= torch.tensor((T, H, W))).all()
    # Lengths uniform in [1, limit]: each value's share within 5 sigma of 1/limit.
    for axis in range(3):
        values = lengths[..., axis].flatten()
        counts = torch.bincount(values, minlength=int(limits[axis]) + 1)[1:].double() / values.numel()
        p = 1 / float(limits[axis])
        assert (counts - p).abs().max() < 5 * math.sqrt(p * (1 - p) / values.numel())
    # Given the length, the start is uniform in [0, size - length].
    chosen = lengths[..., 1] == 3
    hist = torch.bincount(starts[..., 1][chosen], minlength=H - 3 + 1).double()
    p = 1 / (H - 3 + 1)
    assert (hist / hist.sum() - p).abs().max() < 5 * math.sqrt(p * (1 - p) / hist.sum())


def test_masks_are_reproducible_by_seed_and_device_independent():
    a = block_mask(8, 5, 16, 16, 5, _gen(42))
    b = block_mask(8, 5, 16, 16, 5, _gen(42), device="cpu")
    c = block_mask(8, 5, 16, 16, 5, _gen(43))
    assert a.dtype == torch.bool and a.shape == (8, 5, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    tokens = torch.randint(0, 64, (4, 5, 8, 8), generator=_gen(0))
    first = mask_tokens(tokens, MaskingConfig(replacement="bert"), VOCAB, _gen(5))
    second = mask_tokens(tokens, MaskingConfig(replacement="bert"), VOCAB, _gen(5))
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_zero_blocks_mask_nothing():
    assert not block_mask(2, 5, 4, 4, 0, _gen()).any()


def _tokens_with_pad(batch=64, T=5, H=8, W=8, seed=0):
    tokens = torch.randint(0, VOCAB.codebook_size, (batch, T, H, W), generator=_gen(seed))
    tokens[::2, -2:] = VOCAB.pad_id  # short clips padded with [PAD] at the end
    tokens[1::4, :, :, -1] = VOCAB.pad_id
    return tokens


@pytest.mark.parametrize("mode", ["mask", "bert"])
def test_pad_is_never_masked_or_labelled(mode):
    tokens = _tokens_with_pad()
    is_pad = tokens == VOCAB.pad_id
    everything = torch.ones_like(tokens, dtype=torch.bool)
    inputs, labels = apply_mask(tokens, everything, VOCAB, mode, _gen(1))
    assert (labels[is_pad] == IGNORE_INDEX).all()
    assert (inputs[is_pad] == VOCAB.pad_id).all()
    assert torch.equal(labels[~is_pad], tokens[~is_pad])
    for strategy in ("block", "iid"):
        cfg = MaskingConfig(strategy=strategy, num_blocks=8, ratio=0.5, replacement=mode)
        out = mask_tokens(tokens, cfg, VOCAB, _gen(2))
        assert not out.mask[is_pad].any()
        assert (out.inputs[is_pad] == VOCAB.pad_id).all()


def test_mask_mode_replaces_exactly_the_masked_positions():
    tokens = _tokens_with_pad()
    mask = block_mask(*tokens.shape[:1], *tokens.shape[1:], num_blocks=5, generator=_gen(4))
    inputs, labels = apply_mask(tokens, mask, VOCAB, "mask")
    effective = mask & (tokens != VOCAB.pad_id)
    assert torch.equal(inputs == VOCAB.mask_id, effective)
    assert torch.equal(inputs[~effective], tokens[~effective])
    assert torch.equal(labels[effective], tokens[effective])
    assert (labels[~effective] == IGNORE_INDEX).all()


def test_bert_replacement_proportions():
    tokens = torch.randint(0, VOCAB.codebook_size, (200, 5, 16, 16), generator=_gen(9))
    mask = iid_mask(*tokens.shape, ratio=0.5, generator=_gen(10))
    inputs, labels = apply_mask(tokens, mask, VOCAB, "bert", _gen(11))
    masked = labels != IGNORE_INDEX
    assert torch.equal(masked, mask)  # labels at every masked position, including the kept ones
    n = int(masked.sum())
    as_mask = (inputs[masked] == VOCAB.mask_id).double().mean().item()
    unchanged = (inputs[masked] == tokens[masked]).double().mean().item()
    # A random code equals the original with probability 1/K: 10% + 10%/K look unchanged.
    k = VOCAB.codebook_size
    for observed, expected in ((as_mask, 0.8), (unchanged, 0.1 + 0.1 / k), (1 - as_mask - unchanged, 0.1 * (1 - 1 / k))):
        assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / n)
    random_part = inputs[masked & (inputs != VOCAB.mask_id)]
    assert random_part.min() >= 0 and random_part.max() < k
    assert torch.equal(inputs[~masked], tokens[~masked])


def test_iid_ratio():
    mask = iid_mask(100, 5, 16, 16, ratio=0.145, generator=_gen(12))
    n = mask.numel()
    assert abs(mask.double().mean().item() - 0.145) < 5 * math.sqrt(0.145 * 0.855 / n)


def test_auto_num_blocks_matches_the_papers_choices():
    assert auto_num_blocks(5, 16, 16) == 5  # T=5, S=128 (Tables 9 / 15)
    assert auto_num_blocks(5, 32, 32) == 6  # S=256 (original-implementation.md)
    assert auto_num_blocks(10, 16, 16) == 6
    assert auto_num_blocks(10, 32, 32) == 7
    for T, side in ((5, 16), (10, 32), (2, 3)):
        best = auto_num_blocks(T, side, side)
        gap = abs(induced_masking_ratio(T, side, side, best) - 0.15)
        for other in range(1, 40):
            assert abs(induced_masking_ratio(T, side, side, other) - 0.15) >= gap - 1e-15


def test_masking_table_rows_and_auto():
    rows = masking_table([5], [128, 256], range(4, 9))
    assert [(r.T, r.S, r.blocks) for r in rows][:2] == [(5, 128, 4), (5, 128, 5)]
    assert [r.blocks for r in rows if r.closest] == [5, 6]
    auto = masking_table([5, 10], [128], "auto")
    assert [(r.T, r.blocks) for r in auto] == [(5, 5), (10, 6)]
    with pytest.raises(PretrainError, match="not divisible"):
        masking_table([5], [100], [4])


def test_config_validation_and_overrides():
    cfg = build_config(MaskingConfig, MASKING_PRESETS, "paper", overrides=["num_blocks=6", "replacement=bert"])
    assert cfg.num_blocks == 6 and cfg.replacement == "bert"
    assert build_config(MaskingConfig, overrides=["num_blocks=auto"]).num_blocks == "auto"
    with pytest.raises(ConfigError, match="num_blocks"):
        MaskingConfig(num_blocks=0)
    with pytest.raises(ConfigError, match="strategy"):
        build_config(MaskingConfig, overrides=["strategy=random"])
    with pytest.raises(ConfigError, match="ratio"):
        MaskingConfig(strategy="iid", ratio=1.5)


def test_bad_inputs_raise_clear_errors():
    tokens = torch.zeros(2, 3, 4, 4, dtype=torch.long)
    with pytest.raises(PretrainError, match="bool tensor shaped like tokens"):
        apply_mask(tokens, torch.zeros(2, 3, 4, dtype=torch.bool), VOCAB)
    with pytest.raises(PretrainError, match="integer tensor"):
        apply_mask(tokens.float(), tokens.bool(), VOCAB)
    with pytest.raises(PretrainError, match=r"\(B, T, H, W\)"):
        mask_tokens(tokens[0], MaskingConfig(), VOCAB)
    with pytest.raises(PretrainError, match="T: expected an integer >= 1"):
        block_mask(2, 0, 4, 4, 3)
    with pytest.raises(PretrainError, match="ratio"):
        iid_mask(2, 3, 4, 4, ratio=-0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_masks_equal_cpu_masks_for_a_cpu_generator():
    on_cpu = block_mask(16, 5, 16, 16, 5, _gen(21))
    on_cuda = block_mask(16, 5, 16, 16, 5, _gen(21), device="cuda")
    assert on_cuda.device.type == "cuda"
    assert torch.equal(on_cpu, on_cuda.cpu())
    tokens = _tokens_with_pad().cuda()
    out = mask_tokens(tokens, MaskingConfig(replacement="bert"), VOCAB, _gen(22))
    reference = mask_tokens(tokens.cpu(), MaskingConfig(replacement="bert"), VOCAB, _gen(22))
    for x, y in zip(out, reference):
        assert torch.equal(x.cpu(), y)
