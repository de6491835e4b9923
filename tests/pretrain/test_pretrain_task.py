"""Pre-training on a token store: batches, settings checks, learning, resume, DDP equivalence."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from process_helpers import results_of, spawn_ranks, wait_until
from vimpac.engine.distributed import DistInfo, shutdown
from vimpac.engine.checkpoint import CheckpointError
from vimpac.engine.metrics import read_metrics
from vimpac.model.vimpac import VimpacForPretraining
from vimpac.pretrain.config import build_pretrain_config
from vimpac.pretrain.errors import PretrainError
from vimpac.pretrain.run import run_pretraining
from vimpac.pretrain.task import PretrainTask, resolve_config, split_train_val
from vimpac.store.reader import TokenStore

sys.path.insert(0, str(Path(__file__).parent))
from token_store_factory import static_texture_videos, write_store  # noqa: E402

CODES = 32
MICRO_MODEL = ["model.dim=64", "model.layers=2", "model.heads=2", "model.cls_head_hidden=64",
               "model.cls_head_out=32", "model.dropout=0.0", "model.attention_dropout=0.0"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return write_store(root, static_texture_videos(24, frames=10, grid=4, codebook_size=CODES), CODES)


def config(*overrides):
    base = ["data.frames=4", "data.val_fraction=0.2", "train.batch_size=4", "train.progress=false",
            "train.precision=fp32", "train.log_every=1", "train.checkpoint_every=1000"]
    return build_pretrain_config("tiny", overrides=MICRO_MODEL + base + list(overrides))


def test_batches_are_deterministic_pairs_from_the_same_video(store_path):
    store = TokenStore.open(store_path)
    cfg = resolve_config(store, config(), 1)
    task = PretrainTask(store, cfg)
    a, b = task.batch(3, 0, DistInfo()), task.batch(3, 0, DistInfo())
    c = task.batch(4, 0, DistInfo())
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.tokens, c.tokens)
    assert a.tokens.shape == (8, 4, 4, 4) and a.inputs.dtype == torch.int64
    vocab = cfg.model.vocab
    assert (a.inputs[a.mask] == vocab.mask_id).all() and (a.labels[~a.mask] == -100).all()
    assert torch.equal(a.labels[a.mask], a.tokens[a.mask])
    # Rank r of 2 takes the next 4 videos of the same global order as a single process.
    assert not torch.equal(task.batch(3, 0, DistInfo(0, 2)).tokens, task.batch(3, 0, DistInfo(1, 2)).tokens)


def test_validation_videos_are_held_out(store_path):
    store = TokenStore.open(store_path)
    task = PretrainTask(store, resolve_config(store, config(), 1))
    assert len(task.val_entries) > 0
    assert not set(task.val_entries) & set(task.train_entries)
    assert len(task.val_entries) + len(task.train_entries) == store.num_videos


def test_setting_up_reads_the_key_list_once_not_once_per_video(store_path, monkeypatch):
    # store.keys() copies the list; a copy per video made the set-up quadratic (80k videos: 90 s).
    store = TokenStore.open(store_path)
    cfg = resolve_config(store, config(), 1)
    calls = []
    keys = store.keys
    monkeypatch.setattr(store, "keys", lambda: calls.append(1) or keys())
    PretrainTask(store, cfg)
    assert store.num_videos > 2 and len(calls) == 1


def _split_as_first_released(keys, val_fraction):
    """split_train_val as it was first released (a Python float per key): existing stores and
    runs must keep their training / validation videos."""
    import hashlib
    if val_fraction <= 0 or len(keys) < 2:
        return np.arange(len(keys)), np.arange(0)
    scores = np.array([int.from_bytes(hashlib.blake2b(k.encode(), digest_size=4).digest(), "little") / 2**32
                       for k in keys])
    val = scores < val_fraction
    if not val.any():
        val[int(np.argmin(scores))] = True
    if val.all():
        val[int(np.argmax(scores))] = False
    return np.flatnonzero(~val), np.flatnonzero(val)


@pytest.mark.parametrize("count, val_fraction", [(5000, 0.05), (300, 0.5), (40, 0.001), (3, 0.999), (1, 0.5), (0, 0.1)])
def test_the_train_val_split_is_the_one_existing_stores_have(count, val_fraction):
    rng = np.random.default_rng(count)
    keys = [f"howto/{i:07d}-{rng.integers(0, 36**11):x}" for i in range(count)]
    keys = (["clips/naïve café.mp4", "片/video 1"] + keys[2:])[:count]  # not only ASCII
    train, val = split_train_val(keys, val_fraction)
    old_train, old_val = _split_as_first_released(keys, val_fraction)
    np.testing.assert_array_equal(train, old_train)
    np.testing.assert_array_equal(val, old_val)
    assert train.dtype == old_train.dtype and val.dtype == old_val.dtype


def test_set_up_takes_each_videos_entry_of_the_view_and_its_split(store_path, monkeypatch):
    # Set-up reads one view's entries from the store's arrays (an `entries_of` dict per video took
    # 1-2 s per rank at 1M videos); the entries and the split are what the per-video loop gave.
    store = TokenStore.open(store_path)
    cfg = resolve_config(store, config(), 1)
    calls = []
    entries_of = store.entries_of
    monkeypatch.setattr(store, "entries_of", lambda key: calls.append(key) or entries_of(key))
    task = PretrainTask(store, cfg)
    assert calls == []
    monkeypatch.undo()
    keys = store.keys()
    entries = np.array([store.entries_of(key)[cfg.data.view] for key in keys])
    train, val = _split_as_first_released(keys, cfg.data.val_fraction)
    np.testing.assert_array_equal(task.entries, entries)
    np.testing.assert_array_equal(task.train_entries, entries[train])
    np.testing.assert_array_equal(task.val_entries, entries[val])


@pytest.mark.parametrize("overrides, world_size, keys", [
    (["data.val_fraction=0.01"], 1, {"mask_acc", "mask_loss", "majority_acc"}),  # one held-out video
    (["train.batch_size=1"], 2, {"mask_acc", "mask_loss", "majority_acc", "cl_acc", "cl_loss"}),
])
def test_validation_runs_with_one_held_out_video_or_one_video_per_rank(store_path, overrides, world_size, keys):
    # Both used to skip validation silently (no val/ rows): the contrastive loss needs two videos.
    store = TokenStore.open(store_path)
    task = PretrainTask(store, resolve_config(store, config(*overrides), world_size))
    torch.manual_seed(0)
    model = VimpacForPretraining(task.cfg.model).eval()
    with torch.no_grad():
        values = task.validate(model, DistInfo())
    assert keys <= set(values) and set(values) & {"cl_acc", "cl_loss"} == keys & {"cl_acc", "cl_loss"}
    assert 0.0 <= values["mask_acc"] <= 1.0 and values["mask_ratio"] > 0


@pytest.mark.parametrize("overrides, inputs_seen", [
    (["objective.masked_token=false", "data.contrastive_unmasked=true"], ["tokens"]),  # Tables 7 / 16, CL only
    (["data.contrastive_unmasked=true"], ["inputs", "tokens"]),  # Table 12: MP masked, CL unmasked
    ([], ["inputs"]),  # both losses on the same masked input (Sec. 3.3)
])
def test_contrastive_unmasked_forwards(store_path, overrides, inputs_seen):
    store = TokenStore.open(store_path)
    task = PretrainTask(store, resolve_config(store, config(*overrides), 1))
    batch = task.batch(0, 0, DistInfo())
    torch.manual_seed(0)
    model = VimpacForPretraining(task.cfg.model)
    seen = []

    def record(tokens, predict_mask=None):
        seen.append("tokens" if torch.equal(tokens, batch.tokens) else "inputs")
        return VimpacForPretraining.forward(model, tokens, predict_mask)

    # Contrastive learning alone on unmasked inputs ran a wasted forward on the masked inputs first.
    _, metrics = task.loss(record, batch)
    assert seen == inputs_seen and "cl_loss" in metrics


@pytest.fixture(scope="module")
def frame_index_store(tmp_path_factory):
    """Videos of 30 frames at 4 fps whose every token is its frame number, so a clip shows its start."""
    videos = [np.broadcast_to(np.arange(30, dtype=np.uint16)[:, None, None], (30, 2, 2)).copy() for _ in range(8)]
    return write_store(tmp_path_factory.mktemp("frame_index_store"), videos, CODES, fps=4.0)


@pytest.mark.parametrize("seconds, frames", [(0, 0), (0.1, 0), (1, 4), (2.4, 10)])
def test_max_distance_is_seconds_at_the_store_fps(frame_index_store, seconds, frames):
    # Table 10: d_max in seconds between the two positive clips; 0 samples the same clip twice.
    store = TokenStore.open(frame_index_store)
    cfg = resolve_config(store, config("data.val_fraction=0", f"data.max_distance_seconds={seconds}"), 1)
    task = PretrainTask(store, cfg)
    distances = []
    for step in range(60):
        starts = task.batch(step, 0, DistInfo()).tokens[:, 0, 0, 0]
        distances += (starts[:4] - starts[4:]).abs().tolist()
    assert max(distances) == frames


@pytest.mark.parametrize("overrides, message", [
    (["model_from_store=false", "model.codebook_size=64"], "model.codebook_size=64 but the store's tokenizer has 32"),
    (["model_from_store=false", "model.codebook_size=32", "model.height=8"], "token grid is 4x4"),
    (["data.frames=11"], "data.frames=11 but the longest video has 10 frames"),
    (["effective_batch=10"], "effective_batch=10 is not divisible by train.batch_size"),
    (["data.frames=0"], "data.frames: expected a positive number of frames, got 0"),
    (["data.max_distance_seconds=-1"], "data.max_distance_seconds: expected seconds >= 0"),
    (["data.val_fraction=1.5"], r"data.val_fraction: expected a fraction in \[0, 1\)"),
    (["data.view=s1.25_center"], r"has no view 's1.25_center' \(data.view\); it has \['s1.00_center'\]"),
])
def test_inconsistent_settings_fail_before_any_work(store_path, overrides, message):
    with pytest.raises(PretrainError, match=message):
        resolve_config(TokenStore.open(store_path), config(*overrides), 1)


def test_effective_batch_sets_accumulation(store_path):
    cfg = resolve_config(TokenStore.open(store_path), config("effective_batch=16"), 2)
    assert cfg.train.grad_accum_steps == 2


def test_tiny_pretraining_learns_both_tasks(store_path, tmp_path):
    cfg = config("train.total_steps=150", "train.lr=3e-3", "train.log_every=15")
    result = run_pretraining(store_path, tmp_path, cfg)
    records = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    first, last = records[0], records[-1]  # averages over the first and the last 15 steps
    val = result.last_metrics
    assert last["mask_loss"] < 0.7 * first["mask_loss"]
    assert last["cl_loss"] < first["cl_loss"]
    assert val["val/mask_acc"] > val["val/majority_acc"] + 0.3
    assert val["val/cl_acc"] > 0.8
    reloaded = VimpacForPretraining.from_pretrained(tmp_path / "model")
    assert reloaded.config.codebook_size == CODES


needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("device, precision", [
    ("cpu", "bf16"),
    pytest.param("cuda", "fp32", marks=needs_cuda),
    pytest.param("cuda", "bf16", marks=needs_cuda),
    pytest.param("cuda", "fp16", marks=needs_cuda),   # with the trainer's GradScaler
])
def test_pretraining_learns_in_each_precision(store_path, tmp_path, device, precision):
    cfg = config("train.total_steps=100", "train.lr=3e-3", "train.log_every=10", f"train.device={device}",
                 f"train.precision={precision}")
    result = run_pretraining(store_path, tmp_path, cfg)
    records = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert result.status == "finished" and len(records) == 10
    # fp32 on CPU: 3.58 -> 2.64 over these 100 steps (averages of 10), validation accuracy 29% vs 2%.
    assert records[-1]["mask_loss"] < 0.85 * records[0]["mask_loss"]
    assert result.last_metrics["val/mask_acc"] > result.last_metrics["val/majority_acc"] + 0.15
    # fp16's GradScaler may skip the first updates while it finds its scale; the others skip none.
    assert result.skipped_steps <= (10 if precision == "fp16" else 0)
    reloaded = VimpacForPretraining.from_pretrained(tmp_path / "model")
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_pretraining_matches_cpu(store_path, tmp_path):
    """Same seed, masks and batches (drawn on the CPU), no dropout: the CUDA run's first losses
    equal the CPU run's up to float rounding (SDPA's kernels sum in another order)."""
    losses = {}
    for device in ("cpu", "cuda"):
        cfg = config("train.total_steps=3", f"train.device={device}")
        run_pretraining(store_path, tmp_path / device, cfg)
        losses[device] = [r["loss"] for r in read_metrics(tmp_path / device) if r["split"] == "train"]
    assert len(losses["cpu"]) == 3
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-3)


def test_resume_reproduces_the_uninterrupted_losses(store_path, tmp_path):
    steps = ["train.total_steps=6", "train.deterministic=true", "model.dropout=0.1"]
    run_pretraining(store_path, tmp_path / "full", config(*steps))
    run_pretraining(store_path, tmp_path / "part", config(*steps, "train.max_minutes=0"))
    run_pretraining(store_path, tmp_path / "part", config(*steps), resume=True)

    def losses(run):
        return [(r["step"], r["loss"]) for r in read_metrics(run) if r["split"] == "train"]

    assert losses(tmp_path / "part") == losses(tmp_path / "full") and len(losses(tmp_path / "full")) == 6


def test_resume_with_other_settings_is_refused(store_path, tmp_path):
    run_pretraining(store_path, tmp_path, config("train.total_steps=1"))
    with pytest.raises(PretrainError, match="train.lr"):
        run_pretraining(store_path, tmp_path, config("train.total_steps=2", "train.lr=0.5"), resume=True)


def _as_if_run_by_two_processes(run, grad_accum_steps):
    """Rewrite a 1-process run's records as `torchrun --nproc_per_node 2` would have written them."""
    from vimpac.engine.checkpoint import latest_checkpoint

    record = json.loads((run / "pretrain.json").read_text())
    record["train"]["grad_accum_steps"] = grad_accum_steps
    (run / "pretrain.json").write_text(json.dumps(record))
    state_file = latest_checkpoint(run) / "state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "world_size": 2,
                                      "grad_accum_steps": grad_accum_steps}))


def test_resume_with_another_number_of_processes_needs_the_same_samples_per_update(store_path, tmp_path):
    # Without effective_batch, 2 processes x 4 videos per update become 1 x 4: refused.
    run_pretraining(store_path, tmp_path / "fixed", config("train.total_steps=2", "train.max_minutes=0"))
    _as_if_run_by_two_processes(tmp_path / "fixed", grad_accum_steps=1)
    with pytest.raises(CheckpointError, match=r"= 8 samples per update, but this run has 1 x 4 x 1 = 4; resume with 2"):
        run_pretraining(store_path, tmp_path / "fixed", config("train.total_steps=2"), resume=True)
    # With effective_batch, gradient accumulation makes up for the missing process.
    steps = ["train.total_steps=2", "effective_batch=8"]
    run_pretraining(store_path, tmp_path / "effective", config(*steps, "train.max_minutes=0"))
    _as_if_run_by_two_processes(tmp_path / "effective", grad_accum_steps=1)
    result = run_pretraining(store_path, tmp_path / "effective", config(*steps), resume=True)
    assert result.status == "finished" and result.step == 2


@pytest.mark.parametrize("objective, noted", [([], True), (["objective.alpha=0"], False)])
def test_resume_with_another_contrastive_batch_says_so(store_path, tmp_path, capsys, objective, noted):
    # 2 processes x 4 videos x 1 step resumed as 1 x 4 x 2: the same samples per update, but
    # InfoNCE's negatives come from one micro-step over all processes (Sec. 3.2): 8 -> 4 videos.
    steps = ["train.total_steps=2", "effective_batch=8", *objective]
    run_pretraining(store_path, tmp_path, config(*steps, "train.max_minutes=0"))
    _as_if_run_by_two_processes(tmp_path, grad_accum_steps=1)
    capsys.readouterr()
    result = run_pretraining(store_path, tmp_path, config(*steps), resume=True)
    assert result.status == "finished"
    notes = [line for line in capsys.readouterr().err.splitlines() if "contrastive" in line]
    if noted:
        assert notes == ["note: the contrastive loss's batch is now 4 videos per micro-step (train.batch_size 4 x "
                         "1 process(es)), the checkpoint's was 8 (4 x 2): each InfoNCE has fewer negatives, so the "
                         "objective differs from here on although the samples per update are the same; resume with "
                         "2 process(es) to keep it"]
    else:  # masked-token prediction alone does not depend on the batch
        assert notes == []


def test_resume_with_the_same_contrastive_batch_says_nothing(store_path, tmp_path, capsys):
    steps = ["train.total_steps=2", "effective_batch=8"]
    run_pretraining(store_path, tmp_path, config(*steps, "train.max_minutes=0"))
    capsys.readouterr()
    run_pretraining(store_path, tmp_path, config(*steps), resume=True)
    assert "contrastive" not in capsys.readouterr().err


def test_resume_ignores_settings_that_do_not_change_the_training():
    from vimpac.pretrain.run import _changed_settings

    before = {"train": {"lr": 1e-3, "total_steps": 10}}  # a run folder written before validate_at_end existed
    now = {"train": {"lr": 1e-3, "total_steps": 20, "validate_at_end": True}}
    assert _changed_settings(before, now) == []
    assert _changed_settings(before, {"train": {**now["train"], "lr": 5e-4}}) == ["train.lr: 0.001 -> 0.0005"]


# ---------------------------------------------------------------------------------------- DDP

def _contrastive_only(store_path):
    cfg = config("objective.masked_token=false", "train.batch_size=3")
    store = TokenStore.open(store_path)
    return store, resolve_config(store, cfg, 1)


def _ddp_grads(rank, port, store_path, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo")
    from vimpac.engine.sync_batchnorm import synchronize_batchnorm

    store, cfg = _contrastive_only(store_path)
    task = PretrainTask(store, cfg)
    torch.manual_seed(0)
    model = synchronize_batchnorm(VimpacForPretraining(cfg.model).double(), torch.device("cpu"))
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    loss, _ = task.loss(ddp, task.batch(0, 0, DistInfo(rank, 2)))
    loss.backward()
    if rank == 0:
        queue.put({n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None})
    del ddp  # its reducer holds gloo work; drop it before the group goes
    shutdown()


def test_ddp_two_processes_give_the_gradients_of_one_process(store_path):
    procs, queue = spawn_ranks(_ddp_grads, str(store_path))
    [ddp_grads] = results_of(queue, procs, count=1)

    store, cfg = _contrastive_only(store_path)
    task = PretrainTask(store, cfg)
    rank_batches = [task.batch(0, 0, DistInfo(r, 2)) for r in range(2)]
    half = rank_batches[0].tokens.shape[0] // 2
    # One process, the global batch: first clips of both ranks' videos, then their second clips.
    tokens = torch.cat([b.inputs[:half] for b in rank_batches] + [b.inputs[half:] for b in rank_batches])
    single = dataclasses.replace(rank_batches[0], inputs=tokens, tokens=tokens, mask=torch.zeros_like(tokens, dtype=torch.bool))
    torch.manual_seed(0)
    model = VimpacForPretraining(cfg.model).double()  # float64: the comparison is then exact to ~1e-12
    loss, _ = task.loss(model, single, distributed=False)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == set(ddp_grads)
    for name, grad in grads.items():
        torch.testing.assert_close(torch.from_numpy(ddp_grads[name]), grad, rtol=1e-9, atol=1e-12, msg=name)


def _validation_model(task):
    torch.manual_seed(0)
    return VimpacForPretraining(task.cfg.model).eval()


def _ddp_validate(rank, port, store_path, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)  # as the test process (conftest): the same kernels, the same numbers
    torch.distributed.init_process_group("gloo")
    store = TokenStore.open(store_path)
    task = PretrainTask(store, resolve_config(store, config("data.val_batches=3"), 2))
    made = []
    make_batch = task._make_batch
    task._make_batch = lambda *args: made.append(1) or make_batch(*args)
    with torch.no_grad():
        values = task.validate(_validation_model(task), DistInfo(rank, 2))
    queue.put((rank, values, len(made)))
    shutdown()


def test_ddp_validation_shares_the_batches_and_gives_the_numbers_of_one_process(store_path):
    # Every rank used to compute all the validation batches while only rank 0 logged them.
    procs, queue = spawn_ranks(_ddp_validate, str(store_path))
    outcomes = {rank: (values, made) for rank, values, made in results_of(queue, procs, count=2)}

    store = TokenStore.open(store_path)
    task = PretrainTask(store, resolve_config(store, config("data.val_batches=3"), 1))
    with torch.no_grad():
        single = task.validate(_validation_model(task), DistInfo())
    assert {"mask_loss", "cl_loss", "majority_acc"} <= set(single)
    assert outcomes[0][1] == 2 and outcomes[1][1] == 1  # batches 0, 2 and batch 1
    assert outcomes[0][0] == single and outcomes[1][0] == single


def test_pretrain_command_runs_and_reports_bad_settings(store_path, tmp_path, capsys):
    from vimpac.cli import main

    common = ["pretrain", "--store", str(store_path), "--out", str(tmp_path / "run"), "--device", "cpu", *MICRO_MODEL,
              "data.frames=4", "train.batch_size=4", "train.total_steps=3"]
    assert main(common) == 0
    # stderr is no terminal here (as in `2> log`): the progress lines go there, the result to stdout.
    captured = capsys.readouterr()
    assert captured.out.startswith("finished at step 3 (0 skipped)")
    assert "step 3/3 (100%)" in captured.err and "step 3/3" not in captured.out
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert main(common[:5] + ["--device", "cpu", "data.frames=99"]) == 2
    assert "data.frames=99 but the longest video has 10 frames" in capsys.readouterr().err
    assert main(common + ["train.nope=1"]) == 2
    assert "unknown config field 'train.nope'" in capsys.readouterr().err


def test_kill_9_of_vimpac_pretrain_then_resume_matches_an_uninterrupted_run(store_path, tmp_path):
    import signal
    import subprocess

    from vimpac.engine.checkpoint import latest_checkpoint

    def command(run, *extra):
        return [sys.executable, "-m", "vimpac.cli", "pretrain", "--store", str(store_path), "--out", str(run),
                "--device", "cpu", *extra, *MICRO_MODEL, "data.frames=4", "train.batch_size=4",
                "train.total_steps=40", "train.checkpoint_every=4", "train.log_every=1", "train.progress=false",
                "train.precision=fp32", "train.deterministic=true", "model.dropout=0.1"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "full"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (latest_checkpoint(tmp_path / "killed") or Path()).name >= "step-00000008",
                   "the step-8 checkpoint", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stopped_at = latest_checkpoint(tmp_path / "killed").name
    assert stopped_at < "step-00000040", "the run finished before it could be killed"
    subprocess.run(command(tmp_path / "killed", "--resume"), check=True, env=env, capture_output=True)

    def losses(run):
        return [(r["step"], r["loss"]) for r in read_metrics(run) if r["split"] == "train"]

    assert losses(tmp_path / "killed") == losses(tmp_path / "full") and len(losses(tmp_path / "full")) == 40


# ------------------------------------------------------------------ the run folder and the command

def test_a_run_folder_with_checkpoints_is_not_overwritten(store_path, tmp_path, capsys):
    run_pretraining(store_path, tmp_path, config("train.total_steps=1"))
    before = (tmp_path / "pretrain.json").read_text()
    with pytest.raises(CheckpointError, match="holds checkpoints of an earlier run; pass --resume"):
        run_pretraining(store_path, tmp_path, config("train.total_steps=2", "train.lr=0.5"))
    assert (tmp_path / "pretrain.json").read_text() == before
    run_pretraining(store_path, tmp_path / "new", config("train.total_steps=1"), resume=True)
    assert "--resume: no checkpoint in" in capsys.readouterr().err


def test_resume_of_an_attempt_without_a_checkpoint_starts_anew_with_the_new_settings(store_path, tmp_path, capsys):
    # An attempt that stopped before its first checkpoint (killed; or refused, as a view the store
    # lacked used to be) leaves pretrain.json; a job script's rerun passes --resume.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "pretrain.json").write_text(json.dumps({"train": {"batch_size": 2}}))
    run_pretraining(store_path, tmp_path / "run", config("train.total_steps=1"), resume=True)
    assert "--resume: no checkpoint in" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "pretrain.json").read_text())["train"]["batch_size"] == 4


def test_resume_accepts_the_store_spelled_another_way(store_path, tmp_path, monkeypatch):
    steps = ["train.total_steps=2"]
    run_pretraining(store_path, tmp_path / "run", config(*steps, "train.max_minutes=0"))
    monkeypatch.chdir(Path(store_path).parent)
    result = run_pretraining(Path(store_path).name + "/", tmp_path / "run", config(*steps), resume=True)
    assert result.status == "finished" and result.step == 2


def test_init_from_must_match_the_store_and_is_what_the_run_records(store_path, tmp_path):
    other = build_pretrain_config("tiny", overrides=MICRO_MODEL + ["model.dim=32", "model.heads=2"]).model
    VimpacForPretraining(dataclasses.replace(other, codebook_size=CODES)).save_pretrained(tmp_path / "same_codes")
    VimpacForPretraining(dataclasses.replace(other, codebook_size=2 * CODES)).save_pretrained(tmp_path / "more_codes")
    with pytest.raises(PretrainError, match=f"the model has {2 * CODES} codes but the store"):
        run_pretraining(store_path, tmp_path / "a", config("train.total_steps=1"), init_from=tmp_path / "more_codes")
    run_pretraining(store_path, tmp_path / "b", config("train.total_steps=1"), init_from=tmp_path / "same_codes")
    import json
    record = json.loads((tmp_path / "b" / "pretrain.json").read_text())
    assert record["model"]["dim"] == 32 and record["init_from"] == str((tmp_path / "same_codes").resolve())
    assert json.loads((tmp_path / "b" / "model" / "config.json").read_text())["model"]["dim"] == 32


def test_pretrain_command_errors_and_exit_codes(store_path, tmp_path, capsys):
    from vimpac.cli import main

    def run(out, *extra):
        return main(["pretrain", "--store", str(store_path), "--out", str(tmp_path / out), *MICRO_MODEL,
                     "data.frames=4", "train.batch_size=4", "train.progress=false", *extra])

    assert run("fp16", "--device", "cpu", "train.precision=fp16") == 2
    assert "train.precision: fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "fp16").exists()  # refused before anything was written
    assert run("zero", "train.grad_accum_steps=0") == 2
    assert "train.grad_accum_steps: expected an integer >= 1, got 0" in capsys.readouterr().err
    if not torch.cuda.is_available():  # an override of train.device is used, not replaced by the default
        assert run("cuda", "train.device=cuda") == 2
        assert "train.device: 'cuda' asked, but torch sees no CUDA device" in capsys.readouterr().err
    assert run("limit", "train.total_steps=50", "train.max_minutes=0") == 3
    assert "continue with the same command and --resume" in capsys.readouterr().err
    assert not (tmp_path / "limit" / "model").exists() and (tmp_path / "limit" / "checkpoints").is_dir()
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "finetune.json").write_text("{}")
    assert run("ft", "--resume") == 2
    assert "holds a fine-tuning run" in capsys.readouterr().err


@pytest.mark.filterwarnings("error:Detected call of:UserWarning")  # skipped updates still step the schedule
def test_a_diverged_pretraining_exits_4_with_one_line(store_path, tmp_path, capsys, monkeypatch):
    from vimpac.cli import main

    real_loss = PretrainTask.loss

    def nan_loss(self, model, batch):
        loss, metrics = real_loss(self, model, batch)
        return loss * float("nan"), metrics

    monkeypatch.setattr(PretrainTask, "loss", nan_loss)
    code = main(["pretrain", "--store", str(store_path), "--out", str(tmp_path / "nan"), *MICRO_MODEL,
                 "data.frames=4", "train.batch_size=4", "train.progress=false", "train.total_steps=10",
                 "train.max_nonfinite_steps=3"])
    err = capsys.readouterr().err
    assert code == 4 and "Traceback" not in err
    assert err.startswith("vimpac pretrain: error: 3 consecutive steps") and "non-finite" in err


def test_print_config_shows_the_settings_resolved_against_the_store(store_path, capsys):
    import json

    from vimpac.cli import main

    assert main(["pretrain", "--store", str(store_path), "--out", "unused", "--print-config", *MICRO_MODEL,
                 "data.frames=4", "train.batch_size=4", "effective_batch=16"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["grad_accum_steps"] == 4
    assert printed["model"]["codebook_size"] == CODES and printed["model"]["max_frames"] == 4


def test_config_file_comes_between_the_preset_and_the_overrides_and_print_config_output_is_one(
        store_path, tmp_path, capsys):
    """As docs/pretraining.md says: preset, then --config, then KEY=VALUE; --print-config's JSON
    given back as --config resolves to the same settings."""
    from vimpac.cli import main
    from vimpac.pretrain.config import PRETRAIN_PRESETS

    settings = tmp_path / "settings.yaml"
    settings.write_text("train:\n  lr: 0.01\n  seed: 5\nmasking.strategy: iid\n")
    base = ["pretrain", "--store", str(store_path), "--out", "unused", "--print-config"]
    assert main([*base, "--config", str(settings), *MICRO_MODEL, "data.frames=4", "train.lr=0.5"]) == 0
    printed = capsys.readouterr().out
    resolved = json.loads(printed)
    assert (resolved["train"]["lr"], resolved["train"]["seed"], resolved["masking"]["strategy"]) == (0.5, 5, "iid")
    assert resolved["train"]["total_steps"] == PRETRAIN_PRESETS["tiny"].train.total_steps  # not in the file

    (tmp_path / "printed.json").write_text(printed)
    assert main([*base, "--config", str(tmp_path / "printed.json")]) == 0
    assert json.loads(capsys.readouterr().out) == resolved


def test_print_config_under_torchrun_resolves_for_its_processes(store_path, capsys, monkeypatch):
    from vimpac.cli import main

    command = ["pretrain", "--store", str(store_path), "--out", "unused", "--print-config", *MICRO_MODEL,
               "data.frames=4", "train.batch_size=4", "effective_batch=16"]
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node 2 sets it
    monkeypatch.setenv("RANK", "0")
    assert main(command) == 0
    assert json.loads(capsys.readouterr().out)["train"]["grad_accum_steps"] == 2  # 16 / (4 x 2 processes)
    monkeypatch.setenv("RANK", "1")
    assert main(command) == 0
    assert capsys.readouterr().out == ""  # one copy, from rank 0


def test_a_run_recorded_before_init_from_was_recorded_resumes_with_it(store_path, tmp_path):
    import json

    other = build_pretrain_config("tiny", overrides=MICRO_MODEL + ["model.dim=32", "model.heads=2"]).model
    VimpacForPretraining(dataclasses.replace(other, codebook_size=CODES)).save_pretrained(tmp_path / "init")
    run_dir = tmp_path / "run"
    run_pretraining(store_path, run_dir, config("train.total_steps=2", "train.max_minutes=0"),
                    init_from=tmp_path / "init")
    record = json.loads((run_dir / "pretrain.json").read_text())
    del record["init_from"]  # as the previous version wrote it: the preset's model, no init_from
    record["model"] = dataclasses.asdict(resolve_config(TokenStore.open(store_path), config(), 1).model)
    (run_dir / "pretrain.json").write_text(json.dumps(record))
    result = run_pretraining(store_path, run_dir, config("train.total_steps=2"), resume=True,
                             init_from=tmp_path / "init")
    assert result.status == "finished" and result.step == 2


def test_a_run_recorded_before_pre_ln_residual_existed_resumes(store_path, tmp_path):
    import json

    run_pretraining(store_path, tmp_path, config("train.total_steps=2", "train.max_minutes=0"))
    record = json.loads((tmp_path / "pretrain.json").read_text())
    del record["model"]["pre_ln_residual"]  # as written before the field was added; its default is that behaviour
    (tmp_path / "pretrain.json").write_text(json.dumps(record))
    result = run_pretraining(store_path, tmp_path, config("train.total_steps=2"), resume=True)
    assert result.status == "finished" and result.step == 2
