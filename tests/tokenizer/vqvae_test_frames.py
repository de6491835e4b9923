"""Tiny rendered videos for the VQ-VAE tests: coloured shapes moving over smooth textures.

Not a test module (no `test_` prefix); the VQ-VAE tests import it from their own folder.
"""

from __future__ import annotations

import numpy as np


def render_video(num_frames: int, size: int, seed: int) -> np.ndarray:
    """uint8 (T, size, size, 3): a low-frequency colour texture plus stripes as background,
    with two or three discs / rectangles moving in straight lines across it."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 215, size=(4, 4, 3))
    # Bilinear upsampling of a 4x4 grid gives a smooth texture without any image library.
    grid = np.linspace(0, 3, size)
    i0 = np.clip(np.floor(grid).astype(int), 0, 2)
    frac = grid - i0
    rows = coarse[i0] * (1 - frac)[:, None, None] + coarse[i0 + 1] * frac[:, None, None]
    background = rows[:, i0] * (1 - frac)[None, :, None] + rows[:, i0 + 1] * frac[None, :, None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    stripes = 20 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / rng.uniform(8, 20))
    background = background + stripes[..., None]

    shapes = []
    for _ in range(int(rng.integers(2, 4))):
        shapes.append({
            "kind": rng.choice(["disc", "rect"]),
            "pos": rng.uniform(0.2, 0.8, size=2) * size,
            "vel": rng.uniform(-0.06, 0.06, size=2) * size,
            "radius": rng.uniform(0.1, 0.2) * size,
            "color": rng.uniform(0, 255, size=3),
        })
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        img = background.copy()
        for shape in shapes:
            cy, cx = shape["pos"] + t * shape["vel"]
            r = shape["radius"]
            if shape["kind"] == "disc":
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= 0.7 * r)
            img[mask] = shape["color"]
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def render_frames(num_videos: int, frames_per_video: int, size: int, seed: int = 0) -> np.ndarray:
    """Frames of `num_videos` rendered videos stacked into one uint8 (N, size, size, 3) array."""
    return np.concatenate([render_video(frames_per_video, size, seed * 1000 + v) for v in range(num_videos)])


def fast_train_args(steps: int) -> list[str]:
    """`vimpac train-tokenizer` options for a narrow network and few steps: tests of the
    plumbing, not of the quality."""
    return ["--size", "32", "--fps", "4", "--steps", str(steps), "--batch-size", "8", "--codebook-size", "16",
            "--set", "width=8", "--set", "code_dim=8", "--quiet"]


def write_clips(folder, count: int = 3):
    """`count` 8-frame 48x48 videos folder/video{i}.mp4 at 4 fps (distinct seeds); returns folder."""
    from vimpac.video.writer import write_video

    for i in range(count):
        write_video(folder / f"video{i}.mp4", render_video(8, 48, seed=i), fps=4)
    return folder
