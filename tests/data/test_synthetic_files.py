"""The benchmark on disk: annotation lists, decodable H.264 files, resuming, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pytest

from vimpac.cli import main
from vimpac.config import build_config, from_dict, to_dict
from vimpac.data.synthetic import (
    SYNTHETIC_PRESETS,
    SyntheticConfig,
    SyntheticError,
    generate_benchmark,
    generate_uncurated,
    render_video,
    video_rng,
)

CFG = SyntheticConfig(
    classes=("moving_right", "moving_left", "appearing"), train_per_class=2, val_per_class=1,
    num_frames=8, height=32, width=48, uncurated_videos=1, uncurated_seconds=3.0, event_seconds=(1.0, 1.5),
)


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    summary = generate_benchmark(out, CFG, progress=False, workers=1)
    assert (summary.split("train").videos, summary.split("val").videos) == (6, 3)
    assert summary.written == 9 and summary.skipped == 0 and summary.disk_bytes > 0
    summary = generate_uncurated(out, CFG, progress=False, workers=1)
    assert summary.split("uncurated").videos == 1
    return out


def test_annotation_lists_are_well_formed(bench_dir: Path) -> None:
    assert (bench_dir / "classes.txt").read_text().splitlines() == list(CFG.classes)
    for split, per_class in (("train", 2), ("val", 1)):
        lines = (bench_dir / f"{split}.txt").read_text().splitlines()
        assert len(lines) == per_class * len(CFG.classes)
        for line in lines:
            rel, label = line.split(" ")
            class_name = CFG.classes[int(label)]
            assert rel.startswith(f"videos/{class_name}/{class_name}_{split}_")
            frames = _decode(bench_dir / rel)
            assert frames.shape == (CFG.num_frames, CFG.height, CFG.width, 3)
    uncurated = (bench_dir / "uncurated.txt").read_text().splitlines()
    assert uncurated == ["uncurated/uncurated_0000.mp4"]
    assert _decode(bench_dir / uncurated[0]).shape == (CFG.uncurated_frames, CFG.height, CFG.width, 3)
    events = json.loads((bench_dir / "uncurated_events.json").read_text())["videos"][uncurated[0]]
    assert events[0]["start"] == 0 and events[-1]["end"] == CFG.uncurated_frames
    manifest = json.loads((bench_dir / "synthetic.json").read_text())
    assert manifest["config"]["num_frames"] == CFG.num_frames and manifest["class_names"] == list(CFG.classes)


def test_lists_parse_with_the_annotation_reader(bench_dir: Path) -> None:
    annotations = pytest.importorskip("vimpac.data.annotations")
    records = annotations.read_mmaction_list(bench_dir / "train.txt", bench_dir / "classes.txt")
    assert len(records) == 6 and records.num_classes == 3


def test_encoded_video_matches_the_render(bench_dir: Path) -> None:
    rel = "videos/moving_left/moving_left_val_0000.mp4"
    rendered = render_video("moving_left", video_rng(CFG.seed, "val", 0, "moving_left"), CFG)
    other = render_video("moving_left", video_rng(CFG.seed, "val", 1, "moving_left"), CFG)
    decoded = _decode(bench_dir / rel).astype(np.float32)
    # Lossy H.264 (4:2:0 chroma at 32x48 px): not bit-exact, but far closer to its own render
    # than to another video of the same class.
    assert np.abs(decoded - rendered).mean() < 0.5 * np.abs(decoded - other).mean()


def test_rerun_skips_existing_videos(bench_dir: Path) -> None:
    videos = sorted(bench_dir.glob("videos/*/*.mp4"))
    before = {p: p.stat().st_mtime_ns for p in videos}
    victim = videos[0]
    victim.unlink()
    summary = generate_benchmark(bench_dir, CFG, progress=False, workers=1)
    assert summary.written == 1 and summary.skipped == 8
    assert all(p.stat().st_mtime_ns == before[p] for p in videos if p != victim)
    # More clips per class is a resumable change: only the new ones are written.
    bigger = dataclasses.replace(CFG, train_per_class=3)
    assert generate_benchmark(bench_dir, bigger, progress=False, workers=1).written == 3
    generate_benchmark(bench_dir, CFG, progress=False, workers=1)  # restore the lists


def test_other_content_settings_are_refused(bench_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SyntheticError, match=r"synthetic\.json.*num_frames=8"):
        generate_benchmark(bench_dir, dataclasses.replace(CFG, num_frames=10), progress=False, workers=1)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(SyntheticError, match="not a folder"):
        generate_benchmark(not_a_folder, CFG, progress=False, workers=1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "synthetic.json").write_text("{not json")
    with pytest.raises(SyntheticError, match="not a readable"):
        generate_benchmark(broken, CFG, progress=False, workers=1)


def test_worker_pool_writes_the_same_videos(tmp_path: Path) -> None:
    # Procedural backgrounds: the workers then skip loading the photos (keeps the test fast).
    cfg = dataclasses.replace(CFG, classes=("moving_left",), val_per_class=0, uncurated_videos=0, backgrounds="noise")
    generate_benchmark(tmp_path / "pool", cfg, progress=False, workers=2)
    generate_benchmark(tmp_path / "inline", cfg, progress=False, workers=1)
    paths = sorted((tmp_path / "pool").glob("videos/*/*.mp4"))
    assert len(paths) == 2
    for path in paths:
        # The rendered frames are bit-identical, but libx264 with threads is not deterministic under
        # load (two runs can round some blocks differently), so compare with a tolerance.
        ours = _decode(path).astype(np.float32)
        theirs = _decode(tmp_path / "inline" / path.relative_to(tmp_path / "pool"))
        assert np.abs(ours - theirs).mean() < 2.0


def test_cli_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([
        "make-synthetic", "--out", str(tmp_path), "--preset", "tiny", "--classes", "moving_up,moving_down", "--train-per-class", "1",
        "--val-per-class", "1", "--seconds", "1", "--fps", "6", "--size", "32x32", "--uncurated-videos", "0",
        "--workers", "1", "--no-progress",
    ])
    out = capsys.readouterr().out
    assert code == 0
    assert "2 classes" in out and "32x32 px" in out and "train" in out and "moving_down / moving_up" in out
    assert len((tmp_path / "train.txt").read_text().splitlines()) == 2
    assert _decode(tmp_path / "videos/moving_up/moving_up_train_0000.mp4").shape == (6, 32, 32, 3)


def test_a_rerun_without_uncurated_videos_drops_the_earlier_runs_lists(tmp_path: Path, capsys) -> None:
    """`--uncurated-videos 0` into a folder where a run had written uncurated videos left
    uncurated.txt / uncurated_events.json listing them, though the manifest now says 0."""
    args = ["make-synthetic", "--out", str(tmp_path), "--preset", "tiny", "--classes", "moving_up", "--train-per-class",
            "1", "--val-per-class", "0", "--seconds", "1", "--fps", "4", "--size", "32x32", "--backgrounds", "noise",
            "--uncurated-seconds", "5", "--workers", "1", "--no-progress"]
    assert main([*args, "--uncurated-videos", "1"]) == 0
    assert (tmp_path / "uncurated.txt").read_text() == "uncurated/uncurated_0000.mp4\n"
    capsys.readouterr()
    assert main([*args, "--uncurated-videos", "0"]) == 0
    assert not (tmp_path / "uncurated.txt").exists() and not (tmp_path / "uncurated_events.json").exists()
    manifest = json.loads((tmp_path / "synthetic.json").read_text())
    assert manifest["config"]["uncurated_videos"] == 0 and "uncurated" not in manifest["files"]
    assert "removed uncurated.txt and uncurated_events.json of an earlier run" in capsys.readouterr().err
    assert (tmp_path / "uncurated" / "uncurated_0000.mp4").is_file()  # a video is never deleted
    assert main([*args, "--uncurated-videos", "1"]) == 0  # and a later run lists it again
    assert (tmp_path / "uncurated.txt").read_text() == "uncurated/uncurated_0000.mp4\n"
    assert json.loads((tmp_path / "synthetic.json").read_text())["files"]["uncurated"] == "uncurated.txt"


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-synthetic", "--out", str(tmp_path), "--classes", "moving_sideways", "--no-progress"]) == 2
    assert "moving_sideways" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["make-synthetic", "--out", str(tmp_path), "--size", "big"])


def test_config_overrides_and_mpeg4(tmp_path: Path) -> None:
    cfg = build_config(
        SyntheticConfig, presets=SYNTHETIC_PRESETS, preset="tiny",
        overrides=["classes=moving_up,moving_down", "event_seconds=[1,2]", "codec=mpeg4", "height=32", "width=48",
                   "train_per_class=1", "val_per_class=0", "uncurated_videos=0"],
    )
    assert cfg.classes == ("moving_up", "moving_down") and cfg.event_seconds == (1.0, 2.0)
    assert from_dict(SyntheticConfig, to_dict(cfg)) == cfg
    generate_benchmark(tmp_path, cfg, progress=False, workers=1)
    rel, label = (tmp_path / "train.txt").read_text().splitlines()[1].split(" ")
    assert label == "1" and "moving_down" in rel
    with av.open(str(tmp_path / rel)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert _decode(tmp_path / rel).shape == (cfg.num_frames, 32, 48, 3)


def test_a_worker_that_dies_is_a_clear_error_and_a_rerun_finishes(tmp_path):
    """A video-writing worker killed mid-run (os._exit, as the OOM killer would) ends generation
    with a SyntheticError saying what to do; the videos already written are kept, and a re-run
    makes the rest."""
    from synthetic_workers import make_or_die
    from vimpac.data.synthetic import _Job, _run_jobs, labelled_path

    jobs = [_Job(str(tmp_path / labelled_path("moving_right", "train", i)), CFG, "train", i, "moving_right")
            for i in range(6)]
    with pytest.raises(SyntheticError, match="worker process died .* run the same command again"):
        _run_jobs(jobs, workers=2, progress=False, desc="synthetic videos", make=make_or_die)
    results = _run_jobs(jobs, workers=2, progress=False, desc="synthetic videos")
    assert len(results) == 6 and all(Path(r.path).stat().st_size > 0 for r in results)
    for r in results:
        with av.open(r.path) as container:
            assert sum(1 for _ in container.decode(video=0)) == CFG.num_frames  # whole files only


def test_a_script_without_main_guard_is_told_so(tmp_path):
    """A script calling generate_benchmark(workers=2) at top level (no `__main__` guard, as the
    docs' snippet once was): every spawned worker re-runs that call and dies on start-up. This
    was reported as "a worker process died (out of memory, or killed)"; it now names the guard."""
    from process_helpers import script_error_line

    script = tmp_path / "make_benchmark.py"
    script.write_text(
        "from vimpac.data.synthetic import SyntheticConfig, generate_benchmark\n"
        "cfg = SyntheticConfig(classes=('moving_right',), train_per_class=2, val_per_class=0, num_frames=8,\n"
        "                      height=32, width=32, uncurated_videos=0)\n"
        f"generate_benchmark({str(tmp_path / 'bench')!r}, cfg, progress=False, workers=2)\n")
    error_line = script_error_line(script, tmp_path, [Path(__file__).resolve().parents[2]],
                                   "vimpac.data.synthetic.SyntheticError")
    assert error_line.startswith("vimpac.data.synthetic.SyntheticError: synthetic videos: worker processes die")
    assert 'if __name__ == "__main__":' in error_line and "out of memory (" not in error_line


def test_cli_refuses_a_non_empty_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    args = ["make-synthetic", "--out", str(tokenizer), "--preset", "tiny", "--uncurated-videos", "0", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(tokenizer) in err and "synthetic.json" in err and "not empty" in err
    assert sorted(p.name for p in tokenizer.iterdir()) == ["tokenizer.json"]  # nothing written into it


def test_rerun_removes_its_stale_temporaries(bench_dir: Path) -> None:
    # What a run killed inside write_video leaves: ".<video>.<random>.tmp.mp4" beside the video.
    folder = bench_dir / "videos" / "moving_right"
    stale = [folder / ".moving_right_train_0000.mp4.k2x9q1zz.tmp.mp4", folder / ".moving_right_val_0000.mp4.a_b_c123.tmp.mp4"]
    not_ours = [folder / ".notes.tmp.mp4", folder / ".moving_right_train_0099.mp4.k2x9q1zz.tmp.mp4"]
    for path in stale + not_ours:
        path.write_bytes(b"partial")
    summary = generate_benchmark(bench_dir, CFG, progress=False, workers=1)
    assert summary.written == 0  # every video was already whole
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in not_ours)  # not the temporary of a video of this benchmark
    for path in not_ours:
        path.unlink()


def test_cli_size_error_says_what_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for size in ("18x10", "30x32", "33x32"):
        with pytest.raises(SystemExit):
            main(["make-synthetic", "--out", str(tmp_path / "out"), "--size", size])
        err = capsys.readouterr().err
        assert "--size" in err and "even and >= 32" in err and size in err
    assert not (tmp_path / "out").exists()


def test_workers_exit_when_make_synthetic_is_killed(tmp_path: Path) -> None:
    """kill -9 of `vimpac make-synthetic` left its spawned workers waiting forever for work
    (re-parented to PID 1, ~100 MB each); one busy with a video went on writing it."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys

    from process_helpers import descendants, wait_gone, wait_until

    out = tmp_path / "bench"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vimpac.cli", "make-synthetic", "--out", str(out), "--preset", "tiny",
         "--classes", "moving_right", "--train-per-class", "500", "--uncurated-videos", "0", "--workers", "2",
         "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # Videos are written by the workers: once one is there, they are at work.
        wait_until(lambda: bool(list(out.glob("videos/*/*.mp4"))), "the first video", process,
                   output=lambda: process.communicate()[1].decode()[-2000:])
        workers = descendants(process.pid)
        assert len(workers) >= 2
        process.kill()
        process.wait()
        assert wait_gone(workers) == set(), "make-synthetic's workers outlived it"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_progress_in_a_log_file_is_lines_not_a_bar(tmp_path: Path) -> None:
    # stderr redirected to a file, as in a cluster job: a tqdm bar there was one endless line of '\r'.
    import subprocess
    import sys

    log = tmp_path / "job.log"
    with open(log, "w") as stderr:
        subprocess.run([sys.executable, "-m", "vimpac.cli", "make-synthetic", "--out", str(tmp_path / "data"),
                        "--preset", "tiny", "--classes", "moving_up,moving_down", "--train-per-class", "2",
                        "--val-per-class", "1", "--seconds", "1", "--fps", "6", "--size", "32x32",
                        "--uncurated-videos", "0", "--workers", "1"],
                       stdout=subprocess.DEVNULL, stderr=stderr, check=True)
    text = log.read_bytes().decode()  # not read_text, whose universal newlines turn '\r' into '\n'
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("synthetic videos: ")]
    assert lines and lines[-1].startswith("synthetic videos: 6/6 video (100%)")
