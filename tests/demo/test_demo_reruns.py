"""Re-running the demo: reuse, resume, starting afresh when settings change, clear errors.

The stage work functions are replaced by stubs that record what ran and whether a run found the
checkpoints of an earlier one (what `_pretrain` / `_finetune` resume from), so that these tests
take a second, not the quick demo's minute.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vimpac.cli import main
from vimpac.demo import pipeline
from vimpac.demo.config import DEMO_PRESETS
from process_helpers import wait_until


class StubStages:
    def __init__(self):
        self.calls: list[tuple] = []
        self.interrupt: set[str] = set()

    def ran(self, kind: str) -> list:
        return [call[1:] for call in self.calls if call[0] == kind]

    def data(self, folder, cfg, progress):
        self.calls.append(("data", cfg.synthetic_preset))
        (folder / "train.txt").write_text("video.mp4 0\n")
        return {"classes": 14, "train": 1, "uncurated": 1, "frame_size": [64, 64], "source_fps": 8.0}

    def tokenizer(self, out, cfg, progress):
        self.calls.append(("tokenizer", cfg.tokenizer_steps))
        return {"tokenizer_id": f"steps{cfg.tokenizer_steps}"}

    def stores(self, out, cfg, progress):
        self.calls.append(("stores",))
        return {}

    def _train(self, kind, run_dir, name, steps):
        resumed = (run_dir / "checkpoints").exists()
        self.calls.append((kind, name, resumed))
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        if name in self.interrupt:
            raise pipeline.DemoInterrupted(f"{name} stopped")
        return {"status": "finished", "steps": steps, "metrics": {}}

    def pretrain(self, out, cfg, variant, seed, name, progress):
        result = self._train("pretrain", out / "pretrain" / name, name, cfg.pretrain_steps)
        return {**result, "settings_key": json.dumps(pipeline._pretrain_overrides(cfg, variant, seed))}

    def finetune(self, out, cfg, source, frames, seed, name, progress):
        return self._train("finetune", out / "finetune" / name, name, cfg.finetune_steps)

    def scratch(self, out, cfg, seed):
        self.calls.append(("scratch_init", seed))
        return {"model": "stub"}


@pytest.fixture
def stubs(monkeypatch):
    stub = StubStages()
    monkeypatch.setattr(pipeline, "_make_data", stub.data)
    monkeypatch.setattr(pipeline, "_train_tokenizer", stub.tokenizer)
    monkeypatch.setattr(pipeline, "_tokenize", stub.stores)
    monkeypatch.setattr(pipeline, "_pretrain", stub.pretrain)
    monkeypatch.setattr(pipeline, "_finetune", stub.finetune)
    monkeypatch.setattr(pipeline, "_scratch_result", stub.scratch)
    monkeypatch.setattr("vimpac.demo.report.write_report", lambda out, cfg, results: {})
    return stub


def quick(**changes):
    return dataclasses.replace(DEMO_PRESETS["quick"], **changes)


def run(out, cfg, stub):
    stub.calls.clear()
    lines: list[str] = []
    results = pipeline.run_demo(out, cfg, log=lines.append, progress=False)
    return results, "\n".join(lines)


FINETUNE_ROWS = [("scratch", False), ("mp_cl", False), ("mp_only", False), ("single_frame", False)]


def test_a_changed_pretraining_setting_starts_those_runs_afresh_and_redoes_what_follows(tmp_path, stubs):
    out = tmp_path / "demo"
    run(out, quick(), stubs)
    assert stubs.ran("pretrain") == [("mp_cl", False), ("mp_only", False)]

    results, log = run(out, quick(pretrain_steps=16), stubs)
    # Fresh runs (no checkpoint of the 12-step run to continue from), not a continuation.
    assert stubs.ran("pretrain") == [("mp_cl", False), ("mp_only", False)]
    assert stubs.ran("finetune") == [("mp_cl", False), ("mp_only", False), ("single_frame", False)]
    assert not stubs.ran("data") and not stubs.ran("tokenizer") and not stubs.ran("stores")
    assert not stubs.ran("scratch_init")  # the from-scratch row does not depend on pre-training
    assert "settings changed (overrides: train.total_steps=12, train.val_every=2 -> train.total_steps=16" in log
    assert (out / "pretrain" / "mp_cl.superseded" / "checkpoints").is_dir()  # the old run is kept aside
    done = json.loads((out / "pretrain" / "mp_cl" / "DONE.json").read_text())
    assert done["result"]["steps"] == 16 and "train.total_steps=16" in done["settings"]["overrides"]
    assert results["stages"]["pretrain"]["mp_cl"]["steps"] == 16

    # Back to 8 steps: again afresh, and the record agrees with the run.
    run(out, quick(pretrain_steps=8), stubs)
    assert stubs.ran("pretrain") == [("mp_cl", False), ("mp_only", False)]
    done = json.loads((out / "pretrain" / "mp_cl" / "DONE.json").read_text())
    assert done["result"]["steps"] == 8

    # Back to 16 steps: the superseded copy finished with these settings, and is swapped back.
    results, log = run(out, quick(pretrain_steps=16), stubs)
    assert stubs.calls == []
    assert results["stages"]["pretrain"]["mp_cl"]["steps"] == 16
    assert json.loads((out / "pretrain" / "mp_cl.superseded" / "DONE.json").read_text())["result"]["steps"] == 8


def test_a_changed_tokenizer_redoes_the_stores_and_everything_trained_on_them(tmp_path, stubs):
    out = tmp_path / "demo"
    run(out, quick(), stubs)
    run(out, quick(tokenizer_steps=41), stubs)
    assert stubs.ran("tokenizer") == [(41,)] and stubs.ran("stores") == [()]
    assert not stubs.ran("data")
    assert stubs.ran("scratch_init") == [(0,)]
    assert stubs.ran("pretrain") == [("mp_cl", False), ("mp_only", False)]
    assert stubs.ran("finetune") == FINETUNE_ROWS
    assert (out / "stores.superseded").is_dir()


def test_a_folder_of_an_older_vimpac_without_inputs_records_still_redoes_what_a_change_affects(tmp_path, stubs):
    out = tmp_path / "demo"
    run(out, quick(), stubs)
    for record in out.rglob("DONE.json"):  # as an older vimpac wrote them: settings and result only
        done = json.loads(record.read_text())
        record.write_text(json.dumps({"settings": done["settings"], "result": done["result"]}))
        (record.parent / "STAGE.json").unlink()
    run(out, quick(), stubs)
    assert stubs.ran("finetune") == []  # finished stages of an older vimpac are reused
    run(out, quick(tokenizer_steps=41), stubs)
    assert stubs.ran("finetune") == FINETUNE_ROWS  # the from-scratch row too: its stores changed


def test_a_stage_redone_with_the_same_settings_redoes_the_stages_after_it(tmp_path, stubs):
    out = tmp_path / "demo"
    run(out, quick(), stubs)
    (out / "pretrain" / "mp_only" / "DONE.json").unlink()  # as if it had never finished
    _, log = run(out, quick(), stubs)
    assert stubs.ran("pretrain") == [("mp_only", True)]
    assert stubs.ran("finetune") == [("mp_only", False)]  # built on the old mp_only: stale
    assert "a stage it is built from was redone" in log


def test_an_interrupted_stage_resumes_unless_its_settings_changed(tmp_path, stubs):
    out = tmp_path / "demo"
    stubs.interrupt = {"mp_only"}
    with pytest.raises(pipeline.DemoInterrupted):
        run(out, quick(), stubs)
    stubs.interrupt = set()
    run(out, quick(), stubs)
    assert stubs.ran("pretrain") == [("mp_only", True)]  # resumed from its checkpoint; mp_cl reused

    stubs.interrupt = {"mp_cl"}
    with pytest.raises(pipeline.DemoInterrupted):
        run(out, quick(pretrain_steps=20), stubs)
    stubs.interrupt = set()
    run(out, quick(pretrain_steps=24), stubs)
    assert ("mp_cl", False) in stubs.ran("pretrain")  # the interrupted 20-step run is not continued


def test_the_quick_and_the_full_demo_in_one_folder_regenerate_the_data(tmp_path, stubs):
    out = tmp_path / "demo"
    run(out, quick(), stubs)
    full = dataclasses.replace(DEMO_PRESETS["full"], parallel_runs=1)  # stubs run in this process only
    _, log = run(out, full, stubs)
    assert stubs.ran("data") == [("small",)]
    assert "preset: 'tiny' -> 'small'" in log
    assert (out / "data.superseded" / "train.txt").exists()


def test_quick_demo_defaults_to_its_own_folder(tmp_path, monkeypatch):
    seen = []

    def fake_run_demo(out, cfg, progress):
        seen.append(str(out))
        raise pipeline.DemoInterrupted("stop here")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "run_demo", fake_run_demo)
    main(["demo", "--quick"])
    main(["demo"])
    assert seen == ["demo_out_quick", "demo_out"]


def one_line_error(capsys) -> str:
    """The one line of the error on stderr (the stages' "[stage] ..." lines before it aside)."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("[")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_a_folder_that_is_not_a_demos_is_refused_with_a_clear_error(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic.json").write_text('{"config": {"num_frames": 32}}')
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 1
    err = one_line_error(capsys)
    assert str(tmp_path) in err and "not a vimpac demo folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing moved or written


def test_an_out_path_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["demo", "--quick", "--out", str(afile)]) == 1
    assert "is not a folder" in one_line_error(capsys)
    assert afile.read_text() == "mine"


def test_a_typed_error_inside_a_stage_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    from vimpac.store.errors import StoreError

    def failing(out, cfg, progress):
        raise StoreError(f"{out}/stores/train/store.json: made with another tokenizer")

    monkeypatch.setattr(pipeline, "run_demo", failing)
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 1
    assert "made with another tokenizer" in one_line_error(capsys)


@pytest.mark.parametrize("setting, expected", [
    ("pretrain_variants=foo", "pretrain_variants: unknown variant(s) ['foo']; choose from ['mp_cl'"),
    ("synthetic_preset=foo", "synthetic_preset: expected one of ["),
    ("threads=0", "threads: expected a whole number >= 1, got 0"),
    ("frames=0", "frames: expected a whole number >= 1, got 0"),
    ("seeds=1,1", "seeds: expected distinct seeds"),
    ("size=60", "size: expected a multiple of 8"),
    ("model_overrides=depth=3", "unknown config field 'model.depth'"),
    ("model_overrides=dim=65", "model_overrides ['dim=65']: model config: attention width 65"),
])
def test_bad_demo_settings_are_refused_before_any_work(tmp_path, capsys, setting, expected):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), setting]) == 2
    assert expected in one_line_error(capsys)
    assert not out.exists()


def test_pretraining_curves_show_only_this_runs_variants_and_are_written_atomically(tmp_path, monkeypatch):
    import matplotlib.figure

    from vimpac.demo import report

    for name in ("mp_cl", "mp_only"):
        (tmp_path / "pretrain" / name).mkdir(parents=True)
        (tmp_path / "pretrain" / name / "metrics.jsonl").write_text(
            "".join(json.dumps({"split": "train", "step": s, "mask_loss": 5.0 - s}) + "\n" for s in (1, 2)))
    results = {"stages": {"pretrain": {"mp_cl": {}}}}
    labels = []
    real_save = report._save_figure
    monkeypatch.setattr(report, "_save_figure", lambda fig, path: (
        labels.extend(t.get_text() for t in fig.axes[0].get_legend().get_texts()), real_save(fig, path)))
    path = report.plot_pretraining(tmp_path, results)
    assert labels == ["VIMPAC (MP + CL)"]
    before = path.read_bytes()

    def broken_savefig(self, target, **kwargs):
        with open(target, "wb") as f:
            f.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError):
        report.plot_pretraining(tmp_path, results)
    assert path.read_bytes() == before  # the old picture, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_demo_folder_whose_data_was_deleted_is_still_the_demos(tmp_path):
    # A damaged data/DONE.json's message says to delete data/; the rerun must then regenerate it.
    from vimpac.demo.pipeline import _claim_out

    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "DONE.json").write_text("{}")
    _claim_out(tmp_path)  # not refused


def test_a_full_disk_while_a_stage_saves_is_one_line_and_the_rerun_carries_on(tmp_path, stubs, monkeypatch, capsys):
    import safetensors.torch
    from safetensors import SafetensorError

    from vimpac.tokenizer.vqvae import VQVAEConfig, VQVAETokenizer

    def tokenizer(out, cfg, progress):
        VQVAETokenizer.from_config(VQVAEConfig(width=8, code_dim=8, codebook_size=16)).save_pretrained(
            out / "tokenizer")
        return {"tokenizer_id": "tiny"}

    def disk_full(*args, **kwargs):
        # what safetensors raises on a full disk: its own error, naming no file (was a traceback)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    real_save_file = safetensors.torch.save_file
    monkeypatch.setattr(pipeline, "_train_tokenizer", tokenizer)
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 2
    assert f"{out / 'tokenizer' / 'model.safetensors'}: No space left on device" in one_line_error(capsys)

    monkeypatch.setattr(safetensors.torch, "save_file", real_save_file)  # space freed
    _, log = run(out, quick(), stubs)
    assert [call[0] for call in stubs.calls[:2]] == ["stores", "pretrain"]  # data reused, tokenizer not stubbed
    assert "[2/6 tokenizer] resuming the unfinished run" in log
    assert (out / "tokenizer" / "model.safetensors").exists() and (out / "tokenizer" / "DONE.json").exists()


def test_every_stage_counted_as_reused_has_a_row_in_the_time_table(tmp_path, stubs):
    # "10 stage(s) reused" stood under a table of 9 rows: the from-scratch initial model had none.
    out = tmp_path / "demo"
    run(out, quick(seeds=(0, 1)), stubs)
    results, _ = run(out, quick(seeds=(0, 1)), stubs)
    rows = pipeline.stage_seconds(results["stages"])
    assert "5/6 initial model, seed 1" in results["reused"]
    assert sorted(results["reused"]) == sorted(rows)


def test_stage_lines_go_to_stderr_and_only_the_result_to_stdout(tmp_path, stubs, monkeypatch, capsys):
    # The demo's own stage lines went to stdout, between the tables, while the trainers' progress
    # lines went to stderr: `vimpac demo > result.txt` kept a log without its progress.
    tables = {"table7": "TABLE 7 ROWS", "table8": "TABLE 8 ROWS", "all_runs": "ALL RUNS ROWS"}
    monkeypatch.setattr("vimpac.demo.report.write_report", lambda out, cfg, results: tables)
    out = tmp_path / "demo"
    for attempt in ("first", "reusing"):
        assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
        printed = capsys.readouterr()
        stage_lines = [line for line in printed.err.splitlines() if line.startswith("[")]
        assert any(line.startswith(f"[{pipeline.DATA_STAGE}]") for line in stage_lines), attempt
        assert any(line.startswith("[6/6 report]") for line in stage_lines), attempt
        assert not any(line.startswith("[") for line in printed.out.splitlines()), (attempt, printed.out)
        assert all(rows in printed.out and rows not in printed.err for rows in tables.values())
        assert f"report: {out}/report.md" in printed.out and "report: " not in printed.err
    assert "already done" in printed.err


def test_ctrl_c_outside_a_training_stage_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    def interrupted(out, cfg, progress):
        raise KeyboardInterrupt  # as Ctrl-C while the data, the tokenizer or the stores are made

    monkeypatch.setattr(pipeline, "run_demo", interrupted)
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 130
    err = one_line_error(capsys)
    assert "interrupted; finished stages are kept" in err and "run the same command again" in err


class FakeClock:
    """Stands in for the `time` module in the pipeline: stage work advances it by set amounts."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def strftime(self, fmt: str) -> str:
        return "2024-01-01T00:00:00"


@pytest.mark.parametrize("stop", [pipeline.DemoInterrupted("stopped at step 5"), KeyboardInterrupt()])
def test_an_interrupted_and_resumed_stage_records_the_time_of_every_attempt(tmp_path, monkeypatch, stop):
    # The time table showed only the last attempt's time (21 s for a stage that took 44 s).
    clock = FakeClock()
    monkeypatch.setattr(pipeline, "time", clock)
    folder, settings, lines = tmp_path / "stage", {"steps": 10}, []

    def work(seconds, interrupted):
        def run():
            clock.now += seconds
            if interrupted:
                raise stop
            return {"steps": 10}
        return run

    with pytest.raises(type(stop)):
        pipeline.run_stage("pre-train", folder, settings, work(15, True), lines.append)
    with pytest.raises(type(stop)):
        pipeline.run_stage("pre-train", folder, settings, work(8, True), lines.append)
    result = pipeline.run_stage("pre-train", folder, settings, work(21, False), lines.append)
    assert result["seconds"] == 15 + 8 + 21
    assert json.loads((folder / "DONE.json").read_text())["result"]["seconds"] == 15 + 8 + 21
    assert "[pre-train] done in 21 s (+ 23 s before it was interrupted)" in lines

    # Reused, the recorded time stays; a run started afresh (other settings) counts from zero.
    assert pipeline.run_stage("pre-train", folder, settings, work(99, False), lines.append)["seconds"] == 44
    with pytest.raises(type(stop)):
        pipeline.run_stage("pre-train", folder, {"steps": 20}, work(30, True), lines.append)
    assert pipeline.run_stage("pre-train", folder, {"steps": 12}, work(5, False), lines.append)["seconds"] == 5


KILLED_STAGE = """
import sys, time
from pathlib import Path
from vimpac.demo import pipeline

folder = Path(sys.argv[1])

def work():
    (folder / "checkpoint").write_text("step 1")
    time.sleep(600)

pipeline.run_stage("pre-train", folder, {"steps": 10}, work, print)
"""


def test_an_attempt_killed_with_sigkill_still_counts_in_the_stage_time(tmp_path, monkeypatch):
    # Only an attempt that raised recorded its time; one killed outright (kill -9, a reboot) was
    # lost from the time table. Its start is now in STAGE.json before the work begins.
    folder = tmp_path / "stage"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_STAGE, str(folder)], env=env)
    try:
        wait_until(lambda: (folder / "checkpoint").exists(), "the stage's first file", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    started = (folder / "STAGE.json").stat().st_mtime  # written as the attempt started
    # Its last sign of life: the newest file it wrote, here 30 s after its start.
    os.utime(folder / "checkpoint", (started + 30, started + 30))

    clock = FakeClock()
    clock.now = started + 100
    monkeypatch.setattr(pipeline, "time", clock)
    lines: list[str] = []

    def resumed():
        clock.now += 5
        return {"steps": 10}

    result = pipeline.run_stage("pre-train", folder, {"steps": 10}, resumed, lines.append)
    assert result["seconds"] == pytest.approx(35, abs=0.1)
    assert result[pipeline.KILLED_SECONDS] == pytest.approx(30, abs=0.1)
    assert "[pre-train] done in 5 s (+ 30 s before it was interrupted, at least 30 s of it in attempts that " \
           "were killed)" in lines


def test_attempts_killed_one_after_another_each_count_once(tmp_path, monkeypatch):
    # What two kills leave behind, on a fake clock: each attempt records its start before its work,
    # the next one counts it up to its newest file and records that before its own work.
    clock = FakeClock()
    monkeypatch.setattr(pipeline, "time", clock)
    folder, settings = tmp_path / "stage", {"steps": 10}
    stage = pipeline.Stage(folder, settings)

    def attempt_killed_after(seconds):
        stage.start("pre-train", lambda line: None)
        stage.begin_attempt(*stage.earlier_seconds())
        os.utime(folder / "STAGE.json", (clock.now, clock.now))  # written at the fake time
        (folder / "metrics.jsonl").write_text("{}\n")
        os.utime(folder / "metrics.jsonl", (clock.now + seconds, clock.now + seconds))
        clock.now += 1000  # killed; restarted later

    attempt_killed_after(20)
    attempt_killed_after(15)

    def finishing():
        clock.now += 7
        return {}

    result = pipeline.run_stage("pre-train", folder, settings, finishing, lambda line: None)
    assert result["seconds"] == pytest.approx(20 + 15 + 7)
    assert result[pipeline.KILLED_SECONDS] == pytest.approx(20 + 15)


@pytest.mark.parametrize("cores, expected", [(1, 1), (8, 2)])
def test_torch_threads_are_capped_at_the_cores_the_process_may_use(tmp_path, stubs, monkeypatch, cores, expected):
    """threads=2 on one usable core (a SLURM allocation, `taskset`) ran the demo's tokenizer 9x
    slower than 1 thread: two OpenMP threads on one core wait on each other at every op."""
    import torch

    asked = []
    monkeypatch.setattr(pipeline, "usable_cores", lambda: cores)
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    _, log = run(tmp_path / "demo", quick(threads=2, parallel_runs=1), stubs)
    assert stubs.ran("pretrain")  # the training stages ran, in this process
    assert asked and set(asked) == {expected}
    assert ("threads=2, but this process may run on 1 core(s): using 1 torch thread(s)" in log) == (cores == 1)
