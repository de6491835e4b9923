"""`tokenize_videos`: annotation records -> decoded frames -> views -> tokens -> store.

Pipeline (one rank):

    worker processes (spawn)            main process
    ------------------------            ------------
    VideoReader.iter_frames        ->   FullBatchEncoder: queue each chunk's views, encode each
      (frames at the FPS, 32 at a       full `batch_size` of frames (one shape for the encoder),
      time) -> make_views of each       keep a video's tokens until its last chunk is encoded
      chunk, sent on chunk by chunk     RankWriter.commit(videos now complete)  (fsync shard, then
                                        manifest part)

Each worker holds at most 2 videos and runs a few chunks ahead of the encoder, so decoding
overlaps encoding, and memory does not grow with the length of a video (only its tokens wait,
2 bytes each) nor of the dataset. Videos that fail to decode (any `VideoError`, fewer than
`min_frames` frames at the FPS, or a decoder crash that kills its worker process) are
committed as failures with their reason (the chunks they sent before are dropped) and the run
goes on; so are videos whose worker sent nothing for `decode_timeout` seconds (a read stalled on
a network mount, a decoder that spins): the worker is killed and replaced. A rerun skips failed
videos unless `retry_failed` (a file that was missing is retried by itself once it exists).

Interruption: the first SIGINT or SIGTERM (as sent by `timeout` or SLURM) stops taking new
videos; the videos whose chunks have all come are encoded and committed (one still coming is
left for the rerun), and the run returns with `interrupted` set (a second SIGINT stops at
once; committed videos are kept either way). Decoding workers exit by themselves when the main
process is gone, even after a SIGKILL.

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
import itertools
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import os
import posixpath
import queue
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vimpac.io import atomic_write_json
from vimpac.signals import STOP_SIGNALS, signals_blocked
from vimpac.signals import stop_on_signals as stop_signals
from vimpac.store.errors import StoreError
from vimpac.store.format import (
    MAX_CODEBOOK, META_FILE, TOKEN_DTYPE, ManifestColumns, StoreMeta, annotations_fingerprint, load_manifest_columns,
    read_meta,
)
from vimpac.store.writer import (
    DEFAULT_SHARD_BYTES, EncodedVideo, FailedVideo, RankWriter, committed_ends, compact_store, write_failures_report,
)
from vimpac.workers import WORKERS_DIE_ON_START, exit_with_parent


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
    """A video decoded whole (`decode_video`), or, with `views` None, the failure that ends a
    video's messages from a decoding worker."""

    job: DecodeJob
    views: dict[str, np.ndarray] | None  # view name -> (T, S, S, 3) uint8
    failure: FailedVideo | None


@dataclass
class DecodedChunk:
    """The views of the sampled frames [start, start + n) of a video of `total` of them."""

    job: DecodeJob
    views: dict[str, np.ndarray]  # view name -> (n, S, S, 3) uint8
    start: int
    total: int

    @property
    def first(self) -> bool:
        return self.start == 0

    @property
    def end(self) -> int:
        """The video's sampled frames decoded once this chunk is: start + its frames."""
        return self.start + len(next(iter(self.views.values())))

    @property
    def last(self) -> bool:
        return self.end == self.total


# How long a rank waits at a barrier for the others. A rank that is done waits at the final one
# for the slowest rank, which on a big dataset can be hours behind (long videos are not dealt out
# evenly); torch's default of 30 minutes for gloo crashed the ranks that finished first, with the
# manifest left unmerged. A rank that crashes closes its connections, which ends the others' wait
# at once; only a machine that hangs is left to the job scheduler (`srun --kill-on-bad-exit=1`).
RANK_WAIT_LIMIT = datetime.timedelta(days=7)

# Sampled frames a decoding worker decodes and turns into views at a time: it holds one chunk of
# full-resolution frames, and sends each chunk's views on before decoding far ahead.
DECODE_CHUNK_FRAMES = 32

# Messages (a chunk's views, or a failure) a decoding worker may have made that the main process
# has not taken yet; with the one it is making, that is how far it runs ahead of the encoder
# (all12 at S = 128: 19 MB a chunk). A whole video's views sent at once were ~4 GB for an hour.
WORKER_AHEAD_MESSAGES = 2
# Seconds a worker that is told to stop (the run is over) gets to exit before it is killed.
WORKER_EXIT_S = 5.0
# Seconds between checks for a stop signal while the next decoded chunk is awaited.
STOP_POLL_S = 0.1
# Seconds a decoding worker may send nothing (no chunk, no failure) before it is taken for stuck
# (a read stalled on a network mount, a decoder spinning on a pathological file), killed, and its
# video failed. Generous, because a false alarm fails a good video: one chunk of 32 sampled frames
# of a 4K video takes tens of seconds on a slow core, more at a low --fps (all the source frames
# between two samples are decoded), and the first chunk comes only after the whole file has been
# read once (demuxed for its timestamps). Meanwhile the run waits (videos are received in order),
# so each stuck file costs it this long.
DECODE_TIMEOUT_S = 600.0


def decode_video_chunks(job: DecodeJob, chunk_frames: int | None = None) -> Iterator[DecodedChunk | DecodedVideo]:
    """Decode one video at the FPS, `chunk_frames` sampled frames (default DECODE_CHUNK_FRAMES) at a
    time, and yield the views of each chunk; the last has `last` set. A video that cannot be
    decoded ends with a `DecodedVideo` holding its failure instead, possibly after some chunks
    (whoever takes them drops those). Runs in a decoding worker process."""
    from vimpac.video.errors import VideoDecodeError, VideoError, VideoTooShortError
    from vimpac.video.reader import VideoReader
    from vimpac.video.views import make_views

    try:
        with VideoReader(job.path) as video:
            indices = video.frame_indices_at_fps(job.fps)
            if len(indices) < job.min_frames:
                raise VideoTooShortError(job.path, job.min_frames, len(indices))
            start = 0
            for frames in video.iter_frames(indices, DECODE_CHUNK_FRAMES if chunk_frames is None else chunk_frames):
                chunk = DecodedChunk(job, make_views(frames, job.size, job.views), start, len(indices))
                start += len(frames)
                del frames  # else these full-resolution frames stay alive while the next chunk is decoded
                yield chunk
                del chunk
            if start != len(indices):  # the reader raises first; a video must end with `last` or a failure
                raise VideoDecodeError(job.path, f"decoded {start} of the {len(indices)} sampled frames")
    except VideoError as exc:
        kind = getattr(exc, "kind", type(exc).__name__)
        failure = FailedVideo(job.record, job.key, job.rel_path, getattr(exc, "reason", str(exc)), kind)
        yield DecodedVideo(job, None, failure)


def decode_video(job: DecodeJob) -> DecodedVideo:
    """One video's views at once (tests, benchmarks): `decode_video_chunks` gathered into arrays."""
    views: dict[str, np.ndarray] = {}
    for message in decode_video_chunks(job):
        if isinstance(message, DecodedVideo):
            return message
        for name, frames in message.views.items():
            if message.first:
                views[name] = np.empty((message.total,) + frames.shape[1:], dtype=frames.dtype)
            views[name][message.start : message.start + len(frames)] = frames
    return DecodedVideo(job, views, None)


CRASH_REASON = ("the decoding process died while reading this file (a crash inside the decoder, or the "
                "out-of-memory killer)")


def stuck_reason(seconds: float) -> str:
    """The failure reason of a video whose decoding worker sent nothing for `seconds`."""
    return (f"no frames decoded for {seconds:g} s; the decoding process was stopped (a read that stalls, e.g. on "
            "a network mount, or a decoder that never returns); --retry-failed retries the video, with a larger "
            "--decode-timeout if the file is only slow")


def check_decode_timeout(decode_timeout: float | None, workers: int) -> float | None:
    """The seconds a decoding worker may send nothing before its video fails (None: no limit)
    for `tokenize_videos(decode_timeout=..., workers=...)`: None gives DECODE_TIMEOUT_S with
    workers, no limit without; 0 no limit. A limit with workers=0 is refused: the main process,
    decoding itself, cannot stop its own decoder."""
    if decode_timeout is None:
        return DECODE_TIMEOUT_S if workers > 0 else None
    if not math.isfinite(decode_timeout) or decode_timeout < 0:
        raise StoreError(f"decode_timeout (--decode-timeout) must be a finite number of seconds >= 0 (0: no limit), "
                         f"got {decode_timeout}")
    if decode_timeout == 0:
        return None
    if workers <= 0:
        raise StoreError(f"decode_timeout {decode_timeout:g} (--decode-timeout) needs decoding workers: with "
                         "workers=0 (--workers 0) the main process decodes, and cannot stop its own decoder when "
                         "it hangs; use 1 or more workers, or leave the timeout out")
    return float(decode_timeout)


def _decode_in_order(jobs: Sequence[DecodeJob], workers: int,
                     decode: Callable[[DecodeJob], Iterator[DecodedChunk | DecodedVideo]] | None = None,
                     stopped: Callable[[], bool] = lambda: False,
                     decode_timeout: float | None = None) -> Iterator[DecodedChunk | DecodedVideo]:
    """Each job's messages (`decode_video_chunks`), job after job in order: its chunks, the last
    with `last` set, or a `DecodedVideo` with its failure. With workers, each one holds at most 2
    jobs and runs ahead of the caller by WORKER_AHEAD_MESSAGES messages, so a long video costs a
    few chunks of views in flight, not all of them.

    A worker process that dies while decoding (a crash inside FFmpeg on a damaged file, the
    out-of-memory killer) is replaced by a fresh one, which decodes the video being received
    again, alone: its chunks come again from the first (`first` set, the caller drops those it
    had). If that process dies too, the video is reported as failed (error "crash"); either way
    the fresh process then takes the dead one's other videos and the run goes on. (With
    `multiprocessing.Pool` such a death left the run waiting forever.) A replacement that dies
    before it is ready counts as such a death too; only when no worker of the run ever got that
    far (a script without a `__main__` guard) is it a `StoreError`.

    A worker that sends nothing for `decode_timeout` seconds (None: no limit) while its next
    message is awaited is killed and replaced in the same way, and the video it was on is
    reported as failed at once (error "timeout"; decoding it again would stall the run as long
    again). The time counts from its last message or from when it was ready, whichever is later,
    so a long video that keeps sending chunks is never cut.

    With workers, it also ends early once `stopped()` holds while no message has come (checked
    every STOP_POLL_S): a stop signal is not kept waiting by a decoder that is slow or stuck.
    """
    decode = decode_video_chunks if decode is None else decode
    if workers <= 0:
        for job in jobs:
            yield from decode(job)
        return
    # A thread receives the messages (reads them from the pipes and unpickles them, ~15 ms for a
    # chunk of all12 at S = 128), so that the caller encodes meanwhile: 5-8% of the throughput on
    # short videos, which the process pool's own result thread used to give.
    received: queue.Queue = queue.Queue(1)
    stop = threading.Event()

    def hand_over(item: tuple) -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                received.put(item, timeout=0.1)
                return

    def receive_all() -> None:
        try:
            for message in _receive_in_order(jobs, workers, decode, stop, decode_timeout):
                hand_over((message, None))
            hand_over((None, None))
        except BaseException as exc:  # raised to the caller
            hand_over((None, exc))

    receiver = threading.Thread(target=receive_all, name="receive-decoded", daemon=True)
    receiver.start()
    try:
        while True:
            try:
                message, error = received.get(timeout=STOP_POLL_S)
            except queue.Empty:
                if stopped():
                    return
                continue
            if error is not None:
                raise error
            if message is None:
                return
            yield message
    finally:
        stop.set()
        receiver.join()


def _receive_in_order(jobs: Sequence[DecodeJob], workers: int, decode: Callable, stop: threading.Event,
                      decode_timeout: float | None = None) -> Iterator[DecodedChunk | DecodedVideo]:
    """`_decode_in_order` with `workers` > 0, in the receiving thread; ends early once `stop` is set."""
    # spawn: fork would copy the parent's torch threads and locks into the workers.
    context = multiprocessing.get_context("spawn")
    # No more processes than videos: each one started costs ~0.5 s of a core importing torch.
    workers = min(workers, len(jobs))
    job_iter = iter(jobs)
    order: collections.deque = collections.deque()  # (job, worker index), handed out and not yet received
    procs: list[_DecodeProcess] = []
    next_worker = 0
    finished = False
    a_worker_started = False  # one of this run's worker processes got as far as taking jobs

    def fill() -> None:
        # Round robin: a worker decodes its jobs in order, and they are received in job order.
        nonlocal next_worker
        while len(order) < 2 * workers and (job := next(job_iter, None)) is not None:
            procs[next_worker].assign(job)
            order.append((job, next_worker))
            next_worker = (next_worker + 1) % workers

    try:
        for _ in range(workers):
            procs.append(_DecodeProcess(context, decode))
        fill()
        while order:
            job, w = order[0]
            message = procs[w].receive(stop, decode_timeout)
            if stop.is_set():
                return
            a_worker_started = a_worker_started or procs[w].started
            if message is None:  # the process died, or was killed as stuck
                dead = procs[w]
                if not a_worker_started:
                    # Not this video's fault: a script without a `__main__` guard kills every
                    # worker so, and committing each video as a permanent "crash" failure would
                    # make the corrected script's rerun skip them all. (Once a worker of the run
                    # was ready, one that dies on start-up, say a replacement killed by the
                    # out-of-memory killer, is a crash like any other.)
                    raise StoreError(f"decoding: {WORKERS_DIE_ON_START}; no video was marked as failed for it")
                if dead.stuck:
                    failure = FailedVideo(job.record, job.key, job.rel_path, stuck_reason(decode_timeout), "timeout")
                elif dead.alone is job:  # it died decoding this video alone
                    failure = FailedVideo(job.record, job.key, job.rel_path, CRASH_REASON, "crash")
                else:  # the replacement decodes it again, alone
                    failure = None
                procs[w] = dead.replacement(context, decode, failure is not None)
                if failure is not None:
                    order.popleft()
                    fill()
                    yield DecodedVideo(job, None, failure)
                continue
            if isinstance(message, _WorkerError):
                raise message.exception from _RemoteTraceback(message.traceback)
            if message.job.record != job.record:
                # Out of order: a video would be lost or stored twice; a bug, never a bad file.
                raise RuntimeError(f"decoding: a message of list entry {message.job.record} ({message.job.key!r}) came "
                                   f"while entry {job.record} ({job.key!r}) was awaited from the same worker")
            if isinstance(message, DecodedVideo) or message.last:
                order.popleft()
                procs[w].job_received()
                fill()
            yield message
        finished = True
    finally:
        # Every worker told to exit first, then each waited for: one at a time took ~0.35 s each.
        if finished:
            for proc in procs:
                proc.ask_to_exit()
        for proc in procs:
            proc.close(kill=not finished)


class _DecodeProcess:
    """A decoding worker process: decodes the jobs given to it in order and sends their messages
    back through a pipe, at most WORKER_AHEAD_MESSAGES ahead of the receiver."""

    def __init__(self, context: Any, decode: Callable) -> None:
        task_reader, self.tasks = context.Pipe(duplex=False)
        self.results, result_writer = context.Pipe(duplex=False)
        self.process = context.Process(target=_decode_worker, args=(os.getpid(), decode, task_reader, result_writer),
                                       name="vimpac-decode", daemon=True)
        # Started with SIGINT and SIGTERM blocked (the mask survives spawn's fork and exec) until
        # `_worker_init` ignores them: Ctrl-C, or SLURM's SIGTERM to the whole job, while a worker
        # was still importing killed it before it took a job, which stopped the run with
        # WORKERS_DIE_ON_START instead of committing and exiting 130 / 143.
        # (Spawn's first start in a process launches multiprocessing's resource tracker in the same
        # way, and unblocks the two afterwards: launched first, so that it does not unblock ours.)
        multiprocessing.resource_tracker.ensure_running()
        with signals_blocked(STOP_SIGNALS):
            self.process.start()
        # Only the worker holds these ends now: its death is an EOF on `results` (even in the
        # middle of a message), and sending it a job after it died is a BrokenPipeError.
        task_reader.close()
        result_writer.close()
        self.started = False  # it sent _WORKER_READY: it got as far as taking jobs
        self.stuck = False  # killed by `receive` for sending nothing for its `timeout`
        self.jobs: collections.deque = collections.deque()  # given to it, not yet all received, in order
        self.alone: DecodeJob | None = None  # a job it decodes before it is sent the others
        self._held: list[DecodeJob] = []
        self._asked_to_exit = False

    def assign(self, job: DecodeJob) -> None:
        self.jobs.append(job)
        if self.alone is not None and job is not self.alone:
            self._held.append(job)
        else:
            self._send(job)

    def job_received(self) -> None:
        """The first of its jobs is received whole (or failed)."""
        if self.jobs.popleft() is self.alone:
            self.alone = None
            held, self._held = self._held, []
            for job in held:  # already in `jobs`: listed twice, a later replacement took the wrong one
                self._send(job)

    def _send(self, job: DecodeJob) -> None:
        with contextlib.suppress(BrokenPipeError):  # it died: found when its messages are awaited
            self.tasks.send(job)

    def receive(self, stop: threading.Event, timeout: float | None = None) -> Any:
        """The next message; None when the process died first (what it had not sent is lost),
        `stop` was set, or, once it is ready, nothing came for `timeout` seconds (None: no
        limit): then it is killed and `stuck` set."""
        while True:
            # Start-up (importing torch: seconds on a loaded machine) is not decoding time.
            with self._killed_if_silent(timeout if self.started else None):
                message = self._next_message(stop)
            if self.stuck:  # also when a message came just as the time ran out: the process is gone
                return None
            if isinstance(message, str) and message == _WORKER_READY:
                self.started = True
                continue
            return message

    def _next_message(self, stop: threading.Event) -> Any:
        try:
            while not self.results.poll():
                if stop.is_set():
                    return None
                if self.process.sentinel in multiprocessing.connection.wait([self.results, self.process.sentinel], 0.2):
                    if not self.results.poll():  # it ended, and left nothing
                        return None
            return self.results.recv()
        except (EOFError, OSError):  # it died (or was killed as stuck), maybe in the middle of a message
            return None

    @contextlib.contextmanager
    def _killed_if_silent(self, seconds: float | None) -> Iterator[None]:
        """Kill the process (setting `stuck`) if the block takes more than `seconds` (None: never).
        A timer thread kills it, so that the wait ends wherever it is: also inside `recv`, where a
        worker whose decoder hangs while its sending thread is halfway through a chunk (the pipe
        holds 64 KiB of its megabytes) would otherwise keep it for ever."""
        if seconds is None:
            yield
            return
        timer = threading.Timer(seconds, self._kill_as_stuck)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            timer.join()  # its kill, if it fired, is done: `stuck` is final

    def _kill_as_stuck(self) -> None:
        self.stuck = True
        self.process.kill()

    def replacement(self, context: Any, decode: Callable, failed: bool) -> "_DecodeProcess":
        """A fresh process for this (dead or stuck) one's jobs: the first of them decoded alone
        before the others, or, when that one `failed` (it died decoding it alone, or got stuck on
        it), without it."""
        self.close(kill=True)
        jobs = list(self.jobs)[1:] if failed else list(self.jobs)
        fresh = _DecodeProcess(context, decode)
        if jobs and not failed:
            fresh.alone = jobs[0]
        for job in jobs:
            fresh.assign(job)
        return fresh

    def ask_to_exit(self) -> None:
        """Tell it no job comes any more (it exits once its messages are sent)."""
        if self.process.is_alive() and not self._asked_to_exit:
            with contextlib.suppress(OSError):
                self.tasks.send(None)
            self._asked_to_exit = True

    def close(self, kill: bool) -> None:
        if not kill:
            self.ask_to_exit()
            self.process.join(WORKER_EXIT_S)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.tasks.close()
        self.results.close()


_WORKER_READY = "vimpac-decode-worker-ready"


@dataclass
class _WorkerError:
    """An exception other than a `VideoError` in a decoding worker (a bug, not a bad file): the
    main process raises it."""

    exception: BaseException
    traceback: str


class _RemoteTraceback(Exception):
    def __str__(self) -> str:
        return f"in the decoding worker:\n{self.args[0]}"


def _decode_worker(parent_pid: int, decode: Callable, tasks: Any, results: Any) -> None:
    """A decoding process's main function: jobs from `tasks` until None, messages to `results`."""
    import traceback

    _worker_init(parent_pid)
    results.send(_WORKER_READY)
    # A thread sends, so that the next chunk is decoded while the receiver is busy; the bounded
    # outbox keeps the worker from running further ahead than that.
    outbox: queue.Queue = queue.Queue(max(1, WORKER_AHEAD_MESSAGES - 1))

    def send_all() -> None:
        while (message := outbox.get()) is not None:
            try:
                results.send(message)
            except OSError:  # the main process is gone
                os._exit(1)
            except Exception as exc:  # it cannot be pickled (an exception of a third-party library, say)
                what = repr(message.exception) if isinstance(message, _WorkerError) else type(message).__name__
                text = message.traceback if isinstance(message, _WorkerError) else traceback.format_exc()
                results.send(_WorkerError(RuntimeError(f"{what} (could not be sent to the main process: {exc})"), text))

    sender = threading.Thread(target=send_all, name="send-decoded", daemon=True)
    sender.start()
    while True:
        try:
            job = tasks.recv()
        except EOFError:  # the main process is gone
            break
        if job is None:
            break
        try:
            for message in decode(job):
                outbox.put(message)
        except Exception as exc:
            outbox.put(_WorkerError(exc, traceback.format_exc()))
    outbox.put(None)
    sender.join()


def _worker_init(parent_pid: int) -> None:
    # A worker waits for jobs on a pipe; without these it could outlive a SIGKILLed main process
    # (holding its memory).
    exit_with_parent(parent_pid)
    # The main process decides what an interrupt means (it finishes and commits the decoded
    # videos); Ctrl-C reaches the whole process group, and a worker dying of it would be
    # taken for a decoder crash.
    # SIGTERM too: `timeout` and SLURM send it to every process of the job, not only the main one.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # also discards one that came while they were blocked
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent for the start
    # Each worker decodes one video at a time; several torch threads (resizing) per worker
    # would oversubscribe the cores that the encoder in the main process needs.
    import torch

    torch.set_num_threads(1)


# ------------------------------------------------------------------------------ encoding


@dataclass
class _VideoInProgress:
    job: DecodeJob
    total: int  # frames per view
    tokens: dict[str, np.ndarray] = field(default_factory=dict)  # view name -> (total, h, w), once encoding began
    filled: dict[str, int] = field(default_factory=dict)  # view name -> rows of `tokens` encoded so far
    queued: int = 0  # frames waiting to be encoded
    ended: bool = False  # its last chunk came


class FullBatchEncoder:
    """Encodes the views of a stream of videos in tokenizer calls of exactly `batch_size` frames
    (only the last call of a run is shorter) and hands each video back, in order, once all of its
    frames are encoded. Videos come whole (`add`) or in chunks (`add_chunk`, as decoding workers
    send them); a video's frames may span several calls. Frames are kept only until they are
    encoded, and a video's tokens (2 bytes each) until it is complete: an hour at 2 FPS, all12,
    S = 128 is 44 MB of tokens, not the 4.2 GB of its views.

    Why full calls: CPU inference (oneDNN) builds and caches kernels for every input shape it
    sees, and the heap fragments on varied sizes. Encoding each group of videos with its own
    remainder call fed the encoder a new batch size per group: the DALL-E encoder at 128 px grew
    by ~45 MiB per new size, up to one per possible size (bench/bench_encoder_calls.py).
    Why one token array per view, written in place: the tokens of each call kept as a separate
    array until the video was complete left small long-lived blocks all over the heap, between the
    chunks' big short-lived ones, and the freed memory could not be reused (glibc): the main
    process grew by 2.6 GB, all free, while tokenizing a 10-minute video in chunks of 8 frames.
    """

    def __init__(self, tokenizer: Any, view_names: Sequence[str], batch_size: int) -> None:
        self.tokenizer = tokenizer
        self.view_names = tuple(view_names)
        self.batch_size = batch_size
        self._videos: collections.deque[_VideoInProgress] = collections.deque()  # not yet handed back, in order
        self._frames: collections.deque = collections.deque()  # (video, view name, frames) not yet encoded, in order
        self._queued = 0

    def add(self, video: DecodedVideo) -> list[EncodedVideo]:
        """Queue all of `video`'s frames (as many in each view); encode every full batch; return
        the videos now complete."""
        return self.add_chunk(video.job, video.views, 0, len(video.views[self.view_names[0]]))

    def add_chunk(self, job: DecodeJob, views: dict[str, np.ndarray], start: int, total: int) -> list[EncodedVideo]:
        """Queue the frames [start, start + n) of `job`'s `total` frames in each view (a
        `DecodedChunk`); encode every full batch; return the videos now complete. A first chunk
        (start 0) of a video that is already being added (decoded again after its worker died)
        starts it over."""
        if start == 0:
            self.drop_unfinished()
            self._videos.append(_VideoInProgress(job, total))
        video = self._videos[-1] if self._videos else None
        if video is None or video.ended or video.job.record != job.record or video.total != total:
            raise ValueError(f"a chunk of video {job.key!r} came without the chunks before it")
        count = len(views[self.view_names[0]])
        for name in self.view_names:
            frames = views[name]
            if len(frames) != count:
                raise ValueError(f"video {job.key!r}: view {name!r} has {len(frames)} frames, not {count} as "
                                 f"view {self.view_names[0]!r}")
            if count:
                self._frames.append((video, name, frames))
                video.queued += count
                self._queued += count
        video.ended = start + count == total
        while self._queued >= self.batch_size:
            self._encode(self.batch_size)
        return self._complete()

    def drop_unfinished(self) -> None:
        """Forget the last video if its last chunk has not come (its decoding failed, or the run
        stops): its frames not yet encoded and its tokens."""
        if self._videos and not self._videos[-1].ended:
            video = self._videos.pop()
            while self._frames and self._frames[-1][0] is video:
                self._queued -= len(self._frames.pop()[2])

    def finish(self) -> list[EncodedVideo]:
        """Encode what is left (one shorter call) and return the remaining videos; a video whose
        last chunk has not come is dropped."""
        self.drop_unfinished()
        if self._queued:
            self._encode(self._queued)
        return self._complete()

    def _encode(self, n: int) -> None:
        import torch

        pieces = []  # (video, view name, rows): the first n queued frames
        taken = 0
        while taken < n:
            video, name, frames = self._frames[0]
            rows = min(len(frames), n - taken)
            if rows == len(frames):
                self._frames.popleft()
            else:
                self._frames[0] = (video, name, frames[rows:])
            pieces.append((video, name, frames[:rows]))
            taken += rows
        self._queued -= n
        batch = pieces[0][2] if len(pieces) == 1 else np.concatenate([frames for _, _, frames in pieces])
        with torch.inference_mode():
            out = self.tokenizer.encode(batch)
        ids = out.cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0
                         or ids.max() > np.iinfo(TOKEN_DTYPE).max):
            raise StoreError(f"tokenizer {getattr(self.tokenizer, 'tokenizer_id', '?')}: encode returned token ids "
                             f"that are not integers in [0, {np.iinfo(TOKEN_DTYPE).max}] ({ids.dtype}, "
                             f"{ids.min()} to {ids.max()}); the store keeps them as uint16")
        start = 0
        for video, name, frames in pieces:
            rows = ids[start : start + len(frames)]
            if name not in video.tokens:
                video.tokens[name] = np.empty((video.total,) + rows.shape[1:], dtype=TOKEN_DTYPE)
                video.filled[name] = 0
            video.tokens[name][video.filled[name] : video.filled[name] + len(rows)] = rows
            video.filled[name] += len(rows)
            video.queued -= len(frames)
            start += len(frames)

    def _complete(self) -> list[EncodedVideo]:
        done = []
        while self._videos and self._videos[0].ended and self._videos[0].queued == 0:
            video = self._videos.popleft()
            views = {name: video.tokens.get(name, np.zeros((0, 0, 0), TOKEN_DTYPE)) for name in self.view_names}
            done.append(EncodedVideo(video.job.record, video.job.key, video.job.label, views))
        return done


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
    decode_timeout: float | None = None,
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
    videos are kept either way). A decoding worker that sends nothing for `decode_timeout`
    seconds is killed and replaced, and its video committed as failed (error "timeout"); None
    (the default) is DECODE_TIMEOUT_S with workers, 0 no limit; with workers=0 there is none
    (a number > 0 is refused: the main process cannot stop its own decoder).
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
    decode_timeout = check_decode_timeout(decode_timeout, workers)
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

    committed, _ = load_manifest_columns(root)
    _check_committed_match_list(root, committed, records)
    done = set(committed.video_key)
    failed_before = {str(f.get("key")): f for f in committed.failures}
    # All the writer needs of the committed manifest: its columns are not held during the run
    # (nor beside the writer's own read of the manifest, millions of entries each).
    ends = committed_ends(committed, meta.tokens_per_frame * TOKEN_DTYPE.itemsize)
    del committed
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
        with RankWriter(root, meta, rank, ends, shard_bytes=shard_bytes) as writer:
            _run_jobs(jobs, tokenizer, writer, view_names, workers, batch_size, progress, report,
                      stop_on_signals, decode_timeout)
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
        write_failures_report(root, load_manifest_columns(root)[0])
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


def _check_committed_match_list(root: Path, committed: ManifestColumns, records: Sequence[Any]) -> None:
    """Every video (and failure) in the store must have the record number and label it has in
    this list. Catches a changed list even in stores that predate the list fingerprint.

    On the columns: the videos that may differ are found with arrays, and only those are
    looked at one by one (`_committed_problem`), in store order, the first problem raised."""
    position = {record.key: index for index, record in enumerate(records)}
    keys = committed.video_key
    index = np.fromiter((position.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
    list_label = np.fromiter((_label_code(record.label) for record in records), dtype=np.int64, count=len(records))
    label = list_label[np.maximum(index, 0)] if len(records) else np.zeros(len(keys), dtype=np.int64)
    stored = committed.video_label
    differs = (index < 0) | (index != committed.video_record) | np.where(stored < 0, label != -1, label != stored)
    suspects = [(keys[v], int(committed.video_record[v]), None if stored[v] < 0 else int(stored[v]))
                for v in np.flatnonzero(differs).tolist()]
    failures = [(str(f.get("key")), f.get("record"), ...) for f in committed.failures]  # ...: no label kept
    for key, record, stored_label in itertools.chain(suspects, failures):
        problem = _committed_problem(root, key, record, stored_label, position, records)
        if problem is not None:
            raise StoreError(f"{root}: video {key!r} {problem}: the store was made from another annotation "
                             "list, and resuming would mix the two; write to a new --out folder, or rerun "
                             "with the list the store was made from")


def _label_code(label: Any) -> int:
    """A list label as an int64, to compare with the stored labels on arrays: an int >= 0 itself,
    -1 for none (which a stored label below 0 means), -2 for anything else (then the video is
    looked at one by one: `_committed_problem` decides)."""
    if label is None:
        return -1
    if type(label) is int and 0 <= label <= np.iinfo(np.int64).max:
        return label
    return -2


def _committed_problem(root: Path, key: str, record: Any, label: Any, position: dict[str, int],
                       records: Sequence[Any]) -> str | None:
    """How a committed video (label None: none) or failure (label ...: not kept) differs from
    this list, or None."""
    index = position.get(key)
    if index is None and posixpath.normpath(key) in position:
        raise StoreError(f"{root}: video {key!r} was keyed as its list spelled it by an older vimpac; "
                         f"list paths are now normalised (to {posixpath.normpath(key)!r}), so this "
                         "store cannot be resumed: tokenize into a new --out folder")
    if index is None:
        return "is not in this annotation list"
    if index != record:
        return f"is record {record} in the store but record {index} in this annotation list"
    if label is not ... and records[index].label != label:
        return f"has label {label} in the store but {records[index].label} in this annotation list"
    return None


def _now_found(failure: dict[str, Any], path: Path) -> bool:
    """A video that failed because its file was missing, and whose file now exists."""
    return failure.get("error") == "not_found" and path.is_file()


def _run_jobs(jobs: list[DecodeJob], tokenizer: Any, writer: RankWriter, view_names: Sequence[str],
              workers: int, batch_size: int, progress: bool, report: TokenizeReport,
              stop_on_signals: bool, decode_timeout: float | None = None) -> None:
    from vimpac.progress import progress_bar

    bar = progress_bar(len(jobs), f"tokenize r{writer.rank}", "video", enabled=progress)
    postfix: dict[str, Any] = {}  # what the bar shows after its counts
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
        elapsed = max(time.perf_counter() - t0, 1e-9)
        postfix.update(frames_s=f"{report.encoded_frames / elapsed:.1f}", failed=len(report.failures))
        bar.set_postfix(postfix)  # before the count: a log file's line, printed by update, shows these
        bar.update(len(encoded) + len(failures))
        failures = []

    def show_video_frames(message: DecodedChunk | DecodedVideo) -> None:
        # The bar counts committed videos, so it stood still for the whole of an hour-long video:
        # show how far the decoding of a video of several chunks is.
        if isinstance(message, DecodedChunk) and not message.last:
            postfix["video_frames"] = f"{message.end}/{message.total}"
        elif postfix.pop("video_frames", None) is None:
            return  # a video of one chunk, or a failure before any chunk: nothing to show
        bar.set_postfix(postfix)
        bar.update(0)  # in a log file: a line every few minutes while no video is committed

    signals = stop_signals() if stop_on_signals else contextlib.nullcontext([])
    with bar, signals as stop, contextlib.closing(_decode_in_order(
            # A SIGTERM waited for the next chunk, which a decoder stuck on a file (a stalled
            # network mount) never sent, while SLURM's grace period or `timeout` ran out.
            jobs, workers, stopped=lambda: bool(stop), decode_timeout=decode_timeout)) as messages:
        for message in messages:
            show_video_frames(message)
            encoded = []
            if isinstance(message, DecodedChunk):
                encoded = encoder.add_chunk(message.job, message.views, message.start, message.total)
            else:
                encoder.drop_unfinished()  # the chunks it sent before it failed
                failures.append(message.failure)
            if encoded or len(failures) >= batch_size:
                commit(encoded)
            if stop:
                break
        # finish() drops a video whose chunks were still coming when a signal stopped the run:
        # the rerun takes it.
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
