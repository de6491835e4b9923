"""The paper's Figure 4 experiment (App. H.2): how much of mask-then-predict is solved by copying.

For block masking and i.i.d. masking at the same ratios, every masked token is filled with its
nearest visible neighbour (`vimpac.analysis.copy_fill`), spatially (same frame) and
spatio-temporally, and the token accuracy of that fill is measured on clips of a token store.
The paper's point: i.i.d. masks are largely solved by copying, block masks are not.

    clips = load_clips(store, frames=5, videos=16, seed=0)
    result = run_copy_baseline(clips, CopyBaselineConfig(ratios=(0.15, 0.30, 0.45)))
    print(result.format_table())

Block masking takes, for each target ratio, the block count whose *exact* expected ratio
(`induced_masking_ratio`) is closest to the target (`auto_num_blocks`), so both strategies mask
about the same number of tokens. Both neighbourhoods are evaluated on the same sampled masks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vimpac.analysis.copy_fill import NEIGHBOURHOODS, NO_SOURCE, copy_accuracy, copy_fill
from vimpac.analysis.errors import AnalysisError
from vimpac.analysis.images import compose_grid, highlight, save_png
from vimpac.pretrain.masking import auto_num_blocks, block_mask, iid_mask, induced_masking_ratio
from vimpac.store.reader import TokenStore
from vimpac.tokenizer.base import FrameTokenizer

STRATEGIES = ("block", "iid")
UNFILLED_GRAY = 128
"""Pixel value painted over tokens that had no visible neighbour to copy from."""
REPORT_FILE = "copy_baseline.json"
PICTURE_NAME = re.compile(rf"copy_({'|'.join(STRATEGIES)})_\d{{2}}(\.\d{{1,4}})?\.png")
"""The names `draw_setting` pictures get in the output folder (`copy_<SettingResult.name>.png`)."""


@dataclass(frozen=True)
class CopyBaselineConfig:
    ratios: tuple[float, ...] = (0.15, 0.30, 0.45)
    """Target masking ratios (the paper's Figure 4 uses 15% and 45%)."""
    videos: int = 16
    """Clips evaluated: one clip from each of this many videos (fewer if the store has fewer)."""
    frames: int = 5
    """Clip length T (the paper's pre-training length)."""
    seed: int = 0
    """Seeds the choice of videos, the clip starts and the masks."""

    def __post_init__(self) -> None:
        if not self.ratios or any(not 0.0 < r < 1.0 for r in self.ratios):
            raise AnalysisError(f"ratios: expected values in (0, 1), got {list(self.ratios)}")
        if self.videos < 1 or self.frames < 1:
            raise AnalysisError(f"videos and frames must be >= 1, got videos={self.videos}, frames={self.frames}")
        # Each setting's picture and report key is named by its ratio; two ratios with one name
        # would overwrite one picture with the other.
        by_label: dict[str, float] = {}
        for ratio in self.ratios:
            label = ratio_label(ratio)
            if label in by_label:
                raise AnalysisError(f"ratios: {by_label[label]!r} and {ratio!r} both name the setting "
                                    f"<strategy>_{label}; give distinct ratios")
            by_label[label] = ratio


def ratio_label(ratio: float) -> str:
    """The ratio in percent for file and report names: two digits for whole percents ("15",
    "05"), otherwise as many decimals as it needs, up to four ("15.1", "12.25")."""
    percent = round(ratio * 100, 4)
    if percent == int(percent):
        return f"{int(percent):02d}"
    return f"{percent:.4f}".rstrip("0")


@dataclass(frozen=True)
class Clips:
    tokens: torch.Tensor  # (B, T, H, W) int64
    keys: tuple[str, ...]  # video key of each clip
    starts: tuple[int, ...]  # first frame of each clip in its video
    skipped_short: int  # videos with fewer than T frames, not used


@dataclass
class SettingResult:
    """One (strategy, ratio) setting: its masks, and per neighbourhood the fill and its accuracy."""

    strategy: str
    target_ratio: float
    num_blocks: int | None
    expected_ratio: float  # exact expectation: induced_masking_ratio for block, the ratio for iid
    mask: torch.Tensor  # (B, T, H, W) bool
    filled: dict[str, torch.Tensor] = field(default_factory=dict)  # neighbourhood -> (B, T, H, W)
    correct: dict[str, int] = field(default_factory=dict)

    @property
    def masked(self) -> int:
        return int(self.mask.sum())

    @property
    def measured_ratio(self) -> float:
        return self.masked / max(1, self.mask.numel())

    def accuracy(self, neighbourhood: str) -> float:
        return self.correct[neighbourhood] / self.masked if self.masked else float("nan")

    def unfilled(self, neighbourhood: str) -> int:
        return int(((self.filled[neighbourhood] == NO_SOURCE) & self.mask).sum())

    @property
    def name(self) -> str:
        return f"{self.strategy}_{ratio_label(self.target_ratio)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "target_ratio": self.target_ratio, "num_blocks": self.num_blocks,
            "expected_ratio": self.expected_ratio, "measured_ratio": self.measured_ratio, "masked": self.masked,
            "copy_accuracy": {n: self.accuracy(n) for n in self.filled},
            "correct": dict(self.correct), "unfilled": {n: self.unfilled(n) for n in self.filled},
        }


@dataclass
class CopyBaselineResult:
    clips: Clips
    config: CopyBaselineConfig
    settings: list[SettingResult]

    def to_json(self) -> dict[str, Any]:
        B, T, H, W = self.clips.tokens.shape
        return {
            "clips": B, "frames": T, "grid": [H, W], "seed": self.config.seed,
            "videos": list(self.clips.keys), "starts": list(self.clips.starts),
            "skipped_short_videos": self.clips.skipped_short,
            "settings": [s.to_json() for s in self.settings],
        }

    def format_table(self) -> str:
        B, T, H, W = self.clips.tokens.shape
        header = (f"copy-paste baseline: {B} clips of {T} x {H} x {W} tokens; token accuracy of copying the "
                  "nearest visible neighbour")
        cols = ["strategy", "target", "blocks", "expected", "masked", "acc spatial", "acc spatio-temporal"]
        lines = [header, "  ".join(f"{c:>19}" if i >= 5 else f"{c:>8}" for i, c in enumerate(cols))]
        for s in self.settings:
            cells = [s.strategy, f"{s.target_ratio * 100:.4g}%", "-" if s.num_blocks is None else str(s.num_blocks),
                     f"{s.expected_ratio:.1%}", f"{s.measured_ratio:.1%}"]
            row = "  ".join(f"{c:>8}" for c in cells)
            row += "  " + "  ".join(f"{s.accuracy(n):>19.1%}" for n in NEIGHBOURHOODS)
            lines.append(row)
        return "\n".join(lines)


def load_clips(store: TokenStore, frames: int, videos: int, seed: int = 0) -> Clips:
    """One T-frame clip (random start) from each of `videos` randomly chosen videos of the store.

    Each video contributes one view (the centre view when the store has it) so that clips are
    distinct footage; videos shorter than T are skipped (PAD would look like copyable content).
    """
    rng = np.random.default_rng(seed)
    preferred = "s1.00_center" if "s1.00_center" in store.views else store.views[0]
    long_enough: list[tuple[str, int]] = []
    skipped = 0
    for key in store.keys():
        entries = store.entries_of(key)
        index = entries.get(preferred, next(iter(entries.values())))
        if store.tokens(index).shape[0] >= frames:
            long_enough.append((key, index))
        else:
            skipped += 1
    if not long_enough:
        raise AnalysisError(f"{store.root}: no video has the {frames} frames a clip needs "
                            f"({skipped} shorter videos); pass a smaller --frames")
    chosen = sorted(rng.choice(len(long_enough), size=min(videos, len(long_enough)), replace=False))
    clips, keys, starts = [], [], []
    for position in chosen:
        key, index = long_enough[position]
        length = store.tokens(index).shape[0]
        start = int(rng.integers(0, length - frames + 1))
        clips.append(torch.from_numpy(store.clip(index, start, frames).astype(np.int64)))
        keys.append(key)
        starts.append(start)
    return Clips(torch.stack(clips), tuple(keys), tuple(starts), skipped)


def sample_mask(strategy: str, ratio: float, shape: Sequence[int],
                generator: torch.Generator) -> tuple[torch.Tensor, int | None, float]:
    """(mask (B, T, H, W), block count or None, exact expected ratio) for one setting."""
    batch, T, H, W = shape
    if strategy == "block":
        count = auto_num_blocks(T, H, W, ratio)
        return block_mask(batch, T, H, W, count, generator), count, induced_masking_ratio(T, H, W, count)
    if strategy == "iid":
        return iid_mask(batch, T, H, W, ratio, generator), None, ratio
    raise AnalysisError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")


def run_copy_baseline(clips: Clips, config: CopyBaselineConfig) -> CopyBaselineResult:
    """Every (strategy, ratio) setting, with both neighbourhoods on the same masks."""
    generator = torch.Generator().manual_seed(config.seed)
    settings = []
    for strategy in STRATEGIES:
        for ratio in config.ratios:
            mask, count, expected = sample_mask(strategy, ratio, clips.tokens.shape, generator)
            setting = SettingResult(strategy, ratio, count, expected, mask)
            for neighbourhood in NEIGHBOURHOODS:
                filled = copy_fill(clips.tokens, mask, neighbourhood).tokens
                setting.filled[neighbourhood] = filled
                setting.correct[neighbourhood] = copy_accuracy(clips.tokens, mask, filled)[0]
            settings.append(setting)
    return CopyBaselineResult(clips, config, settings)


def draw_setting(tokenizer: FrameTokenizer, clips: Clips, setting: SettingResult, path: str | Path,
                 show: int = 1) -> Path:
    """PNG grid for one setting: per shown clip the rows original | masked | copy (spatial) |
    copy (spatio-temporal), each decoded by the tokenizer. Tokens with nothing to copy are gray."""
    rows, labels = [], []
    for b in range(min(show, clips.tokens.shape[0])):
        original = _decode(tokenizer, clips.tokens[b])
        mask = setting.mask[b].numpy()
        rows += [original, highlight(original, mask, tokenizer.downsample)]
        # As many decimals as the ratio has (0.151 -> 15.1%): settings that differ in them, which the
        # file names tell apart, would be labelled alike at whole percents.
        labels += [f"{clips.keys[b]} original", f"{setting.strategy} {round(setting.target_ratio * 100, 4):g}% masked"]
        for neighbourhood in NEIGHBOURHOODS:
            rows.append(_decode(tokenizer, setting.filled[neighbourhood][b]))
            labels.append(f"copy {neighbourhood} ({setting.accuracy(neighbourhood):.0%} all clips)")
    image, _ = compose_grid(rows, labels)
    return save_png(path, image)


def _decode(tokenizer: FrameTokenizer, ids: torch.Tensor) -> np.ndarray:
    """Decode (T, h, w) ids to uint8 frames; NO_SOURCE cells are decoded as code 0, then painted gray."""
    frames = tokenizer.decode(ids.clamp(min=0)).numpy().copy()
    unfilled = (ids == NO_SOURCE).numpy()
    if unfilled.any():
        factor = tokenizer.downsample
        pixels = unfilled.repeat(factor, axis=1).repeat(factor, axis=2)
        frames[pixels] = UNFILLED_GRAY
    return frames
