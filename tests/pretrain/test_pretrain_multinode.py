"""`vimpac pretrain` as a multi-node job (docs/scaling.md): two torchrun agents on localhost stand
for two machines, joined by torchrun's c10d rendezvous with one process each (gloo), writing into
one run folder as a cluster's shared file system would hold it. SIGTERM to both agents stands for
SLURM's notice (`--signal=TERM@...` signals every process of a job step: torchrun, which passes it
on, and the workers), and the requeued job is the same two commands with `--resume`.

The losses of the whole run are compared with one process that trains on the two ranks' data (the
same global batch) without torch.distributed; test_pretrain_task.py and tests/engine check the
pieces of that equivalence (gradients, the trainer) on their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from process_helpers import PATIENCE, descendants, free_port, wait_until
from vimpac.engine.checkpoint import latest_checkpoint
from vimpac.engine.distributed import DistInfo
from vimpac.engine.metrics import read_metrics
from vimpac.engine.trainer import Trainer
from vimpac.model.vimpac import VimpacForPretraining
from vimpac.pretrain.config import build_pretrain_config
from vimpac.pretrain.contrastive import pretraining_loss, symmetric_info_nce
from vimpac.pretrain.task import PretrainTask, resolve_config
from vimpac.store.reader import TokenStore

sys.path.insert(0, str(Path(__file__).parent))
from token_store_factory import static_texture_videos, write_store  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CODES = 32
STEPS = 30
SETTINGS = ["model.dim=64", "model.layers=2", "model.heads=2", "model.cls_head_hidden=64", "model.cls_head_out=32",
            "model.dropout=0.0", "model.attention_dropout=0.0", "data.frames=4", "data.val_fraction=0.2",
            "train.batch_size=4", "train.precision=fp32", "train.progress=false", "train.log_every=1",
            "train.checkpoint_every=1000", f"train.total_steps={STEPS}"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return write_store(root, static_texture_videos(24, frames=10, grid=4, codebook_size=CODES), CODES)


def start_two_nodes(store_path, run, logs: Path, *extra: str) -> list[subprocess.Popen]:
    """One torchrun agent per "node", as the sbatch script's `srun` starts them."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    agents = []
    for node in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{port}",
                   "-m", "vimpac.cli", "pretrain", "--store", str(store_path), "--out", str(run), "--device", "cpu",
                   "--threads", "1", *extra, *SETTINGS]
        with open(logs / f"node{node}.txt", "w") as out:
            agents.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
    return agents


def wait_all(agents: list[subprocess.Popen]) -> list[int]:
    try:
        return [agent.wait(timeout=PATIENCE) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()


class TwoRanksInOneProcess:
    """The pre-training task with the data of ranks 0 and 1 of 2, in one process: the loss DDP
    optimises, i.e. the mean over ranks of each rank's loss: its masked-token loss over its own
    masked positions, plus the contrastive loss of its clips against the global batch (whose mean
    over ranks is the contrastive loss of the global batch)."""

    def __init__(self, task: PretrainTask):
        self.task = task

    def batch(self, step, micro_step, dist):
        return [self.task.batch(step, micro_step, DistInfo(rank, 2)) for rank in range(2)]

    def loss(self, model, batches):
        half = batches[0].tokens.shape[0] // 2

        def global_batch(per_rank):  # first clips of both ranks' videos, then their second clips
            return torch.cat([rows[:half] for rows in per_rank] + [rows[half:] for rows in per_rank])

        inputs, mask, labels = (global_batch([getattr(b, name) for b in batches]) for name in ("inputs", "mask", "labels"))
        rank_of_row = global_batch([torch.full((2 * half,), rank) for rank in range(2)])
        out = model(inputs, predict_mask=mask)
        token_losses = F.cross_entropy(out.mlm_logits.float(), labels[mask], reduction="none")
        rank_of_token = rank_of_row[:, None, None, None].expand_as(mask)[mask]
        mask_loss = torch.stack([token_losses[rank_of_token == rank].mean() for rank in range(2)]).mean()
        objective = self.task.cfg.objective
        clips = out.cls_projection.shape[0] // 2
        cl_loss = symmetric_info_nce(out.cls_projection[:clips], out.cls_projection[clips:], objective.temperature,
                                     objective.normalize, distributed=False).loss
        return pretraining_loss(mask_loss, cl_loss, objective), {}


def one_process_losses(store_path, run_dir) -> list[float]:
    store = TokenStore.open(store_path)
    cfg = resolve_config(store, build_pretrain_config("tiny", overrides=SETTINGS), world_size=2)
    torch.manual_seed(cfg.train.seed)  # as run_pretraining builds the model
    model = VimpacForPretraining(cfg.model)
    Trainer(model, TwoRanksInOneProcess(PretrainTask(store, cfg)), cfg.train, run_dir).fit()
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


@pytest.mark.slow
def test_two_torchrun_nodes_train_stop_on_sigterm_and_resume_as_one_run(store_path, tmp_path):
    run = tmp_path / "run"
    agents = start_two_nodes(store_path, run, tmp_path)
    printed = lambda: "\n".join((tmp_path / f"node{n}.txt").read_text() for n in range(2))  # noqa: E731
    logged = lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip() != ""  # noqa: E731
    try:  # the first row is written inside the training loop, where the SIGTERM handler is in place
        wait_until(lambda: logged() or any(agent.poll() is not None for agent in agents), "the first metrics row")
        assert logged(), f"an agent ended before training: {[a.poll() for a in agents]}\n{printed()[-4000:]}"
    finally:  # as SLURM's --signal=TERM@... does: every process of the job step, workers as well
        for pid in {agent.pid for agent in agents} | set().union(*(descendants(a.pid) for a in agents)):
            os.kill(pid, signal.SIGTERM)
    codes = wait_all(agents)
    stopped = latest_checkpoint(run)
    assert stopped is not None and stopped.name < f"step-{STEPS:08d}", (codes, printed()[-4000:])
    # Rank 0, on whichever node, wrote the checkpoint and the one summary; every agent stopped.
    summaries = [line for line in printed().splitlines() if line.startswith(("interrupted", "finished"))]
    assert summaries == [f"interrupted at step {int(stopped.name[5:])} (0 skipped); run folder {run}"], printed()[-4000:]
    assert all(code != 0 for code in codes), codes

    agents = start_two_nodes(store_path, run, tmp_path, "--resume")
    assert wait_all(agents) == [0, 0], printed()[-4000:]
    summaries = [line for line in printed().splitlines() if line.startswith(("interrupted", "finished"))]
    assert summaries == [f"finished at step {STEPS} (0 skipped); run folder {run}"], printed()[-4000:]
    assert latest_checkpoint(run).name == f"step-{STEPS:08d}" and (run / "model" / "model.safetensors").exists()
    assert json.loads((latest_checkpoint(run) / "state.json").read_text())["world_size"] == 2

    # Both ranks trained every step together: the logged loss is the mean of the two ranks' losses.
    rows = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    expected = one_process_losses(store_path, tmp_path / "one-process")
    # The first loss (before any update) differs only by the order of float32 sums; later ones
    # also by their growth over the updates (~4e-4 after 40 steps), while one step of data out of
    # place, or one rank on other steps, moves a loss by 1e-2 or more.
    assert rows[0]["loss"] == pytest.approx(expected[0], rel=1e-5)
    assert [r["loss"] for r in rows] == pytest.approx(expected, rel=1e-3)
