"""Opening a token store, and reading clips from it: the manifest's two layouts, and the working tree
against a baseline commit.

    .venv/bin/python bench/bench_store_open.py [--baseline REV] [--videos 100000] [--views 12]
        [--reads 100000] [--rounds 5] [--measure all|open|commands]

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
  `PretrainTask`'s set-up itself (the first view's entry of every video, the train / validation split by
  a hash of each key): the sides take `--rounds` turns in alternation, so that load changes hit
  both alike; medians;
* on the big store, a forked child (a DataLoader worker) that reads one clip of every entry and
  runs a full garbage collection, as a long-running worker eventually does: the memory it had
  to copy from its parent (private dirty pages), which every worker of every rank pays again
  (measured before the set-up imports torch into the parent).

`--measure commands` (or `all`, the default) measures, on the big store, what else reads a whole
manifest, each command alone in a fresh process of each side (the working tree on both layouts
and, with `--baseline REV`, REV on both): `vimpac store info --json` and `vimpac store verify
--json` (every entry's bytes read and checksummed: the shards are sparse, so this is mostly the
manifest's part), `TokenStore.open` of the store with an unmerged part (another rank's video),
and a resumed `tokenize_videos` on it (a rerun whose one video left has no file: the committed
entries checked against the list of every video, the rank's shards taken, a failure committed,
the parts merged into a new columns file). Seconds, and the peak (RSS high-water mark during the
command minus the RSS before it), and whether each side's output (what it printed, or the merged
manifest after the resume) is the same as the first side's on that layout.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import io
import itertools
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
SIZE, DOWNSAMPLE = 16, 16  # frames of S = 16 tokenized to the 1 x 1 grid (what a resume checks)
CLASSES = 400  # video i has label i % CLASSES
ANOTHER_RANK_KEY = "howto/another-rank"  # the video of the unmerged part (`with_another_ranks_part`)
MISSING_KEY = "howto/missing"  # the video a resume has left: its file does not exist


def zero_crc32(most_bytes: int):
    """crc32 of n zero bytes, for n in 0..most_bytes (an array indexed by n)."""
    import zlib

    import numpy as np

    return np.array([zlib.crc32(bytes(n)) for n in range(most_bytes + 1)], dtype=np.int64)


def make_store(root: Path, videos: int, views: int, max_frames: int, seed: int = 0) -> int:
    """store.json, manifest.json and sparse shards for `videos` x `views` entries of 5 to
    `max_frames` frames; returns the number of entries."""
    import numpy as np

    from vimpac.video.views import view_set

    rng = np.random.default_rng(seed)
    view_names = [view.name for view in view_set("all12")][:views]  # names a resume can parse
    root.mkdir(parents=True)
    (root / "shards").mkdir()
    meta = {"tokenizer_id": "bench", "tokenizer_kind": "random", "codebook_size": 8192, "downsample": DOWNSAMPLE,
            "fps": 2.0, "size": SIZE, "grid": list(GRID), "views": view_names,
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
    (root.parent / f"{root.name}-keys.txt").write_text("".join(key + "\n" for key in keys))  # the resume's list
    manifest = {
        "shards": names,
        "videos": {"key": keys, "label": (np.arange(videos) % CLASSES).tolist(), "record": list(range(videos))},
        "entries": {"video": np.repeat(np.arange(videos), views).tolist(),
                    "view": np.tile(np.arange(views), videos).tolist(),
                    "frames": frames.tolist(), "shard": shard.tolist(), "offset": offset.tolist(),
                    "crc32": zero_crc32(int(nbytes.max()))[nbytes].tolist()},  # the sparse shards' zeros
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

            pretrain_cfg = build_pretrain_config("tiny", overrides=[f"data.view={store.views[0]}", "data.frames=5"])
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


def with_another_ranks_part(store: Path, copy: Path, videos: int) -> None:
    """`store` in `copy` (shards and columns file hard links) plus an unmerged manifest part of rank
    1: one more video, record after the others, in a shard of its own, as a rank that ran as a
    separate job (or an interrupted run) leaves it."""
    shutil.copytree(store, copy, copy_function=os.link)
    meta = json.loads((copy / "store.json").read_text())
    frames, views = 5, len(meta["views"])
    nbytes = frames * GRID[0] * GRID[1] * 2
    with open(copy / "shards" / "r001-0000.tok", "wb") as f:
        f.truncate(views * nbytes)
    (copy / "manifest").mkdir()
    (copy / "manifest" / "r001-000000.json").write_text(json.dumps({
        "shards": ["r001-0000.tok"],
        "videos": {"key": [ANOTHER_RANK_KEY], "label": [0], "record": [videos]},
        "entries": {"video": [0] * views, "view": list(range(views)), "frames": [frames] * views,
                    "shard": [0] * views, "offset": [v * nbytes for v in range(views)],
                    "crc32": [int(zero_crc32(nbytes)[nbytes])] * views},
        "failures": []}))


def command_worker(tree: str, command: str, store_path: str, keys_path: str) -> None:
    """Run one store command in this fresh process with `vimpac` from `tree`; print one JSON line:
    seconds, peak MiB (the RSS high-water mark during the command minus the RSS before it) and a
    sha256 of what it produced (what it printed; after a resume, the merged manifest)."""
    sys.path.insert(0, tree)
    from types import SimpleNamespace

    import vimpac
    from vimpac.cli import main as cli_main
    from vimpac.data.annotations import VideoRecord
    from vimpac.store.format import load_manifest_columns
    from vimpac.store.reader import TokenStore
    from vimpac.store.tokenize import tokenize_videos
    from vimpac.video.reader import VideoReader  # noqa: F401  (imported by a resume: not measured)

    assert Path(vimpac.__file__).resolve().is_relative_to(Path(tree).resolve()), vimpac.__file__
    store = Path(store_path)
    meta = json.loads((store / "store.json").read_text())
    keys = Path(keys_path).read_text().split()
    records = [VideoRecord(f"{key}.mp4", i % CLASSES, key) for i, key in enumerate(keys)]
    records += [VideoRecord("another-rank.mp4", 0, ANOTHER_RANK_KEY), VideoRecord("missing.mp4", 0, MISSING_KEY)]
    tokenizer = SimpleNamespace(tokenizer_id=meta["tokenizer_id"], kind=meta["tokenizer_kind"],
                                codebook_size=meta["codebook_size"], downsample=meta["downsample"])

    def printed(argv: list[str]) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cli_main(argv)
        return out.getvalue()

    def resume() -> dict:
        return tokenize_videos(records, store.parent, tokenizer, fps=meta["fps"], size=meta["size"],
                               views=",".join(meta["views"]), out_dir=store, workers=0, progress=False).to_json()

    run = {"store info --json": lambda: printed(["store", "info", str(store), "--json"]),
           "store verify --json": lambda: printed(["store", "verify", str(store), "--json"]),
           "open, 1 unmerged part": lambda: TokenStore.open(store), "tokenize resume": resume}[command]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    rss_before = status_mib("VmRSS")
    t0 = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - t0
    peak = status_mib("VmHWM") - rss_before
    # What it produced, described after the measurement.
    if command == "open, 1 unmerged part":
        output = json.dumps([result.keys(), result.num_frames.tolist(), result.labels.tolist()])
    elif command == "tokenize resume":  # the report (but for timings and the copy's path), and the merged manifest
        output = json.dumps({k: v for k, v in result.items()
                             if k not in ("store", "seconds", "videos_per_s", "frames_per_s")})
        manifest, _ = load_manifest_columns(store)
        output += json.dumps([manifest.shards, manifest.video_key, manifest.failures])
        output += "".join(getattr(manifest, name).tobytes().hex() for name in
                          ("video_label", "video_record", "entry_video", "entry_view", "entry_frames", "entry_shard",
                           "entry_offset", "entry_crc32"))
    else:
        output = result
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "output": hashlib.sha256(output.encode()).hexdigest()}))


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


def compare_commands(sides_trees: list[tuple[str, Path, str]], stores: dict[str, Path], keys: Path,
                     tmp: Path, videos: int) -> None:
    """Each command of `command_worker` in a fresh process per side, one after the other; prints a
    row per command and side."""
    print(f"{'':24s} {'':32s} {'s':>7s} {'peak MiB':>9s}  output")
    first_output: dict[tuple[str, str], str] = {}
    copies = itertools.count()
    for command in ("store info --json", "store verify --json", "open, 1 unmerged part", "tokenize resume"):
        for name, tree, layout in sides_trees:
            store = stores[layout]
            if command in ("open, 1 unmerged part", "tokenize resume"):
                # A copy per resume (it merges the part into the store); the open reads the first one.
                store = tmp / f"{store.name}-part-{next(copies)}"
                with_another_ranks_part(stores[layout], store, videos)
            done = subprocess.run([sys.executable, __file__, "--command-worker", str(tree), "--command", command,
                                   "--store", str(store), "--keys", str(keys)], stdout=subprocess.PIPE, text=True)
            if done.returncode:
                sys.exit(f"{command} of {name} failed (exit {done.returncode})")
            result = json.loads(done.stdout.splitlines()[-1])
            same = first_output.setdefault((command, layout), result["output"]) == result["output"]
            print(f"{command:24s} {name:32s} {result['seconds']:7.2f} {result['peak_mib']:9.0f}  "
                  f"{'same' if same else 'DIFFERS'} ({result['output'][:8]})")
            if store != stores[layout]:
                shutil.rmtree(store)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--views", type=int, default=12, choices=range(1, 13), metavar="1..12")
    parser.add_argument("--reads", type=int, default=100_000, help="random clips read per turn")
    parser.add_argument("--rounds", type=int, default=5, help="turns per side")
    parser.add_argument("--baseline", default=None, metavar="REV", help="also measure this git revision")
    parser.add_argument("--measure", choices=("all", "open", "commands"), default="all",
                        help="opening and clip reads, the store commands on the big store, or both")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--command-worker", help=argparse.SUPPRESS)
    parser.add_argument("--command", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.store, args.reads)
        return 0
    if args.command_worker:
        command_worker(args.command_worker, args.command, args.store, args.keys)
        return 0

    sys.path.insert(0, str(REPO))
    from vimpac.machine import load_average_1m, machine_line

    print(f"machine: {machine_line()}")
    with tempfile.TemporaryDirectory(prefix="bench-store-open-") as tmp_name:
        tmp = Path(tmp_name)
        trees = [("columns file", REPO, "columns"), ("JSON (older stores)", REPO, "json")]
        baseline = None
        if args.baseline:
            sys.path.insert(1, str(HERE))
            from bench_pretrain_ab import unpack  # the tree of a commit, via git archive

            baseline = unpack(args.baseline, tmp)
            trees.append((f"baseline {args.baseline}, JSON", baseline, "json"))

        def sides(store: str) -> list[tuple[str, Path, Path]]:
            return [(name, tree, tmp / f"{store}-{layout}") for name, tree, layout in trees]

        t0 = time.perf_counter()
        if args.measure in ("all", "open"):
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
        if args.measure in ("all", "open"):
            print(f"{'':28s} {'open s':>7s} {'RSS MiB':>8s} {'peak MiB':>9s} {'clips/s':>10s} "
                  f"{'entries_of, all videos s':>25s} {'pre-training set-up s':>22s} {'forked worker copied MiB':>25s}")
            for r in compare(sides("big"), args.reads, args.rounds, big=True):
                print(f"{r['name']:28s} {r['open_s']:7.2f} {r['rss_mib']:8.0f} {r['peak_mib']:9.0f} "
                      f"{r['clips_per_s']:10,.0f} {r['lookup_s']:25.2f} {r['setup_s']:22.2f} "
                      f"{r['worker_copied_mib']:25.0f}")
        if args.measure in ("all", "commands"):
            print(f"\nstore commands on the big store, each alone in a fresh process; peak: RSS high-water mark "
                  "during the command minus RSS before; output: the same as the first side's on that layout?")
            command_sides = [("columns file", REPO, "columns"), ("JSON (older stores)", REPO, "json")]
            if baseline is not None:
                command_sides[1:1] = [(f"baseline {args.baseline}, columns file", baseline, "columns")]
                command_sides.append((f"baseline {args.baseline}, JSON", baseline, "json"))
            compare_commands(command_sides, {layout: tmp / f"big-{layout}" for layout in ("json", "columns")},
                             tmp / "big-json-keys.txt", tmp, args.videos)
    print(f"\nmachine after: load average {load_average_1m()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
