"""An analysis command's --out folder describes one run: a rerun removes the pictures of an
earlier run that it did not draw (and nothing else), and a failed rerun leaves the earlier
results whole."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest

import vimpac.analysis.copy_baseline
import vimpac.analysis.masks
from vimpac.analysis.outputs import staged_outputs
from vimpac.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from analysis_helpers import smooth_token_videos, tiny_vqvae, write_token_store  # noqa: E402

CODES = 16


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def disk_full(path) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.fixture(scope="module")
def tokenizer_and_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    tokenizer = tiny_vqvae(CODES)
    tokenizer.save_pretrained(root / "tokenizer")
    videos = smooth_token_videos(3, frames=5, grid=4, codebook_size=CODES, patch=2)
    store = write_token_store(root / "store", videos, CODES, tokenizer_id=tokenizer.tokenizer_id)
    return root / "tokenizer", store


def copy_baseline(store: Path, out: Path, *options: str) -> int:
    return main(["analyze", "copy-baseline", "--store", str(store), "--out", str(out), "--videos", "3",
                 "--frames", "4", *options])


def test_copy_baseline_rerun_keeps_only_the_pictures_its_report_lists(tokenizer_and_store, tmp_path, capsys):
    tokenizer, store = tokenizer_and_store
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")  # not ours: kept whatever the runs do
    (out / "copy_block_15.png.bak").write_text("mine too\n")
    assert copy_baseline(store, out, "--tokenizer", str(tokenizer), "--ratios", "0.15,0.3") == 0
    assert sorted(p.name for p in out.glob("copy_*.png")) == [
        "copy_block_15.png", "copy_block_30.png", "copy_iid_15.png", "copy_iid_30.png"]

    assert copy_baseline(store, out, "--tokenizer", str(tokenizer), "--ratios", "0.2") == 0
    report = json.loads((out / "copy_baseline.json").read_text())
    assert report["pictures"] == {"block_20": str(out / "copy_block_20.png"), "iid_20": str(out / "copy_iid_20.png")}
    assert sorted(p.name for p in out.iterdir()) == [
        "copy_baseline.json", "copy_block_15.png.bak", "copy_block_20.png", "copy_iid_20.png", "notes.txt"]

    assert copy_baseline(store, out, "--ratios", "0.2") == 0  # no --tokenizer: no pictures
    assert json.loads((out / "copy_baseline.json").read_text())["pictures"] == {}
    assert sorted(p.name for p in out.iterdir()) == ["copy_baseline.json", "copy_block_15.png.bak", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine\n"
    capsys.readouterr()


def test_a_failed_copy_baseline_rerun_leaves_the_earlier_results_whole(tokenizer_and_store, tmp_path, capsys,
                                                                       monkeypatch):
    tokenizer, store = tokenizer_and_store
    out = tmp_path / "out"
    assert copy_baseline(store, out, "--tokenizer", str(tokenizer), "--ratios", "0.3,0.5") == 0
    before = folder_bytes(out)
    real_draw = vimpac.analysis.copy_baseline.draw_setting
    drawn = []

    def draw_then_fill_the_disk(tokenizer, clips, setting, path, show=1):
        if drawn:
            raise disk_full(path)
        drawn.append(path)
        return real_draw(tokenizer, clips, setting, path, show)

    monkeypatch.setattr(vimpac.analysis.copy_baseline, "draw_setting", draw_then_fill_the_disk)
    # Another seed: the first picture drawn differs from the earlier run's.
    assert copy_baseline(store, out, "--tokenizer", str(tokenizer), "--ratios", "0.3,0.5", "--seed", "1") == 2
    assert "No space left on device" in capsys.readouterr().err
    assert drawn and folder_bytes(out) == before  # nothing replaced, nothing left over


def test_a_failed_masks_rerun_leaves_the_earlier_results_whole(tmp_path, capsys, monkeypatch):
    out = tmp_path / "masks"
    argv = ["analyze", "masks", "--frames", "3", "--grid", "6", "6", "--histogram-samples", "20", "--out", str(out)]
    assert main(argv) == 0
    before = folder_bytes(out)
    assert sorted(before) == ["block_masks.png", "iid_masks.png", "masks.json", "ratio_histogram.png"]

    def fail(samples, path):
        raise disk_full(path)

    monkeypatch.setattr(vimpac.analysis.masks, "draw_ratio_histogram", fail)
    assert main([*argv, "--seed", "7"]) == 2  # its mask pictures are drawn before the histogram fails
    assert "No space left on device" in capsys.readouterr().err
    assert folder_bytes(out) == before


def test_staged_outputs_moves_the_new_files_and_removes_only_stale_ones_of_ours(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.png", "b.png", "other.txt"):
        (out / name).write_text("old\n")
    with staged_outputs(out, ours=lambda name: name.endswith(".png"), report="report.json") as staging:
        assert staging.parent == out and staging.name.startswith(".")
        (staging / "b.png").write_text("new\n")
        (staging / "report.json").write_text("{}\n")
        assert (out / "b.png").read_text() == "old\n"  # nothing moves before the block completes
    assert folder_bytes(out) == {"b.png": b"new\n", "other.txt": b"old\n", "report.json": b"{}\n"}


def test_a_failed_first_run_leaves_no_folder(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_outputs(out, ours=lambda name: True) as staging:
            (staging / "a.png").write_text("half\n")
            raise RuntimeError("drawing failed")
    assert not out.exists()
