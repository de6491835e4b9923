"""A synthetic, temporally-heavy video classification benchmark (in the spirit of SSV2 / Diving48).

Real datasets cannot be downloaded everywhere, so vimpac generates its own: short clips of
shapes moving over crops of real photos, labelled by the *motion* (moving left vs right,
approaching vs receding, rotating clockwise vs counter-clockwise, ...). Every class has a
time-reversed partner drawn from the same parameter distribution (see
`vimpac.data.synthetic_render`), so a single frame carries no information about the label.

    cfg = SyntheticConfig(train_per_class=40, val_per_class=15)
    summary = generate_benchmark("data/synthetic", cfg)      # labelled train / val
    summary = summary.merge(generate_uncurated("data/synthetic", cfg))  # long unlabelled videos
    print(summary.format_table())

Output layout (MMAction2 "relative/path label" lists, label i = line i of classes.txt):

    OUT/synthetic.json                      the generation config, class list, background sources
    OUT/classes.txt, train.txt, val.txt
    OUT/videos/<class>/<class>_<split>_<index>.mp4
    OUT/uncurated.txt                       relative paths, one per line, no label
    OUT/uncurated/uncurated_<index>.mp4
    OUT/uncurated_events.json               what happens when in each uncurated video

Every video is seeded from (seed, split, class, index), written atomically, and skipped when
it already exists, so an interrupted run resumes where it stopped and a re-run is a no-op.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from vimpac.config import ConfigError, to_dict
from vimpac.data.synthetic_render import (
    BACKGROUND_KINDS,
    CLASS_NAMES,
    REVERSED_PAIRS,
    BackgroundError,
    default_workers,
    partner,
    render_event,
    background_sources,
)
from vimpac.io import atomic_write_json, atomic_write_text
from vimpac.workers import WORKERS_DIE_ON_START, exit_with_parent, worker_can_start

__all__ = [
    "CLASS_NAMES",
    "REVERSED_PAIRS",
    "SYNTHETIC_PRESETS",
    "BackgroundError",
    "SplitSummary",
    "SyntheticConfig",
    "SyntheticError",
    "SyntheticSummary",
    "UncuratedEvent",
    "generate_benchmark",
    "generate_uncurated",
    "partner",
    "render_uncurated",
    "render_video",
    "uncurated_schedule",
    "video_rng",
]

#: Bump when rendering changes what a seed produces; a folder made by another version is refused.
#: 2: the camera of an uncurated video goes on across an event without a cut (it jumped).
RENDER_VERSION = 2
MANIFEST_NAME = "synthetic.json"
SPLIT_IDS = {"train": 0, "val": 1, "uncurated": 2}


class SyntheticError(RuntimeError):
    """The output folder cannot be used (e.g. it holds a benchmark made with another config)."""


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Sizes are in pixels, durations in frames at `fps` (the source rate).

    Fields that change video content (everything but the class list and the counts) must
    match when resuming into an existing folder.
    """

    classes: tuple[str, ...] = CLASS_NAMES
    train_per_class: int = 40
    val_per_class: int = 15
    num_frames: int = 32  # 4 s at 8 fps; the demo samples 4 fps -> 16 frames
    fps: float = 8.0
    height: int = 128
    width: int = 128
    seed: int = 0
    codec: Literal["h264", "mpeg4"] = "h264"
    crf: int = 20  # H.264 quality; 20 is visually clean: ~65 kB per default 4-s 128x128 clip
    backgrounds: Literal["photos", "plain", "noise"] = "photos"
    noise_std: float = 0.02  # per-video pixel noise sigma is drawn from [0, noise_std] (of 1.0)
    camera_jitter: float = 0.02  # max camera shake, as a fraction of the shorter frame side
    distractor_prob: float = 0.3  # chance of 1-2 static distractor objects
    # Uncurated mode (stands in for HowTo100M): long videos, one event after another.
    uncurated_videos: int = 40
    uncurated_seconds: float = 30.0
    event_seconds: tuple[float, float] = (2.0, 5.0)
    cut_prob: float = 0.5  # chance that an event starts with a new background (a cut)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("classes: expected at least one class name")
        unknown = [name for name in self.classes if name not in CLASS_NAMES]
        if unknown:
            raise ConfigError(f"classes: unknown class name(s) {unknown}; known: {list(CLASS_NAMES)}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"classes: duplicate class names in {list(self.classes)}")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "event_seconds", tuple(float(s) for s in self.event_seconds))
        for name in ("train_per_class", "val_per_class", "uncurated_videos"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: expected a count >= 0, got {getattr(self, name)}")
        if self.num_frames < 4:
            raise ConfigError(f"num_frames: expected >= 4 frames per video, got {self.num_frames}")
        if not self.fps > 0:
            raise ConfigError(f"fps: expected a positive frame rate, got {self.fps}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value < 32 or value % 2:
                raise ConfigError(f"{name}: expected an even number of pixels >= 32 (H.264 4:2:0), got {value}")
        if self.codec not in ("h264", "mpeg4"):
            raise ConfigError(f"codec: expected 'h264' or 'mpeg4', got {self.codec!r}")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"crf: expected 0..51, got {self.crf}")
        if self.backgrounds not in BACKGROUND_KINDS:
            raise ConfigError(f"backgrounds: expected one of {list(BACKGROUND_KINDS)}, got {self.backgrounds!r}")
        if not 0.0 <= self.noise_std <= 0.5:
            raise ConfigError(f"noise_std: expected 0..0.5, got {self.noise_std}")
        if not 0.0 <= self.camera_jitter <= 0.1:
            raise ConfigError(f"camera_jitter: expected 0..0.1 of the frame side, got {self.camera_jitter}")
        for name in ("distractor_prob", "cut_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: expected a probability in [0, 1], got {getattr(self, name)}")
        if len(self.event_seconds) != 2 or not 0 < self.event_seconds[0] <= self.event_seconds[1]:
            raise ConfigError(f"event_seconds: expected (min, max) with 0 < min <= max, got {self.event_seconds}")
        if round(self.event_seconds[0] * self.fps) < 4:
            raise ConfigError(
                f"event_seconds: the shortest event must span >= 4 frames at fps={self.fps}, got {self.event_seconds[0]} s"
            )
        if self.uncurated_videos and self.uncurated_seconds < self.event_seconds[0]:
            raise ConfigError(
                f"uncurated_seconds: expected >= the shortest event ({self.event_seconds[0]} s), got {self.uncurated_seconds}"
            )

    @property
    def seconds(self) -> float:
        """Duration of a labelled video."""
        return self.num_frames / self.fps

    @property
    def uncurated_frames(self) -> int:
        return int(round(self.uncurated_seconds * self.fps))

    def label(self, class_name: str) -> int:
        return self.classes.index(class_name)


SYNTHETIC_PRESETS: dict[str, SyntheticConfig] = {
    # The demo's data: 14 classes x (40 + 15) clips of 4 s at 8 fps, 128x128, + 40 x 30 s uncurated.
    "default": SyntheticConfig(),
    # The same at 64x64, for a VQ-VAE at frame size 64.
    "small": SyntheticConfig(height=64, width=64),
    # A few seconds to generate: smoke tests and trying the pipeline end to end.
    "tiny": SyntheticConfig(
        train_per_class=4, val_per_class=2, num_frames=16, height=64, width=64,
        uncurated_videos=2, uncurated_seconds=8.0,
    ),
}

# Fields that do not change any video's content: a resumed run may change them.
_RESUMABLE_FIELDS = {"classes", "train_per_class", "val_per_class", "uncurated_videos"}


# ---------------------------------------------------------------------------------------------
# Rendering (pure functions of the config and a seed)
# ---------------------------------------------------------------------------------------------


def video_rng(seed: int, split: str, index: int, class_name: str | None = None, part: int = 0) -> np.random.Generator:
    """The generator for one video (or one event of an uncurated video).

    The class enters by its index in the full `CLASS_NAMES`, not in `cfg.classes`, so a video
    is the same whichever subset of classes is generated.
    """
    class_id = CLASS_NAMES.index(class_name) if class_name is not None else len(CLASS_NAMES)
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], class_id, index, part]))


def render_video(class_name: str, rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """One labelled clip of `class_name`: (cfg.num_frames, cfg.height, cfg.width, 3) uint8 RGB.

    For a reversed pair (a, b), `render_video(b, rng)` is `render_video(a, rng)[::-1]` for the
    same generator state: both draw the same parameters and b is played backwards.
    """
    frames, _, _ = render_event(
        class_name, rng, num_frames=cfg.num_frames, height=cfg.height, width=cfg.width,
        backgrounds=cfg.backgrounds, noise_std=cfg.noise_std, camera_jitter=cfg.camera_jitter,
        distractor_prob=cfg.distractor_prob,
    )
    return frames


@dataclass(frozen=True)
class UncuratedEvent:
    """One event of an uncurated video: frames [start, end) show `class_name`."""

    class_name: str
    start: int
    end: int
    cut: bool  # True when the event starts on a new background


def uncurated_schedule(index: int, cfg: SyntheticConfig) -> list[UncuratedEvent]:
    """The events of uncurated video `index`; cheap (no rendering), deterministic by seed.

    Events draw from all of `CLASS_NAMES` (the corpus is unlabelled) with durations in
    `cfg.event_seconds`; the last event is cut to fit `cfg.uncurated_seconds`, but never
    shorter than 4 frames (a too-short tail is merged into the previous event).
    """
    rng = video_rng(cfg.seed, "uncurated", index)
    total = cfg.uncurated_frames
    shortest, longest = (max(4, int(round(s * cfg.fps))) for s in cfg.event_seconds)
    events: list[UncuratedEvent] = []
    start = 0
    while start < total:
        length = int(rng.integers(shortest, longest + 1))
        end = min(start + length, total)
        if total - end < 4:
            end = total
        class_name = CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]
        cut = not events or bool(rng.random() < cfg.cut_prob)
        events.append(UncuratedEvent(class_name, start, end, cut))
        start = end
    return events


def render_uncurated(index: int, cfg: SyntheticConfig) -> np.ndarray:
    """Uncurated video `index`: its events one after another, (frames, H, W, 3) uint8. An event
    without a cut goes on in the same scene: same background, the camera where it was."""
    parts = []
    plate = camera = None
    for part, event in enumerate(uncurated_schedule(index, cfg), start=1):
        rng = video_rng(cfg.seed, "uncurated", index, part=part)
        frames, plate, offsets = render_event(
            event.class_name, rng, num_frames=event.end - event.start, height=cfg.height, width=cfg.width,
            backgrounds=cfg.backgrounds, noise_std=cfg.noise_std, camera_jitter=cfg.camera_jitter,
            distractor_prob=cfg.distractor_prob, plate=None if event.cut else plate,
            camera=None if event.cut else camera,
        )
        camera = offsets[-1]
        parts.append(frames)
    return np.concatenate(parts, axis=0)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def labelled_path(class_name: str, split: str, index: int) -> str:
    """Relative path of a labelled video inside the output folder."""
    return f"videos/{class_name}/{class_name}_{split}_{index:04d}.mp4"


def uncurated_path(index: int) -> str:
    return f"uncurated/uncurated_{index:04d}.mp4"


@dataclass(frozen=True)
class _Job:
    """One video to make; plain data so it can travel to a worker process."""

    path: str  # absolute
    cfg: SyntheticConfig
    split: str
    index: int
    class_name: str | None = None  # None for uncurated videos


@dataclass(frozen=True)
class _JobResult:
    path: str
    split: str
    written: bool
    bytes: int


def _make_video(job: _Job) -> _JobResult:
    """Render and encode one video unless it exists (atomic writes: an existing file is whole)."""
    from vimpac.video.writer import write_video

    path = Path(job.path)
    if path.is_file() and path.stat().st_size > 0:
        return _JobResult(job.path, job.split, False, path.stat().st_size)
    if job.class_name is None:
        frames = render_uncurated(job.index, job.cfg)
    else:
        frames = render_video(job.class_name, video_rng(job.cfg.seed, job.split, job.index, job.class_name), job.cfg)
    # A keyframe every 2 s keeps random access cheap for readers that seek into long videos.
    write_video(path, frames, job.cfg.fps, codec=job.cfg.codec, crf=job.cfg.crf, gop_size=max(1, int(round(2 * job.cfg.fps))))
    return _JobResult(job.path, job.split, True, path.stat().st_size)


def _run_jobs(jobs: list[_Job], workers: int, progress: bool, desc: str,
              make: Callable[[_Job], _JobResult] | None = None) -> list[_JobResult]:
    """Make the videos of `jobs` not yet on disk; `make` (default `_make_video`) must be a
    module-level function when `workers` > 1."""
    from vimpac.progress import progress_bar

    make = make or _make_video
    _remove_stale_temporaries(jobs)

    results: list[_JobResult] = []
    # Videos already on disk are counted here, so a finished folder re-runs without a pool.
    missing = []
    for job in jobs:
        path = Path(job.path)
        size = path.stat().st_size if path.is_file() else 0
        if size > 0:
            results.append(_JobResult(job.path, job.split, False, size))
        else:
            missing.append(job)
    jobs = missing
    bar = progress_bar(len(jobs), desc, "video", enabled=progress and bool(jobs), leave=False)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(make(job))
                bar.update()
        else:
            # spawn, not fork: callers (the demo) may already hold torch's thread pools.
            # exit_with_parent: after a kill -9 of this process its workers waited forever
            # (re-parented, ~100 MB each), and one busy with a video went on writing it.
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                       initializer=exit_with_parent, initargs=(os.getpid(),))
            try:
                futures = [pool.submit(make, job) for job in jobs]
                for future in as_completed(futures):
                    try:
                        results.append(future.result())
                    except BrokenProcessPool as exc:
                        if not _worker_starts():
                            raise SyntheticError(f"{desc}: {WORKERS_DIE_ON_START}") from exc
                        raise SyntheticError(
                            f"{desc}: a worker process died (out of memory, or killed). The videos written "
                            "so far are whole and kept: run the same command again to make the rest"
                        ) from exc
                    bar.update()
            finally:
                # On Ctrl-C or a failed video, drop the queued jobs instead of finishing them;
                # whatever was written is whole (atomic) and a re-run resumes from there.
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return results


def _worker_starts() -> bool:
    """Whether a fresh worker process starts at all: one that dies on start-up means a calling
    script without a `__main__` guard, not a video that ran out of memory."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as probe:
        return worker_can_start(probe)


def _manifest(cfg: SyntheticConfig) -> dict[str, Any]:
    return {
        "format": "vimpac-synthetic",
        "render_version": RENDER_VERSION,
        "config": to_dict(cfg),
        "class_names": list(cfg.classes),
        "reversed_pairs": [list(pair) for pair in REVERSED_PAIRS],
        "backgrounds": background_sources() if cfg.backgrounds == "photos" else [],
        "files": {
            "classes": "classes.txt", "train": "train.txt", "val": "val.txt",
            # Only when there are uncurated videos: a run without them writes (and keeps) no lists.
            **({"uncurated": "uncurated.txt", "uncurated_events": "uncurated_events.json"}
               if cfg.uncurated_videos else {}),
        },
    }


def check_output_folder(out_dir: str | os.PathLike) -> None:
    """Refuse an output path that is not new, empty or a benchmark folder (marked by its
    synthetic.json): `vimpac make-synthetic` must not mix videos into a token store, a
    tokenizer or any other folder. The generate functions themselves write into any folder,
    since callers such as the demo prepare the folder (with their own records) first."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise SyntheticError(f"{out_dir}: the output path exists and is not a folder")
    if (out_dir / MANIFEST_NAME).is_file():
        return
    entries = sorted(p.name for p in out_dir.iterdir())
    if entries:
        listed = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise SyntheticError(f"{out_dir}: not empty ({listed}) and not a synthetic benchmark (no {MANIFEST_NAME}); "
                             "choose a new or empty folder, or one that make-synthetic wrote")


def _remove_stale_temporaries(jobs: list[_Job]) -> None:
    """Delete what killed runs left of the videos of `jobs`: `write_video`'s atomic temporaries
    (".<video>.<random>.tmp.mp4"), which a finished write renames and an interrupted one leaves."""
    wanted: dict[Path, set[str]] = {}
    for job in jobs:
        path = Path(job.path)
        wanted.setdefault(path.parent, set()).add(path.name)
    for folder, names in wanted.items():
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            match = _TEMPORARY_VIDEO.match(entry.name)
            if match and match["video"] in names and entry.is_file():
                entry.unlink(missing_ok=True)


# vimpac.io.atomic_path's name for the temporary of "<video>.mp4" (mkstemp's random part has no dot).
_TEMPORARY_VIDEO = re.compile(r"^\.(?P<video>.+\.mp4)\.[^.]+\.tmp\.mp4$")


def _claim_folder(out_dir: Path, cfg: SyntheticConfig) -> None:
    """Write the manifest, or check that an existing one describes the same videos.

    The manifest is written before any video, so every video in a folder was made with the
    content settings recorded there.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise SyntheticError(f"{out_dir}: the output path exists and is not a folder")
    manifest_path = out_dir / MANIFEST_NAME
    new = _manifest(cfg)
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
            old_config = old["config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SyntheticError(f"{manifest_path}: not a readable synthetic-benchmark manifest ({exc})") from exc
        differences = [
            f"{name}={old_config.get(name)!r} (asked {value!r})"
            for name, value in new["config"].items()
            if name not in _RESUMABLE_FIELDS and old_config.get(name) != value
        ]
        if old.get("render_version") != RENDER_VERSION:
            differences.append(f"render_version={old.get('render_version')!r} (this vimpac: {RENDER_VERSION})")
        if old.get("backgrounds") != new["backgrounds"]:
            differences.append("background photos (the installed sample images differ)")
        if differences:
            raise SyntheticError(
                f"{manifest_path}: this folder holds a benchmark generated with "
                + ", ".join(differences)
                + "; choose another output folder or delete this one"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest_path, new)


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------


@dataclass
class SplitSummary:
    split: str
    videos: int
    written: int
    skipped: int
    frames_per_video: int
    disk_bytes: int


@dataclass
class SyntheticSummary:
    """What a generation run produced; `format_table()` is what `vimpac make-synthetic` prints."""

    out_dir: Path
    classes: tuple[str, ...]
    fps: float
    height: int
    width: int
    seconds: float
    splits: list[SplitSummary] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # annotation / manifest files, relative

    @property
    def videos(self) -> int:
        return sum(s.videos for s in self.splits)

    @property
    def written(self) -> int:
        return sum(s.written for s in self.splits)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.splits)

    @property
    def disk_bytes(self) -> int:
        return sum(s.disk_bytes for s in self.splits)

    def split(self, name: str) -> SplitSummary:
        for summary in self.splits:
            if summary.split == name:
                return summary
        raise KeyError(f"no split {name!r} in this summary; have {[s.split for s in self.splits]}")

    def merge(self, other: SyntheticSummary) -> SyntheticSummary:
        files = self.files + [f for f in other.files if f not in self.files]
        return dataclasses.replace(
            self, seconds=self.seconds + other.seconds, splits=self.splits + other.splits, files=files
        )

    def format_table(self) -> str:
        rows = [("split", "videos", "frames/video", "duration", "written", "skipped", "disk")]
        for s in self.splits:
            rows.append((
                s.split, str(s.videos), str(s.frames_per_video), f"{s.frames_per_video / self.fps:.1f} s",
                str(s.written), str(s.skipped), _human_bytes(s.disk_bytes),
            ))
        rows.append(("total", str(self.videos), "", "", str(self.written), str(self.skipped), _human_bytes(self.disk_bytes)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            f"Synthetic benchmark in {self.out_dir}",
            f"  {len(self.classes)} classes, {self.height}x{self.width} px (HxW), {self.fps:g} fps, "
            f"generated in {self.seconds:.1f} s",
            "",
        ]
        for i, row in enumerate(rows):
            lines.append("  " + "  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
            if i == 0 or i == len(rows) - 2:
                lines.append("  " + "  ".join("-" * w for w in widths))
        pairs = [f"{a} / {b}" for a, b in REVERSED_PAIRS if a in self.classes or b in self.classes]
        lines += ["", "  classes (reversed pairs: same frames, opposite order):"]
        lines += [f"    {pair}" for pair in pairs]
        if self.files:
            lines += ["", "  files: " + ", ".join(self.files)]
        return "\n".join(lines)


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _split_summary(split: str, results: list[_JobResult], frames: int) -> SplitSummary:
    return SplitSummary(
        split=split,
        videos=len(results),
        written=sum(r.written for r in results),
        skipped=sum(not r.written for r in results),
        frames_per_video=frames,
        disk_bytes=sum(r.bytes for r in results),
    )


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def generate_benchmark(
    out_dir: str | os.PathLike, cfg: SyntheticConfig, progress: bool = True, workers: int | None = None
) -> SyntheticSummary:
    """Write the labelled train / val videos and classes.txt, train.txt, val.txt into `out_dir`.

    Resumable: videos already on disk are kept. `workers` processes render and encode in
    parallel (default min(2, CPU count)). Raises `SyntheticError` when `out_dir` holds a
    benchmark made with different content settings.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    _claim_folder(out, cfg)
    workers = default_workers() if workers is None else workers
    splits = (("train", cfg.train_per_class), ("val", cfg.val_per_class))
    jobs = [
        _Job(str(out / labelled_path(name, split, index)), cfg, split, index, name)
        for split, count in splits
        for name in cfg.classes
        for index in range(count)
    ]
    results = _run_jobs(jobs, workers, progress, "synthetic videos")
    atomic_write_text(out / "classes.txt", "".join(f"{name}\n" for name in cfg.classes))
    for split, count in splits:
        lines = [f"{labelled_path(name, split, i)} {cfg.label(name)}\n" for name in cfg.classes for i in range(count)]
        atomic_write_text(out / f"{split}.txt", "".join(lines))
    return SyntheticSummary(
        out_dir=out, classes=cfg.classes, fps=cfg.fps, height=cfg.height, width=cfg.width,
        seconds=time.perf_counter() - started,
        splits=[_split_summary(split, [r for r in results if r.split == split], cfg.num_frames) for split, _ in splits],
        files=[MANIFEST_NAME, "classes.txt", "train.txt", "val.txt"],
    )


def remove_uncurated_lists(out_dir: str | os.PathLike) -> list[str]:
    """Delete uncurated.txt and uncurated_events.json that an earlier run wrote into `out_dir`,
    for a run that makes no uncurated videos: lists left in place would describe videos that
    its settings do not produce. Their videos stay on disk, unlisted, like the clips of a run
    with fewer clips per class. Returns the names of the files deleted."""
    removed = []
    for name in ("uncurated.txt", "uncurated_events.json"):
        path = Path(out_dir) / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed


def generate_uncurated(
    out_dir: str | os.PathLike, cfg: SyntheticConfig, progress: bool = True, workers: int | None = None
) -> SyntheticSummary:
    """Write `cfg.uncurated_videos` long unlabelled videos, uncurated.txt and uncurated_events.json.

    Each video plays events of random classes back to back, sometimes on the same background,
    sometimes after a cut; contrastive pre-training draws its two clips far apart in one video.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    _claim_folder(out, cfg)
    workers = default_workers() if workers is None else workers
    indices = range(cfg.uncurated_videos)
    jobs = [_Job(str(out / uncurated_path(i)), cfg, "uncurated", i) for i in indices]
    results = _run_jobs(jobs, workers, progress, "uncurated videos")
    atomic_write_text(out / "uncurated.txt", "".join(f"{uncurated_path(i)}\n" for i in indices))
    events = {uncurated_path(i): [dataclasses.asdict(e) for e in uncurated_schedule(i, cfg)] for i in indices}
    atomic_write_json(out / "uncurated_events.json", {"fps": cfg.fps, "videos": events})
    return SyntheticSummary(
        out_dir=out, classes=cfg.classes, fps=cfg.fps, height=cfg.height, width=cfg.width,
        seconds=time.perf_counter() - started,
        splits=[_split_summary("uncurated", results, cfg.uncurated_frames)],
        files=[MANIFEST_NAME, "uncurated.txt", "uncurated_events.json"],
    )
