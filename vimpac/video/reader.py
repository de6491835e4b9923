"""Frame-accurate video reading at a fixed FPS with PyAV.

VIMPAC samples every video at a fixed rate (2 FPS for pre-training, 2 or 4 downstream), so the
core question is "which source frame is on screen at time t?". This module answers it the same
way everywhere:

* **Frame index** = position of the frame in *presentation* order. Frames are identified by
  their presentation timestamp (PTS), never by counting decoded frames, so B-frames, seeks and
  decoders that drop a frame cannot shift the numbering.
* **Frame time** = (PTS - PTS of the first frame) * time_base, so the first frame is at 0 s
  even for files whose timestamps start elsewhere (edit lists, cut streams).
* **Sampling** at `target_fps` takes the times t_k = start_time + k / target_fps that lie before
  the end of the video (t_k < duration), and time t shows **the last frame whose timestamp is
  <= t** (with a 1 microsecond tolerance for float round-off), exactly like a player would.
  (The authors' ffmpeg `fps` filter rounds every timestamp to the nearest output slot and keeps
  the last frame of each: output k is the last frame before (k + 1/2) / target_fps, half a
  sampling period later than ours, e.g. frames 7, 22, 37 instead of 0, 15, 30 for 30 -> 2 FPS;
  and it gives round(duration * target_fps) frames, where we give ceil.)

`VideoReader` opens a file once, demuxes it (reading packets, no decoding) to build the exact
PTS table and keyframe list, and then serves many requests: for a set of wanted frames it
seeks to the keyframe at or before the first one and decodes forward, seeking again only when a
later keyframe lies between the current position and the next wanted frame (decoding the
frames in between would be wasted work); `iter_frames` hands the frames of that pass out in
chunks, so a long video need not be held at full resolution. The module-level functions open a
`VideoReader` for one request.

Every failure is a `vimpac.video.errors.VideoError` that names the file and the reason.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import av
import numpy as np

from vimpac.video.errors import (
    EmptyVideoFileError,
    NoVideoStreamError,
    VideoDecodeError,
    VideoError,
    VideoNotFoundError,
    VideoTooShortError,
    VideoUnreadableError,
)

# A sampling time t shows frame i when time(i) <= t + TIME_TOLERANCE_S; absorbs float round-off
# in start_time + k / fps (e.g. 0.5 * 30 = 14.999999...).
TIME_TOLERANCE_S = 1e-6

# Frames per chunk of `VideoReader.iter_frames`: at 1080p, 200 MB held at a time.
DEFAULT_CHUNK_FRAMES = 32

# FFmpeg demuxers that turn arbitrary text into "video" (ANSI art); a text file renamed to .mp4
# must be reported as not-a-video, never decoded into frames.
_REJECTED_FORMATS = frozenset({"tty"})

# File extensions `find_video_files` treats as videos.
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")


@dataclass(frozen=True)
class VideoInfo:
    """What a video is: where, how fast, how long, how big.

    `num_frames`: from `probe_video`, the frame count the container declares (`stream.frames`,
    exact for MP4/MOV), or round(duration * fps) when the container has no count (MKV, WebM,
    AVI without index): an estimate. From `VideoReader.info` it is always exact (counted
    packets). `duration` is in seconds; `fps` is the stream's average frame rate.
    """

    path: str
    fps: float
    num_frames: int
    duration: float
    width: int
    height: int
    codec: str
    rotation: int = 0
    """Degrees (0, 90, 180, 270) the frames were turned counterclockwise to stand upright, from
    the container's display matrix (a phone's portrait video); `width` / `height` are upright."""

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "fps": self.fps,
            "num_frames": self.num_frames,
            "duration": self.duration,
            "width": self.width,
            "height": self.height,
            "codec": self.codec,
            "rotation": self.rotation,
        }


# ----------------------------------------------------------------------------------------------
# Sampling times -> frame indices (pure functions, no I/O)


def sample_times(
    duration: float, target_fps: float, start_time: float = 0.0, num_frames: int | None = None
) -> np.ndarray:
    """Times (seconds, float64) at which a video is sampled at `target_fps`.

    t_k = start_time + k / target_fps. With `num_frames=None`, every t_k < duration (possibly
    none); with `num_frames=n`, exactly n times, whether or not they fit in the video (callers
    check; see `frame_indices_at_fps`).
    """
    if not target_fps > 0 or not math.isfinite(target_fps):
        raise ValueError(f"target_fps must be a positive number, got {target_fps!r}")
    if not start_time >= 0 or not math.isfinite(start_time):
        raise ValueError(f"start_time must be >= 0 seconds, got {start_time!r}")
    if num_frames is None:
        count = _count_samples(duration, target_fps, start_time)
    else:
        if num_frames < 0:
            raise ValueError(f"num_frames must be >= 0, got {num_frames!r}")
        count = int(num_frames)
    return start_time + np.arange(count, dtype=np.float64) / target_fps


def _count_samples(duration: float, target_fps: float, start_time: float) -> int:
    """Number of k >= 0 with start_time + k / target_fps < duration."""
    span = duration - start_time
    if span <= 0:
        return 0
    count = math.ceil(span * target_fps)
    # ceil of a product that should be an integer can be off by one in float; fix it exactly.
    while count > 0 and start_time + (count - 1) / target_fps >= duration:
        count -= 1
    while start_time + count / target_fps < duration:
        count += 1
    return count


def frame_indices_at_fps(
    info: VideoInfo, target_fps: float, start_time: float = 0.0, num_frames: int | None = None
) -> np.ndarray:
    """Source frame index (int64) on screen at each `sample_times(...)` time, from metadata.

    Assumes a constant frame rate: frame i is at i / info.fps, and time t shows the last frame
    whose timestamp <= t, i.e. floor(t * fps). `VideoReader.frame_indices_at_fps` does the same
    with the file's real timestamps (exact for variable frame rate too).

    Raises `VideoTooShortError` when `num_frames` samples do not fit after `start_time`.
    """
    times = sample_times(info.duration, target_fps, start_time, num_frames)
    _check_times_fit(info.path, times, info.duration, target_fps, start_time)
    if info.num_frames <= 0:
        raise VideoTooShortError(info.path, needed=max(len(times), 1), available=0)
    indices = np.floor(times * info.fps + TIME_TOLERANCE_S * info.fps).astype(np.int64)
    return np.clip(indices, 0, info.num_frames - 1)


def _check_times_fit(path: str, times: np.ndarray, duration: float, target_fps: float, start_time: float) -> None:
    if len(times) and times[-1] >= duration:
        available = _count_samples(duration, target_fps, start_time)
        raise VideoTooShortError(
            path,
            needed=len(times),
            available=available,
            unit=f"samples at {target_fps:g} FPS after {start_time:g} s (video lasts {duration:.3f} s)",
        )


# ----------------------------------------------------------------------------------------------
# Opening files with typed errors


def _check_file(path: str | os.PathLike) -> Path:
    """Fail fast, with the right error kind, before FFmpeg sees the path.

    Also what keeps a FIFO or a device from blocking forever inside FFmpeg's open().
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise VideoNotFoundError(path, "no such file") from None
    except NotADirectoryError:
        raise VideoNotFoundError(path, "no such file (a parent is not a folder)") from None
    except OSError as exc:
        raise VideoUnreadableError(path, f"cannot stat: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise VideoNotFoundError(path, "is a directory, expected a video file")
    if not stat.S_ISREG(info.st_mode):
        raise VideoNotFoundError(path, "not a regular file (a FIFO, socket or device?), expected a video file")
    if info.st_size == 0:
        raise EmptyVideoFileError(path, "file is empty (0 bytes)")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise VideoUnreadableError(path, f"cannot read: {exc.strerror or exc}") from None
    return path


def _translate_av_error(path: Path, exc: BaseException, doing: str) -> VideoError:
    if isinstance(exc, VideoError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return VideoNotFoundError(path, "no such file")
    if isinstance(exc, PermissionError):
        return VideoUnreadableError(path, f"permission denied while {doing}")
    if isinstance(exc, av.error.FFmpegError):
        truncated = _mp4_truncation(path)
        if truncated is not None:
            return VideoDecodeError(path, f"{doing} failed: {exc.strerror or exc}; {truncated}")
        return VideoDecodeError(path, f"{doing} failed: {exc.strerror or exc} (not a video, truncated or corrupt?)")
    if isinstance(exc, OSError):
        return VideoUnreadableError(path, f"I/O error while {doing}: {exc.strerror or exc}")
    return VideoDecodeError(path, f"{doing} failed: {type(exc).__name__}: {exc}")


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except Exception as exc:  # PyAV raises many types; all become typed VideoErrors.
        raise _translate_av_error(path, exc, "opening the container") from exc
    if container.format.name in _REJECTED_FORMATS:
        container.close()
        raise VideoDecodeError(path, f"not a video container (FFmpeg sees format {container.format.name!r})")
    return container


# The largest frame (width x height) a video may declare: 16384 x 8192, twice 16K. Decoding allocates
# whole frames before anything else could refuse them, so a file claiming 40000 x 40000 frames (a
# crafted header, or a broken one) would take ~5 GB per frame in FFmpeg and again as RGB.
MAX_FRAME_PIXELS = 16384 * 8192


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    video = container.streams.video
    if not video or video[0].codec_context is None:
        # FFmpeg opens an MP4 whose index (moov atom, often at the end) was cut off, keeping
        # whatever streams it had read so far: none, a codec-less stub, or a video stream
        # without its decoder settings. Only the file's box sizes tell that it is truncated.
        truncated = _mp4_truncation(path)
        if truncated is not None:
            raise VideoDecodeError(path, f"the container could not be parsed: {truncated}")
    if not container.streams:
        raise VideoDecodeError(path, "the container could not be parsed: FFmpeg found no streams in it "
                                     "(truncated or corrupt?)")
    if not video:
        kinds = sorted({s.type for s in container.streams})
        raise NoVideoStreamError(path, f"no video stream (the container holds: {', '.join(kinds)})")
    width, height = video[0].codec_context.width or 0, video[0].codec_context.height or 0
    if width * height > MAX_FRAME_PIXELS:
        raise VideoDecodeError(path, f"declares {width}x{height} frames ({width * height / 1e6:.0f} megapixels), more "
                                     f"than the {MAX_FRAME_PIXELS / 1e6:.0f} this reader decodes: one decoded frame "
                                     "alone would take gigabytes")
    return video[0]


def _truncation_note(path: Path) -> str:
    """What `_mp4_truncation` found, as a clause to append to a reason ("" when nothing)."""
    truncated = _mp4_truncation(path)
    return "" if truncated is None else f"; {truncated}"


def _mp4_truncation(path: Path) -> str | None:
    """For an MP4 / MOV (ISO BMFF) file, why it is truncated: the first top-level box whose
    declared size runs past the end of the file; None when the boxes fit or it is not an MP4."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            offset = 0
            while offset + 8 <= size:
                f.seek(offset)
                header = f.read(16)
                box_size, box_type = int.from_bytes(header[:4], "big"), header[4:8]
                box = f"its {box_type.decode('latin-1')!r} box at byte {offset}"
                if offset == 0 and box_type != b"ftyp":
                    return None  # not ISO BMFF: leave it to FFmpeg's own message
                if box_size == 1:  # a 64-bit size follows the type
                    if len(header) < 16:
                        return f"the file is truncated inside the header of {box}"
                    box_size = int.from_bytes(header[8:16], "big")
                elif box_size == 0:  # the box runs to the end of the file
                    return None
                if box_size < 8:
                    return f"{box} declares an impossible size {box_size} (corrupt?)"
                if offset + box_size > size:
                    return (f"the file is truncated: {box} needs {box_size} bytes, but the file ends "
                            f"{size - offset} bytes after it starts (an interrupted download or copy?)")
                offset += box_size
    except OSError:
        return None
    return None


# A Matroska / WebM file whose video frames end this long before its declared duration is
# truncated: seconds, plus a fraction of the declared duration (audio may outlast the video a little).
MATROSKA_TRUNCATION_SLACK_S = 0.5
MATROSKA_TRUNCATION_SLACK_FRACTION = 0.05


def _matroska_declared_duration(container: av.container.InputContainer, stream) -> float | None:
    """Seconds a Matroska / WebM file says its video lasts: the track's DURATION tag (FFmpeg and
    mkvmerge write one), else the segment's duration; None for other containers or a live
    recording that declares none."""
    if "matroska" not in container.format.name.split(","):
        return None
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            hours, minutes, seconds = tag.strip().split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass  # an odd tag: fall back to the segment's duration
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _check_matroska_not_truncated(container: av.container.InputContainer, stream, path: Path, end: float) -> None:
    """MP4 and AVI declare a frame count, checked against the frames present; Matroska / WebM
    (SSv2, YouTube downloads) declare only a duration, and FFmpeg reads a cut-off file up to
    where it ends without an error: without this check it became a shorter video, silently."""
    declared = _matroska_declared_duration(container, stream)
    if declared is None:
        return
    if declared - end > MATROSKA_TRUNCATION_SLACK_S + MATROSKA_TRUNCATION_SLACK_FRACTION * declared:
        raise VideoDecodeError(
            path, f"truncated: the container declares {declared:.3f} s of video but its frames end at "
                  f"{end:.3f} s (an interrupted download or copy?)"
        )


def _stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


# ----------------------------------------------------------------------------------------------
# Metadata only


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Metadata of a video, plus a check that its first frame decodes.

    Fast: reads the container header and decodes one frame. `num_frames` is the container's
    declared count, or round(duration * fps) when the container lacks one (see `VideoInfo`).
    Truncation past the first frame is only caught by `VideoReader` (or `scan_videos(verify=True)`).
    """
    path = _check_file(path)
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream)
        if fps is None:
            raise VideoDecodeError(path, "the video stream declares no frame rate")
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        num_frames = int(stream.frames) if stream.frames and stream.frames > 0 else int(round(duration * fps))
        if duration <= 0 and num_frames > 0:
            duration = num_frames / fps
        first = _decode_first_frame(container, stream, path)
        codec = stream.codec_context.name
        turns = _quarter_turns(first)
        width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
        return VideoInfo(
            path=str(path), fps=fps, num_frames=num_frames, duration=duration,
            width=width, height=height, codec=codec, rotation=90 * turns,
        )
    finally:
        container.close()


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counterclockwise quarter turns (0-3) that make `frame` upright, from its display matrix.

    FFmpeg's tools rotate by the display matrix too (`-autorotate`, on by default); angles that
    are not a multiple of 90 degrees are rounded to the nearest one, as there.
    """
    try:
        degrees = float(frame.rotation)
    except Exception:  # no display matrix, or a singular one
        return 0
    return int(round(degrees / 90.0)) % 4 if math.isfinite(degrees) else 0


def _upright(array: np.ndarray, quarter_turns: int) -> np.ndarray:
    return np.rot90(array, quarter_turns) if quarter_turns else array


def _first_decodable_pts(path: Path, stream_index: int) -> int | None:
    """The timestamp of the first frame a decoder shows when it starts at the beginning of a
    stream whose first packet is not a keyframe: the first frame it marks as a key or intra frame,
    else (no such frame at all) the first frame it returns; None when nothing decodes.

    Such a stream was cut or captured inside a GOP (`ffmpeg -ss X -i in.mp4 -c copy out.mkv`, a
    broadcast capture): its leading frames reference a GOP that is not in the file. FFmpeg's H.264
    decoder drops them, its MPEG-4 Part 2 decoder returns garbage; the pictures start at the
    keyframe. A file whose first packet is merely not flagged as a keyframe decodes
    an intra frame first, so nothing of it is hidden."""
    container = _open_container(path)
    try:
        stream = container.streams[stream_index]
        first = None
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:  # a leading packet without its references; FFmpeg goes on too
                continue
            for frame in frames:
                if frame.pts is None:
                    continue
                if frame.key_frame or getattr(frame.pict_type, "name", frame.pict_type) == "I":
                    return int(frame.pts)
                if first is None:
                    first = int(frame.pts)
        return first
    except av.FFmpegError:
        return None
    finally:
        container.close()


def _decode_first_frame(container, stream, path: Path) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except Exception as exc:
        raise _translate_av_error(path, exc, "decoding the first frame") from exc
    raise VideoDecodeError(path, "the video stream has no decodable frame" + _truncation_note(path))


# ----------------------------------------------------------------------------------------------
# The reader


class VideoReader:
    """One open video file, for many frame-accurate reads.

    On open it demuxes the video stream once (packets only, no decoding: a few ms per MB) to
    learn every frame's timestamp and which frames are keyframes. That table makes frame
    indices exact and lets reads seek straight to the right keyframe.

        with VideoReader("clip.mp4") as video:
            frames = video.read_clip(fps=2, num_frames=5, start_time=3.0)   # (5, H, W, 3)

    `threads`: decoder threads; None lets FFmpeg choose (frame + slice threading), 1 decodes
    on the calling thread only (best inside DataLoader workers, which are already parallel).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = 1) -> None:
        self.path = _check_file(path)
        self._container = _open_container(self.path)
        try:
            self._stream = _video_stream(self._container, self.path)
            if threads is not None and threads < 1:
                raise ValueError(f"threads must be >= 1 or None, got {threads!r}")
            if threads is None:
                self._stream.thread_type = "AUTO"  # frame + slice threading, FFmpeg picks the count
            else:
                self._stream.thread_type = "AUTO" if threads > 1 else "NONE"
                self._stream.codec_context.thread_count = int(threads)
            self._build_frame_table()
        except BaseException:
            self._container.close()
            raise

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    # -- the frame table ------------------------------------------------------------------

    def _build_frame_table(self) -> None:
        stream, path = self._stream, self.path
        if stream.time_base is None:
            raise VideoDecodeError(path, "the video stream has no time base")
        pts_list: list[int] = []
        dts_list: list[int | None] = []  # of the same packets
        key_pts: list[int] = []
        # Packets before the start of an MP4 edit list (what `ffmpeg -ss ... -c copy` writes: the
        # cut begins mid-GOP, so the GOP's head is kept for decoding but flagged "discard"). The
        # decoder drops their frames, as players and FFmpeg do; they are not frames of the video.
        discarded_pts: list[int] = []
        first_packet_is_key: bool | None = None
        first_dts: int | None = None  # the stream's earliest decode timestamp, see _seek_and_decode
        # Guard against a demuxer that stops advancing on a crafted file: every real packet
        # consumes file bytes, so more packets than bytes (plus slack for flush packets) means
        # a loop, reported as corruption instead of hanging.
        packet_limit = os.path.getsize(path) + 1024
        packets_seen = 0
        try:
            for packet in self._container.demux(stream):
                packets_seen += 1
                if packets_seen > packet_limit:
                    raise VideoDecodeError(path, "the demuxer returned more packets than the file has bytes (corrupt)")
                if packet.size == 0:  # the demuxer's end-of-stream flush packet
                    continue
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    raise VideoDecodeError(path, "packets carry no timestamps; cannot address frames exactly")
                if packet.dts is not None and (first_dts is None or packet.dts < first_dts):
                    first_dts = packet.dts
                if first_packet_is_key is None:  # the first in decode order, a discarded one too
                    first_packet_is_key = bool(packet.is_keyframe)
                if packet.is_discard:
                    discarded_pts.append(pts)
                    continue
                pts_list.append(pts)
                dts_list.append(packet.dts)
                if packet.is_keyframe:
                    key_pts.append(pts)
        except VideoError:
            raise
        except Exception as exc:
            raise _translate_av_error(path, exc, "reading packets") from exc
        if first_packet_is_key is False:
            # A stream cut or captured inside a GOP without an edit list (.mkv / .ts): the frames
            # before the first decodable one reference a GOP that is not in the file. Like the
            # discarded packets above, they are not frames of the video, which starts there.
            # Reads of frame 0 seek to its keyframe: the packets before it are of no use for
            # decoding, and an MP4 refuses a seek before its first keyframe.
            start = _first_decodable_pts(path, stream.index)
            if start is not None and pts_list and start > min(pts_list):
                discarded_pts.extend(p for p in pts_list if p < start)
                kept = [(p, d) for p, d in zip(pts_list, dts_list) if p >= start]
                pts_list = [p for p, _ in kept]
                key_pts = [p for p in key_pts if p >= start]
                first_dts = min((d for _, d in kept if d is not None), default=None)
        if not pts_list:
            raise VideoDecodeError(path, "the video stream has no frames" + _truncation_note(path))
        pts = np.sort(np.asarray(pts_list, dtype=np.int64))
        if np.any(np.diff(pts) == 0):
            raise VideoDecodeError(path, "two frames share one timestamp (corrupt file)")
        declared = int(stream.frames or 0)  # counts the discarded packets too
        if declared > len(pts) + len(discarded_pts):
            raise VideoDecodeError(
                path, f"truncated: the container declares {declared} frames but only {len(pts)} are present"
            )
        self._pts = pts
        self._discarded_pts = frozenset(discarded_pts)
        self._start_seek_ts = int(min(pts[0], first_dts)) if first_dts is not None else int(pts[0])
        self._time_base = Fraction(stream.time_base)
        self._times = (pts - pts[0]).astype(np.float64) * float(self._time_base)
        # Keyframes as presentation indices, sorted. Frame 0 is always a valid seek target
        # (seeking to the first timestamp restarts the stream), even in odd files whose first
        # packet is not flagged as a keyframe.
        keys = np.searchsorted(pts, np.asarray(key_pts, dtype=np.int64))
        self._keyframes = np.unique(np.concatenate([[0], keys])).astype(np.int64)

        fps = _stream_fps(stream)
        if len(pts) > 1:
            mean_step = float(self._times[-1]) / (len(pts) - 1)
            last_duration = 1.0 / fps if fps else mean_step
            fps = fps or 1.0 / mean_step
        else:
            last_duration = 1.0 / fps if fps else 0.0
            fps = fps or 0.0
        if not fps:
            raise VideoDecodeError(path, "cannot determine the frame rate (one frame, no declared rate)")
        # The end in whole ticks of the time base, as the container stores every timestamp: WebM
        # counts milliseconds, so frame 23 of a 12 fps video is stored at 1.917 s, and adding 1/12 s
        # ended the video at 2.0003 s: a 4 FPS sample at 2.0 s, past the real end (the last frame
        # twice, one sample more than FFmpeg's fps filter gives, for a third of SSv2's videos).
        last_ticks = max(1, round(last_duration / float(self._time_base)))
        self._duration = float((int(pts[-1] - pts[0]) + last_ticks) * self._time_base)
        _check_matroska_not_truncated(self._container, stream, path, float(pts[-1] * self._time_base) + last_duration)
        self._quarter_turns = self._first_frame_turns()
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        if self._quarter_turns % 2:
            width, height = height, width
        self.info = VideoInfo(
            path=str(path), fps=float(fps), num_frames=len(pts), duration=self._duration,
            width=width, height=height, codec=stream.codec_context.name, rotation=90 * self._quarter_turns,
        )

    @property
    def num_frames(self) -> int:
        return len(self._pts)

    @property
    def frame_times(self) -> np.ndarray:
        """Presentation time (seconds from the first frame) of every frame, ascending."""
        return self._times.copy()

    @property
    def keyframe_indices(self) -> np.ndarray:
        """Frame indices where decoding can start after a seek."""
        return self._keyframes.copy()

    # -- sampling -------------------------------------------------------------------------

    def frame_indices_at_fps(
        self, target_fps: float, start_time: float = 0.0, num_frames: int | None = None
    ) -> np.ndarray:
        """Frame on screen at each sampling time, from the real timestamps (VFR-exact).

        Time t shows the last frame whose timestamp <= t. Raises `VideoTooShortError` when
        `num_frames` samples do not fit after `start_time`.
        """
        times = sample_times(self._duration, target_fps, start_time, num_frames)
        _check_times_fit(str(self.path), times, self._duration, target_fps, start_time)
        indices = np.searchsorted(self._times, times + TIME_TOLERANCE_S, side="right") - 1
        return np.clip(indices, 0, self.num_frames - 1).astype(np.int64)

    def read_clip(self, fps: float, num_frames: int, start_time: float = 0.0) -> np.ndarray:
        """`num_frames` frames sampled at `fps` from `start_time`: uint8 (T, H, W, 3) RGB."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames!r}")
        return self.read_frames(self.frame_indices_at_fps(fps, start_time, num_frames))

    def read_at_fps(self, fps: float) -> np.ndarray:
        """The whole video sampled at `fps`: uint8 (T, H, W, 3) RGB."""
        return self.read_frames(self.frame_indices_at_fps(fps))

    # -- decoding -------------------------------------------------------------------------

    def read_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames at `indices` (presentation order, any order, repeats allowed): uint8 (N, H, W, 3).

        The distinct indices are read in ascending order in one forward pass (seeking forward
        only when a keyframe lies between the current position and the next wanted frame),
        then arranged in the requested order.
        """
        requested = np.asarray(indices)
        if requested.ndim != 1:
            raise ValueError(f"indices must be a 1-D sequence of frame numbers, got shape {requested.shape}")
        if requested.size == 0:
            return np.empty((0, self.info.height, self.info.width, 3), dtype=np.uint8)
        if not np.issubdtype(requested.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {requested.dtype}")
        requested = requested.astype(np.int64)
        if requested.min() < 0:
            raise ValueError(f"{self.path}: frame indices must be >= 0, got {int(requested.min())}")
        if requested.max() >= self.num_frames:
            raise VideoTooShortError(self.path, needed=int(requested.max()) + 1, available=self.num_frames)
        wanted, inverse, counts = np.unique(requested, return_inverse=True, return_counts=True)
        # Output rows of each distinct frame, so every decoded frame is copied straight into its
        # row(s): one copy per output frame (HD frames are MBs; a second copy costs seconds).
        order = np.argsort(inverse.reshape(-1), kind="stable")
        destinations = np.split(order, np.cumsum(counts)[:-1])
        return self._decode_sorted(wanted, destinations, len(requested))

    def _decode_sorted(self, wanted: np.ndarray, destinations: list[np.ndarray], total: int) -> np.ndarray:
        out: np.ndarray | None = None
        for slot, array in enumerate(self._decoded_in_order(wanted)):
            if out is None:
                out = np.empty((total,) + array.shape, dtype=np.uint8)
            rows = destinations[slot]
            if len(rows) == 1:
                out[int(rows[0])] = array
            else:
                out[rows] = array
        assert out is not None
        return out

    def _decoded_in_order(self, wanted: np.ndarray) -> Iterator[np.ndarray]:
        """The RGB frames at the distinct, ascending indices `wanted`, from one forward decode
        pass that seeks only to skip GOPs (shared by `read_frames` and `iter_frames`)."""
        shape: tuple[int, ...] | None = None
        position = -1  # presentation index of the last frame decoded in the current forward run
        frames = None  # iterator over (index, frame) of the current forward run
        for target in wanted.tolist():
            keyframe = self._keyframe_at_or_before(target)
            # Seek only when a keyframe lies strictly between the current position and the
            # target: then the seek skips decoding work; otherwise decoding forward is cheaper.
            if frames is None or keyframe > position + 1:
                frames, position = self._seek_and_decode(target)
            while position < target:
                try:
                    position, frame = next(frames)
                except StopIteration:
                    raise VideoDecodeError(
                        self.path, f"frame {target} could not be decoded (stream ended at frame {position})"
                    ) from None
            if position != target:
                raise VideoDecodeError(
                    self.path, f"frame {target} was not produced by the decoder (next frame was {position})"
                )
            array = self._to_rgb(frame)
            if shape is None:
                shape = array.shape
            elif array.shape != shape:
                raise VideoDecodeError(self.path, f"frame size changed mid-stream ({shape[:2]} -> {array.shape[:2]})")
            yield array

    def iter_frames(self, indices: Sequence[int] | np.ndarray,
                    chunk_frames: int = DEFAULT_CHUNK_FRAMES) -> Iterator[np.ndarray]:
        """Frames at `indices` in chunks: uint8 (n, H, W, 3) arrays of at most `chunk_frames`
        frames (only the last may be shorter) whose concatenation equals `read_frames(indices)`.

        For long videos: `read_frames` returns every wanted frame at full resolution at once (a
        10-minute 1080p video at 2 FPS is 7.5 GB), a consumer of these chunks holds one of them.
        `indices` must be in ascending order (repeats allowed), as `frame_indices_at_fps` gives
        them: all chunks come from one forward decode pass, which seeks only to skip GOPs, as
        `read_frames` does (a fresh `read_frames` per chunk would seek back to the keyframe
        before each chunk, decoding a single-GOP video from its start every time). The
        arguments are checked at the call, not at the first chunk.
        """
        if not isinstance(chunk_frames, (int, np.integer)) or chunk_frames < 1:
            raise ValueError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")
        requested = np.asarray(indices)
        if requested.ndim != 1:
            raise ValueError(f"indices must be a 1-D sequence of frame numbers, got shape {requested.shape}")
        if requested.size == 0:
            return iter(())
        if not np.issubdtype(requested.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {requested.dtype}")
        requested = requested.astype(np.int64)
        if np.any(np.diff(requested) < 0):
            raise ValueError(f"{self.path}: iter_frames needs indices in ascending order (one forward pass); "
                             "read_frames takes any order")
        if requested[0] < 0:
            raise ValueError(f"{self.path}: frame indices must be >= 0, got {int(requested[0])}")
        if requested[-1] >= self.num_frames:
            raise VideoTooShortError(self.path, needed=int(requested[-1]) + 1, available=self.num_frames)
        wanted, counts = np.unique(requested, return_counts=True)
        return self._iter_sorted_chunks(wanted, counts, int(chunk_frames))

    def _iter_sorted_chunks(self, wanted: np.ndarray, counts: np.ndarray, chunk_frames: int) -> Iterator[np.ndarray]:
        """`iter_frames` after its checks: the decoded frames, filled into one chunk at a time."""
        remaining = int(counts.sum())
        chunk: np.ndarray | None = None
        filled = 0
        for array, repeats in zip(self._decoded_in_order(wanted), counts.tolist()):
            for _ in range(repeats):  # a frame shown at several sampling times (fps above the video's)
                if chunk is None:
                    chunk = np.empty((min(chunk_frames, remaining),) + array.shape, dtype=np.uint8)
                    filled = 0
                chunk[filled] = array
                filled += 1
                remaining -= 1
                if filled == len(chunk):
                    yield chunk
                    chunk = None

    def _keyframe_at_or_before(self, index: int) -> int:
        return int(self._keyframes[np.searchsorted(self._keyframes, index, side="right") - 1])

    def _seek_and_decode(self, target: int):
        """Seek so that decoding starts at or before frame `target`; return (frames, position).

        `frames` yields (index, frame) in presentation order; `position` is one before the first
        frame it will yield. Demuxers seek by decode timestamps, so a seek can land one GOP
        late; when the first decoded frame is past `target`, or none decodes, retry from an
        earlier keyframe.
        """
        slot = int(np.searchsorted(self._keyframes, target, side="right") - 1)
        while True:
            # Frame 0 is reached by seeking to the stream's earliest timestamp: AVI seeks by decode
            # timestamps, and with B-frames the first frame's pts is the second packet's dts, so
            # when that packet is a keyframe too the seek landed on it, past frame 0.
            seek_pts = int(self._pts[self._keyframes[slot]]) if slot > 0 else self._start_seek_ts
            try:
                self._container.seek(seek_pts, stream=self._stream, backward=True, any_frame=False)
            except Exception as exc:
                raise _translate_av_error(self.path, exc, "seeking") from exc
            frames = self._indexed_frames()
            try:
                first_index, first_frame = next(frames)
            except StopIteration:
                # An MPEG-TS seek to a keyframe near the end of the file can leave nothing to
                # decode; an earlier keyframe gets there by decoding forward.
                if slot == 0:
                    raise VideoDecodeError(self.path, f"no frame decodes after seeking to frame {target}") from None
                slot -= 1
                continue
            if first_index <= target:
                return _prepend(first_index, first_frame, frames), first_index - 1
            if slot == 0:
                raise VideoDecodeError(
                    self.path, f"frame {target} cannot be decoded (decoding starts at frame {first_index})"
                )
            slot -= 1

    def _indexed_frames(self):
        """Decoded frames with their presentation index, found from their timestamp."""
        try:
            for frame in self._container.decode(self._stream):
                pts = frame.pts
                if pts is None:
                    raise VideoDecodeError(self.path, "the decoder returned a frame without a timestamp")
                if pts in self._discarded_pts:  # a decoder that outputs them anyway: not shown
                    continue
                index = int(np.searchsorted(self._pts, pts))
                if index >= len(self._pts) or self._pts[index] != pts:
                    raise VideoDecodeError(self.path, f"decoded a frame with unknown timestamp {pts}")
                yield index, frame
        except VideoError:
            raise
        except Exception as exc:
            raise _translate_av_error(self.path, exc, "decoding") from exc

    def _first_frame_turns(self) -> int:
        """The rotation of the video, from its first frame (PyAV exposes the display matrix on
        frames only). Every read seeks first, so decoding it here moves nothing. A first frame
        that does not decode counts as upright; the read that needs it reports the error."""
        try:
            frames, _ = self._seek_and_decode(0)
            _, frame = next(frames)
        except (VideoError, StopIteration):
            return 0
        return _quarter_turns(frame)

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        try:
            array = frame.to_ndarray(format="rgb24")
        except Exception as exc:
            raise _translate_av_error(self.path, exc, "converting a frame to RGB") from exc
        # The whole video turns by its first frame's display matrix, so every frame has one shape.
        return _upright(array, self._quarter_turns)


def _prepend(index: int, frame, rest):
    yield index, frame
    yield from rest


# ----------------------------------------------------------------------------------------------
# One-shot functions


def read_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray, threads: int | None = 1) -> np.ndarray:
    """Frames at `indices` of the file at `path`: uint8 (N, H, W, 3) RGB.

    `threads`: decoder threads as in `VideoReader` (None = FFmpeg's choice, faster on free cores).
    """
    with VideoReader(path, threads=threads) as video:
        return video.read_frames(indices)


def read_video_at_fps(path: str | os.PathLike, fps: float, threads: int | None = 1) -> np.ndarray:
    """The whole video sampled at `fps`: uint8 (T, H, W, 3) RGB, T = number of t_k < duration."""
    with VideoReader(path, threads=threads) as video:
        return video.read_at_fps(fps)


def read_clip(path: str | os.PathLike, fps: float, num_frames: int, start_time: float = 0.0, threads: int | None = 1) -> np.ndarray:
    """`num_frames` frames sampled at `fps` from `start_time`: uint8 (T, H, W, 3) RGB.

    Raises `VideoTooShortError` when the video has fewer than `num_frames` samples after
    `start_time`.
    """
    with VideoReader(path, threads=threads) as video:
        return video.read_clip(fps, num_frames, start_time)


def scan_videos(
    paths: Iterable[str | os.PathLike], verify: bool = False
) -> tuple[list[VideoInfo], list[VideoError]]:
    """Probe many files; good ones come back as `VideoInfo`, bad ones as their `VideoError`.

    No exception escapes for a bad file. `verify=False` runs `probe_video` (header + first
    frame). `verify=True` also reads every packet and decodes the last frame, which catches
    truncated files whose index survived, at the cost of reading each file once; its
    `num_frames` are exact counts.
    """
    infos: list[VideoInfo] = []
    errors: list[VideoError] = []
    for path in paths:
        try:
            if verify:
                with VideoReader(path) as video:
                    video.read_frames([video.num_frames - 1])
                    infos.append(video.info)
            else:
                infos.append(probe_video(path))
        except VideoError as exc:
            errors.append(exc)
        except Exception as exc:  # a bug or an exotic failure must not stop a corpus scan
            errors.append(VideoDecodeError(path, f"unexpected {type(exc).__name__}: {exc}"))
    return infos, errors


def resolve_video_path(path: str | os.PathLike) -> Path:
    """`path`, or, when no file is there, the file beside it with the same name and another video
    extension (the first in `VIDEO_EXTENSIONS` order): downloads of the YouTube-based datasets
    (Kinetics, HowTo100M, ...) come as .mp4, .webm or .mkv, whatever the annotation list names.
    `path` itself when neither exists, so that the error names the file the list asked for."""
    path = Path(path)
    if path.is_file():
        return path
    for extension in VIDEO_EXTENSIONS:
        candidate = path.with_suffix(extension)
        if candidate.suffix.lower() != path.suffix.lower() and candidate.is_file():
            return candidate
    return path


def find_video_files(folder: str | os.PathLike, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Files under `folder` (recursively) whose extension is a video extension, sorted.

    Hidden files and anything inside a hidden folder below `folder` are skipped: they are not
    videos of the dataset but leftovers of tools, e.g. an interrupted atomic write's
    `.name.tmp.mp4`, macOS's `._name.mp4` (AppleDouble metadata), a `.Trash` folder.
    """
    folder = Path(folder)
    suffixes = {e.lower() for e in extensions}
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not p.is_dir()
    )
