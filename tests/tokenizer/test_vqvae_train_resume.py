"""`vimpac train-tokenizer` checkpoints: exact resume after a crash or SIGTERM, and refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from process_helpers import PATIENCE, wait_until
from vimpac.cli import main
from vqvae_test_frames import fast_train_args, write_clips

STEPS = 12


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def uninterrupted(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "tok"
    assert main(["train-tokenizer", str(clips), "--out", str(out), *fast_train_args(STEPS)]) == 0
    return json.loads((out / "train_report.json").read_text())


def crash_at_step(step: int):
    """A stand-in for train.psnr_db (called once per training step) that raises in step `step`."""
    import vimpac.tokenizer.train as train

    real_psnr, calls = train.psnr_db, []

    def psnr_or_crash(mse):
        calls.append(mse)
        if len(calls) == step:
            raise RuntimeError("simulated crash")
        return real_psnr(mse)

    return psnr_or_crash


def _history_losses(report):
    return [(row["step"], row["loss"], row["psnr"], row["ppl"]) for row in report["training"]["history"]]


def test_a_crashed_training_resumes_to_the_uninterrupted_result(clips, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "tok"
    import vimpac.tokenizer.train as train

    monkeypatch.setattr(train, "psnr_db", crash_at_step(7))
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["train-tokenizer", str(clips), "--out", str(out), "--checkpoint-every", "4", *fast_train_args(STEPS)])
    monkeypatch.undo()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    assert not (out / "tokenizer.json").exists()

    assert main(["train-tokenizer", str(clips), "--out", str(out), "--resume", *fast_train_args(STEPS)]) == 0
    report = json.loads((out / "train_report.json").read_text())
    assert report["tokenizer_id"] == uninterrupted["tokenizer_id"]  # a hash of the weights
    assert _history_losses(report) == _history_losses(uninterrupted)
    assert report["training"]["steps_done"] == STEPS
    assert not (out / "checkpoints").exists()  # removed once the tokenizer is written


def test_interrupted_training_needs_resume_and_the_same_settings(clips, tmp_path, monkeypatch, capsys):
    out = tmp_path / "tok"
    import vimpac.tokenizer.train as train

    monkeypatch.setattr(train, "psnr_db", crash_at_step(3))
    with pytest.raises(RuntimeError):
        main(["train-tokenizer", str(clips), "--out", str(out), "--checkpoint-every", "1", *fast_train_args(STEPS)])
    monkeypatch.undo()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    capsys.readouterr()

    assert main(["train-tokenizer", str(clips), "--out", str(out), *fast_train_args(STEPS)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    changed = [*fast_train_args(STEPS), "--lr", "1e-3"]
    assert main(["train-tokenizer", str(clips), "--out", str(out), "--resume", *changed]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "0.002" in err and "0.001" in err
    assert (out / "checkpoints" / "latest").exists()  # a refused resume deletes nothing


def test_resume_without_a_checkpoint_starts_a_new_training(clips, uninterrupted, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["train-tokenizer", str(clips), "--out", str(out), "--resume", *fast_train_args(STEPS)]) == 0
    assert "no checkpoint" in capsys.readouterr().err
    assert json.loads((out / "train_report.json").read_text())["tokenizer_id"] == uninterrupted["tokenizer_id"]


def test_sigterm_saves_a_checkpoint_and_exits_143(clips, tmp_path):
    out = tmp_path / "tok"
    steps = 100_000  # far more than can run before the signal
    command = [sys.executable, "-m", "vimpac", "train-tokenizer", str(clips), "--out", str(out),
               "--checkpoint-every", "3", *fast_train_args(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        # A first checkpoint means the training loop, and its signal handler, are running.
        wait_until(lambda: (out / "checkpoints" / "latest").exists(), "the first checkpoint", proc,
                   output=lambda: proc.communicate()[1][-2000:])
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PATIENCE)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "--resume" in err
    step = int((out / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert 3 <= step < steps
    state = json.loads((out / "checkpoints" / f"step-{step:08d}" / "state.json").read_text())
    assert state["step"] == step and not (out / "tokenizer.json").exists()


def test_checkpoints_of_another_kind_of_run_are_refused_and_kept(clips, tmp_path, capsys):
    # A folder holding a pre-training run's checkpoints/ (same layout, no tokenizer record):
    # "write-into" (the API's default, the demo's) deleted them as if they were an interrupted
    # tokenizer training, and the command told the user to --resume them.
    import dataclasses

    from vimpac.tokenizer.train import DataConfig, TokenizerTrainingError, TrainConfig, train_tokenizer_from_videos
    from vimpac.tokenizer.vqvae import VQVAE_PRESETS

    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "step-00000100"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text(json.dumps({"step": 100, "world_size": 1, "config": {}}))
    (run / "checkpoints" / "latest").write_text("step-00000100\n")
    model_cfg = dataclasses.replace(VQVAE_PRESETS["tiny"], codebook_size=16, width=8, code_dim=8)
    with pytest.raises(TokenizerTrainingError, match="holds checkpoints of another kind of run"):
        train_tokenizer_from_videos([clips], run, model_cfg, TrainConfig(steps=2, batch_size=8),
                                    DataConfig(size=32, fps=4), progress=False)
    for resume in ([], ["--resume"]):
        assert main(["train-tokenizer", str(clips), "--out", str(run), *resume, *fast_train_args(STEPS)]) == 2
        err = capsys.readouterr().err
        assert "holds checkpoints of another kind of run" in err and "pass --resume" not in err
    assert (checkpoint / "state.json").is_file() and not (run / "tokenizer.json").exists()


def test_resume_takes_the_same_videos_named_from_another_folder(clips, uninterrupted, tmp_path, monkeypatch):
    # Started as `train-tokenizer clips/ ...` in the videos' parent folder, resumed by a job script
    # with the absolute path: the frames are the same, but the recorded paths differed and the
    # resume was refused ("other settings or frames (training_videos: ...)").
    import vimpac.tokenizer.train as train

    out = tmp_path / "tok"
    monkeypatch.chdir(clips.parent)
    monkeypatch.setattr(train, "psnr_db", crash_at_step(5))
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["train-tokenizer", clips.name, "--out", str(out), "--checkpoint-every", "2", *fast_train_args(STEPS)])
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["train-tokenizer", str(clips), "--out", str(out), "--resume", *fast_train_args(STEPS)]) == 0
    report = json.loads((out / "train_report.json").read_text())
    assert report["tokenizer_id"] == uninterrupted["tokenizer_id"]


@pytest.fixture(scope="module")
def crashed_at_step_3(clips, tmp_path_factory):
    """An output folder whose training crashed in step 3, with a checkpoint after step 2."""
    import vimpac.tokenizer.train as train

    out = tmp_path_factory.mktemp("crashed") / "tok"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "psnr_db", crash_at_step(3))
        with pytest.raises(RuntimeError, match="simulated crash"):
            main(["train-tokenizer", str(clips), "--out", str(out), "--checkpoint-every", "1", *fast_train_args(STEPS)])
    return out


# (field, bad value, what the error says); resumed, each was a traceback (or a pointer leaving the run).
BAD_RESUME_STATE = {
    "step as text": ("step", "2", "field 'step' must be an integer >= 0"),
    "history": ("history", 5, "field 'history' must be a list of objects"),
    "running": ("running", {"loss": "x"}, "field 'running' must be"),
    "sampler_rng": ("sampler_rng", [1, 2, 3], "field 'sampler_rng' must be the frame sampler's state"),
    "train_seconds": ("train_seconds", -1, "field 'train_seconds' must be a number >= 0"),
    "run": ("run", [], "field 'run' must be a JSON object"),
    "optimizer": ("optimizer", None, "field 'optimizer' must be"),
}


@pytest.mark.parametrize("field, value, expected", BAD_RESUME_STATE.values(), ids=BAD_RESUME_STATE.keys())
def test_a_bad_checkpoint_state_is_one_line_naming_the_field(crashed_at_step_3, clips, tmp_path, capsys, field, value,
                                                             expected):
    import shutil

    out = tmp_path / "tok"
    shutil.copytree(crashed_at_step_3, out)
    state_file = out / "checkpoints" / "step-00000002" / "state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), field: value}))
    capsys.readouterr()
    assert main(["train-tokenizer", str(clips), "--out", str(out), "--resume", *fast_train_args(STEPS)]) == 2
    err = capsys.readouterr().err
    assert f"{state_file}: {expected}" in err and "Traceback" not in err
    assert state_file.is_file() and not (out / "tokenizer.json").exists()


def test_a_latest_pointer_leaving_the_run_is_one_line(crashed_at_step_3, clips, tmp_path, capsys):
    import shutil

    out = tmp_path / "tok"
    shutil.copytree(crashed_at_step_3, out)
    pointer = out / "checkpoints" / "latest"
    pointer.write_text("../../elsewhere\n")
    capsys.readouterr()
    for resume in ([], ["--resume"]):
        assert main(["train-tokenizer", str(clips), "--out", str(out), *resume, *fast_train_args(STEPS)]) == 2
        err = capsys.readouterr().err
        assert f"{pointer}: expected a checkpoint folder name" in err
        assert f"the newest complete checkpoint is {out / 'checkpoints' / 'step-00000002'}" in err
    assert (out / "checkpoints" / "step-00000002" / "state.json").is_file()
