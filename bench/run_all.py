"""Run every benchmark in bench/ one after another (each prints its machine line and results).

    .venv/bin/python bench/run_all.py [--only NAME,NAME]

Benchmarks must not share the machine with other work: they compare variants side by side,
but absolute numbers drift with load. Record what they print in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = (
    "annotations_parse.py",
    "bench_decode.py",
    "synthetic_generation.py",
    "bench_vqvae.py",
    "bench_dvae.py",
    "bench_store.py",
    "bench_store_open.py",
    "bench_encoder_calls.py",
    "bench_tokenize_long.py",
    "bench_masking.py",
    "bench_dropout.py",
    "bench_layouts.py",
    "bench_pretrain_step.py",
    "bench_pretrain_memory.py",
    "bench_finetune_eval.py",
    "bench_copy_baseline.py",
    "bench_parallel_runs.py",
)
# The other scripts in bench/, with why they are not run here. A script in neither list stops
# run_all.py before it starts: a new benchmark left out of BENCHMARKS was skipped without a word.
NOT_RUN = {
    "run_all.py": "this script",
    "bench_pretrain_ab.py": "an A/B of the working tree against a chosen commit: run it by hand with --baseline",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated benchmark file names (default: all)")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else BENCHMARKS
    here = Path(__file__).parent
    unlisted = sorted(p.name for p in here.glob("*.py") if p.name not in BENCHMARKS and p.name not in NOT_RUN)
    if unlisted and not args.only:
        print(f"error: {here} holds {', '.join(unlisted)}, in neither BENCHMARKS nor NOT_RUN of {Path(__file__).name}; "
              "add each to one of them", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"\n===== {name} =====", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(here / name)])
        print(f"===== {name}: exit {code}, {time.perf_counter() - started:.0f} s =====", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
