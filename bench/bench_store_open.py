"""Opening a token store, and reading clips from it: the manifest's two layouts, and the working tree
against a baseline commit.

    .venv/bin/python bench/bench_store_open.py [--baseline REV] [--videos 100000] [--views 12]
        [--reads 100000] [--rounds 5]

Two stores are made by writing store.json, manifest.json and sparse shard files directly (no
tokenizing; a 1 x 1 token grid, so that the page cache stays small when clips are read): a small
one of 2,000 videos x 1 view of 5 to 60 frames (as bench_store.py's) and a big one of
`--videos` x `--views` entries (default 1.2M: a 100k-video dataset with the twelve views of
`all12`) of 5 to 600 frames (up to 5 minutes at 2 fps, as in HowTo100M). Each store exists in
both manifest layouts: manifest.json naming a columns file (what `vimpac store compact` writes
now) and manifest.json with every number in the JSON (stores of older versions); the shards are
shared (hard links). Each side is a worker process importing `vimpac` from its own tree: the
working tree on either layout and, with `--baseline REV`, `git archive REV` unpacked in a
temporary folder, on the JSON layout. On each store:

* `TokenStore.open`, each side in turn alone, in a fresh process: seconds, resident memory (RSS)
  after it minus before it, and the peak during it (the RSS high-water mark, reset before);
* `--reads` random five-frame `store.clip` reads (the training hot path) and, on the big store,
  `entries_of(key)` for every video (what `PretrainTask` did at set-up, in every rank) and
  `PretrainTask`'s set-up itself (view00's entry of every video, the train / validation split by
  a hash of each key): the sides take `--rounds` turns in alternation, so that load changes hit
  both alike; medians;
* on the big store, a forked child (a DataLoader worker) that reads one clip of every entry and
  runs a full garbage collection, as a long-running worker eventually does: the memory it had
  to copy from its parent (private dirty pages), which every worker of every rank pays again
  (measured before the set-up imports torch into the parent).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARD_BYTES = 1 << 30
GRID = (1, 1)
CLIP = 5
SMALL_VIDEOS = 2000


def make_store(root: Path, videos: int, views: int, max_frames: int, seed: int = 0) -> int:
    """store.json, manifest.json and sparse shards for `videos` x `views` entries of 5 to
    `max_frames` frames; returns the number of entries."""
    import numpy as np

    rng = np.random.default_rng(seed)
    view_names = [f"view{v:02d}" for v in range(views)]
    root.mkdir(parents=True)
    (root / "shards").mkdir()
    meta = {"tokenizer_id": "bench", "tokenizer_kind": "random", "codebook_size": 8192, "downsample": 8,
            "fps": 2.0, "size": 16, "grid": list(GRID), "views": view_names,
            "format": "vimpac-token-store", "version": 1, "dtype": "<u2", "checksum": "crc32"}
    (root / "store.json").write_text(json.dumps(meta))
    n = videos * views
    frames = rng.integers(5, max_frames + 1, size=n)
    nbytes = frames * GRID[0] * GRID[1] * 2
    ends = np.cumsum(nbytes)
    shard = (ends - 1) // SHARD_BYTES  # entries never straddle: shards end where an entry does
    shard_start = np.zeros(int(shard[-1]) + 1, dtype=np.int64)
    firsts = np.searchsorted(shard, np.arange(len(shard_start)))
    shard_start[:] = ends[firsts] - nbytes[firsts]
    offset = ends - nbytes - shard_start[shard]
    names = [f"r000-{s:04d}.tok" for s in range(len(shard_start))]
    for s, name in enumerate(names):
        end = int((ends[shard == s]).max() - shard_start[s])
        with open(root / "shards" / name, "wb") as f:
            f.truncate(end)  # sparse: no disk used
    keys = [f"howto/{i:07d}-{rng.integers(0, 36**11):x}" for i in range(videos)]
    manifest = {
        "shards": names,
        "videos": {"key": keys, "label": (np.arange(videos) % 400).tolist(), "record": list(range(videos))},
        "entries": {"video": np.repeat(np.arange(videos), views).tolist(),
                    "view": np.tile(np.arange(views), videos).tolist(),
                    "frames": frames.tolist(), "shard": shard.tolist(), "offset": offset.tolist(),
                    "crc32": rng.integers(0, 2**32, size=n).tolist()},
        "failures": [],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return n


def private_dirty_mib() -> float:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(tree: str, store_path: str, reads: int) -> None:
    """Open the store and print one JSON line; then run the command of each line read from stdin
    ("clips": seconds of `reads` random clip reads, "lookup", "fork"), printing its result."""
    sys.path.insert(0, tree)
    import numpy as np

    import vimpac
    from vimpac.store.reader import TokenStore

    assert Path(vimpac.__file__).resolve().is_relative_to(Path(tree).resolve()), vimpac.__file__
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    rss_before = status_mib("VmRSS")
    t0 = time.perf_counter()
    store = TokenStore.open(store_path)
    open_s = time.perf_counter() - t0
    gc.collect()
    print(json.dumps({"entries": len(store), "open_s": open_s, "rss_mib": status_mib("VmRSS") - rss_before,
                      "peak_mib": status_mib("VmHWM") - rss_before}), flush=True)

    n = len(store)
    rng = np.random.default_rng(1)
    indices = rng.integers(0, n, size=reads).tolist()
    frames = store.num_frames
    starts = (rng.random(reads) * (frames[indices] - CLIP + 1)).astype(np.int64).tolist()
    store.clip(indices[0], starts[0], CLIP)
    set_up_pretraining = {}  # filled by "import torch"
    for line in sys.stdin:
        command = line.strip()
        t0 = time.perf_counter()
        if command == "clips":
            for i, s in zip(indices, starts):
                store.clip(i, s, CLIP)
        elif command == "lookup":
            for key in store.keys():
                store.entries_of(key)
        elif command == "setup":
            set_up_pretraining["task"]()
        elif command == "import torch":  # untimed; after "fork", whose child would copy its objects
            from vimpac.pretrain.config import build_pretrain_config
            from vimpac.pretrain.task import PretrainTask

            pretrain_cfg = build_pretrain_config("tiny", overrides=["data.view=view00", "data.frames=5"])
            set_up_pretraining["task"] = functools.partial(PretrainTask, store, pretrain_cfg)
        elif command == "fork":
            print(forked_worker_copy_mib(store), flush=True)
            continue
        print(time.perf_counter() - t0, flush=True)


def forked_worker_copy_mib(store) -> float:
    """MiB a forked child copies from this process while it reads a clip of every entry and
    collects garbage."""
    gc.collect()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        before = private_dirty_mib()
        for i in range(len(store)):
            store.clip(i, 0, 1)
        gc.collect()  # as a long-running worker eventually does: it writes every tracked object's header
        os.write(write_end, str(private_dirty_mib() - before).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        copied = float(pipe.read())
    os.waitpid(pid, 0)
    return copied


class Side:
    """A worker process with one side's `vimpac` and the store open."""

    def __init__(self, name: str, tree: Path, store: Path, reads: int):
        self.name = name
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", str(tree), "--store", str(store),
                                         "--reads", str(reads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.opened = json.loads(self._line())

    def _line(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"worker for {self.name} failed (exit {self.process.wait()})")
        return line

    def ask(self, command: str) -> float:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return float(self._line())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def columns_layout_copy(store: Path, copy: Path) -> None:
    """`store` with its manifest.json rewritten with a columns file (as `vimpac store compact` does),
    in `copy`; the shards are hard links."""
    from vimpac.store.format import load_manifest_columns, write_manifest

    shutil.copytree(store, copy, copy_function=os.link)
    (copy / "manifest.json").unlink()
    write_manifest(copy, load_manifest_columns(store)[0])


def compare(sides_trees: list[tuple[str, Path, Path]], reads: int, rounds: int, big: bool) -> list[dict]:
    """Open its store in each side in turn (alone on the machine), then take turns at clip reads
    (and look-ups), so that load changes hit every side alike; medians of `rounds` turns."""
    sides = []
    for name, tree, store in sides_trees:
        sides.append(Side(name, tree, store, reads))
    results = []
    copied = {}
    if big:  # before the pre-training set-up imports torch into the parent
        for side in sides:
            copied[side.name] = side.ask("fork")
            side.ask("import torch")
    times: dict[str, dict[str, list[float]]] = {side.name: {"clips": [], "lookup": [], "setup": []} for side in sides}
    for _ in range(rounds):
        for side in sides:
            times[side.name]["clips"].append(side.ask("clips"))
            if big:
                times[side.name]["lookup"].append(side.ask("lookup"))
                times[side.name]["setup"].append(side.ask("setup"))
    for side in sides:
        result = dict(side.opened, name=side.name, clips_per_s=reads / statistics.median(times[side.name]["clips"]))
        if big:
            result["lookup_s"] = statistics.median(times[side.name]["lookup"])
            result["setup_s"] = statistics.median(times[side.name]["setup"])
            result["worker_copied_mib"] = copied[side.name]
        side.close()
        results.append(result)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--reads", type=int, default=100_000, help="random clips read per turn")
    parser.add_argument("--rounds", type=int, default=5, help="turns per side")
    parser.add_argument("--baseline", default=None, metavar="REV", help="also measure this git revision")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.store, args.reads)
        return 0

    sys.path.insert(0, str(REPO))
    from vimpac.machine import load_average_1m, machine_line

    print(f"machine: {machine_line()}")
    with tempfile.TemporaryDirectory(prefix="bench-store-open-") as tmp_name:
        tmp = Path(tmp_name)
        trees = [("columns file", REPO, "columns"), ("JSON (older stores)", REPO, "json")]
        if args.baseline:
            sys.path.insert(1, str(HERE))
            from bench_pretrain_ab import unpack  # the tree of a commit, via git archive

            trees.append((f"baseline {args.baseline}, JSON", unpack(args.baseline, tmp), "json"))

        def sides(store: str) -> list[tuple[str, Path, Path]]:
            return [(name, tree, tmp / f"{store}-{layout}") for name, tree, layout in trees]

        t0 = time.perf_counter()
        make_store(tmp / "small-json", SMALL_VIDEOS, 1, max_frames=60)
        columns_layout_copy(tmp / "small-json", tmp / "small-columns")
        print(f"\nsmall store: {SMALL_VIDEOS:,} videos x 1 view (as bench_store.py's), {args.reads:,} random "
              f"{CLIP}-frame clips per turn, median of {args.rounds} turns taken in alternation")
        print(f"{'':28s} {'open ms':>8s} {'clips/s':>10s}")
        for r in compare(sides("small"), args.reads, args.rounds, big=False):
            print(f"{r['name']:28s} {r['open_s'] * 1000:8.1f} {r['clips_per_s']:10,.0f}")

        entries = make_store(tmp / "big-json", args.videos, args.views, max_frames=600)
        columns_layout_copy(tmp / "big-json", tmp / "big-columns")
        sizes = {layout: sum(p.stat().st_size for p in (tmp / f"big-{layout}").glob("manifest*")) / 2**20
                 for layout in ("json", "columns")}
        print(f"\nbig store: {args.videos:,} videos x {args.views} views = {entries:,} entries, manifest "
              f"{sizes['json']:.0f} MiB as JSON, {sizes['columns']:.0f} MiB with its columns file (the stores "
              f"written in {time.perf_counter() - t0:.1f} s)")
        print(f"{'':28s} {'open s':>7s} {'RSS MiB':>8s} {'peak MiB':>9s} {'clips/s':>10s} "
              f"{'entries_of, all videos s':>25s} {'pre-training set-up s':>22s} {'forked worker copied MiB':>25s}")
        for r in compare(sides("big"), args.reads, args.rounds, big=True):
            print(f"{r['name']:28s} {r['open_s']:7.2f} {r['rss_mib']:8.0f} {r['peak_mib']:9.0f} "
                  f"{r['clips_per_s']:10,.0f} {r['lookup_s']:25.2f} {r['setup_s']:22.2f} "
                  f"{r['worker_copied_mib']:25.0f}")
    print(f"\nmachine after: load average {load_average_1m()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
