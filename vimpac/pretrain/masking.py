"""Masking for mask-then-predict: block masking, i.i.d. masking, and the replacement step.

Block masking (paper Sec. 3.1 and App. B.1, and the authors' `mask_3d`): each of N blocks
draws its lengths uniformly in [1, floor(2T/3)] x [1, H//2] x [1, W//2] and its start
uniformly among the positions where it fits; the mask is the union of the N blocks, and PAD
positions are never masked. The paper's text says the temporal limit is "2/3, round up", but
the authors' code uses floor and only floor reproduces the paper's Table 2 (see
`induced_masking_ratio` and docs/pretraining.md), so floor is what we do.

Everything is vectorised over the batch and the blocks: the block bounds are drawn as
(B, N, 3) tensors, each axis becomes an interval indicator (B, N, L) by comparing an arange
with the bounds, and the union over blocks is one batched matrix product of those indicators
(a position is covered iff the count of blocks covering it is non-zero). Random numbers come
from a `torch.Generator` on the generator's device, so a seed gives the same masks whatever
device the mask is finally built on.

The induced masking ratio is known exactly: with independent blocks the probability that one
block covers position (t, i, j) factorises over the axes, p = p_T(t) p_H(i) p_W(j), and the
union of N blocks covers it with probability 1 - (1 - p)^N. `auto_num_blocks` picks the block
count whose ratio is closest to BERT's 15%, as the paper does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, NamedTuple, Sequence

import numpy as np
import torch

from vimpac.config import ConfigError
from vimpac.pretrain.errors import PretrainError
from vimpac.tokens import Vocab

IGNORE_INDEX = -100
"""Label of positions that carry no masked-token loss (torch's cross-entropy default)."""

BERT_PROPORTIONS = (0.8, 0.1, 0.1)
"""Of the masked positions: replaced by [MASK], by a random code, kept unchanged (App. G.3)."""

MAX_AUTO_BLOCKS = 4096
# Bounds of the exact ratio and of sampled masks in the analysis commands (`masking-table`,
# `analyze masks`), so that a slip (a size in pixels where tokens are meant) is a clear error
# rather than memory exhausted. The paper's largest input, 10 x 32 x 32 tokens, is far inside.
MAX_AXIS_TOKENS = 1024
"""Tokens along T, H or W (the exact expected ratio costs the square of each)."""
MAX_CLIP_TOKENS = 1 << 20
"""T x H x W tokens of one sampled mask."""

Strategy = Literal["block", "iid"]
Replacement = Literal["mask", "bert"]


@dataclass(frozen=True)
class MaskingConfig:
    """How pre-training inputs are masked.

    strategy:     "block" (the paper's default) or "iid" (each position with probability `ratio`).
    num_blocks:   block count for "block", or "auto" = the count whose induced ratio is closest
                  to `target_ratio` for the input's T x H x W (5 at 5x16x16, 6 at 5x32x32).
    ratio:        masking probability for "iid".
    replacement:  "mask" puts [MASK] at every masked position (the paper's default); "bert"
                  uses BERT's 80% [MASK] / 10% random code / 10% unchanged (App. G.3).
    target_ratio: the ratio "auto" aims at (BERT's 15%).
    """

    strategy: Strategy = "block"
    num_blocks: int | Literal["auto"] = "auto"
    ratio: float = 0.15
    replacement: Replacement = "mask"
    target_ratio: float = 0.15

    def __post_init__(self) -> None:
        if self.strategy not in ("block", "iid"):
            raise ConfigError(f"masking.strategy: expected 'block' or 'iid', got {self.strategy!r}")
        if self.replacement not in ("mask", "bert"):
            raise ConfigError(f"masking.replacement: expected 'mask' or 'bert', got {self.replacement!r}")
        if self.num_blocks != "auto" and (
            isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int) or self.num_blocks < 1
        ):
            raise ConfigError(f"masking.num_blocks: expected a positive integer or 'auto', got {self.num_blocks!r}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ConfigError(f"masking.ratio: expected a probability in [0, 1], got {self.ratio!r}")
        if not 0.0 < self.target_ratio < 1.0:
            raise ConfigError(f"masking.target_ratio: expected a value in (0, 1), got {self.target_ratio!r}")


MASKING_PRESETS: dict[str, MaskingConfig] = {
    "paper": MaskingConfig(),
    "iid": MaskingConfig(strategy="iid", ratio=0.15),
    "bert": MaskingConfig(replacement="bert"),
}


class MaskedTokens(NamedTuple):
    inputs: torch.Tensor  # (B, T, H, W) int64: model input with [MASK] / random codes placed
    labels: torch.Tensor  # (B, T, H, W) int64: original code at masked positions, -100 elsewhere
    mask: torch.Tensor  # (B, T, H, W) bool: the positions that carry a label (PAD excluded)


# ---------------------------------------------------------------------------------------------
# Block masking


def block_length_limits(T: int, H: int, W: int) -> tuple[int, int, int]:
    """The largest block along each axis: floor(2T/3), H//2, W//2 (at least 1 each).

    The floor of 2T/3 is the authors' code (`l * 2 // 3`) and matches Table 2; the paper's
    "round up" does not. The authors' code fails for a 1-long axis; we allow 1-long blocks.
    """
    _check_grid(T, H, W)
    return max(1, (2 * T) // 3), max(1, H // 2), max(1, W // 2)


def sample_blocks(
    batch: int,
    T: int,
    H: int,
    W: int,
    num_blocks: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `num_blocks` boxes per sample: (starts, lengths), int64 (batch, num_blocks, 3) in
    (t, h, w) order, on the generator's device.

    Lengths are uniform in [1, limit]; given a length l on an axis of size L, the start is
    uniform in [0, L - l], so every block lies inside the grid.
    """
    _check_count("batch", batch, minimum=0)
    _check_count("num_blocks", num_blocks, minimum=0)
    limits = block_length_limits(T, H, W)
    device = generator.device if generator is not None else torch.device("cpu")
    # float64 uniforms: floor(u * n) is exactly uniform on 0..n-1 for the small n used here.
    u = torch.rand((batch, num_blocks, 2, 3), generator=generator, dtype=torch.float64, device=device)
    max_len = torch.tensor(limits, dtype=torch.float64, device=device)
    sizes = torch.tensor((T, H, W), dtype=torch.int64, device=device)
    lengths = (u[:, :, 0] * max_len).floor().long() + 1
    starts = (u[:, :, 1] * (sizes - lengths + 1)).floor().long()
    return starts, lengths


def boxes_to_mask(starts: torch.Tensor, lengths: torch.Tensor, T: int, H: int, W: int) -> torch.Tensor:
    """The union of boxes (B, N, 3) as a bool mask (B, T, H, W), without a loop over B or N.

    Each axis gives an interval indicator (B, N, L). The number of boxes covering (t, h, w) is
    sum_n ind_T[n, t] * ind_H[n, h] * ind_W[n, w], a batched (T*H, N) @ (N, W) product; the
    position is masked iff that count is non-zero. This needs O(B (N T H + T H W)) memory
    instead of the O(B N T H W) of a broadcast-then-any union.
    """
    if starts.shape != lengths.shape or starts.dim() != 3 or starts.shape[-1] != 3:
        raise PretrainError(
            f"boxes_to_mask: expected starts and lengths of shape (B, N, 3), got {tuple(starts.shape)} "
            f"and {tuple(lengths.shape)}"
        )
    batch, num_blocks = starts.shape[:2]
    ends = starts + lengths
    indicators = []
    for axis, size in enumerate((T, H, W)):  # three axes, not a loop over samples or blocks
        position = torch.arange(size, device=starts.device)
        inside = (position >= starts[:, :, axis, None]) & (position < ends[:, :, axis, None])
        indicators.append(inside.to(torch.float32))
    in_t, in_h, in_w = indicators
    in_th = (in_t[:, :, :, None] * in_h[:, :, None, :]).reshape(batch, num_blocks, T * H)
    # Autocast (if the caller is inside one) may run this in bf16; counts of 0/1 products are
    # non-zero exactly when some box covers the position, whatever the precision.
    counts = torch.bmm(in_th.transpose(1, 2), in_w)
    return (counts > 0).reshape(batch, T, H, W)


def block_mask(
    batch: int,
    T: int,
    H: int,
    W: int,
    num_blocks: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Union of `num_blocks` random blocks per sample: bool (batch, T, H, W) on `device`.

    PAD is not known here; `apply_mask` removes PAD positions from the mask.
    """
    starts, lengths = sample_blocks(batch, T, H, W, num_blocks, generator)
    if device is not None:
        starts, lengths = starts.to(device), lengths.to(device)
    return boxes_to_mask(starts, lengths, T, H, W)


def iid_mask(
    batch: int,
    T: int,
    H: int,
    W: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Each position masked independently with probability `ratio` (paper Eq. 2)."""
    _check_count("batch", batch, minimum=0)
    _check_grid(T, H, W)
    if not 0.0 <= ratio <= 1.0:
        raise PretrainError(f"iid_mask: ratio must be a probability in [0, 1], got {ratio!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    mask = torch.rand((batch, T, H, W), generator=generator, device=gen_device) < ratio
    return mask if device is None else mask.to(device)


# ---------------------------------------------------------------------------------------------
# Replacement


def apply_mask(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    vocab: Vocab,
    mode: Replacement = "mask",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace masked tokens and build the labels: (inputs, labels), both int64 like `tokens`.

    PAD positions are removed from the mask first (`mask & (tokens != pad_id)`), so PAD is
    never replaced and never labelled. Labels hold the original code at every masked position
    (in "bert" mode too, including the 10% left unchanged) and -100 elsewhere.
    """
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise PretrainError(f"apply_mask: tokens must be an integer tensor, got dtype {tokens.dtype}")
    if mask.dtype != torch.bool or mask.shape != tokens.shape:
        raise PretrainError(
            f"apply_mask: mask must be a bool tensor shaped like tokens {tuple(tokens.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if mode not in ("mask", "bert"):
        raise PretrainError(f"apply_mask: mode must be 'mask' or 'bert', got {mode!r}")
    tokens = tokens.long()
    mask = mask.to(tokens.device) & (tokens != vocab.pad_id)
    labels = tokens.masked_fill(~mask, IGNORE_INDEX)
    if mode == "mask":
        return tokens.masked_fill(mask, vocab.mask_id), labels

    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(tokens.shape, generator=generator, device=gen_device).to(tokens.device)
    random_codes = torch.randint(
        0, vocab.codebook_size, tokens.shape, generator=generator, device=gen_device
    ).to(tokens.device)
    p_mask, p_random, _ = BERT_PROPORTIONS
    to_mask = mask & (u < p_mask)
    to_random = mask & (u >= p_mask) & (u < p_mask + p_random)
    inputs = torch.where(to_random, random_codes, tokens).masked_fill(to_mask, vocab.mask_id)
    return inputs, labels


def mask_tokens(
    tokens: torch.Tensor,
    config: MaskingConfig,
    vocab: Vocab,
    generator: torch.Generator | None = None,
) -> MaskedTokens:
    """Mask a batch of token grids (B, T, H, W) as `config` says; the trainer's one call."""
    if tokens.dim() != 4:
        raise PretrainError(f"mask_tokens: expected tokens of shape (B, T, H, W), got {tuple(tokens.shape)}")
    batch, T, H, W = tokens.shape
    if config.strategy == "block":
        mask = block_mask(batch, T, H, W, resolve_num_blocks(config, T, H, W), generator, tokens.device)
    else:
        mask = iid_mask(batch, T, H, W, config.ratio, generator, tokens.device)
    inputs, labels = apply_mask(tokens, mask, vocab, config.replacement, generator)
    return MaskedTokens(inputs, labels, labels != IGNORE_INDEX)


def resolve_num_blocks(config: MaskingConfig, T: int, H: int, W: int) -> int:
    if config.num_blocks == "auto":
        return auto_num_blocks(T, H, W, config.target_ratio)
    return int(config.num_blocks)


# ---------------------------------------------------------------------------------------------
# Induced masking ratio


def axis_coverage(size: int, max_length: int) -> np.ndarray:
    """P(one block covers position x) along one axis, for x in 0..size-1 (float64).

    p(x) = 1/M * sum_{l=1..M} #{starts s in [0, size-l] with s <= x < s+l} / (size - l + 1).
    """
    if not 1 <= max_length <= size:
        raise PretrainError(f"axis_coverage: need 1 <= max_length <= size, got {max_length} and {size}")
    x = np.arange(size)[:, None]
    lengths = np.arange(1, max_length + 1)[None, :]
    first_start = np.maximum(0, x - lengths + 1)
    last_start = np.minimum(x, size - lengths)
    covering = np.maximum(0, last_start - first_start + 1)
    return (covering / (size - lengths + 1)).sum(axis=1) / max_length


def induced_masking_ratio(T: int, H: int, W: int, num_blocks: int) -> float:
    """Exact expected fraction of masked positions for the union of `num_blocks` blocks."""
    _check_count("num_blocks", num_blocks, minimum=0)
    limit_t, limit_h, limit_w = block_length_limits(T, H, W)
    p = (
        axis_coverage(T, limit_t)[:, None, None]
        * axis_coverage(H, limit_h)[None, :, None]
        * axis_coverage(W, limit_w)[None, None, :]
    )
    return float(np.mean(1.0 - (1.0 - p) ** num_blocks))


@functools.lru_cache(maxsize=256)
def auto_num_blocks(T: int, H: int, W: int, target: float = 0.15) -> int:
    """The block count whose induced ratio is closest to `target` (ties go to fewer blocks).

    The ratio grows strictly with the count (every position has p > 0), so the search stops at
    the first count reaching the target and compares it with the one before.
    """
    if not 0.0 < target < 1.0:
        raise PretrainError(f"auto_num_blocks: target must be in (0, 1), got {target!r}")
    previous = induced_masking_ratio(T, H, W, 1)
    if previous >= target:
        return 1
    for count in range(2, MAX_AUTO_BLOCKS + 1):
        ratio = induced_masking_ratio(T, H, W, count)
        if ratio >= target:
            return count if ratio - target < target - previous else count - 1
        previous = ratio
    raise PretrainError(f"auto_num_blocks: no count up to {MAX_AUTO_BLOCKS} reaches {target} at {T}x{H}x{W}")


def monte_carlo_masking_ratio(
    T: int,
    H: int,
    W: int,
    num_blocks: int,
    samples: int,
    generator: torch.Generator | None = None,
    chunk: int = 4096,
) -> tuple[float, float]:
    """Masking ratio estimated by running the sampler: (mean, standard error of the mean)."""
    _check_count("samples", samples, minimum=2)
    per_sample = []
    for begin in range(0, samples, chunk):
        size = min(chunk, samples - begin)
        mask = block_mask(size, T, H, W, num_blocks, generator)
        per_sample.append(mask.flatten(1).double().mean(1))
    ratios = torch.cat(per_sample)
    return float(ratios.mean()), float(ratios.std() / samples**0.5)


class MaskingTableRow(NamedTuple):
    T: int
    S: int
    blocks: int
    ratio: float  # a fraction in [0, 1]
    closest: bool  # this block count is the one closest to the target ratio


def masking_table(
    frames: Sequence[int],
    sizes: Sequence[int],
    blocks: Sequence[int] | Literal["auto"],
    downsample: int = 8,
    target: float = 0.15,
) -> list[MaskingTableRow]:
    """Induced ratios for each clip length T, frame size S (token map S // downsample) and block
    count, as the paper's Table 2; `blocks="auto"` gives one row per (T, S) with its auto count."""
    _check_count("downsample", downsample, minimum=1)
    rows = []
    for T in frames:
        for S in sizes:
            if S % downsample:
                raise PretrainError(f"masking_table: frame size {S} is not divisible by the downsample {downsample}")
            side = S // downsample
            if max(T, side) > MAX_AXIS_TOKENS:
                raise PretrainError(f"masking_table: T = {T}, S = {S} gives {T} x {side} x {side} tokens; expected at "
                                    f"most {MAX_AXIS_TOKENS} along each axis (S is in pixels: 128 for 16 x 16 tokens)")
            best = auto_num_blocks(T, side, side, target)
            counts = [best] if blocks == "auto" else list(blocks)
            for count in counts:
                ratio = induced_masking_ratio(T, side, side, count)
                rows.append(MaskingTableRow(T, S, count, ratio, count == best))
    return rows


# ---------------------------------------------------------------------------------------------


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise PretrainError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _check_grid(T: int, H: int, W: int) -> None:
    for name, value in (("T", T), ("H", H), ("W", W)):
        _check_count(name, value, minimum=1)
