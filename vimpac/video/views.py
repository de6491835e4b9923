"""The paper's fixed spatial views ("spatial augmentations") of a video.

VIMPAC pre-extracts tokens for a fixed set of views instead of augmenting on the fly
(paper, Appendix C and Table 4; the authors' `video2token` code):

1. resize so the shorter side is `scale * S` (scale 1 or 1.25; the paper's text says 1.5x, its
   Table 4 and the code say 1.25x, which is our default; `large_scale` changes it);
2. crop S x S at the top-left, the center or the bottom-right;
3. optionally flip horizontally. The flip is applied to the *crop* (as the authors' ffmpeg
   chain `scale -> crop -> hflip` does), so "top_left_flip" is the mirrored top-left crop.

The geometry follows the authors' code exactly: the resized size is
(floor(H * s / min(H, W)), floor(W * s / min(H, W))) with s = int(scale * S) on the shorter
side, and the crop offset along each axis is int(k * (resized - S) / 2) with k = 0, 1, 2 for
top-left, center, bottom-right. (Their ffmpeg used bicubic scaling; we use antialiased bilinear,
so pixels differ slightly but crops line up.)

Named view sets: "center" (pre-training and inference), "all12" (2 scales x 3 crops x 2
flips: downstream training), "noflip6" (2 x 3, no flip: datasets like SSV2 where left/right
matters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Sequence, get_args

import numpy as np

CropPosition = Literal["top_left", "center", "bottom_right"]
CROP_POSITIONS: tuple[str, ...] = get_args(CropPosition)
# How many half-margins the crop is shifted by: 0 = top-left, 1 = centered, 2 = bottom-right.
_CROP_OFFSET_FACTOR = {"top_left": 0, "center": 1, "bottom_right": 2}

DEFAULT_LARGE_SCALE = 1.25
VIEW_SET_NAMES = ("center", "all12", "noflip6")

# Frames resized per torch call: bounds peak memory for long videos.
_RESIZE_CHUNK = 64


@dataclass(frozen=True)
class ViewSpec:
    """One spatial view: resize the shorter side to `scale * S`, crop S x S at `crop`, maybe flip."""

    scale: float
    crop: CropPosition
    flip: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, (int, float)) and self.scale >= 1.0):
            raise ValueError(f"ViewSpec.scale must be a number >= 1 (the crop must fit), got {self.scale!r}")
        if self.crop not in CROP_POSITIONS:
            raise ValueError(f"ViewSpec.crop must be one of {CROP_POSITIONS}, got {self.crop!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"ViewSpec.flip must be a bool, got {self.flip!r}")

    @property
    def name(self) -> str:
        """Stable identifier, e.g. "s1.00_center" or "s1.25_top_left_flip" (used as a store key)."""
        return f"s{self.scale:.2f}_{self.crop}" + ("_flip" if self.flip else "")

    @classmethod
    def from_name(cls, name: str) -> "ViewSpec":
        """Inverse of `.name`."""
        text = name.strip()
        flip = text.endswith("_flip")
        if flip:
            text = text[: -len("_flip")]
        scale_part, _, crop = text.partition("_")
        try:
            if not scale_part.startswith("s"):
                raise ValueError
            scale = float(scale_part[1:])
        except ValueError:
            raise ValueError(
                f"bad view name {name!r}: expected 's<scale>_<crop>[_flip]', e.g. 's1.25_top_left_flip'"
            ) from None
        return cls(scale=scale, crop=crop, flip=flip)  # type: ignore[arg-type]


def view_set(name: str, large_scale: float = DEFAULT_LARGE_SCALE) -> tuple[ViewSpec, ...]:
    """A named set of views: "center", "all12" or "noflip6"."""
    if name == "center":
        return (ViewSpec(1.0, "center", False),)
    if name in ("all12", "noflip6"):
        flips = (False, True) if name == "all12" else (False,)
        return tuple(
            ViewSpec(scale, crop, flip)  # type: ignore[arg-type]
            for scale in (1.0, large_scale)
            for crop in CROP_POSITIONS
            for flip in flips
        )
    raise ValueError(f"unknown view set {name!r}: expected one of {VIEW_SET_NAMES}")


def resolve_views(
    spec: str | Sequence[ViewSpec], large_scale: float = DEFAULT_LARGE_SCALE
) -> tuple[ViewSpec, ...]:
    """Views from a set name ("all12"), a comma-separated list of view names
    ("s1.00_center,s1.25_top_left_flip"), or a sequence of `ViewSpec`. Duplicates are an error."""
    if isinstance(spec, str):
        if spec in VIEW_SET_NAMES:
            views = view_set(spec, large_scale)
        else:
            parts = [p for p in spec.split(",") if p.strip()]
            if not parts:
                raise ValueError(f"empty view specification {spec!r}")
            try:
                views = tuple(ViewSpec.from_name(p) for p in parts)
            except ValueError as exc:
                raise ValueError(f"{exc} (or a view set: {', '.join(VIEW_SET_NAMES)})") from None
    else:
        views = tuple(spec)
        for view in views:
            if not isinstance(view, ViewSpec):
                raise TypeError(f"views must be ViewSpec instances, got {type(view).__name__}")
    if not views:
        raise ValueError("no views given")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate views in {names}")
    return views


# ----------------------------------------------------------------------------------------------
# Geometry


def resized_shape(height: int, width: int, size: int, scale: float) -> tuple[int, int]:
    """(H', W') after resizing the shorter side to int(scale * size), as the authors' code does."""
    short = int(scale * size)
    if height >= width:
        return int(height * short / width), short
    return short, int(width * short / height)


def crop_box(resized_height: int, resized_width: int, size: int, crop: CropPosition) -> tuple[int, int]:
    """(top, left) of the size x size crop inside a resized frame."""
    if resized_height < size or resized_width < size:
        raise ValueError(f"cannot crop {size}x{size} from {resized_height}x{resized_width}")
    factor = _CROP_OFFSET_FACTOR[crop]
    return int(factor * (resized_height - size) / 2.0), int(factor * (resized_width - size) / 2.0)


# ----------------------------------------------------------------------------------------------
# Pixels


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of uint8 (T, H, W, 3) frames.

    Antialiasing matters when shrinking HD video to 128 px, where plain bilinear would alias
    badly. The frames stay uint8 and channels-last (the input's own layout): torch has a
    vectorized kernel for exactly that case, about 30x faster than resizing a float32 copy
    (bench/bench_decode.py), and within one grey level of it.
    """
    import torch
    import torch.nn.functional as F

    frames = _check_frames(frames)
    count, in_h, in_w, _ = frames.shape
    if (in_h, in_w) == (height, width):
        return frames.copy()
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    with torch.inference_mode():
        for start in range(0, count, _RESIZE_CHUNK):
            chunk = torch.from_numpy(frames[start : start + _RESIZE_CHUNK])
            y = F.interpolate(chunk.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", antialias=True,
                              align_corners=False)
            out[start : start + len(chunk)] = y.permute(0, 2, 3, 1).numpy()
    return out


def _crop_and_flip(resized: np.ndarray, size: int, view: ViewSpec) -> np.ndarray:
    top, left = crop_box(resized.shape[1], resized.shape[2], size, view.crop)
    crop = resized[:, top : top + size, left : left + size]
    if view.flip:
        crop = crop[:, :, ::-1]
    return np.ascontiguousarray(crop)


def make_view(frames: np.ndarray, size: int, view: ViewSpec) -> np.ndarray:
    """One view of uint8 (T, H, W, 3) frames: uint8 (T, size, size, 3)."""
    return make_views(frames, size, [view])[view.name]


def make_views(frames: np.ndarray, size: int, views: str | Sequence[ViewSpec]) -> dict[str, np.ndarray]:
    """Several views of the same frames, keyed by view name; resizes once per distinct scale."""
    frames = _check_frames(frames)
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    views = resolve_views(views)
    results: dict[str, np.ndarray] = {}
    by_scale: dict[float, list[ViewSpec]] = {}
    for view in views:
        by_scale.setdefault(view.scale, []).append(view)
    for scale, group in by_scale.items():
        height, width = resized_shape(frames.shape[1], frames.shape[2], size, scale)
        resized = resize_frames(frames, height, width)
        for view in group:
            results[view.name] = _crop_and_flip(resized, size, view)
    return {view.name: results[view.name] for view in views}


def make_views_of_chunks(chunks: Iterable[np.ndarray], count: int, size: int,
                         views: str | Sequence[ViewSpec]) -> dict[str, np.ndarray]:
    """`make_views` of `count` frames that come in chunks (`VideoReader.iter_frames`): the same
    arrays as `make_views(np.concatenate(chunks), size, views)`, but only one chunk of the
    (full-resolution) frames is held at a time; each chunk's views go straight into their rows.
    """
    views = resolve_views(views)
    if not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be an integer >= 0, got {count!r}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    results = {view.name: np.empty((count, size, size, 3), dtype=np.uint8) for view in views}
    done = 0
    for chunk in chunks:
        chunk_views = make_views(chunk, size, views)
        if done + len(chunk) > count:
            raise ValueError(f"the chunks hold more than the {count} frames announced")
        for name, array in chunk_views.items():
            results[name][done : done + len(chunk)] = array
        done += len(chunk)
        del chunk, chunk_views  # else the loop variable keeps this chunk alive while the next is decoded
    if done != count:
        raise ValueError(f"the chunks hold {done} frames, {count} were announced")
    return results


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return np.ascontiguousarray(frames)
