"""Memory of a pre-training process over many steps: resident size (RSS), page faults, s/step.

Block masking hides a different number of positions in every batch, so the masked-token head
sees a new row count each step. CPU matmuls (oneDNN) cache a primitive per shape, with its own
buffers, and keep up to 1024 of them by default: before the model rounded the head's rows up
to a multiple (`vimpac.model.vimpac.MLM_ROW_MULTIPLE`), a training process grew by tens of MB
per step. This benchmark runs the step of bench_pretrain_step.py
(small preset, T = 5, 16 x 16 tokens, 2 videos x 2 clips, fused AdamW) for --steps steps in a
fresh process per multiple (1 = no rounding, the old behaviour) and reports the resident size
after the warm-up and at the end, and its growth per step overall and over the second half.

    .venv/bin/python bench/bench_pretrain_memory.py [--steps 60] [--precision bf16] [--threads 2]
        [--row-multiples 1,128]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

WARMUP_STEPS = 5
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def worker(row_multiple: int, precision: str, threads: int, steps: int) -> None:
    """Run the step `steps` times with the head's rows rounded to `row_multiple`; print a JSON line."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(1, str(HERE))
    import torch

    import bench_pretrain_step
    import vimpac.model.vimpac as model_module
    from vimpac.machine import resident_mib

    torch.set_num_threads(threads)
    model_module.MLM_ROW_MULTIPLE = row_multiple  # read at every forward
    step = bench_pretrain_step.build_step(precision)
    times, resident = [], []
    for i in range(steps):
        if i == WARMUP_STEPS:
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        resident.append(resident_mib())
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    print(json.dumps({"times": times, "resident": resident, "faults": faults}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--row-multiples", default="1,128",
                        help="comma list of head row multiples to compare (1: no rounding)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    if args.worker is not None:
        worker(args.worker, args.precision, args.threads, args.steps)
        return
    if not os.path.exists("/proc/self/statm"):
        sys.exit("this benchmark reads /proc/self/statm (Linux only)")

    sys.path.insert(0, str(REPO))
    import torch

    from vimpac.machine import machine_line

    torch.set_num_threads(args.threads)  # only so that the machine line names the workers' setting
    print(machine_line())
    print(f"pre-training step, small preset, T=5, 16x16 tokens, 4 clips, {args.precision}, {args.threads} thread(s), "
          f"{args.steps} steps per process ({WARMUP_STEPS} warm-up)")
    print(f"{'head rows rounded to':>20s} {'RSS after warm-up':>17s} {'RSS at end':>10s} {'growth/step':>11s} "
          f"{'2nd half':>9s} {'s/step':>7s} {'faults/step':>11s}")
    for multiple in (int(m) for m in args.row_multiples.split(",")):
        done = subprocess.run(
            [sys.executable, __file__, "--worker", str(multiple), "--precision", args.precision,
             "--threads", str(args.threads), "--steps", str(args.steps)],
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=""))
        if done.returncode:
            sys.exit(f"worker for multiple {multiple} failed:\n{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        resident, timed = result["resident"], result["times"][WARMUP_STEPS:]
        start_mib, end_mib = resident[WARMUP_STEPS - 1], resident[-1]
        growth = (end_mib - start_mib) / len(timed)
        # Growth over the second half of the timed steps: near zero once the caches have filled.
        half = (len(resident) - WARMUP_STEPS) // 2
        late_growth = (end_mib - resident[-1 - half]) / half if half else float("nan")
        print(f"{multiple:20d} {start_mib:13.0f} MiB {end_mib:6.0f} MiB {growth:7.1f} MiB {late_growth:5.1f} MiB "
              f"{statistics.median(timed):7.2f} {result['faults'] / len(timed):11.0f}", flush=True)


if __name__ == "__main__":
    main()
