"""How long the annotation readers take on full-size official files (synthetic content).

Writes Kinetics-400 train.csv (246,534 rows, the official count), an MMAction2 list of the
same size and HowTo100M_v1.csv (1,238,911 rows) to a temporary folder, then times our
validating readers against a bare `csv.reader` / `str.split` pass that does no checking,
so the ratio is the price of the validation (duplicate keys, ranges, paths, error context).

    .venv/bin/python bench/annotations_parse.py [--scale 0.25]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from vimpac.data.annotations import read_howto100m, read_kinetics400, read_mmaction_list
from vimpac.machine import best_of, machine_line

KINETICS_TRAIN_ROWS = 246_534
HOWTO100M_ROWS = 1_238_911


def bare_csv(path: Path) -> int:
    with open(path, newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.reader(f))


def bare_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.rsplit(None, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the official row counts")
    args = parser.parse_args()
    k_rows = int(KINETICS_TRAIN_ROWS * args.scale)
    h_rows = int(HOWTO100M_ROWS * args.scale)
    print(f"machine: {machine_line(with_torch=False)}")
    print(f"rows: kinetics400 {k_rows:,}, mmaction {k_rows:,}, howto100m {h_rows:,} (best of 3)")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        kinetics = folder / "train.csv"
        with open(kinetics, "w", encoding="utf-8") as f:
            f.write("label,youtube_id,time_start,time_end,split,is_cc\n")
            for i in range(k_rows):
                f.write(f'"class {i % 400:03d} (x)",vid{i:08d}_x,{i % 300},{i % 300 + 10},train,0\n')
        mm = folder / "list.txt"
        with open(mm, "w", encoding="utf-8") as f:
            for i in range(k_rows):
                f.write(f"class_{i % 400}/video {i:08d}.mp4 {i % 400}\n")
        howto = folder / "HowTo100M_v1.csv"
        with open(howto, "w", encoding="utf-8") as f:
            f.write("video_id,category_1,category_2,rank,task_id\n")
            for i in range(h_rows):
                f.write(f"h{i:010d},Food and Entertaining,Recipes,{i % 200},{i % 23000}\n")

        cases = [
            ("kinetics400 csv", lambda: read_kinetics400(kinetics, subset="train"), lambda: bare_csv(kinetics), k_rows),
            ("mmaction list", lambda: read_mmaction_list(mm), lambda: bare_lines(mm), k_rows),
            ("howto100m csv", lambda: read_howto100m(howto), lambda: bare_csv(howto), h_rows),
        ]
        print(f"{'file':<18}{'vimpac (s)':>12}{'bare parse (s)':>16}{'ratio':>8}{'rows/s (vimpac)':>18}")
        for name, ours, bare, rows in cases:
            t_ours, t_bare = best_of(ours), best_of(bare)
            print(f"{name:<18}{t_ours:>12.3f}{t_bare:>16.3f}{t_ours / t_bare:>8.1f}{rows / t_ours:>18,.0f}")


if __name__ == "__main__":
    main()
