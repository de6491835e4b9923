"""What the trainer logs: TensorBoard after a resume, the learning rate of the logged step, rates
without validation and checkpoint time, and progress reports when stderr is a file."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from vimpac.engine.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from toy_training import make_trainer  # noqa: E402


def tensorboard_steps(run_dir, tag) -> list[int]:
    """The steps TensorBoard shows for `tag`, read as TensorBoard reads the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    make_trainer(tmp_path, steps=8, checkpoint_every=5).fit()
    # As if killed after logging steps 6-8 and validating, before the step-8 checkpoint.
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000008")
    resumed = make_trainer(tmp_path, steps=8, checkpoint_every=5)
    assert resumed.resume() and resumed.step == 5
    resumed.fit()
    assert [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"] == list(range(1, 9))
    assert tensorboard_steps(tmp_path, "train/loss") == list(range(1, 9))
    assert tensorboard_steps(tmp_path, "val/mse") == [8]


def test_tensorboard_hides_an_attempt_that_died_before_its_first_checkpoint(tmp_path):
    make_trainer(tmp_path, steps=4, checkpoint_every=100).fit()
    shutil.rmtree(tmp_path / "checkpoints")
    trainer = make_trainer(tmp_path, steps=4, checkpoint_every=100)
    assert not trainer.resume()
    trainer.fit()
    assert tensorboard_steps(tmp_path, "train/loss") == [1, 2, 3, 4]


def test_logged_lr_is_the_rate_of_the_logged_update(tmp_path):
    # Linear warm-up over 4 of 8 updates: update k (1-based) uses lr * k / 5, then the decay
    # lr * (8 - (k - 1)) / 4 from update 5 on; the row of step k shows update k's rate.
    make_trainer(tmp_path, steps=8, warmup_ratio=0.5, lr=1.0).fit()
    logged = [r["lr"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    expected = [k / 5 for k in range(1, 5)] + [(8 - (k - 1)) / 4 for k in range(5, 9)]
    assert logged == pytest.approx(expected)
    assert logged[-1] > 0  # the last update still moves the weights


def test_rates_leave_out_validation_and_checkpoint_time(tmp_path, monkeypatch):
    import vimpac.engine.trainer as trainer_module

    pause = 1.0
    save = trainer_module.save_checkpoint

    def slow_save(*args, **kwargs):
        time.sleep(pause)
        return save(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "save_checkpoint", slow_save)
    trainer = make_trainer(tmp_path, steps=4, checkpoint_every=1, val_every=1)
    validate = trainer.task.validate

    def slow_validate(model, dist):
        time.sleep(pause)
        return validate(model, dist)

    trainer.task.validate = slow_validate
    trainer.fit()
    rows = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    # Rows 2-4 follow a validation and a checkpoint of `pause` seconds each; a toy step takes
    # milliseconds, so counting those pauses would give fewer than 1 / (2 * pause) steps per second.
    for row in rows[1:]:
        assert row["steps_per_s"] > 2 / pause, row
        assert row["samples_per_s"] == pytest.approx(8 * row["steps_per_s"])


def test_rates_count_the_same_steps_when_some_are_skipped(tmp_path):
    # Steps 3 and 4 (0-based) have a non-finite loss and make no update: steps_per_s leaves them
    # out, so the counted samples must too, or samples_per_s / steps_per_s is no longer the batch.
    make_trainer(tmp_path, steps=10, log_every=5, nan_steps=(3, 4)).fit()
    rows = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert [r["step"] for r in rows] == [5, 10] and rows[0]["skipped_steps"] == 2
    for row in rows:
        assert row["samples_per_s"] == pytest.approx(8 * row["steps_per_s"]), row


def test_progress_without_a_terminal_prints_lines_not_a_bar(tmp_path, capsys):
    # Under pytest stderr is no terminal, as in a cluster job's log file.
    make_trainer(tmp_path / "runs" / "toy", steps=200, progress=True, log_every=50, checkpoint_every=100).fit()
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    # On stderr, the stream the bar-or-lines choice looks at: with `2> log` the lines go to the
    # log, not to the terminal; stdout is left to the command's result line.
    lines = [line for line in captured.err.splitlines() if line.startswith("[runs/toy] step ")]
    assert [line.split(" (")[0] for line in lines] == [f"[runs/toy] step {k}/200" for k in range(2, 201, 2)]
    assert captured.out == ""


def test_progress_on_a_terminal_is_a_bar(tmp_path, capsys, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    make_trainer(tmp_path / "runs" / "toy", steps=10, progress=True).fit()
    assert "train: 100%" in sys.stderr.getvalue()
    assert "[runs/toy] step" not in sys.stderr.getvalue() + capsys.readouterr().out
