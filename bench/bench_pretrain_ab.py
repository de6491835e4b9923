"""The pre-training step of the working tree against an earlier commit, interleaved.

On a shared or virtualised machine the step time drifts by 5-10% between processes and minutes,
more than most single changes gain. This benchmark therefore runs both versions at once, in two
worker processes that take turns (only one computes at a time): step of A, step of B, A, B, ...
and reports both medians and their ratio. The baseline is `git archive REV` unpacked in a
temporary folder; each worker imports `vimpac` from its own tree and builds the same step as
bench_pretrain_step.py (small preset, T = 5, 16 x 16 tokens, 2 videos x 2 clips, fused AdamW).

    .venv/bin/python bench/bench_pretrain_ab.py --baseline 91b4151 [--precision bf16] [--threads 1]
        [--steps 6]

`--env KEY=VALUE` (repeatable) sets an environment variable for the working tree's worker only,
so a runtime setting can be compared with the same code: `--baseline HEAD --env MALLOC_MMAP_MAX_=0`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

WARMUP_TURNS = 2  # the first timed step after a single warm-up was still ~40% slow
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def worker(tree: str, precision: str, threads: int) -> None:
    """Build the step from `tree`'s vimpac, then run one step per line read; print its seconds."""
    sys.path.insert(0, tree)
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(1, str(HERE))
    import bench_pretrain_step as step_bench  # imports vimpac from `tree` (first on sys.path)

    import vimpac
    assert Path(vimpac.__file__).resolve().is_relative_to(Path(tree).resolve()), vimpac.__file__
    step = step_bench.build_step(precision)
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        loss = step()
        print(f"{time.perf_counter() - start} {loss}", flush=True)


def unpack(revision: str, into: Path) -> Path:
    archive = into / "baseline.tar"
    with open(archive, "wb") as f:
        done = subprocess.run(["git", "-C", str(REPO), "archive", revision], stdout=f, stderr=subprocess.PIPE)
    if done.returncode:
        sys.exit(f"git archive {revision}: {done.stderr.decode().strip()}")
    tree = into / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare with (default: HEAD)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side, after two warm-up steps each")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the working tree's worker only (repeatable)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.precision, args.threads)
        return

    sys.path.insert(0, str(REPO))
    import torch
    from vimpac.machine import machine_line

    extra_env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env {item!r}: expected KEY=VALUE")
        extra_env[key] = value
    torch.set_num_threads(args.threads)  # only so that the machine line names the workers' setting
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        working = "working tree" + "".join(f" {k}={v}" for k, v in extra_env.items())
        sides = {f"baseline {args.baseline}": (unpack(args.baseline, Path(tmp)), {}), working: (REPO, extra_env)}
        workers = {}
        for name, (tree, env) in sides.items():
            workers[name] = subprocess.Popen(
                [sys.executable, __file__, "--worker", str(tree), "--precision", args.precision,
                 "--threads", str(args.threads)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env=dict(os.environ, PYTHONPATH="", **env))
            if workers[name].stdout.readline().strip() != "ready":
                sys.exit(f"{name}: worker failed to start")
        times = {name: [] for name in workers}
        for turn in range(-WARMUP_TURNS, args.steps):
            for name, proc in workers.items():
                proc.stdin.write("step\n")
                proc.stdin.flush()
                seconds, loss = proc.stdout.readline().split()
                if turn >= 0:
                    times[name].append(float(seconds))
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()
    print(f"pre-training step, small preset, T=5, 16x16 tokens, 4 clips, {args.precision}, "
          f"{args.threads} thread(s), {args.steps} interleaved steps per side:")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"  {name:24s} median {medians[name]:.3f} s/step  ({', '.join(f'{x:.2f}' for x in t)})")
    base, ours = medians[f"baseline {args.baseline}"], medians[working]
    print(f"  speed-up of the working tree: {base / ours:.3f}x")


if __name__ == "__main__":
    main()
