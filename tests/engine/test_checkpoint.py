"""Run folders from elsewhere: the `latest` pointer names only a checkpoint folder inside
RUN/checkpoints, and state.json must be a regular file."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest
import torch

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


def test_an_untouched_copy_resumes(interrupted_run, tmp_path):
    # The copy the tests damage is itself a checkpoint the trainer continues.
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
