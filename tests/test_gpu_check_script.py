"""bench/gpu_check.sh, the one script a session with a borrowed GPU runs, works: its CPU dry run
collects the GPU tests without PyAV and runs the step benchmark, writing every log to $OUT."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_on_cpu(tmp_path):
    # A PyAV that cannot be imported: the GPU machines do not have it, and the script must not need it.
    (tmp_path / "noav").mkdir()
    (tmp_path / "noav" / "av.py").write_text("raise ImportError('no PyAV on this machine')\n")
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "OUT": str(out), "PYTHON": sys.executable,
           "PYTHONPATH": str(tmp_path / "noav")}
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tests_log = (out / "gpu_tests.log").read_text()
    summary = tests_log.strip().splitlines()[-1]
    assert "skipped" in summary and "error" not in summary and "ERROR" not in tests_log, tests_log[-2000:]
    assert "test_pretrain_task.py" in tests_log      # the pre-training GPU tests were collected (and skipped)
    step_log = (out / "step_quick.log").read_text()
    assert "tiny preset" in step_log and "bf16 eager fused" in step_log
    assert (out / "machine.txt").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_torch_without_cuda_is_refused_before_the_tests(tmp_path):
    # Before: every GPU test was skipped (pytest exit 0) and each benchmark then failed with a
    # traceback, minutes of a GPU lease spent on a run that measured nothing.
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cuda", "OUT": str(out), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1
    assert "no python here whose torch sees a CUDA device" in result.stderr
    assert "no python here whose torch sees a CUDA device" in (out / "machine.txt").read_text()
    assert not (out / "gpu_tests.log").exists()
