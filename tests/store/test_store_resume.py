"""The `vimpac tokenize` CLI in subprocesses: kill -9 and resume, and a 2-rank torchrun (gloo) run.

All runs use one tokenizer folder (DALL-E's dVAE architecture, tiny preset, random weights) and one torch thread (torchrun sets
OMP_NUM_THREADS=1 anyway), and every encoder batch is exactly one video, so tokens of
different runs are bitwise comparable.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from process_helpers import PATIENCE, descendants, results_of, spawn_ranks, wait_gone, wait_until
from store_helpers import make_dataset
from vimpac.cli import main as cli_main
from vimpac.store import TokenStore
from vimpac.store.format import PART_DIR, SHARD_DIR
from vimpac.store.verify import verify_store

pytestmark = pytest.mark.slow

NUM_VIDEOS = 12
FRAMES = 16  # per video at the tokenize FPS (2 s at 8 fps)
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def tokenize_args(root: Path, out: Path, workers: int) -> list[str]:
    return ["tokenize", "--videos", str(root / "videos"), "--list", str(root / "list.txt"),
            "--tokenizer", str(root / "tokenizer"), "--fps", "8", "--size", "32", "--views", "center",
            "--out", str(out), "--workers", str(workers), "--batch-size", str(FRAMES), "--no-progress"]


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vimpac.cli", *args], env=env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Dataset, tokenizer folder and an uninterrupted single-process store."""
    import torch

    from vimpac.tokenizer.dalle import DALLE_PRESETS, DalleTokenizer

    root = tmp_path_factory.mktemp("resume")
    make_dataset(root, NUM_VIDEOS, corrupt=(5,), frames=FRAMES)
    torch.manual_seed(0)
    DalleTokenizer(DALLE_PRESETS["tiny"]).save_pretrained(root / "tokenizer")
    run_cli(tokenize_args(root, root / "reference", workers=0))
    return root, TokenStore.open(root / "reference")


def committed_parts(store: Path) -> list[Path]:
    return list((store / PART_DIR).glob("r000-*.json")) if (store / PART_DIR).is_dir() else []


def assert_same_store(store: TokenStore, reference: TokenStore) -> None:
    assert store.keys() == reference.keys()
    assert len(store) == len(reference) == NUM_VIDEOS - 1
    assert len(set(zip(store.keys(), store.views * store.num_videos))) == len(store)  # each once
    for key in reference.keys():
        np.testing.assert_array_equal(store.tokens(store.index_of(key, "s1.00_center")),
                                      reference.tokens(reference.index_of(key, "s1.00_center")))
    assert [f["key"] for f in store.failures] == [f["key"] for f in reference.failures] == ["v05"]
    assert verify_store(store.root).ok


def test_kill_9_then_resume_gives_the_uninterrupted_store(reference, capsys):
    root, ref = reference
    out = root / "killed"
    process, _, _ = start_and_signal(root, out, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):  # the decoding worker, should it still be there
        os.killpg(process.pid, signal.SIGKILL)
    committed = len(committed_parts(out))
    assert 1 <= committed < NUM_VIDEOS, "the kill should land mid-run"
    assert not (out / "manifest.json").exists()
    result = run_cli(tokenize_args(root, out, workers=0))
    assert "tokenized" in result.stdout and "already done" in result.stdout
    assert_same_store(TokenStore.open(out), ref)
    # A finished store: the same command (in-process here, to save a start-up) does nothing.
    assert cli_main(tokenize_args(root, out, workers=0)) == 0
    assert "nothing to do" in capsys.readouterr().out


def start_and_signal(root: Path, out: Path, sig: int) -> tuple[subprocess.Popen, set[int], str]:
    """Start tokenize with a decoding worker, send `sig` to the main process after its first
    commit; return the process, the processes it had started, and its stderr."""
    process = subprocess.Popen([sys.executable, "-m", "vimpac.cli", *tokenize_args(root, out, workers=1)],
                               env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        wait_until(lambda: bool(committed_parts(out)), "tokenize's first commit", process,
                   output=lambda: process.communicate()[1][-2000:], poll=0.002)
        children = descendants(process.pid)
        assert children, "the run should have a decoding worker"
        process.send_signal(sig)
        _stdout, stderr = process.communicate(timeout=PATIENCE)
        return process, children, stderr
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        raise


def test_decoding_workers_exit_when_the_main_process_is_killed(reference):
    """SIGKILL of the main process left its decoding workers running forever (re-parented to
    PID 1, blocked on their job pipe, ~256 MB each)."""
    root, _ = reference
    process, children, _ = start_and_signal(root, root / "sigkill", signal.SIGKILL)
    try:
        assert process.returncode == -signal.SIGKILL
        assert wait_gone(children) == set(), "decoding workers outlived the killed run"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_sigterm_stops_the_run_resumably(reference):
    """SIGTERM (timeout, SLURM) is handled like Ctrl-C: commit what is decoded, end the
    workers, say how to resume; the rerun gives the uninterrupted store."""
    root, ref = reference
    out = root / "sigterm"
    process, children, stderr = start_and_signal(root, out, signal.SIGTERM)
    try:
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert "stopped by SIGTERM" in stderr and "rerun the same command to resume" in stderr
        assert "Traceback" not in stderr
        assert wait_gone(children) == set()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    run_cli(tokenize_args(root, out, workers=0))
    assert_same_store(TokenStore.open(out), ref)


def is_decoding_worker(pid: int) -> bool:
    try:  # spawn's command line; multiprocessing's resource tracker is another child
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_ctrl_c_while_the_decoding_workers_start_stops_the_run_resumably(reference):
    """Ctrl-C reaches the whole process group: while the decoding workers were still starting
    (importing, before they ignore it) it killed them, and the run failed with "worker processes
    die as they start ... `__main__` guard" (exit 2). Now it stops like a Ctrl-C at any other time."""
    root, ref = reference
    out = root / "ctrl-c-at-start"
    process = subprocess.Popen([sys.executable, "-m", "vimpac.cli", *tokenize_args(root, out, workers=2)],
                               env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        wait_until(lambda: any(map(is_decoding_worker, descendants(process.pid))), "a decoding worker", process,
                   output=lambda: process.communicate()[1][-2000:], poll=0.002)
        os.killpg(process.pid, signal.SIGINT)
        _stdout, stderr = process.communicate(timeout=PATIENCE)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "stopped by SIGINT" in stderr and "Traceback" not in stderr
    run_cli(tokenize_args(root, out, workers=0))
    assert_same_store(TokenStore.open(out), ref)


def test_two_rank_torchrun_gloo_run_makes_one_store(reference):
    root, ref = reference
    out = root / "two-ranks"
    torchrun = [str(VENV_BIN / "torchrun")] if (VENV_BIN / "torchrun").exists() else [sys.executable, "-m", "torch.distributed.run"]
    result = subprocess.run([*torchrun, "--standalone", "--nproc_per_node", "2", "-m", "vimpac.cli",
                             *tokenize_args(root, out, workers=0)],
                            env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rank 0/2" in result.stdout and "rank 1/2" in result.stdout
    shards = sorted(p.name for p in (out / SHARD_DIR).glob("*.tok"))
    assert shards == ["r000-0000.tok", "r001-0000.tok"]
    assert not list((out / PART_DIR).glob("*.json")) and (out / "manifest.json").exists()
    store = TokenStore.open(out)
    assert sorted(set(store.manifest.shards)) == shards
    assert_same_store(store, ref)


def _tokenize_as_rank(rank, port, args, behind_seconds, queue):
    import datetime
    import time

    import torch.distributed.distributed_c10d as c10d

    import vimpac.store.tokenize as tokenize

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    # torch's default wait of a collective (30 minutes for gloo), scaled down with the run.
    c10d.default_pg_timeout = datetime.timedelta(seconds=behind_seconds / 4)
    if rank == 1:  # the slowest rank: it starts its videos long after rank 0 is done with its own
        run_jobs = tokenize._run_jobs
        tokenize._run_jobs = lambda *a, **k: (time.sleep(behind_seconds), run_jobs(*a, **k))[1]
    queue.put((rank, cli_main(args)))


def test_ranks_that_finish_first_wait_for_the_slowest_at_the_final_barrier(reference):
    """On a big dataset the ranks finish hours apart; those done first waited at the final
    barrier only as long as torch's default collective timeout (30 minutes for gloo), then
    crashed with the manifest left unmerged."""
    root, ref = reference
    out = root / "uneven-ranks"
    procs, queue = spawn_ranks(_tokenize_as_rank, tokenize_args(root, out, workers=0), 4.0)
    assert dict(results_of(queue, procs, count=2)) == {0: 0, 1: 0}
    assert (out / "manifest.json").exists() and not list((out / PART_DIR).glob("*.json"))
    assert_same_store(TokenStore.open(out), ref)
