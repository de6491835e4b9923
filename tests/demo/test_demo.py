"""The quick end-to-end demo: every stage runs, the report is written, a re-run reuses stages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from vimpac.cli import main


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_reuses_them(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "Pre-training tasks (paper Table 7 shape)" in printed.out and "| ✓ | ✓ |" in printed.out
    # What the stages report while they run (the data's table, the stores' summaries) is not the result.
    assert "[3/6 tokenize] running" in printed.err and "  train: " in printed.err
    assert "[3/6 tokenize]" not in printed.out and "  train: " not in printed.out
    assert "frame pool: " in printed.err and "frame pool: " not in printed.out  # the tokenizer's own lines

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

    # A second run reuses every finished stage (data, tokenizer, stores, 2 pre-training runs, the
    # from-scratch initial model, 4 fine-tuning runs).
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert printed.err.count("already done") == 2 + 1 + 2 + 1 + 4  # stage lines: stderr
    assert "already done" not in printed.out and "this run" in printed.out and "10 reused" in printed.out
    report = (out / "report.md").read_text()
    assert "| all stages |" in report and "| 1/6 synthetic benchmark |" in report and "| yes |" in report

    # Longer pre-training of one variant: a fresh 16-step run (not the 12-step one continued), and the
    # fine-tuning runs built on it are redone from the new model.
    from safetensors.torch import load_file

    old_weights = load_file(out / "finetune" / "mp_cl" / "model" / "model.safetensors")
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "pretrain_steps=16",
                 "pretrain_variants=mp_cl"]) == 0
    capsys.readouterr()
    done = json.loads((out / "pretrain" / "mp_cl" / "DONE.json").read_text())
    assert done["result"]["steps"] == 16 and "train.total_steps=16" in done["settings"]["overrides"]
    metrics = [json.loads(line) for line in (out / "pretrain" / "mp_cl" / "metrics.jsonl").read_text().splitlines()]
    val_steps = {r["step"] for r in metrics if r["split"] == "val"}
    assert {3, 6, 9, 12} <= val_steps and 2 not in val_steps  # every 3 steps from the start: no 12-step run kept
    new_weights = load_file(out / "finetune" / "mp_cl" / "model" / "model.safetensors")
    assert any(not (new_weights[k] == old_weights[k]).all() for k in new_weights)
    assert (out / "pretrain" / "mp_cl.superseded" / "DONE.json").exists()
    assert set(json.loads((out / "results.json").read_text())["stages"]["pretrain"]) == {"mp_cl"}


def test_bad_demo_setting_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "frames=many"]) == 2
    assert "frames: expected int" in capsys.readouterr().err


def test_seeds_given_twice_is_refused(tmp_path, capsys):
    # `--seeds 2` used to win over `seeds=0,1` silently.
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "seeds=0,1", "--seeds", "2"]) == 2
    assert "both set the seeds" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("setting", ["model_overrides=layout=T,H,W,heads=2",
                                     # an unquoted YAML list, which YAML splits at every comma
                                     "model_overrides=[layout=T,H,W,heads=2]",
                                     'model_overrides=["layout=T,H,W", "heads=2"]'])
def test_a_model_override_whose_value_has_commas_reaches_its_key(tmp_path, monkeypatch, setting):
    # `model_overrides=layout=T,H,W` was split into 'layout=T', 'H', 'W' and refused; so was
    # `model_overrides=[layout=T,H,W]`.
    from vimpac.demo import pipeline

    seen = {}

    def record(out, cfg, progress):
        pipeline.check_settings(cfg)
        seen["model_overrides"] = cfg.model_overrides
        raise KeyboardInterrupt  # stop before any stage runs

    monkeypatch.setattr(pipeline, "run_demo", record)
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), setting]) == 130
    assert seen["model_overrides"] == ("layout=T,H,W", "heads=2")


def test_a_model_override_without_a_key_shows_the_forms_that_work(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "model_overrides=T,H,W"]) == 2
    err = capsys.readouterr().err
    assert "model_overrides: expected KEY=VALUE items, got 'T,H,W'" in err
    assert "\'model_overrides=[\"layout=T,H,W\", \"dim=64\"]\'" in err  # the quoted form to use


def test_a_list_setting_that_is_not_valid_yaml_is_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "seeds=[0,1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vimpac demo: error: seeds: '[0,1' is not a valid YAML list: line 1") and len(
        err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


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



@pytest.mark.parametrize("preset", ["quick", "full"])
def test_pretraining_logs_enough_points_for_the_reports_curves(tmp_path, monkeypatch, preset):
    # The quick demo's 12-update runs logged at updates 10 and 12 only: its curves were two points.
    from vimpac.demo import pipeline
    from vimpac.demo.config import DEMO_PRESETS
    from vimpac.engine.trainer import TrainResult

    used = []

    def record(store, run_dir, pcfg, resume):
        used.append(pcfg.train)
        return TrainResult("finished", pcfg.train.total_steps, 0, {}, None)

    monkeypatch.setattr("vimpac.pretrain.run.run_pretraining", record)
    (tmp_path / "stores" / "pretrain").mkdir(parents=True)
    pipeline._pretrain(tmp_path, DEMO_PRESETS[preset], "mp_cl", 0, "mp_cl", progress=False)
    train = used[0]
    assert train.total_steps == DEMO_PRESETS[preset].pretrain_steps
    assert train.total_steps // train.log_every >= 10
    if preset == "full":
        assert train.log_every == 10  # the full demo logs as before


def _record_pid(folder, progress):
    import os

    return {"pid": os.getpid(), "folder": str(folder), "progress": progress}


def test_training_runs_go_side_by_side_in_worker_processes_and_finished_ones_are_reused(tmp_path):
    import dataclasses
    import os

    from vimpac.demo import pipeline
    from vimpac.demo.config import DEMO_PRESETS

    cfg = dataclasses.replace(DEMO_PRESETS["quick"], parallel_runs=2, threads=2)
    runs = [pipeline.TrainingRun(f"run {i}", tmp_path / f"run{i}", {"i": i}, _record_pid, (tmp_path / f"run{i}",))
            for i in range(3)]
    lines = []
    first = pipeline.run_training(runs, cfg, lines.append, progress=True)
    assert list(first) == ["run 0", "run 1", "run 2"]
    pids = {r["pid"] for r in first.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert not any(r["progress"] for r in first.values())  # no interleaved progress bars
    assert "3 training stages, 2 at a time (1 thread(s) each)" in lines[0]

    # A re-run reuses all three without starting workers; a changed setting re-runs only that one.
    again = pipeline.run_training(runs, cfg, lines.append, progress=True)
    assert again == first
    changed = [runs[0], dataclasses.replace(runs[1], settings={"i": 10}), runs[2]]
    third = pipeline.run_training(changed, cfg, lines.append, progress=True)
    assert third["run 0"] == first["run 0"] and third["run 2"] == first["run 2"]
    assert third["run 1"]["pid"] == os.getpid()  # one pending run: in this process, progress kept
    assert third["run 1"]["progress"] is True


def test_scratch_row_starts_from_the_pretraining_runs_initial_weights(tmp_path):
    import dataclasses

    import torch
    from safetensors.torch import load_file

    from vimpac.demo import pipeline
    from vimpac.demo.config import DEMO_PRESETS
    from vimpac.model.vimpac import VimpacForPretraining
    from vimpac.pretrain.config import build_pretrain_config
    from vimpac.pretrain.task import resolve_config
    from vimpac.store.reader import TokenStore

    sys.path.insert(0, str(Path(__file__).parents[1] / "finetune"))
    from finetune_helpers import make_store

    cfg = dataclasses.replace(DEMO_PRESETS["quick"], seeds=(0, 3))
    make_store(tmp_path / "stores" / "pretrain", frames=(8, 12))
    folders = [pipeline._scratch_model(tmp_path, cfg, seed) for seed in (0, 3)]
    assert [f.name for f in folders] == ["scratch_init", "scratch_init_seed3"]
    weights = [load_file(f / "model.safetensors") for f in folders]
    assert not torch.equal(weights[0]["backbone.embedding.weight"], weights[1]["backbone.embedding.weight"])
    # The pre-training run of seed 3 builds its model the same way.
    pcfg = build_pretrain_config("tiny", overrides=pipeline._pretrain_overrides(cfg, "mp_cl", 3))
    pcfg = resolve_config(TokenStore.open(tmp_path / "stores" / "pretrain"), pcfg, 1)
    torch.manual_seed(pcfg.train.seed)
    fresh = VimpacForPretraining(pcfg.model).state_dict()
    assert torch.equal(fresh["backbone.embedding.weight"], weights[1]["backbone.embedding.weight"])


def test_a_training_worker_that_dies_is_a_clear_resumable_error(tmp_path):
    from demo_workers import die, finish
    from vimpac.demo.config import DemoConfig
    from vimpac.demo.pipeline import DemoInterrupted, TrainingRun, run_training

    runs = [TrainingRun("4/6 pre-train fine", tmp_path / "fine", {"n": 1}, finish, (1,)),
            TrainingRun("4/6 pre-train killed", tmp_path / "killed", {"n": 2}, die, ())]
    with pytest.raises(DemoInterrupted, match="training worker died .* run the same command again"):
        run_training(runs, DemoConfig(threads=2, parallel_runs=2), print, progress=False)
