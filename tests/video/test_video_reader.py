"""Frame accuracy of vimpac.video.reader on videos whose frames show their own index."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import HEIGHT, WIDTH, decode_indices, has_b_frames, index_frames, write_webm

from vimpac.video.errors import VideoDecodeError, VideoTooShortError
from vimpac.video.reader import (
    VideoInfo,
    VideoReader,
    frame_indices_at_fps,
    probe_video,
    read_clip,
    read_frames,
    read_video_at_fps,
    sample_times,
)
from vimpac.video.writer import encode_frames


def _write_mpeg4_with_b_frames(path, frames, fps, fmt="mp4", codec_tag=None, gop=30):
    """MPEG-4 Part 2 with B-frames (the project writer uses the encoder default: none); in an
    AVI with codec_tag "XVID" it is what UCF101 and HMDB51 distribute."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        if codec_tag is not None:
            stream.codec_tag = codec_tag
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 4_000_000
        stream.codec_context.max_b_frames = 2
        stream.codec_context.gop_size = gop
        encode_frames(container, stream, frames)
    return path


@pytest.fixture(scope="module")
def mpeg4_b_frames(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpeg4") / "index_mpeg4_bframes.mp4"
    return _write_mpeg4_with_b_frames(path, index_frames(120), 25)


def test_h264_test_video_really_has_b_frames_and_several_gops(index_video):
    path = index_video("h264", fps=25, count=150, gop=48)
    assert has_b_frames(path)
    with VideoReader(path) as video:
        assert video.num_frames == 150
        assert len(video.keyframe_indices) >= 3  # seeks are exercised


@pytest.mark.parametrize("codec,gop", [("h264", 48), ("h264", 300), ("mpeg4", 30), ("mpeg4_bframes", 30)])
def test_random_unsorted_and_repeated_indices_are_exact(index_video, mpeg4_b_frames, codec, gop):
    if codec == "mpeg4_bframes":
        path = mpeg4_b_frames
        count = 120
    else:
        path = index_video(codec, fps=25, count=150, gop=gop)
        count = 150
    rng = np.random.default_rng(7)
    wanted = rng.integers(0, count, size=40)
    wanted = np.concatenate([wanted, wanted[:5], [count - 1, 0, count - 1]])  # repeats, both ends
    frames = read_frames(path, wanted)
    assert frames.shape == (len(wanted), HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(decode_indices(frames), wanted)


def test_mpeg4_helper_really_has_b_frames(mpeg4_b_frames):
    assert has_b_frames(mpeg4_b_frames)


def test_xvid_avi_with_b_frames_reads_from_its_first_frame(tmp_path):
    # AVI seeks by decode timestamps. With B-frames the first frame's pts is the second packet's
    # dts, so when that packet is a keyframe too (an I-frame at frame 3, as XviD puts at a scene
    # cut) seeking to frame 0 landed on it, and every read that needed frame 0 failed ("frame 0
    # cannot be decoded (decoding starts at frame 3)"): the whole video was lost to tokenize.
    path = _write_mpeg4_with_b_frames(tmp_path / "v_xvid.avi", index_frames(60), 25, fmt="avi", codec_tag="XVID", gop=3)
    assert has_b_frames(path)
    with VideoReader(path) as video:
        assert video.num_frames == 60 and len(video.keyframe_indices) >= 2
        np.testing.assert_array_equal(decode_indices(video.read_frames(np.arange(60))), np.arange(60))
        wanted = np.array([0, 59, 31, 0, 1, 45, 2])
        np.testing.assert_array_equal(decode_indices(video.read_frames(wanted)), wanted)
    np.testing.assert_array_equal(decode_indices(read_video_at_fps(path, 2)), np.arange(0, 60, 12.5).astype(int))


@pytest.mark.parametrize("codec", ["h264", "mpeg4"])
def test_every_frame_in_order_equals_plain_sequential_decode(index_video, codec):
    path = index_video(codec, fps=25, count=150, gop=48)
    with av.open(str(path)) as container:
        sequential = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with VideoReader(path) as video:
        frames = video.read_frames(np.arange(150))
        backwards = video.read_frames(np.arange(149, -1, -1))
    np.testing.assert_array_equal(decode_indices(sequential), np.arange(150))
    np.testing.assert_array_equal(frames, sequential)  # bit-identical pixels, not just indices
    np.testing.assert_array_equal(backwards, sequential[::-1])


def _spy_seeks(video: VideoReader) -> list[int]:
    """Record the target frame of every seek the reader makes."""
    targets: list[int] = []
    original = video._seek_and_decode

    def spy(target):
        targets.append(target)
        return original(target)

    video._seek_and_decode = spy
    return targets


def test_sorted_request_within_one_gop_is_one_forward_pass(index_video):
    path = index_video("h264", fps=25, count=150, gop=300)
    with VideoReader(path) as video:
        assert list(video.keyframe_indices) == [0]  # one GOP: a second seek could never help
        seeks = _spy_seeks(video)
        np.testing.assert_array_equal(decode_indices(video.read_frames([3, 40, 41, 90, 149])), [3, 40, 41, 90, 149])
        np.testing.assert_array_equal(decode_indices(video.read_frames([149, 3, 90])), [149, 3, 90])
    assert seeks == [3, 3]  # one seek per request, none per frame


def test_seek_skips_gops_but_never_goes_backwards(index_video):
    path = index_video("h264", fps=25, count=150, gop=48)
    with VideoReader(path) as video:
        last_key = int(video.keyframe_indices[-1])
        seeks = _spy_seeks(video)
        wanted = [1, 2, last_key + 1, 149]
        np.testing.assert_array_equal(decode_indices(video.read_frames(wanted)), wanted)
    assert seeks == [1, last_key + 1]  # jumped over the middle GOPs, once


def test_probe_video_metadata(index_video):
    path = index_video("h264", fps=30, count=120)
    info = probe_video(path)
    assert isinstance(info, VideoInfo)
    assert (info.width, info.height, info.num_frames, info.codec) == (WIDTH, HEIGHT, 120, "h264")
    assert info.fps == pytest.approx(30)
    assert info.duration == pytest.approx(4.0)
    with VideoReader(path) as video:
        assert video.info == info


def test_sample_times():
    np.testing.assert_allclose(sample_times(2.0, 2), [0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(sample_times(2.01, 2), [0, 0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(sample_times(2.0, 2, start_time=0.25), [0.25, 0.75, 1.25, 1.75])
    np.testing.assert_allclose(sample_times(10.0, 4, start_time=1.0, num_frames=3), [1.0, 1.25, 1.5])
    assert len(sample_times(1.0, 2, start_time=1.0)) == 0
    with pytest.raises(ValueError, match="target_fps"):
        sample_times(1.0, 0)
    with pytest.raises(ValueError, match="start_time"):
        sample_times(1.0, 2, start_time=-1)


# Expected indices follow from the rule "time t shows the last frame with timestamp <= t":
# frame i is at i / fps, so t = k / 2 shows frame floor(k * fps / 2).
@pytest.mark.parametrize(
    "fps,count,expected",
    [
        (10, 60, [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55]),
        (25, 100, [0, 12, 25, 37, 50, 62, 75, 87]),
        (30, 120, [0, 15, 30, 45, 60, 75, 90, 105]),
    ],
)
def test_whole_video_at_2fps_from_10_25_30fps(index_video, fps, count, expected):
    path = index_video("h264", fps=fps, count=count, gop=48)
    frames = read_video_at_fps(path, 2)
    np.testing.assert_array_equal(decode_indices(frames), expected)
    info = probe_video(path)
    np.testing.assert_array_equal(frame_indices_at_fps(info, 2), expected)
    with VideoReader(path) as video:
        np.testing.assert_array_equal(video.frame_indices_at_fps(2), expected)


@pytest.mark.parametrize("count", [24, 37])
def test_webm_millisecond_timestamps_give_no_sample_past_the_end(tmp_path, count):
    # WebM stores frame 23 of a 12 fps video at 1.917 s (milliseconds); adding 1/12 s put the end
    # at 2.0003 s and a 4 FPS sample at 2.0 s, past the real end: the last frame twice.
    path = write_webm(tmp_path / f"{count}.webm", index_frames(count), fps=12)
    with VideoReader(path) as video:
        assert video.info.duration == pytest.approx(count / 12, abs=1e-3)
        np.testing.assert_array_equal(video.frame_indices_at_fps(4), np.arange(0, count, 3))
    np.testing.assert_array_equal(decode_indices(read_video_at_fps(path, 4)), np.arange(0, count, 3))


def test_ntsc_rate_30000_1001(index_video):
    path = index_video("h264", fps=30000 / 1001, count=120)
    with VideoReader(path) as video:
        # frame i at i * 1001 / 30000 s; t = 0.5 s lies between frame 14 (0.467) and 15 (0.5005)
        np.testing.assert_array_equal(video.frame_indices_at_fps(2, num_frames=3), [0, 14, 29])


def test_read_clip_with_start_time(index_video):
    path = index_video("h264", fps=30, count=120, gop=48)
    clip = read_clip(path, fps=2, num_frames=5, start_time=1.3)
    # t = 1.3, 1.8, 2.3, 2.8, 3.3 -> floor(30 t)
    np.testing.assert_array_equal(decode_indices(clip), [39, 54, 69, 84, 99])
    clip = read_clip(path, fps=4, num_frames=3, start_time=0.0)
    np.testing.assert_array_equal(decode_indices(clip), [0, 7, 15])


def test_clip_that_does_not_fit_raises_too_short(index_video):
    path = index_video("h264", fps=30, count=120, gop=48)  # 4 s: samples at 0, .5, ..., 3.5
    with pytest.raises(VideoTooShortError) as caught:
        read_clip(path, fps=2, num_frames=9)
    assert (caught.value.needed, caught.value.available) == (9, 8)
    assert str(path) in str(caught.value)
    with pytest.raises(VideoTooShortError) as caught:
        read_clip(path, fps=2, num_frames=5, start_time=2.0)
    assert (caught.value.needed, caught.value.available) == (5, 4)
    with pytest.raises(VideoTooShortError):
        read_frames(path, [120])


def test_reader_reuse_many_clips(index_video):
    path = index_video("h264", fps=25, count=150, gop=48)
    rng = np.random.default_rng(0)
    with VideoReader(path) as video:
        for start in rng.uniform(0, 6.0 - 2.5, size=8):
            clip = video.read_clip(fps=2, num_frames=5, start_time=float(start))
            expected = np.floor((start + np.arange(5) / 2) * 25 + 25e-6).astype(int)
            np.testing.assert_array_equal(decode_indices(clip), expected)


def test_bad_index_arguments(index_video):
    path = index_video("h264", fps=25, count=150, gop=48)
    with VideoReader(path) as video:
        with pytest.raises(ValueError, match=">= 0"):
            video.read_frames([-1])
        with pytest.raises(ValueError, match="integers"):
            video.read_frames([1.5])
        with pytest.raises(ValueError, match="1-D"):
            video.read_frames([[1, 2]])
        assert video.read_frames([]).shape == (0, HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("threads", [None, 2])
def test_threaded_decoding_is_just_as_exact(index_video, threads):
    path = index_video("h264", fps=25, count=150, gop=48)
    wanted = np.random.default_rng(3).integers(0, 150, size=30)
    np.testing.assert_array_equal(decode_indices(read_frames(path, wanted, threads=threads)), wanted)
    with pytest.raises(ValueError, match="threads"):
        VideoReader(path, threads=0)


def _cut_with_stream_copy(source, path, skip_frames):
    """What `ffmpeg -ss START -i source -c copy path` writes when START is inside a GOP: every
    packet kept (the GOP's head is needed to decode the first shown frame), timestamps shifted
    so that the cut starts at 0, and an MP4 edit list that hides the frames before it (FFmpeg
    flags their packets "discard")."""
    with av.open(str(source)) as src, av.open(str(path), "w", format="mp4") as out:
        in_stream = src.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        shift = round(skip_frames / (in_stream.average_rate * in_stream.time_base))
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = out_stream
            out.mux(packet)
    return path


@pytest.mark.parametrize("codec", ["h264", "mpeg4"])
def test_mp4_cut_inside_a_gop_starts_at_its_first_shown_frame(index_video, tmp_path, codec):
    # The frames before the edit list's start were counted as frames of the video, though the
    # decoder never returns them: every read that needed frame 0 failed ("frame 0 cannot be
    # decoded (decoding starts at frame 10)"), so `tokenize` lost the whole video, and time 0
    # was 10 frames before the cut.
    source = index_video(codec, fps=25, count=100, gop=50)
    path = _cut_with_stream_copy(source, tmp_path / f"cut_{codec}.mp4", skip_frames=10)
    with av.open(str(path)) as container:
        assert any(p.is_discard for p in container.demux(video=0))  # really an edit-list cut
    with av.open(str(path)) as container:
        shown = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    np.testing.assert_array_equal(decode_indices(shown), np.arange(10, 100))  # what FFmpeg shows
    with VideoReader(path) as video:
        assert video.num_frames == 90 and video.info.num_frames == 90
        assert video.info.duration == pytest.approx(90 / 25)
        np.testing.assert_array_equal(video.read_frames(np.arange(90)), shown)
        wanted = np.array([89, 0, 45, 0, 12, 60])
        np.testing.assert_array_equal(video.read_frames(wanted), shown[wanted])
    np.testing.assert_array_equal(decode_indices(read_video_at_fps(path, 2)), 10 + np.arange(0, 90, 12.5).astype(int))


def _ffmpeg_fps_filter(path, fps):
    """The frames FFmpeg's `fps` filter (the authors' `ffmpeg -vf fps=...`) makes of a video."""
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        source, fps_filter, sink = graph.add_buffer(template=stream), graph.add("fps", f"fps={fps}"), graph.add("buffersink")
        source.link_to(fps_filter)
        fps_filter.link_to(sink)
        graph.configure()

        def drain():
            while True:
                try:
                    out.append(graph.pull().to_ndarray(format="rgb24"))
                except (av.error.BlockingIOError, av.error.EOFError):
                    return

        for frame in container.decode(stream):
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
    return np.stack(out)


@pytest.mark.parametrize("source_fps,count", [(30, 37), (30, 46), (25, 60)])
def test_docs_ffmpeg_fps_filter_is_our_sampling_half_a_period_later(index_video, source_fps, count):
    # docs/video.md tells how the authors' ffmpeg sampling relates to ours; pin it.
    path = index_video("h264", fps=source_fps, count=count, gop=None)
    ffmpeg = decode_indices(_ffmpeg_fps_filter(path, 2))
    duration = count / source_fps
    assert len(ffmpeg) == round(duration * 2) and len(read_video_at_fps(path, 2)) == math.ceil(duration * 2)
    np.testing.assert_array_equal(ffmpeg, decode_indices(read_clip(path, 2, len(ffmpeg), start_time=0.25)))


def test_the_last_gop_of_an_mpeg_ts_file_is_readable(index_video, tmp_path):
    # Seeking an MPEG-TS file to a keyframe near its end left nothing to decode, and the reader
    # gave up ("no frame decodes after seeking to frame 149") instead of starting a GOP earlier.
    path = tmp_path / "index.ts"
    _remux(index_video("h264", fps=25, count=150, gop=50), path, "mpegts")
    with VideoReader(path) as video:
        assert video.num_frames == 150 and video.keyframe_indices[-1] > 100
        wanted = np.array([149, video.keyframe_indices[-1], 120, 0, 149])
        np.testing.assert_array_equal(decode_indices(video.read_frames(wanted)), wanted)
        for index in (149, video.keyframe_indices[-1]):
            np.testing.assert_array_equal(decode_indices(video.read_frames([index])), [index])


def _remux(source, path, fmt, drop_packets=0):
    """`source` remuxed into `fmt` without its first `drop_packets` packets (decode order): with
    some dropped, a stream that starts inside a GOP with nothing to hide its head, as a stream
    copy into .mkv / .ts cut at a non-keyframe or a broadcast capture joined mid-GOP. Returns the
    frame index of the first keyframe left, where players and FFmpeg start showing the video."""
    with av.open(str(source)) as src, av.open(str(path), "w", format=fmt) as out:
        in_stream = src.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        first_key = None
        packets = [p for p in src.demux(in_stream) if p.dts is not None]
        for packet in packets[drop_packets:]:
            if packet.is_keyframe and first_key is None:
                first_key = round(packet.pts * in_stream.time_base * in_stream.average_rate)
            packet.stream = out_stream
            out.mux(packet)
    return first_key


@pytest.mark.parametrize("codec,fmt,suffix", [("h264", "matroska", "mkv"), ("h264", "mpegts", "ts"),
                                              ("h264", "mp4", "mp4"), ("mpeg4", "matroska", "mkv")])
def test_stream_starting_inside_a_gop_starts_at_its_first_keyframe(index_video, tmp_path, codec, fmt, suffix):
    # Without an edit list the frames of the cut GOP were counted as frames of the video, though
    # they cannot be decoded: every read that needed frame 0 failed ("frame 0 cannot be decoded
    # (decoding starts at frame 38)"), so `tokenize` lost the whole video.
    source = index_video(codec, fps=25, count=100, gop=50)
    path = tmp_path / f"cut_{codec}.{suffix}"
    first_key = _remux(source, path, fmt, drop_packets=10)
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        declared = container.streams.video[0].frames
    assert not packets[0].is_keyframe and not any(p.is_discard for p in packets) and first_key > 10
    # FFmpeg's own decode: the H.264 decoder drops the frames before the keyframe, the MPEG-4 one
    # returns them as smears of the missing references; from the keyframe on, the video's frames.
    with av.open(str(path)) as container:
        decoded = [f for f in container.decode(video=0)]
    key_pts = min(p.pts for p in packets if p.is_keyframe)
    shown = np.stack([f.to_ndarray(format="rgb24") for f in decoded if f.pts >= key_pts])
    if codec == "h264":
        assert len(shown) == len(decoded)
    np.testing.assert_array_equal(decode_indices(shown), np.arange(first_key, 100))
    count = 100 - first_key
    with VideoReader(path) as video:
        # MP4 declares all 90 packets as frames; the check against truncation counts the hidden ones.
        assert declared in (0, len(packets)) and video.num_frames == count and video.info.num_frames == count
        assert video.info.duration == pytest.approx(count / 25)
        np.testing.assert_array_equal(video.read_frames(np.arange(count)), shown)
        wanted = np.array([count - 1, 0, count // 2, 0, 3])
        np.testing.assert_array_equal(video.read_frames(wanted), shown[wanted])
    np.testing.assert_array_equal(decode_indices(read_video_at_fps(path, 5)), first_key + np.arange(0, count, 5))
    if suffix != "ts":  # MPEG-TS declares neither a frame count nor a duration to check against
        data = path.read_bytes()
        truncated = tmp_path / f"truncated.{suffix}"
        truncated.write_bytes(data[:len(data) * 6 // 10])
        with pytest.raises(VideoDecodeError, match="truncated"):
            VideoReader(truncated)


# ----------------------------------------------------------------------------------------------
# iter_frames: the frames of read_frames in chunks (long videos in bounded memory)


@pytest.mark.parametrize("codec,gop", [("h264", 300), ("h264", 48), ("mpeg4_bframes", 30)])
@pytest.mark.parametrize("target_fps", [2, 25, 60])  # below, at and above the video's 25 FPS
def test_iter_frames_chunks_concatenate_to_read_frames(index_video, mpeg4_b_frames, codec, gop, target_fps):
    path = mpeg4_b_frames if codec == "mpeg4_bframes" else index_video(codec, fps=25, count=150, gop=gop)
    with VideoReader(path) as video:
        indices = video.frame_indices_at_fps(target_fps)
        whole = video.read_frames(indices)
        for chunk_frames in (1, 7, len(indices) // 2, len(indices), len(indices) + 5):
            chunks = list(video.iter_frames(indices, chunk_frames))
            assert [len(c) for c in chunks[:-1]] == [chunk_frames] * (len(chunks) - 1)
            assert 1 <= len(chunks[-1]) <= chunk_frames
            np.testing.assert_array_equal(np.concatenate(chunks), whole)  # bit-identical pixels


def test_iter_frames_of_a_single_gop_video_is_one_forward_pass(index_video):
    # With one keyframe, a read_frames per chunk would decode the video from its start every time.
    path = index_video("h264", fps=25, count=150, gop=300)
    with VideoReader(path) as video:
        assert list(video.keyframe_indices) == [0] and has_b_frames(path)
        seeks = _spy_seeks(video)
        chunks = list(video.iter_frames(np.arange(3, 150), 4))
    assert seeks == [3]
    np.testing.assert_array_equal(decode_indices(np.concatenate(chunks)), np.arange(3, 150))


def test_iter_frames_skips_gops_between_chunks(index_video):
    path = index_video("h264", fps=25, count=150, gop=48)
    with VideoReader(path) as video:
        last_key = int(video.keyframe_indices[-1])
        seeks = _spy_seeks(video)
        wanted = [1, 2, last_key + 1, 149]
        chunks = list(video.iter_frames(wanted, 2))
    assert seeks == [1, last_key + 1]
    np.testing.assert_array_equal(decode_indices(np.concatenate(chunks)), wanted)


def test_iter_frames_checks_its_arguments_at_the_call(index_video):
    path = index_video("h264", fps=25, count=150, gop=48)
    with VideoReader(path) as video:
        with pytest.raises(ValueError, match="ascending"):
            video.iter_frames([5, 3])
        with pytest.raises(ValueError, match="chunk_frames"):
            video.iter_frames([1, 2], 0)
        with pytest.raises(ValueError, match=">= 0"):
            video.iter_frames([-1, 2])
        with pytest.raises(VideoTooShortError):
            video.iter_frames([1, 150])
        assert list(video.iter_frames([])) == []
        # An abandoned iteration leaves the reader usable.
        next(video.iter_frames(np.arange(150), 4))
        np.testing.assert_array_equal(decode_indices(video.read_frames([149, 0])), [149, 0])
