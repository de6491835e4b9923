"""Run folders from elsewhere: the `latest` pointer names only a checkpoint folder inside
RUN/checkpoints, and every field of state.json is checked (a CheckpointError naming the file and
the field) before anything is restored. A checkpoint that cannot be written (a full disk) is an
OSError naming it, and leaves no partial checkpoint."""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vimpac.engine.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from toy_training import make_trainer  # noqa: E402


def _fake_checkpoint(run: Path, step: int) -> Path:
    folder = run / "checkpoints" / f"step-{step:08d}"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"step": step}))
    return folder


def _finishes_within(seconds: float, call):
    """`call()`'s result, or a test failure if it blocks (reading a FIFO would, for ever)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still blocked after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ------------------------------------------------------------------------------ latest


@pytest.mark.parametrize("content", ["..", "../../elsewhere", "step-00000002/../step-00000002", "step-2", "latest",
                                     "", "step-00000002 step-00000001", "\x00\xff"])
def test_a_pointer_that_is_not_a_checkpoint_name_is_refused(tmp_path, content):
    _fake_checkpoint(tmp_path, 1)
    _fake_checkpoint(tmp_path, 2)
    pointer = tmp_path / "checkpoints" / "latest"
    pointer.write_text(content)
    with pytest.raises(CheckpointError) as info:
        latest_checkpoint(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{pointer}: expected a checkpoint folder name (step-NNNNNNNN)")
    assert f"the newest complete checkpoint is {tmp_path / 'checkpoints' / 'step-00000002'}; delete {pointer}" in message


def test_a_pointer_to_a_folder_outside_the_run_is_refused(tmp_path):
    outside = _fake_checkpoint(tmp_path / "other", 7)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    pointer = tmp_path / "run" / "checkpoints" / "latest"
    for content in (str(outside), f"../../other/checkpoints/{outside.name}"):
        pointer.write_text(content + "\n")
        with pytest.raises(CheckpointError, match=f"{pointer}: expected a checkpoint folder name .* holds no "
                                                  "complete checkpoint"):
            latest_checkpoint(tmp_path / "run")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_pointer_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    _fake_checkpoint(tmp_path, 1)
    pointer = tmp_path / "checkpoints" / "latest"
    os.mkfifo(pointer)
    try:
        with pytest.raises(CheckpointError, match=f"{pointer}: .*not a regular file"):
            _finishes_within(10, lambda: latest_checkpoint(tmp_path))
    finally:  # a reader blocked in open() (the old behaviour) is released by a writer
        try:
            os.close(os.open(pointer, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_a_pointer_that_is_a_folder_is_refused(tmp_path):
    _fake_checkpoint(tmp_path, 1)
    (tmp_path / "checkpoints" / "latest").mkdir()
    with pytest.raises(CheckpointError, match="latest: .*not a regular file"):
        latest_checkpoint(tmp_path)


def test_a_pointer_to_a_folder_that_is_gone_falls_back_to_the_newest_complete(tmp_path):
    _fake_checkpoint(tmp_path, 1)
    newest = _fake_checkpoint(tmp_path, 2)
    (tmp_path / "checkpoints" / "latest").write_text("step-00000009\n")
    assert latest_checkpoint(tmp_path) == newest
    (tmp_path / "checkpoints" / "latest").write_text("step-00000001\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000001"


def test_only_folders_named_as_checkpoints_count_and_are_pruned(tmp_path):
    # A user's copy must never be pruned or resumed from; steps past 10**8 (9 digits) are newer.
    backup = _fake_checkpoint(tmp_path, 1).with_name("step-00000001.backup")
    (tmp_path / "checkpoints" / "step-00000001").rename(backup)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (99_999_999, 100_000_000, 100_000_001):
        save_checkpoint(tmp_path, step, model, optimizer, None, {}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000001.backup", "step-100000000", "step-100000001"]
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step-100000001"


def test_a_checkpoint_folder_that_is_a_symbolic_link_is_refused(tmp_path):
    # A run folder from elsewhere: resuming through the link would read files anywhere.
    outside = _fake_checkpoint(tmp_path / "elsewhere", 5)
    _fake_checkpoint(tmp_path / "run", 1)
    link = tmp_path / "run" / "checkpoints" / "step-00000005"
    link.symlink_to(outside, target_is_directory=True)
    for pointer in (None, "step-00000005\n", "step-00000001\n"):
        if pointer is not None:
            (tmp_path / "run" / "checkpoints" / "latest").write_text(pointer)
        with pytest.raises(CheckpointError, match=f"{link}: a symbolic link \\(to {outside}\\); checkpoint folders "
                                                  "must be real folders"):
            latest_checkpoint(tmp_path / "run")


def test_saving_and_pruning_never_go_through_a_symbolic_link(tmp_path):
    outside = _fake_checkpoint(tmp_path / "elsewhere", 2)
    (outside / "model.safetensors").write_bytes(b"someone else's")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for step in (1, 2):
        (tmp_path / "run" / "checkpoints" / f"step-{step:08d}").symlink_to(outside, target_is_directory=True)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (2, 3, 4):  # step 2 replaces its link; step-00000001 is never pruned through
        save_checkpoint(tmp_path / "run", step, model, optimizer, None, {}, keep_last=1)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["latest", "step-00000001", "step-00000004"]
    assert (tmp_path / "run" / "checkpoints" / "step-00000001").is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["model.safetensors", "state.json"]
    assert (outside / "model.safetensors").read_bytes() == b"someone else's"


# ------------------------------------------------------------------------------ state.json


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    make_trainer(run, steps=5, max_minutes=0.0).fit()  # one step, then a checkpoint
    return latest_checkpoint(run)


def _copy_of(checkpoint: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    target = run / "checkpoints" / checkpoint.name
    target.mkdir(parents=True)
    for path in checkpoint.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    (run / "checkpoints" / "latest").write_text(checkpoint.name + "\n")
    return target


def _with_field(checkpoint: Path, field: str, value):
    state_file = checkpoint / "state.json"
    state = json.loads(state_file.read_text())
    keys = field.split(".")
    target = state
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = int(keys[-1]) if isinstance(target, list) else keys[-1]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value(target[last]) if callable(value) else value
    state_file.write_text(json.dumps(state))
    return state_file


DELETE = object()
BAD_FIELDS = {
    "step as text": ("step", "1", "'step' must be an integer >= 0"),
    "negative step": ("step", -1, "'step' must be an integer >= 0"),
    "fractional step": ("step", 1.5, "'step' must be an integer >= 0"),
    "no step": ("step", DELETE, "'step' is missing"),
    "scheduler a list": ("scheduler", [], "'scheduler' must be a JSON object or null"),
    "scheduler epoch as text": ("scheduler.last_epoch", "x", "'scheduler.last_epoch' must be a number"),
    "scheduler lambdas": ("scheduler.lr_lambdas", [{"__class__": 1}, None], "'scheduler.lr_lambdas[0]' must be null"),
    "python_rng short": ("python_rng", [3, [1, 2], None], "'python_rng' must be a Python random state"),
    "python_rng gauss": ("python_rng.2", "x", "'python_rng' must be a Python random state"),
    "numpy_rng negative": ("numpy_rng.1", [-1] * 624, "'numpy_rng' must be a numpy random state"),
    "numpy_rng position": ("numpy_rng.2", 10**6, "'numpy_rng' must be a numpy random state"),
    "numpy_rng text": ("numpy_rng", "MT19937", "'numpy_rng' must be a numpy random state"),
    "optimizer groups text": ("optimizer.param_groups", "x", "'optimizer' must be the optimizer structure"),
    "optimizer unknown parameter": ("optimizer.state.99", {}, "'optimizer' must be the optimizer structure"),
    "optimizer lr text": ("optimizer.param_groups.0.lr", "x", "'optimizer.param_groups[0].lr' must be a number"),
    "optimizer betas": ("optimizer.param_groups.0.betas", [0.9], "'optimizer.param_groups[0].betas' must be a list of 2"),
    "optimizer group count": ("optimizer.param_groups",
                              lambda groups: [{**groups[0], "params": [i for g in groups for i in g["params"]]}],
                              "'optimizer.param_groups' lists 1 parameter group(s), the optimizer has 2"),
    "optimizer missing tensor": ("optimizer.state.0.exp_avg", {"tensor": "nope"},
                                 "'optimizer.state.0.exp_avg' names tensor 'nope', which optimizer.safetensors lacks"),
    "skipped_steps text": ("skipped_steps", "3", "'skipped_steps' must be an integer >= 0"),
    "world_size text": ("world_size", "x", "'world_size' must be an integer >= 1"),
    "log_window": ("log_window", {"sums": 1}, "'log_window' must be"),
    "grad_scaler": ("grad_scaler", {"scale": "x"}, "'grad_scaler' must be"),
}


@pytest.mark.parametrize("field, value, expected", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_bad_state_field_is_refused_naming_it_before_anything_is_restored(interrupted_run, tmp_path, field, value,
                                                                            expected):
    checkpoint = _copy_of(interrupted_run, tmp_path)
    state_file = _with_field(checkpoint, field, value)
    trainer = make_trainer(tmp_path / "run", steps=5)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    optimizer_before = repr(trainer.optimizer.state_dict())
    with pytest.raises(CheckpointError) as info:
        trainer.resume()
    assert str(info.value).startswith(f"{state_file}: field {expected}")
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert repr(trainer.optimizer.state_dict()) == optimizer_before and trainer.step == 0


def test_a_moment_estimate_of_another_shape_is_refused(interrupted_run, tmp_path):
    checkpoint = _copy_of(interrupted_run, tmp_path)
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    tensors["0.exp_avg"] = torch.zeros(3)
    save_file(tensors, str(checkpoint / "optimizer.safetensors"))
    trainer = make_trainer(tmp_path / "run", steps=5)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"state.json: field 'optimizer.state.0.exp_avg' is a torch.float32 "
                                              r"tensor of shape \(3,\), its parameter a float tensor of shape \(16, 6\)"):
        trainer.resume()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_a_bad_generator_state_is_refused_before_anything_is_restored(interrupted_run, tmp_path):
    checkpoint = _copy_of(interrupted_run, tmp_path)
    save_file({"cpu": torch.zeros(5056, dtype=torch.uint8)}, str(checkpoint / "rng.safetensors"))
    trainer = make_trainer(tmp_path / "run", steps=5)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="rng.safetensors: expected the CPU generator state 'cpu'"):
        trainer.resume()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_an_untouched_copy_resumes(interrupted_run, tmp_path):
    # The copy the tests above damage is itself a checkpoint the trainer continues.
    _copy_of(interrupted_run, tmp_path)
    trainer = make_trainer(tmp_path / "run", steps=5)
    assert trainer.resume() and trainer.step == 1
    assert trainer.fit().status == "finished"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_state_json_that_is_a_fifo_is_refused_without_blocking(interrupted_run, tmp_path):
    checkpoint = _copy_of(interrupted_run, tmp_path)
    (checkpoint / "state.json").unlink()
    os.mkfifo(checkpoint / "state.json")
    trainer = make_trainer(tmp_path / "run", steps=5)
    try:
        with pytest.raises(CheckpointError, match="not a regular file"):
            _finishes_within(10, lambda: trainer.resume(checkpoint))
    finally:
        try:
            os.close(os.open(checkpoint / "state.json", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_a_checkpoint_that_cannot_be_written_is_an_os_error_naming_it(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path, 1, model, optimizer, None, {})

    def disk_full(*args, **kwargs):
        # what safetensors raises on a full disk: its own error, naming no file
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("vimpac.engine.checkpoint.save_file", disk_full)
    with pytest.raises(OSError) as raised:
        save_checkpoint(tmp_path, 2, model, optimizer, None, {})
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / "checkpoints" / "step-00000002")
    assert latest_checkpoint(tmp_path).name == "step-00000001"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000001"]


def test_a_checkpoint_folder_and_its_rename_are_durable_before_latest_names_it(tmp_path, monkeypatch):
    # Each file was fsynced, but neither the folder holding their names nor the rename into
    # place: after a power loss `latest` could name a folder that is gone, or one without files.
    import vimpac.engine.checkpoint as checkpoint_module

    events = []
    monkeypatch.setattr(checkpoint_module, "fsync_dir", lambda folder: events.append(("fsync", Path(folder))))
    real_write = checkpoint_module.atomic_write_text
    monkeypatch.setattr(checkpoint_module, "atomic_write_text",
                        lambda path, text: (events.append(("write", Path(path))), real_write(path, text))[1])
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 1, model, torch.optim.AdamW(model.parameters()), None, {})
    root = tmp_path / "checkpoints"
    staged = [folder for kind, folder in events if kind == "fsync" and folder.name.startswith(".step-00000001.")]
    assert len(staged) == 1 and staged[0].parent == root
    assert events.index(("fsync", staged[0])) < events.index(("fsync", root)) < events.index(("write", root / "latest"))
