"""`tokenize_videos`: annotation records -> decoded frames -> views -> tokens -> store.

Pipeline (one rank):

    worker processes (spawn)            main process
    ------------------------            ------------
    VideoReader.iter_frames        ->   FullBatchEncoder: queue every view's frames, encode each
      (frames at the FPS, 32 at a       full `batch_size` of them (one shape for the encoder)
      time) -> make_views of each       RankWriter.commit(videos now complete)  (fsync shard, then
      chunk                             manifest part)

Decoding runs ahead in a bounded window of `2 * workers` videos, so it overlaps encoding
without holding the whole dataset in memory. Videos that fail to decode (any `VideoError`,
fewer than `min_frames` frames at the FPS, or a decoder crash that kills its worker process) are
committed as failures with their reason and the run goes on; a rerun skips them unless
`retry_failed` (a file that was missing is retried by itself once it exists).

Interruption: the first SIGINT or SIGTERM (as sent by `timeout` or SLURM) stops taking new
videos; what is decoded is encoded and committed, and the run returns with `interrupted` set
(a second signal stops at once; committed videos are kept either way). Decoding workers exit
by themselves when the main process is gone, even after a SIGKILL.

A store records a fingerprint of the annotation list it was made from; resuming it with
another list (other videos, order, labels or classes, or another list file) is
refused, since record numbers and labels of the committed videos would no longer match.
(The video root may change: a rerun after a wrong --videos retries the missing files.)

Scale-out: rank r of w takes records[r::w] and writes only its own shards and manifest parts.
With torch.distributed initialised, rank 0 creates store.json before the others check it, and
merges the manifest after a final barrier; without it (independent jobs) the parts are merged
when the store is opened.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import math
import multiprocessing
import os
import posixpath
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vimpac.io import atomic_write_json
from vimpac.signals import stop_on_signals as stop_signals
from vimpac.store.errors import StoreError
from vimpac.store.format import (
    MAX_CODEBOOK, META_FILE, Manifest, StoreMeta, annotations_fingerprint, load_manifest, read_meta,
)
from vimpac.store.writer import (
    DEFAULT_SHARD_BYTES, EncodedVideo, FailedVideo, RankWriter, compact_store, write_failures_report,
)
from vimpac.workers import WORKERS_DIE_ON_START, exit_with_parent, worker_can_start


# ------------------------------------------------------------------------------ report


@dataclass
class TokenizeReport:
    """What one rank did. `already_done` / `skipped_failed` were committed by earlier runs."""

    store: str
    rank: int
    world_size: int
    assigned: int = 0
    already_done: int = 0
    skipped_failed: int = 0
    encoded_videos: int = 0
    encoded_entries: int = 0
    encoded_frames: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run early

    @property
    def nothing_to_do(self) -> bool:
        return self.encoded_videos == 0 and not self.failures and self.interrupted is None

    @property
    def all_failed(self) -> bool:
        """The store holds no video and every one this run tried failed (often a wrong --videos
        root). Not when earlier runs left videos in it (a rerun over a few broken files)."""
        return self.encoded_videos == 0 and self.already_done == 0 and bool(self.failures)

    @property
    def videos_per_s(self) -> float:
        return (self.encoded_videos + len(self.failures)) / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        """Encoded frames per second, over all views (the encoder's actual workload)."""
        return self.encoded_frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        where = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        if self.interrupted is not None:
            where += f"stopped by {self.interrupted}: "
        if self.nothing_to_do:
            return (f"{where}nothing to do: all {self.assigned} videos are already in {self.store} "
                    f"({self.already_done} tokenized, {self.skipped_failed} failed earlier; "
                    "--retry-failed retries those)")
        return (f"{where}tokenized {self.encoded_videos} videos ({self.encoded_entries} entries, "
                f"{self.encoded_frames} frames) in {self.seconds:.1f} s: {self.videos_per_s:.2f} videos/s, "
                f"{self.frames_per_s:.1f} frames/s; {len(self.failures)} failed; "
                f"{self.already_done} were already done, {self.skipped_failed} failed earlier")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(videos_per_s=self.videos_per_s, frames_per_s=self.frames_per_s)
        return data


# ------------------------------------------------------------------------------ decoding


@dataclass(frozen=True)
class DecodeJob:
    record: int
    key: str
    label: int | None
    rel_path: str
    path: str
    fps: float
    size: int
    views: tuple  # tuple[ViewSpec, ...]
    min_frames: int


@dataclass
class DecodedVideo:
    job: DecodeJob
    views: dict[str, np.ndarray] | None  # view name -> (T, S, S, 3) uint8
    failure: FailedVideo | None


# How long a rank waits at a barrier for the others. A rank that is done waits at the final one
# for the slowest rank, which on a big dataset can be hours behind (long videos are not dealt out
# evenly); torch's default of 30 minutes for gloo crashed the ranks that finished first, with the
# manifest left unmerged. A rank that crashes closes its connections, which ends the others' wait
# at once; only a machine that hangs is left to the job scheduler (`srun --kill-on-bad-exit=1`).
RANK_WAIT_LIMIT = datetime.timedelta(days=7)

# Full-resolution frames a decoding worker holds at a time: the views of each chunk are made
# before the next is decoded, so a 1-hour video costs its small views, not 7,200 HD frames.
DECODE_CHUNK_FRAMES = 32


def decode_video(job: DecodeJob) -> DecodedVideo:
    """Decode one video at the FPS and make its views (runs in a worker process)."""
    from vimpac.video.errors import VideoError, VideoTooShortError
    from vimpac.video.reader import VideoReader
    from vimpac.video.views import make_views_of_chunks

    try:
        with VideoReader(job.path) as video:
            indices = video.frame_indices_at_fps(job.fps)
            if len(indices) < job.min_frames:
                raise VideoTooShortError(job.path, job.min_frames, len(indices))
            chunks = video.iter_frames(indices, DECODE_CHUNK_FRAMES)
            views = make_views_of_chunks(chunks, len(indices), job.size, job.views)
    except VideoError as exc:
        kind = getattr(exc, "kind", type(exc).__name__)
        failure = FailedVideo(job.record, job.key, job.rel_path, getattr(exc, "reason", str(exc)), kind)
        return DecodedVideo(job, None, failure)
    return DecodedVideo(job, views, None)


CRASH_REASON = ("the decoding process died while reading this file (a crash inside the decoder, or the "
                "out-of-memory killer)")


def _decode_in_order(jobs: Sequence[DecodeJob], workers: int,
                     decode: Callable[[DecodeJob], DecodedVideo] = decode_video) -> Iterator[DecodedVideo]:
    """Decoded videos in job order; with workers, at most 2 * workers are in flight or waiting.

    A worker process that dies while decoding (a crash inside FFmpeg on a damaged file, the
    out-of-memory killer) breaks the pool. The videos that were in flight and not yet decoded
    are then decoded again one at a time, each in a fresh process; the one whose process dies
    is reported as failed (error "crash") and the run goes on with a new pool. With
    `multiprocessing.Pool` such a death left the run waiting forever.
    """
    if workers <= 0:
        for job in jobs:
            yield decode(job)
        return
    # spawn: fork would copy the parent's torch threads and locks into the workers.
    context = multiprocessing.get_context("spawn")
    job_iter = iter(jobs)
    pending: collections.deque = collections.deque()  # (job, future), in job order
    pool = _decode_pool(workers, context)
    try:
        def fill() -> None:
            while len(pending) < 2 * workers:
                job = next(job_iter, None)
                if job is None:
                    return
                pending.append((job, pool.submit(decode, job)))

        fill()
        while pending:
            job, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=True, cancel_futures=True)
                in_flight = [(job, future)] + list(pending)
                pending.clear()
                for stuck_job, stuck in in_flight:
                    finished = stuck.done() and not stuck.cancelled() and stuck.exception() is None
                    yield stuck.result() if finished else _decode_alone(stuck_job, decode, context)
                pool = _decode_pool(workers, context)
                fill()
                continue
            fill()
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode_pool(workers: int, context: Any) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                               initargs=(os.getpid(),))


def _decode_alone(job: DecodeJob, decode: Callable[[DecodeJob], DecodedVideo],
                  context: Any) -> DecodedVideo:
    """Decode `job` in a process of its own; its death becomes a failure of this video.

    A process that dies before it takes any task is not this video's fault (a script without a
    `__main__` guard kills every worker so): that stops the run instead of committing every
    video as a permanent "crash" failure, which a rerun would skip.
    """
    with _decode_pool(1, context) as solo:
        if not worker_can_start(solo):
            raise StoreError(f"decoding: {WORKERS_DIE_ON_START}; no video was marked as failed for it")
        try:
            return solo.submit(decode, job).result()
        except BrokenProcessPool:
            return DecodedVideo(job, None, FailedVideo(job.record, job.key, job.rel_path, CRASH_REASON, "crash"))


def _worker_init(parent_pid: int) -> None:
    # A worker waits for jobs on a pipe whose write end it holds itself, so it never sees EOF:
    # without these it outlived a SIGKILLed main process forever (holding its memory).
    exit_with_parent(parent_pid)
    # The main process decides what an interrupt means (it finishes and commits the decoded
    # videos); Ctrl-C reaches the whole process group, and a worker dying of it would be
    # taken for a decoder crash.
    # SIGTERM too: `timeout` and SLURM send it to every process of the job, not only the main one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Each worker decodes one video at a time; several torch threads (resizing) per worker
    # would oversubscribe the cores that the encoder in the main process needs.
    import torch

    torch.set_num_threads(1)


# ------------------------------------------------------------------------------ encoding


class FullBatchEncoder:
    """Encodes the views of a stream of decoded videos in tokenizer calls of exactly `batch_size`
    frames (only the last call of a run is shorter) and hands each video back, in order, once
    all of its frames are encoded. A video's frames may span several calls.

    Why full calls: CPU inference (oneDNN) builds and caches kernels for every input shape it
    sees, and the heap fragments on varied sizes. Encoding each group of videos with its own
    remainder call fed the encoder a new batch size per group: the DALL-E encoder at 128 px grew
    by ~45 MiB per new size, up to one per possible size (bench/bench_encoder_calls.py).
    """

    def __init__(self, tokenizer: Any, view_names: Sequence[str], batch_size: int) -> None:
        self.tokenizer = tokenizer
        self.view_names = tuple(view_names)
        self.batch_size = batch_size
        self._waiting: collections.deque[DecodedVideo] = collections.deque()  # added, not yet complete
        self._frames: collections.deque[np.ndarray] = collections.deque()     # not yet encoded, in order
        self._ids: collections.deque[np.ndarray] = collections.deque()        # encoded, not yet handed out
        self._queued = 0
        self._encoded = 0

    def add(self, video: DecodedVideo) -> list[EncodedVideo]:
        """Queue `video`'s frames; encode every full batch; return the videos now complete."""
        for name in self.view_names:
            self._frames.append(video.views[name])
            self._queued += video.views[name].shape[0]
        self._waiting.append(video)
        while self._queued >= self.batch_size:
            self._encode(self.batch_size)
        return self._complete()

    def finish(self) -> list[EncodedVideo]:
        """Encode what is left (one shorter call) and return the remaining videos."""
        if self._queued:
            self._encode(self._queued)
        return self._complete()

    def _encode(self, n: int) -> None:
        import torch

        frames = _take_rows(self._frames, n)
        self._queued -= n
        with torch.inference_mode():
            out = self.tokenizer.encode(frames)
        self._ids.append(out.cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out))
        self._encoded += n

    def _complete(self) -> list[EncodedVideo]:
        done = []
        while self._waiting:
            video = self._waiting[0]
            lengths = [video.views[name].shape[0] for name in self.view_names]
            frames = sum(lengths)
            if frames > self._encoded:
                break
            self._waiting.popleft()
            self._encoded -= frames
            views = {name: _take_rows(self._ids, n) for name, n in zip(self.view_names, lengths)}
            job = video.job
            done.append(EncodedVideo(job.record, job.key, job.label, views))
        return done


def _take_rows(parts: collections.deque, n: int) -> np.ndarray:
    """The first `n` rows of the concatenation of `parts` (n <= their total), removed from them;
    only the rows taken are copied."""
    if n == 0:
        return parts[0][:0] if parts else np.zeros((0, 0, 0), np.int64)
    taken = []
    while n > 0:
        head = parts[0]
        if head.shape[0] <= n:
            taken.append(parts.popleft())
            n -= head.shape[0]
        else:
            taken.append(head[:n])
            parts[0] = head[n:]
            n = 0
    return taken[0] if len(taken) == 1 else np.concatenate(taken, axis=0)


# ------------------------------------------------------------------------------ the entry point


def tokenize_videos(
    records: Any,
    video_root: str | os.PathLike,
    tokenizer: Any,
    fps: float,
    size: int,
    views: str | Sequence[Any],
    out_dir: str | os.PathLike,
    workers: int = 2,
    batch_size: int = 64,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    *,
    class_names: Sequence[str] | None = None,
    source: str | None = None,
    annotation_files: Sequence[str | os.PathLike] | None = None,
    retry_failed: bool = False,
    min_frames: int = 1,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    stop_on_signals: bool = False,
) -> TokenizeReport:
    """Tokenize this rank's share of `records` into the store at `out_dir`; resumable.

    `records` is an `AnnotationSet` (its class names and source are recorded in the store) or
    a sequence of `VideoRecord`s (then pass `class_names` / `source` if wanted);
    `annotation_files` are the files it was read from, recorded with the list's fingerprint; a
    resume with a list of other contents is refused. `tokenizer` is a `FrameTokenizer`;
    `views` a preset name ("center", "all12", "noflip6") or `ViewSpec`s;
    `batch_size` is frames per encoder call (every call but the run's last is full; a
    video's frames may span calls); videos are committed as soon as all their frames are
    encoded. Raises `StoreError` when `out_dir` holds a store made with other settings or from
    another annotation list, or `video_root` is not a folder. With `stop_on_signals` (the
    command line), a SIGINT / SIGTERM in the main thread ends the run early with
    `report.interrupted` set, after committing what was decoded; callers that do not check
    `interrupted` leave it off, and then Ctrl-C raises KeyboardInterrupt as usual (committed
    videos are kept either way).
    """
    from vimpac.video.reader import resolve_video_path
    from vimpac.video.views import resolve_views

    started = time.perf_counter()
    if hasattr(records, "records"):  # an AnnotationSet
        class_names = class_names if class_names is not None else (list(records.class_names) or None)
        source = source if source is not None else records.source
        records = records.records
    records = list(records)
    view_specs = tuple(resolve_views(views) if isinstance(views, str) else views)
    view_names = tuple(spec.name for spec in view_specs)
    if len(set(view_names)) != len(view_names):
        raise StoreError(f"views: names must be unique, got {list(view_names)}")
    if not 0 <= rank < world_size:
        raise StoreError(f"rank {rank} is outside world_size {world_size}")
    if batch_size < 1 or min_frames < 1:
        raise StoreError(f"batch_size and min_frames must be >= 1, got {batch_size} and {min_frames}")
    root = Path(out_dir)
    video_root = Path(video_root)
    # Before anything is written: a wrong root would otherwise fail every video, and the
    # failures, committed, would be skipped by the rerun with the right root.
    if not video_root.is_dir():
        what = "does not exist" if not video_root.exists() else "is not a folder"
        raise StoreError(f"video root {video_root} {what}; expected the folder the annotation paths are "
                         "relative to (--videos)")
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: exists and is not a folder; expected a token store folder (--out)")
    _check_distinct_files(records)
    meta = _meta_for_run(tokenizer, fps, size, view_names, class_names, source)
    meta = dataclasses.replace(
        meta, annotations_sha256=annotations_fingerprint(records, meta.class_names),
        annotations_records=len(records),
        annotation_files=None if annotation_files is None else tuple(str(Path(f).resolve()) for f in annotation_files),
    )
    distributed = world_size > 1 and _dist_initialized()

    # store.json: rank 0 creates it first under torch.distributed; everyone checks it.
    if rank == 0 or not distributed:
        _create_or_check_meta(root, meta)
    if distributed:
        _barrier()
        if rank != 0:
            _create_or_check_meta(root, meta)

    committed, _ = load_manifest(root)
    _check_committed_match_list(root, committed, records)
    done = set(committed.video_key)
    failed_before = {str(f.get("key")): f for f in committed.failures}
    report = TokenizeReport(store=str(root), rank=rank, world_size=world_size)
    jobs = []
    for index in range(rank, len(records), world_size):
        record = records[index]
        report.assigned += 1
        if record.key in done:
            report.already_done += 1
        elif record.key in failed_before and not retry_failed and not _now_found(
                failed_before[record.key], resolve_video_path(video_root / record.path)):
            report.skipped_failed += 1
        else:
            jobs.append(DecodeJob(index, record.key, record.label, record.path,
                                  str(resolve_video_path(video_root / record.path)),
                                  float(fps), int(size), view_specs, int(min_frames)))

    if jobs:
        with RankWriter(root, meta, rank, committed, shard_bytes=shard_bytes) as writer:
            _run_jobs(jobs, tokenizer, writer, view_names, workers, batch_size, progress, report,
                      stop_on_signals)
    if report.interrupted is not None:
        # Committed parts are the durable record; merging them can wait for the rerun, which
        # a job scheduler's grace period after SIGTERM may not leave time for.
        report.seconds = time.perf_counter() - started
        return report

    if distributed:
        _barrier()
    if rank == 0 and (distributed or world_size == 1):
        compact_store(root)
    elif not distributed:
        write_failures_report(root, load_manifest(root)[0])
    if distributed:
        _barrier()
    report.seconds = time.perf_counter() - started
    return report


def _check_distinct_files(records: Sequence[Any]) -> None:
    """Two records naming one file under different spellings ("./a.mp4", "a.mp4") would get two
    keys and tokenize the video twice. Two files under one key (records built in code; the list
    readers refuse them) would both be tokenized, the second then dropped from the manifest,
    which is indexed by key, and the rerun refused."""
    seen: dict[str, int] = {}
    keys: dict[str, int] = {}
    for index, record in enumerate(records):
        normal = os.path.normpath(record.path)
        first = seen.setdefault(normal, index)
        if first != index:
            raise StoreError(f"annotation list: records {first} ({records[first].path!r}) and {index} "
                             f"({record.path!r}) name the same video file; list each video once")
        first = keys.setdefault(record.key, index)
        if first != index:
            raise StoreError(f"annotation list: records {first} ({records[first].path!r}) and {index} "
                             f"({record.path!r}) have the same key {record.key!r}; the store needs a "
                             "unique key per video")


def _check_committed_match_list(root: Path, committed: Manifest, records: Sequence[Any]) -> None:
    """Every video (and failure) in the store must have the record number and label it has in
    this list. Catches a changed list even in stores that predate the list fingerprint."""
    position = {record.key: index for index, record in enumerate(records)}
    checks = [(key, record, None if label < 0 else label) for key, record, label in
              zip(committed.video_key, committed.video_record, committed.video_label)]
    checks += [(str(f.get("key")), f.get("record"), ...) for f in committed.failures]  # ...: no label kept
    for key, record, label in checks:
        index = position.get(key)
        if index is None and posixpath.normpath(key) in position:
            raise StoreError(f"{root}: video {key!r} was keyed as its list spelled it by an older vimpac; "
                             f"list paths are now normalised (to {posixpath.normpath(key)!r}), so this "
                             "store cannot be resumed: tokenize into a new --out folder")
        if index is None:
            problem = "is not in this annotation list"
        elif index != record:
            problem = f"is record {record} in the store but record {index} in this annotation list"
        elif label is not ... and records[index].label != label:
            problem = f"has label {label} in the store but {records[index].label} in this annotation list"
        else:
            continue
        raise StoreError(f"{root}: video {key!r} {problem}: the store was made from another annotation "
                         "list, and resuming would mix the two; write to a new --out folder, or rerun "
                         "with the list the store was made from")


def _now_found(failure: dict[str, Any], path: Path) -> bool:
    """A video that failed because its file was missing, and whose file now exists."""
    return failure.get("error") == "not_found" and path.is_file()


def _run_jobs(jobs: list[DecodeJob], tokenizer: Any, writer: RankWriter, view_names: Sequence[str],
              workers: int, batch_size: int, progress: bool, report: TokenizeReport,
              stop_on_signals: bool) -> None:
    from vimpac.progress import progress_bar

    bar = progress_bar(len(jobs), f"tokenize r{writer.rank}", "video", enabled=progress)
    encoder = FullBatchEncoder(tokenizer, view_names, batch_size)
    failures: list[FailedVideo] = []
    t0 = time.perf_counter()

    def commit(encoded: list[EncodedVideo]) -> None:
        nonlocal failures
        writer.commit(encoded, failures)
        report.encoded_videos += len(encoded)
        report.encoded_entries += len(encoded) * len(view_names)
        report.encoded_frames += sum(ids.shape[0] for video in encoded for ids in video.views.values())
        report.failures.extend(f.to_json() for f in failures)
        bar.update(len(encoded) + len(failures))
        elapsed = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(frames_s=f"{report.encoded_frames / elapsed:.1f}", failed=len(report.failures))
        failures = []

    signals = stop_signals() if stop_on_signals else contextlib.nullcontext([])
    with bar, signals as stop, contextlib.closing(_decode_in_order(jobs, workers)) as decoded_videos:
        for decoded in decoded_videos:
            encoded = []
            if decoded.failure is not None:
                failures.append(decoded.failure)
            else:
                encoded = encoder.add(decoded)
            if encoded or len(failures) >= batch_size:
                commit(encoded)
            if stop:
                break
        encoded = encoder.finish()
        if encoded or failures:
            commit(encoded)
        report.interrupted = stop[0] if stop else None


def _meta_for_run(tokenizer: Any, fps: float, size: int, view_names: tuple[str, ...],
                  class_names: Sequence[str] | None, source: str | None) -> StoreMeta:
    from vimpac import __version__

    downsample = int(getattr(tokenizer, "downsample", 8))
    codebook = int(tokenizer.codebook_size)
    if codebook > MAX_CODEBOOK:
        raise StoreError(f"tokenizer codebook_size {codebook} does not fit uint16 tokens (max {MAX_CODEBOOK}: the ids "
                         "and the [PAD] id, codebook_size + 1, must fit)")
    if not math.isfinite(fps) or fps <= 0:
        raise StoreError(f"fps must be a finite number > 0, got {fps}")
    if size <= 0 or size % downsample:
        raise StoreError(f"size must be a positive multiple of the tokenizer's downsampling "
                         f"({downsample}), got {size}")
    return StoreMeta(
        tokenizer_id=str(tokenizer.tokenizer_id), tokenizer_kind=str(getattr(tokenizer, "kind", "unknown")),
        codebook_size=codebook, downsample=downsample, fps=float(fps), size=int(size),
        grid=(size // downsample, size // downsample), views=view_names, source=source,
        class_names=None if class_names is None else tuple(class_names),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        vimpac_version=__version__,
    )


def _create_or_check_meta(root: Path, meta: StoreMeta) -> None:
    if (root / META_FILE).exists():
        existing = read_meta(root)
        difference = existing.first_difference(meta)
        if difference is not None:
            name, theirs, mine = difference
            raise StoreError(f"{root / META_FILE}: this store was made with {name}={theirs!r}, but this run "
                             f"uses {name}={mine!r}; write to a new folder, or rerun with the store's settings")
        difference = existing.annotation_difference(meta)
        if difference is not None:
            name, theirs, mine = difference
            what = ("the annotation list's contents (videos, order, labels or class names; "
                    f"{existing.annotations_records} records then, {meta.annotations_records} now)")
            raise StoreError(f"{root / META_FILE}: {what} differs from the one this store was made from "
                             f"(store: {name}={theirs!r}; this run: {mine!r}); resuming would mix two "
                             "lists' videos, so write to a new --out folder, or rerun with the store's list")
        return
    if root.exists() and any(not p.name.startswith(".") for p in root.iterdir()):
        raise StoreError(f"{root}: folder exists, is not empty and is not a token store (no {META_FILE})")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / META_FILE, meta.to_json())


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()
