"""The quick end-to-end demo: every stage runs, the report is written, a re-run reuses stages."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pytest

from vimpac.cli import main


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_reuses_them(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Pre-training tasks (paper Table 7 shape)" in printed and "| ✓ | ✓ |" in printed

    results = json.loads((out / "results.json").read_text())
    stages = results["stages"]
    assert stages["tokenizer"]["psnr_db"] > 10
    assert set(stages["pretrain"]) == {"mp_cl", "mp_only"}
    assert set(stages["finetune"]) == {"scratch", "mp_cl", "mp_only", "single_frame"}
    for run in stages["finetune"].values():
        assert 0.0 <= run["evaluation"]["top1"] <= 1.0
    report = (out / "report.md").read_text()
    assert "## Pre-training tasks" in report and "finetune_accuracy.png" in report
    picture = mpimg.imread(out / "finetune_accuracy.png")
    assert picture.shape[0] > 200 and picture.std() > 0.05  # a real figure, not a blank canvas
    assert (out / "stores" / "train" / "store.json").exists()
    assert (out / "pretrain" / "mp_cl" / "model" / "model.safetensors").exists()

    # A second run reuses every finished stage.
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already done") == 2 + 1 + 2 + 4


def test_bad_demo_setting_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "frames=many"]) == 2
    assert "frames: expected int" in capsys.readouterr().err


def test_an_interrupted_training_stage_stops_the_demo_without_marking_it_done(tmp_path, monkeypatch):
    from vimpac.demo import pipeline
    from vimpac.demo.config import DEMO_PRESETS
    from vimpac.engine.trainer import TrainResult

    def interrupted(*args, **kwargs):
        return TrainResult("interrupted", 3, 0, {}, None)

    monkeypatch.setattr("vimpac.pretrain.run.run_pretraining", interrupted)
    (tmp_path / "stores" / "pretrain").mkdir(parents=True)
    with pytest.raises(pipeline.DemoInterrupted, match="stopped at step 3"):
        pipeline._pretrain(tmp_path, DEMO_PRESETS["quick"], "mp_cl", 0, "mp_cl", progress=False)
    assert not (tmp_path / "pretrain" / "mp_cl" / "DONE.json").exists()
