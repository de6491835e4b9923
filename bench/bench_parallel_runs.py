"""Benchmark: two demo-sized training runs on 2 cores, one after the other vs side by side.

    .venv/bin/python bench/bench_parallel_runs.py [--steps 60] [--threads 2]

The demo trains ten small models (tiny preset, T = 8, 8 x 8 tokens). This measures, in one run,
the wall time of `vimpac pretrain` (whole process: start-up, steps, final validation and save):
  * one run with --threads N (N = the cores; two such runs one after the other take twice this),
  * two runs at the same time with --threads 1 each (what the demo's parallel_runs=2 does),
  * one run with --threads 1 alone (how much the second thread gives a single run).
The runs read a token store of random codes written here (the step's cost does not depend on
the values).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vimpac.machine import machine_line
from vimpac.store.format import StoreMeta, load_manifest
from vimpac.store.writer import EncodedVideo, RankWriter, compact_store

CODEBOOK = 512
GRID = (8, 8)


def random_store(root: Path, videos: int = 64, frames: int = 16) -> Path:
    rng = np.random.default_rng(0)
    meta = StoreMeta(tokenizer_id="bench-random", tokenizer_kind="bench", codebook_size=CODEBOOK, downsample=8,
                     fps=4.0, size=8 * GRID[0], grid=GRID, views=("s1.00_center",), source="bench_parallel_runs")
    root.mkdir(parents=True)
    (root / "store.json").write_text(json.dumps(meta.to_json()))
    encoded = [EncodedVideo(record=i, key=f"v{i:04d}", label=-1,
                            views={"s1.00_center": rng.integers(0, CODEBOOK, size=(frames, *GRID))})
               for i in range(videos)]
    committed, _ = load_manifest(root)
    with RankWriter(root, meta, 0, committed) as writer:
        writer.commit(encoded)
    compact_store(root)
    return root


def pretrain_command(store: Path, out: Path, steps: int, threads: int, seed: int) -> list[str]:
    return [sys.executable, "-m", "vimpac.cli", "pretrain", "--threads", str(threads), "--store", str(store),
            "--out", str(out), "--device", "cpu", f"train.total_steps={steps}", "train.batch_size=8",
            "train.val_every=0", "train.checkpoint_every=100000", "train.progress=false", "data.frames=8",
            f"train.seed={seed}"]


def timed(commands: list[list[str]]) -> float:
    """Wall time of running `commands` at the same time."""
    start = time.perf_counter()
    processes = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    try:
        for process in processes:
            _, err = process.communicate()
            if process.returncode:
                raise SystemExit(f"run failed: {err.decode()[-2000:]}")
    finally:
        # A failed run ends the benchmark: its partner must not train on, into a deleted folder,
        # beside the next benchmark of run_all.py.
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="pre-training updates per run (batch 8 videos)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the one-run-at-a-time case")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = random_store(tmp / "store")
        one_wide = timed([pretrain_command(store, tmp / "wide", args.steps, args.threads, 0)])
        side_by_side = timed([pretrain_command(store, tmp / f"side{i}", args.steps, 1, i) for i in range(2)])
        one_narrow = timed([pretrain_command(store, tmp / "narrow", args.steps, 1, 0)])
    print(f"\ntiny preset, T=8, 8x8 tokens, {args.steps} updates of 8 videos x 2 clips, whole `vimpac pretrain` "
          "process")
    print(f"  {f'one run, {args.threads} threads:':38s}{one_wide:6.1f} s  "
          f"(two one after the other: {2 * one_wide:.1f} s)")
    print(f"  {'two runs side by side, 1 thread each:':38s}{side_by_side:6.1f} s  "
          f"-> {2 * one_wide / side_by_side:.2f}x faster than one after the other")
    print(f"  {'one run, 1 thread, alone:':38s}{one_narrow:6.1f} s  "
          f"-> {args.threads} threads speed one run up {one_narrow / one_wide:.2f}x")
    print(f"\n{machine_line()}")


if __name__ == "__main__":
    main()
