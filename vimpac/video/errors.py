"""One exception family for everything that can go wrong with a video file.

Every error names the file and says why it failed, so a corpus scan can list bad videos with
their reasons and carry on (see `vimpac.video.reader.scan_videos`). Catch `VideoError` to
handle all of them; catch a subclass to react to one kind (e.g. skip `VideoTooShortError`
clips but stop on `VideoDecodeError`).
"""

from __future__ import annotations

import os


class VideoError(Exception):
    """A video file could not be used. `str()` is "<path>: <reason>"."""

    #: A short stable name for reports and JSON (e.g. "decode"); subclasses override it.
    kind: str = "video"

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Keeps the error picklable across DataLoader worker processes (the default
        # reconstruction would call __init__ with the single formatted message).
        return (_rebuild_error, (type(self), self.__dict__.copy()))


def _rebuild_error(cls: type[VideoError], state: dict) -> VideoError:
    error = cls.__new__(cls)
    Exception.__init__(error, f"{state['path']}: {state['reason']}")
    error.__dict__.update(state)
    return error


class VideoNotFoundError(VideoError):
    """The path does not exist, or is not a regular file (a folder, a FIFO, a device)."""

    kind = "not_found"


class VideoUnreadableError(VideoError):
    """The file exists but the OS refused to read it (permissions, I/O error)."""

    kind = "unreadable"


class EmptyVideoFileError(VideoError):
    """The file has zero bytes (typically an interrupted download or copy)."""

    kind = "empty"


class VideoDecodeError(VideoError):
    """Not a video container, or truncated / corrupt data, or the decoder failed."""

    kind = "decode"


class NoVideoStreamError(VideoError):
    """The container is valid but holds no video stream (e.g. an audio-only file)."""

    kind = "no_video_stream"


class VideoTooShortError(VideoError):
    """The video has fewer frames (or samples at the requested FPS) than a clip needs."""

    kind = "too_short"

    def __init__(self, path: str | os.PathLike, needed: int, available: int, unit: str = "frames") -> None:
        self.needed = int(needed)
        self.available = int(available)
        super().__init__(path, f"too short: needed {self.needed} {unit}, only {self.available} available")
