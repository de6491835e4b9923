"""The SLURM job scripts in examples/slurm (docs/scaling.md): valid bash, and what
pretrain.sbatch decides after an attempt, run with stand-ins for `srun`, `scontrol` and
`torchrun` (no SLURM here): requeue after progress, stop when finished or when nothing moved."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "examples" / "slurm").glob("*.sbatch"))


def test_there_are_job_scripts():
    assert {p.name for p in SCRIPTS} >= {"pretrain.sbatch", "tokenize.sbatch"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_job_scripts_are_valid_bash(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# `torchrun` stand-in: records its arguments, then plays what the run did, by $OUTCOME.
FAKE_TORCHRUN = r"""#!/bin/bash
echo "$@" > "$LOG/torchrun-args"
run=$(echo "$@" | sed 's/.*--out \([^ ]*\).*/\1/')
mkdir -p "$run/checkpoints"
case "$OUTCOME" in
  finished) echo step-00000040 > "$run/checkpoints/latest"
            echo "{\"status\": \"finished\"}" > "$run/result.json"
            touch -d "@$(( $(date +%s) + 5 ))" "$run/result.json"   # newer than the attempt whatever the clock resolution
            exit 0 ;;
  stopped)  echo step-00000020 > "$run/checkpoints/latest"; exit 1 ;;   # torchrun's status after SIGTERM
  nothing)  exit 1 ;;
esac
"""
FAKE_SRUN = '#!/bin/bash\n[ "$1" = --kill-on-bad-exit=1 ] || exit 99\nshift\nexec "$@"\n'
FAKE_SCONTROL = r"""#!/bin/bash
case "$1" in
  show) printf 'node17\nnode18\n' ;;
  requeue) echo "$2" >> "$LOG/requeued" ;;
esac
"""


@pytest.mark.parametrize("outcome, before, code, requeued", [
    ("finished", "step-00000020", 0, False),
    ("stopped", "step-00000010", 0, True),      # SIGTERM before the time limit, checkpoint written
    ("stopped", None, 0, True),                 # the first attempt
    ("nothing", "step-00000010", 1, False),     # e.g. bad settings: requeueing would only repeat it
    ("finished", None, 0, False),
    ("finished", "step-00000040", 0, False),   # resubmitted after the end: nothing to do
])
def test_pretrain_job_requeues_only_after_progress(tmp_path, outcome, before, code, requeued):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    bin_dir, log, run = tmp_path / "bin", tmp_path / "log", tmp_path / "run"
    for folder in (bin_dir, log):
        folder.mkdir()
    for name, text in (("torchrun", FAKE_TORCHRUN), ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    if before is not None:
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "latest").write_text(before + "\n")
        (run / "result.json").write_text(f'{{"checkpoint": "{run}/checkpoints/{before}"}}\n')  # an earlier, shorter run
        past = os.stat(run / "result.json").st_mtime - 60
        os.utime(run / "result.json", (past, past))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "LOG": str(log), "OUTCOME": outcome,
           "STORE": str(tmp_path / "store"), "RUN": str(run), "GPUS_PER_NODE": "8",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[17-18]", "SLURM_JOB_NUM_NODES": "2"}
    result = subprocess.run(["bash", str(REPO / "examples" / "slurm" / "pretrain.sbatch"), "train.lr=5e-4"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stdout + result.stderr
    assert (log / "requeued").exists() == requeued, result.stdout + result.stderr
    if requeued:
        assert (log / "requeued").read_text() == "4242\n"
    args = (log / "torchrun-args").read_text().split()
    assert args[:args.index("-m")] == ["--nnodes", "2", "--nproc_per_node", "8", "--rdzv-backend", "c10d",
                                       "--rdzv-endpoint", "node17:29500", "--rdzv-id", "4242"]
    assert args[args.index("-m"):] == ["-m", "vimpac.cli", "pretrain", "--store", str(tmp_path / "store"),
                                       "--out", str(run), "--preset", "analysis", "--resume", "train.lr=5e-4"]
