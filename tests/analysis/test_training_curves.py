"""`vimpac plot`: curves from a metrics.jsonl written here, and the errors on bad logs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from vimpac.analysis.curves import load_series, plot_curves
from vimpac.analysis.errors import AnalysisError
from vimpac.cli import main

TAB_BLUE = np.array([31, 119, 180])  # matplotlib's first colour (C0)
TAB_ORANGE = np.array([255, 127, 14])  # C1


def write_metrics(run, records):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def pretrain_like_records():
    records = []
    for step in range(10, 210, 10):
        records.append({"step": step, "split": "train", "loss": 5.0 / (1 + step / 50), "mask_loss": 4.0 / (1 + step / 50),
                        "cl_loss": 1.0 / (1 + step / 100), "mask_acc": step / 400, "cl_acc": step / 250,
                        "lr": 1e-3 * min(1.0, step / 50), "grad_norm": 1.0, "clips_per_s": 30.0})
        if step % 50 == 0:
            records.append({"step": step, "split": "val", "loss": 5.5 / (1 + step / 50), "mask_acc": step / 450,
                            "majority_acc": 0.5})
    records.append({"step": 210, "split": "train", "loss": "nan", "lr": 1e-3})  # a skipped non-finite step
    return records


def pixels_near(image: np.ndarray, color: np.ndarray, tolerance: int = 12) -> int:
    return int((np.abs(image.astype(int) - color).max(-1) <= tolerance).sum())


def test_plot_writes_three_panels_with_train_and_val(tmp_path):
    run = tmp_path / "run"
    write_metrics(run, pretrain_like_records())
    path = plot_curves(run)
    assert path == run / "plots" / "curves.png"
    image = (imread(path)[..., :3] * 255).round().astype(np.uint8)
    assert image.shape == (400, 1650, 3)  # three 5.5 x 4 inch panels at 100 dpi
    assert image.std() > 10
    third = image.shape[1] // 3
    for panel in range(3):  # each panel has drawn lines in it
        assert pixels_near(image[:, panel * third:(panel + 1) * third], TAB_BLUE) > 200
    assert pixels_near(image[:, :third], TAB_ORANGE) > 100  # a second loss curve
    series = load_series(run)
    assert series[("train", "loss")][0][-1] == 200  # "nan" left out
    assert series[("val", "mask_acc")][0] == [50, 100, 150, 200]


def test_panels_without_data_are_left_out(tmp_path):
    run = tmp_path / "run"
    write_metrics(run, [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 20)])
    image = imread(plot_curves(run, tmp_path / "out"))
    assert image.shape[:2] == (400, 550)
    assert (tmp_path / "out" / "curves.png").exists()


def test_a_single_logged_step_is_drawn(tmp_path):
    # A run shorter than log_every logs one train row: a line through one point would draw nothing.
    run = tmp_path / "run"
    write_metrics(run, [{"step": 5, "split": "train", "loss": 2.0}])
    image = (imread(plot_curves(run))[..., :3] * 255).round().astype(np.uint8)
    assert image.shape[:2] == (400, 550)
    # Matplotlib centres a lone point in its axes; the legend (also blue) sits in a corner.
    centre = image[150:250, 225:325]
    assert pixels_near(centre, TAB_BLUE) >= 5


def test_a_log_of_only_non_finite_values_says_so(tmp_path):
    # A run that diverged from the start logs its losses as "nan" (JSON has no NaN).
    run = tmp_path / "run"
    write_metrics(run, [{"step": s, "split": "train", "loss": "nan", "mask_acc": "nan"} for s in (10, 20)]
                  + [{"step": 20, "split": "val", "loss": "inf"}])
    with pytest.raises(AnalysisError, match=r"no finite numeric metrics to plot \(5 non-finite values such as "
                                            r"'nan' left out"):
        plot_curves(run)


def test_bad_logs_are_typed_errors_naming_the_file(tmp_path, capsys):
    with pytest.raises(AnalysisError, match="metrics.jsonl: not found"):
        load_series(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, oops\n')
    with pytest.raises(AnalysisError, match=r"metrics.jsonl:2: not valid JSON"):
        load_series(run)
    (run / "metrics.jsonl").write_text('{"split": "train", "loss": 1.0}\n')
    with pytest.raises(AnalysisError, match=r":1: expected an object with an integer 'step'"):
        load_series(run)
    assert main(["plot", str(run)]) == 2
    assert "vimpac plot:" in capsys.readouterr().err
    write_metrics(run, [{"step": 1, "split": "train", "clips_per_s": 3.0}])
    with pytest.raises(AnalysisError, match="no loss, accuracy or lr"):
        plot_curves(run)


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path, capsys):
    # A live run (or one killed mid-write) leaves its last line without the final newline.
    run = tmp_path / "run"
    write_metrics(run, [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 8)])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "split": "tra')
    warnings = []
    series = load_series(run, warn=warnings.append)
    assert series[("train", "loss")][0] == list(range(1, 8))
    assert len(warnings) == 1 and "metrics.jsonl:8: skipped the last line" in warnings[0]
    with pytest.warns(UserWarning, match="skipped the last line"):
        load_series(run)
    assert main(["plot", str(run)]) == 0
    captured = capsys.readouterr()
    assert "vimpac plot: warning:" in captured.err and "metrics.jsonl:8" in captured.err
    assert (run / "plots" / "curves.png").exists()
    # A bad line that is not the last one is still an error, torn tail or not.
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text.replace('"step": 3,', '"step": 3 oops', 1))
    with pytest.raises(AnalysisError, match=r"metrics.jsonl:3: not valid JSON"):
        load_series(run, warn=warnings.append)
