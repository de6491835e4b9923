"""The shared training loop: exact resume after kill -9, SIGTERM checkpoints, non-finite steps,
DDP equivalence, optimizer groups and the learning-rate schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vimpac.engine.checkpoint import CheckpointError, latest_checkpoint
from vimpac.engine.distributed import shutdown
from vimpac.engine.metrics import read_metrics
from vimpac.engine.optim import build_optimizer, warmup_linear_decay
from vimpac.engine.trainer import Trainer, TrainConfig, TrainingDiverged

sys.path.insert(0, str(Path(__file__).parent))
from process_helpers import PATIENCE, descendants, results_of, spawn_ranks, wait_gone, wait_until  # noqa: E402
from toy_training import ToyModel, ToyTask, make_trainer  # noqa: E402

TOY_SCRIPT = Path(__file__).parent / "toy_training.py"


def train_losses(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r["split"] == "train" and "loss" in r]


def test_training_reduces_the_loss_and_writes_metrics(tmp_path):
    result = make_trainer(tmp_path, steps=40).fit()
    losses = [loss for _, loss in train_losses(tmp_path)]
    assert result.status == "finished" and result.step == 40
    assert losses[-1] < 0.5 * losses[0]
    assert "val/mse" in result.last_metrics
    assert (tmp_path / "tensorboard").is_dir()
    assert latest_checkpoint(tmp_path).name == "step-00000040"


def test_validate_at_end_can_be_left_to_the_caller(tmp_path):
    result = make_trainer(tmp_path, steps=5, validate_at_end=False).fit()
    assert result.status == "finished"
    assert not any(k.startswith("val/") for k in result.last_metrics)
    assert not [r for r in read_metrics(tmp_path) if r["split"] == "val"]


def test_logged_lr_is_the_largest_group_rate(tmp_path):
    torch.manual_seed(0)
    model = ToyModel()
    groups = [{"params": list(model.hidden.parameters()) + list(model.norm.parameters()), "lr": 1e-3},
              {"params": list(model.out.parameters()), "lr": 4e-3}]
    cfg = TrainConfig(total_steps=4, batch_size=8, lr=4e-3, warmup_ratio=0.0, log_every=1, progress=False)
    Trainer(model, ToyTask(8), cfg, tmp_path, param_groups=groups).fit()
    lrs = [r["lr"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    # Linear decay from the top group's 4e-3 (the first group would log a quarter of it); the
    # first update uses all of it.
    assert lrs[0] == pytest.approx(4e-3)


def test_in_process_resume_matches_uninterrupted(tmp_path):
    make_trainer(tmp_path / "full", steps=20).fit()
    make_trainer(tmp_path / "part", steps=20, max_minutes=0.0).fit()  # stops after one step
    assert latest_checkpoint(tmp_path / "part").name == "step-00000001"
    resumed = make_trainer(tmp_path / "part", steps=20)
    assert resumed.resume() and resumed.step == 1
    resumed.fit()
    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "full")


def test_deterministic_runs_fix_the_cublas_workspace(tmp_path, monkeypatch):
    # Without CUBLAS_WORKSPACE_CONFIG, torch.use_deterministic_algorithms(warn_only=True) only
    # warns that cuBLAS is not deterministic: a --deterministic GPU run was not repeatable.
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    make_trainer(tmp_path, steps=1)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's choice is kept
    make_trainer(tmp_path, steps=1)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_deterministic_resume_matches_uninterrupted(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*CUBLAS_WORKSPACE_CONFIG.*")
        make_trainer(tmp_path / "full", steps=20, device="cuda").fit()
        make_trainer(tmp_path / "part", steps=20, device="cuda", max_minutes=0.0).fit()
        resumed = make_trainer(tmp_path / "part", steps=20, device="cuda")
        assert resumed.resume() and resumed.step == 1
        resumed.fit()
    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "full")


def test_resume_logs_the_same_rows_when_a_log_window_spans_the_interruption(tmp_path):
    # Rows every 4 steps; the interrupted run stops after step 1, inside the first window.
    make_trainer(tmp_path / "full", steps=12, log_every=4).fit()
    make_trainer(tmp_path / "part", steps=12, log_every=4, max_minutes=0.0).fit()
    resumed = make_trainer(tmp_path / "part", steps=12, log_every=4)
    assert resumed.resume() and resumed.step == 1
    resumed.fit()
    full, part = train_losses(tmp_path / "full"), train_losses(tmp_path / "part")
    assert [step for step, _ in part] == [4, 8, 12]
    assert part == full


def test_a_fresh_start_drops_rows_of_an_attempt_without_a_checkpoint(tmp_path):
    make_trainer(tmp_path, steps=4, checkpoint_every=100, max_minutes=0.0).fit()  # one row, then its checkpoint
    for ckpt in (tmp_path / "checkpoints").iterdir():  # as if killed before that checkpoint
        import shutil
        shutil.rmtree(ckpt) if ckpt.is_dir() else ckpt.unlink()
    trainer = make_trainer(tmp_path, steps=4)
    assert not trainer.resume()
    trainer.fit()
    assert [step for step, _ in train_losses(tmp_path)] == [1, 2, 3, 4]


def test_resuming_a_run_killed_before_its_end_validation_validates(tmp_path):
    from vimpac.engine.metrics import MetricsLogger

    make_trainer(tmp_path, steps=5).fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    # As if killed after the last checkpoint, before the end validation, mid-way through a line.
    (tmp_path / "metrics.jsonl").write_text("\n".join(l for l in lines if '"val"' not in l) + '\n{"step": 5, "spl')
    trainer = make_trainer(tmp_path, steps=5)
    assert trainer.resume()
    result = trainer.fit()
    assert "val/mse" in result.last_metrics
    assert [r["step"] for r in read_metrics(tmp_path) if r["split"] == "val"] == [5]
    assert MetricsLogger(tmp_path, tensorboard=False).has_record(5, "val")


def test_resuming_a_finished_run_trains_and_logs_nothing_more(tmp_path):
    make_trainer(tmp_path, steps=5).fit()
    rows = read_metrics(tmp_path)
    trainer = make_trainer(tmp_path, steps=5)
    assert trainer.resume()
    result = trainer.fit()
    assert result.status == "finished" and result.step == 5
    assert read_metrics(tmp_path) == rows


def _record_in_checkpoint(run_dir, **changes):
    """Edit the latest checkpoint's state.json, as if another run had written it."""
    state_file = latest_checkpoint(run_dir) / "state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), **changes}))


def test_resume_refuses_a_checkpoint_of_another_number_of_processes(tmp_path):
    make_trainer(tmp_path, steps=5, max_minutes=0.0).fit()
    _record_in_checkpoint(tmp_path, world_size=2)  # 2 processes x batch 8: 16 samples per update
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\) x batch size 8 x 1 accumulation step\(s\) "
                                              r"= 16 samples per update, but this run has 1 x 8 x 1 = 8; resume with 2"):
        make_trainer(tmp_path, steps=5).resume()
    # The same global batch from one process with accumulation continues the run.
    resumed = make_trainer(tmp_path, steps=5, grad_accum_steps=2)
    assert resumed.resume() and resumed.fit().status == "finished"


def test_a_refused_resume_leaves_the_model_as_it_was(tmp_path):
    make_trainer(tmp_path, steps=5, max_minutes=0.0).fit()
    _record_in_checkpoint(tmp_path, world_size=2)
    trainer = make_trainer(tmp_path, steps=5)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="samples per update"):
        trainer.resume()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_a_damaged_optimizer_file_is_a_checkpoint_error_naming_it(tmp_path):
    make_trainer(tmp_path, steps=5, max_minutes=0.0).fit()
    (latest_checkpoint(tmp_path) / "optimizer.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors: cannot load into the optimizer"):
        make_trainer(tmp_path, steps=5).resume()


def test_a_checkpoint_records_the_samples_per_update(tmp_path):
    make_trainer(tmp_path, steps=2, grad_accum_steps=3).fit()
    state = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    assert (state["world_size"], state["batch_size"], state["grad_accum_steps"]) == (1, 8, 3)


@pytest.mark.parametrize("field, value, expected", [
    ("batch_size", 0, "train.batch_size: expected an integer >= 1, got 0"),
    ("grad_accum_steps", 0, "train.grad_accum_steps: expected an integer >= 1"),
    ("log_every", 0, "train.log_every: expected an integer >= 1"),
    ("checkpoint_every", 0, "train.checkpoint_every"),
    ("lr", -1.0, "train.lr: expected a finite number >= 0, got -1.0"),
    ("lr", float("nan"), "train.lr"),
    ("betas", (0.9,), r"train.betas: expected two numbers in \[0, 1\)"),
    ("warmup_ratio", 1.5, "train.warmup_ratio"),
    ("max_minutes", -1.0, "train.max_minutes"),
    ("device", "gpu", "train.device: expected cpu, cuda or cuda:N, got 'gpu'"),
])
def test_impossible_settings_are_refused_naming_the_field(tmp_path, field, value, expected):
    from vimpac.config import ConfigError

    with pytest.raises(ConfigError, match=expected):
        TrainConfig(**{field: value}).validate()
    with pytest.raises(ConfigError):
        Trainer(ToyModel(), ToyTask(4), TrainConfig(**{field: value}), tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_training(tmp_path):
    from vimpac.config import ConfigError

    with pytest.raises(ConfigError, match="train.device: 'cuda' asked, but torch sees no CUDA device"):
        TrainConfig(device="cuda").validate()


def test_kill_9_then_resume_gives_the_same_loss_sequence(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    full, killed = tmp_path / "full", tmp_path / "killed"
    # 60 steps: at 0.05 s a step the killed run is >= 2 s from its end when the kill lands.
    subprocess.run([sys.executable, str(TOY_SCRIPT), str(full), "--steps", "60"], check=True, env=env)

    proc = subprocess.Popen([sys.executable, str(TOY_SCRIPT), str(killed), "--steps", "60", "--sleep", "0.05"],
                            env=env)
    try:
        # kill after the step-10 checkpoint, mid-way to the next one
        wait_until(lambda: (latest_checkpoint(killed) or Path()).name >= "step-00000010",
                   "the step-10 checkpoint", proc)
        time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert latest_checkpoint(killed).name < "step-00000060", "the run finished before it could be killed"

    subprocess.run([sys.executable, str(TOY_SCRIPT), str(killed), "--steps", "60", "--resume"], check=True, env=env)
    assert train_losses(killed) == train_losses(full)
    assert len(train_losses(killed)) == 60


def test_workers_of_a_killed_torchrun_stop_with_a_checkpoint(tmp_path):
    """kill -9 of torchrun cannot reach its workers; they notice their launcher is gone, write a
    checkpoint and stop, rather than train on as orphans beside a resumed run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    log = tmp_path / "out.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen([*torchrun, str(TOY_SCRIPT), str(tmp_path / "run"), "--steps", "300", "--sleep",
                                 "0.05"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: latest_checkpoint(tmp_path / "run") is not None, "the first checkpoint", proc,
                   output=lambda: log.read_text()[-2000:])
        workers = descendants(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_gone(workers) == set(), f"the workers trained on after torchrun's end:\n{log.read_text()[-2000:]}"
    printed = log.read_text()
    assert printed.count("interrupted") == 2, printed[-2000:]  # both ranks' results
    assert "the launcher (pid " in printed
    # Both ranks stopped at the step of the last checkpoint, well before the end of the run.
    steps = {int(line.split()[1]) for line in printed.splitlines() if line.startswith("interrupted ")}
    assert len(steps) == 1 and latest_checkpoint(tmp_path / "run").name == f"step-{steps.pop():08d}"
    assert latest_checkpoint(tmp_path / "run").name < "step-00000300"


def test_sigterm_writes_a_checkpoint_and_stops(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(TOY_SCRIPT), str(tmp_path), "--steps", "1000", "--sleep", "0.02"],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        # The first metrics row is written inside the training loop, where the handler is in place.
        wait_until(lambda: (tmp_path / "metrics.jsonl").exists(), "the first metrics row", proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=PATIENCE)
    finally:
        proc.kill()
    status, step = out.split()[-2:]
    assert status == "interrupted" and 0 < int(step) < 1000
    assert latest_checkpoint(tmp_path).name == f"step-{int(step):08d}"


def test_non_finite_steps_are_skipped_and_counted(tmp_path):
    trainer = make_trainer(tmp_path, steps=10, nan_steps=(3, 4))
    result = trainer.fit()
    assert result.status == "finished" and result.skipped_steps == 2
    logged = {r["step"]: r for r in read_metrics(tmp_path) if r["split"] == "train"}
    assert "loss" not in logged[4] and "loss" not in logged[5]  # steps 3 and 4 (0-based) made no update
    assert logged[10]["skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_repeated_non_finite_steps_stop_the_run_without_a_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, steps=20, nan_steps=tuple(range(7, 20)), max_nonfinite_steps=3)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps"):
        trainer.fit()
    assert latest_checkpoint(tmp_path).name == "step-00000005"


def test_no_weight_decay_on_biases_and_norms():
    groups = build_optimizer(ToyModel(), lr=1e-3, weight_decay=0.05).param_groups
    decayed = {p.ndim for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and decayed == {2}
    assert groups[1]["weight_decay"] == 0.0 and {p.ndim for p in groups[1]["params"]} == {1}
    assert len(groups[1]["params"]) == 4  # two biases + LayerNorm weight and bias


def test_the_cls_vector_and_batchnorm_weights_decay_as_in_the_authors_code():
    from vimpac.model import VimpacForPretraining, build_model_config

    model = VimpacForPretraining(build_model_config("tiny"))
    groups = build_optimizer(model, lr=1e-3, weight_decay=0.05).param_groups
    spared = {id(p) for p in groups[1]["params"]}
    names = {name: id(p) in spared for name, p in model.named_parameters()}
    # "No weight decay on biases and LayerNorm weights" (the authors' rule), nothing else.
    assert names["backbone.cls_param"] is False and names["cls_head.mlp.bn_0.weight"] is False
    layer_norms = {f"{prefix}.{kind}" for prefix, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)
                   for kind in ("weight", "bias")}
    assert {name for name, no_decay in names.items() if no_decay} == \
        {name for name in names if name.endswith(".bias") or name in layer_norms}


def test_warmup_then_linear_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_linear_decay(opt, warmup_steps=4, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] == pytest.approx(1 / 6)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Trainer(ToyModel(), ToyTask(4), TrainConfig(precision="fp16"), tmp_path)


def test_bf16_autocast_trains(tmp_path):
    result = make_trainer(tmp_path, steps=10, precision="bf16", deterministic=False).fit()
    assert result.status == "finished" and result.skipped_steps == 0


def _ddp_worker(rank, port, run_dir, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.manual_seed(0)
    cfg = TrainConfig(total_steps=3, batch_size=8, lr=1e-2, log_every=1, checkpoint_every=100, progress=False)
    trainer = Trainer(ToyModel(dropout=0.0), ToyTask(8), cfg, run_dir)
    trainer.fit()
    if rank == 0:
        # numpy arrays travel by value; a torch tensor would be shared memory that dies with this process
        queue.put({k: v.detach().numpy().copy() for k, v in trainer.model.state_dict().items()})
    del trainer  # DDP's reducer holds gloo work; drop it before the group goes
    shutdown()


def test_ddp_two_processes_match_one_process_with_the_global_batch(tmp_path):

    procs, queue = spawn_ranks(_ddp_worker, str(tmp_path / "ddp"))
    [ddp_state] = results_of(queue, procs, count=1)

    torch.manual_seed(0)
    cfg = TrainConfig(total_steps=3, batch_size=8, lr=1e-2, log_every=1, checkpoint_every=100, progress=False)
    single = Trainer(ToyModel(dropout=0.0), ToyTask(8, simulate_ranks=2), cfg, tmp_path / "single")
    single.fit()
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(torch.from_numpy(ddp_state[key]), value, rtol=1e-5, atol=1e-6)
    # Counted quantities are the run's throughput: both ranks' 8 samples per step, not one rank's.
    for row in (r for r in read_metrics(tmp_path / "ddp") if r["split"] == "train"):
        assert row["samples_per_s"] / row["steps_per_s"] == pytest.approx(16)


def _resume_worker(rank, port, run_dirs, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    trainer = make_trainer(run_dirs[rank], steps=6, batch_size=4)
    try:
        trainer.resume()
        queue.put((rank, "resumed"))
    except CheckpointError as exc:
        queue.put((rank, str(exc)))
    shutdown()


def test_ddp_ranks_that_find_different_checkpoints_refuse_to_resume(tmp_path):
    """As with a run folder on each machine's own disk: rank 0 finds the checkpoints it wrote,
    rank 1 none. Both must stop with the reason, not train different steps side by side."""

    make_trainer(tmp_path / "node0", steps=6, batch_size=4, max_minutes=0.0).fit()  # a checkpoint at step 1
    run_dirs = [str(tmp_path / "node0"), str(tmp_path / "node1")]
    procs, queue = spawn_ranks(_resume_worker, run_dirs)
    outcomes = dict(results_of(queue, procs, count=len(procs)))
    for rank in (0, 1):
        assert "found different checkpoints to resume from (rank 0: step-00000001, rank 1: none)" in outcomes[rank]
        assert "must be on a file system they all share" in outcomes[rank]


def test_progress_lines_without_the_bar(tmp_path, capsys):
    """progress_lines=N prints N one-line reports (the last at the final step), nothing by default,
    when the bar is off."""
    make_trainer(tmp_path / "runs" / "toy", steps=10, progress_lines=4, checkpoint_every=5).fit()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[runs/toy]")]
    assert [line.split(" (")[0] for line in lines] == [f"[runs/toy] step {k}/10" for k in (3, 6, 9, 10)]
    assert "loss" in lines[0] and "steps/s" in lines[0] and " left" in lines[0]
    assert " left" not in lines[-1]
    make_trainer(tmp_path / "quiet", steps=4).fit()
    captured = capsys.readouterr()
    assert "quiet]" not in captured.out + captured.err


def test_fp16_runs_stop_on_repeated_non_finite_losses_but_not_on_gradient_overflows(tmp_path):
    # fp16 (CUDA only) runs with a GradScaler, which skips steps whose gradients overflow while it
    # finds its scale. A non-finite *loss* is no overflow of the scaled gradients: such a run used
    # to skip every step to the end, never stopping. A CPU GradScaler stands in for CUDA's.
    trainer = make_trainer(tmp_path / "nan", steps=20, nan_steps=tuple(range(7, 20)), max_nonfinite_steps=3)
    trainer.scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(TrainingDiverged, match="3 consecutive steps"):
        trainer.fit()
    assert latest_checkpoint(tmp_path / "nan").name == "step-00000005"
    # Gradients that overflow at a huge scale: skipped and counted, the scale lowered, no stop.
    trainer = make_trainer(tmp_path / "overflow", steps=8, max_nonfinite_steps=1, deterministic=False)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
    result = trainer.fit()
    assert result.status == "finished" and result.skipped_steps >= 1
    assert trainer.scaler.get_scale() < 2.0 ** 127


def test_resume_continues_with_the_saved_gradient_scale(tmp_path):
    # fp16 (CUDA only): the GradScaler's scale and growth tracker go into the checkpoint. A CPU
    # GradScaler stands in for CUDA's.
    trainer = make_trainer(tmp_path, steps=5, deterministic=False)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
    trainer.fit()
    saved = trainer.scaler.state_dict()
    assert saved["scale"] < 2.0 ** 127  # it backed off from the overflowing start
    resumed = make_trainer(tmp_path, steps=10, deterministic=False)
    resumed.scaler = torch.amp.GradScaler("cpu")
    assert resumed.resume()
    assert resumed.scaler.state_dict() == saved
