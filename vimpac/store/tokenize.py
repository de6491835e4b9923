"""`tokenize_videos`: annotation records -> decoded frames -> views -> tokens -> store.

Pipeline (one rank):

    worker processes (spawn)            main process
    ------------------------            ------------
    read_video_at_fps(path, fps)   ->   gather decoded videos until `batch_size` frames
    make_views(frames, size, views)     tokenizer.encode(all views of those videos, batched)
                                        RankWriter.commit(batch)  (fsync shard, then manifest part)

Decoding runs ahead in a bounded window of `2 * workers` videos, so it overlaps encoding
without holding the whole dataset in memory. Videos that fail to decode (any `VideoError`, or
fewer than `min_frames` frames at the FPS) are committed as failures with their reason and the
run goes on; a rerun skips them unless `retry_failed`.

Scale-out: rank r of w takes records[r::w] and writes only its own shards and manifest parts.
With torch.distributed initialised, rank 0 creates store.json before the others check it, and
merges the manifest after a final barrier; without it (independent jobs) the parts are merged
when the store is opened.
"""

from __future__ import annotations

import collections
import datetime
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vimpac.io import atomic_write_json
from vimpac.store.errors import StoreError
from vimpac.store.format import MAX_CODEBOOK, META_FILE, StoreMeta, load_manifest, read_meta
from vimpac.store.writer import (
    DEFAULT_SHARD_BYTES, EncodedVideo, FailedVideo, RankWriter, compact_store, write_failures_report,
)


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

    @property
    def nothing_to_do(self) -> bool:
        return self.encoded_videos == 0 and not self.failures

    @property
    def videos_per_s(self) -> float:
        return (self.encoded_videos + len(self.failures)) / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        """Encoded frames per second, over all views (the encoder's actual workload)."""
        return self.encoded_frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        where = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
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


def decode_video(job: DecodeJob) -> DecodedVideo:
    """Decode one video at the FPS and make its views (runs in a worker process)."""
    from vimpac.video.errors import VideoError, VideoTooShortError
    from vimpac.video.reader import read_video_at_fps
    from vimpac.video.views import make_views

    try:
        frames = read_video_at_fps(job.path, job.fps)
        if frames.shape[0] < job.min_frames:
            raise VideoTooShortError(job.path, job.min_frames, frames.shape[0])
        views = make_views(frames, job.size, job.views)
    except VideoError as exc:
        kind = getattr(exc, "kind", type(exc).__name__)
        failure = FailedVideo(job.record, job.key, job.rel_path, getattr(exc, "reason", str(exc)), kind)
        return DecodedVideo(job, None, failure)
    return DecodedVideo(job, views, None)


def _decode_in_order(jobs: Sequence[DecodeJob], workers: int) -> Iterator[DecodedVideo]:
    """Decoded videos in job order; with workers, at most 2 * workers are in flight or waiting."""
    if workers <= 0:
        for job in jobs:
            yield decode_video(job)
        return
    # spawn: fork would copy the parent's torch threads and locks into the workers.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_worker_init) as pool:
        pending: collections.deque = collections.deque()
        job_iter = iter(jobs)
        for job in job_iter:
            pending.append(pool.apply_async(decode_video, (job,)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().get()
            next_job = next(job_iter, None)
            if next_job is not None:
                pending.append(pool.apply_async(decode_video, (next_job,)))
            yield result


def _worker_init() -> None:
    # Each worker decodes one video at a time; several torch threads (resizing) per worker
    # would oversubscribe the cores that the encoder in the main process needs.
    import torch

    torch.set_num_threads(1)


# ------------------------------------------------------------------------------ encoding


def _encode_batch(tokenizer: Any, decoded: list[DecodedVideo], view_names: Sequence[str],
                  batch_size: int) -> list[EncodedVideo]:
    """Encode all views of `decoded` in tokenizer calls of at most `batch_size` frames."""
    import torch

    pieces = [decoded_video.views[name] for decoded_video in decoded for name in view_names]
    frames = np.concatenate(pieces, axis=0) if pieces else np.zeros((0, 1, 1, 3), np.uint8)
    ids = []
    with torch.inference_mode():
        for start in range(0, frames.shape[0], batch_size):
            out = tokenizer.encode(frames[start:start + batch_size])
            ids.append(out.cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out))
    all_ids = np.concatenate(ids, axis=0) if ids else np.zeros((0, 0, 0), np.int64)
    encoded, cursor = [], 0
    for decoded_video in decoded:
        views = {}
        for name in view_names:
            n = decoded_video.views[name].shape[0]
            views[name] = all_ids[cursor:cursor + n]
            cursor += n
        job = decoded_video.job
        encoded.append(EncodedVideo(job.record, job.key, job.label, views))
    return encoded


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
    retry_failed: bool = False,
    min_frames: int = 1,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> TokenizeReport:
    """Tokenize this rank's share of `records` into the store at `out_dir`; resumable.

    `records` is an `AnnotationSet` (its class names and source are recorded in the store) or
    a sequence of `VideoRecord`s (then pass `class_names` / `source` if wanted). `tokenizer` is
    a `FrameTokenizer`; `views` a preset name ("center", "all12", "noflip6") or `ViewSpec`s;
    `batch_size` is frames per encoder call and per commit. Raises `StoreError` when `out_dir`
    holds a store made with other settings.
    """
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
    meta = _meta_for_run(tokenizer, fps, size, view_names, class_names, source)
    distributed = world_size > 1 and _dist_initialized()

    # store.json: rank 0 creates it first under torch.distributed; everyone checks it.
    if rank == 0 or not distributed:
        _create_or_check_meta(root, meta)
    if distributed:
        _barrier()
        if rank != 0:
            _create_or_check_meta(root, meta)

    committed, _ = load_manifest(root)
    done = set(committed.video_key)
    failed_before = {str(f.get("key")) for f in committed.failures}
    report = TokenizeReport(store=str(root), rank=rank, world_size=world_size)
    jobs = []
    video_root = Path(video_root)
    for index in range(rank, len(records), world_size):
        record = records[index]
        report.assigned += 1
        if record.key in done:
            report.already_done += 1
        elif record.key in failed_before and not retry_failed:
            report.skipped_failed += 1
        else:
            jobs.append(DecodeJob(index, record.key, record.label, record.path, str(video_root / record.path),
                                  float(fps), int(size), view_specs, int(min_frames)))

    if jobs:
        with RankWriter(root, meta, rank, committed, shard_bytes=shard_bytes) as writer:
            _run_jobs(jobs, tokenizer, writer, view_names, workers, batch_size, progress, report)

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


def _run_jobs(jobs: list[DecodeJob], tokenizer: Any, writer: RankWriter, view_names: Sequence[str],
              workers: int, batch_size: int, progress: bool, report: TokenizeReport) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="video", desc=f"tokenize r{writer.rank}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    batch: list[DecodedVideo] = []
    batch_failures: list[FailedVideo] = []
    batch_frames = 0
    t0 = time.perf_counter()

    def flush() -> None:
        nonlocal batch, batch_failures, batch_frames
        encoded = _encode_batch(tokenizer, batch, view_names, batch_size)
        writer.commit(encoded, batch_failures)
        report.encoded_videos += len(encoded)
        report.encoded_entries += len(encoded) * len(view_names)
        report.encoded_frames += batch_frames
        report.failures.extend(f.to_json() for f in batch_failures)
        bar.update(len(batch) + len(batch_failures))
        elapsed = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(frames_s=f"{report.encoded_frames / elapsed:.1f}", failed=len(report.failures))
        batch, batch_failures, batch_frames = [], [], 0

    with bar:
        for decoded in _decode_in_order(jobs, workers):
            if decoded.failure is not None:
                batch_failures.append(decoded.failure)
            else:
                batch.append(decoded)
                batch_frames += sum(decoded.views[name].shape[0] for name in view_names)
            if batch_frames >= batch_size or len(batch_failures) >= batch_size:
                flush()
        if batch or batch_failures:
            flush()


def _meta_for_run(tokenizer: Any, fps: float, size: int, view_names: tuple[str, ...],
                  class_names: Sequence[str] | None, source: str | None) -> StoreMeta:
    from vimpac import __version__

    downsample = int(getattr(tokenizer, "downsample", 8))
    codebook = int(tokenizer.codebook_size)
    if codebook > MAX_CODEBOOK:
        raise StoreError(f"tokenizer codebook_size {codebook} does not fit uint16 tokens (max {MAX_CODEBOOK})")
    if fps <= 0:
        raise StoreError(f"fps must be > 0, got {fps}")
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
