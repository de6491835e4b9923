"""The demo's report.md from a run's results (no training: the results are written here)."""

from __future__ import annotations

import dataclasses

from vimpac.demo.config import DEMO_PRESETS
from vimpac.demo.report import write_report


def results_of(cfg, finetune_rows):
    evaluation = {"top1": 0.25, "top5": 0.5, "mean_class": 0.25}
    return {
        "config": {}, "seconds": 1.0, "reused": [],
        "stages": {
            "data": {"classes": 14, "train": 56, "uncurated": 2, "frame_size": [64, 64], "seconds": 1.0},
            "tokenizer": {"psnr_db": 20.0, "codes_used_fraction": 0.5, "bf16_fp32_token_agreement": 1.0},
            "stores": {},
            "pretrain": {v: {"metrics": {"val/mask_acc": 0.5}} for v in cfg.pretrain_variants},
            "finetune": {row: {"evaluation": evaluation} for row in finetune_rows},
        },
    }


def test_the_single_frame_note_stands_only_beside_a_single_frame_row(tmp_path):
    note = "The single-frame row sees one frame per clip"
    cfg = DEMO_PRESETS["quick"]
    write_report(tmp_path, cfg, results_of(cfg, ["scratch", "mp_cl", "mp_only", "single_frame"]))
    assert note in (tmp_path / "report.md").read_text()

    cfg = dataclasses.replace(cfg, pretrain_variants=("mp_only",))  # no MP + CL model: no single-frame row
    write_report(tmp_path, cfg, results_of(cfg, ["scratch", "mp_only"]))
    report = (tmp_path / "report.md").read_text()
    assert "VIMPAC, single frame" not in report and note not in report


def test_each_variant_has_one_colour_in_every_panel_and_one_legend_entry(tmp_path, monkeypatch):
    # CL only logs no masked-token curves: the contrastive panel gave it the second colour, which the
    # legend (on the masked-token panel) gave to MP only.
    import json

    from vimpac.demo import report

    logged = {"mp_only": {"mask_loss": 5.0, "mask_acc": 0.1}, "cl_only": {"cl_loss": 4.0},
              "mp_cl_seed1": {"mask_loss": 5.0, "cl_loss": 4.0}, "mp_cl_seed2": {"mask_loss": 5.0, "cl_loss": 4.0}}
    for name, values in logged.items():
        folder = tmp_path / "pretrain" / name
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text(
            "".join(json.dumps({"split": "train", "step": s, **values}) + "\n" for s in (1, 2)))
    figures = []
    monkeypatch.setattr(report, "_save_figure", lambda fig, path: figures.append(fig))
    report.plot_pretraining(tmp_path, {"stages": {"pretrain": dict.fromkeys(logged, {})}})
    legend = figures[0].axes[0].get_legend()
    colours = {text.get_text(): handle.get_color() for text, handle in zip(legend.get_texts(), legend.legend_handles)}
    assert list(colours) == ["MP only", "CL only", "VIMPAC (MP + CL)"]  # one entry per variant, seeds too
    assert len(set(colours.values())) == 3
    contrastive = figures[0].axes[1].lines
    assert [line.get_color() for line in contrastive] == [colours["CL only"]] + 2 * [colours["VIMPAC (MP + CL)"]]


def test_the_time_table_marks_stages_with_a_killed_attempt(tmp_path):
    cfg = DEMO_PRESETS["quick"]
    results = results_of(cfg, ["scratch", "mp_only"])
    write_report(tmp_path, cfg, results)
    assert "killed" not in (tmp_path / "report.md").read_text()
    results["stages"]["data"].update(seconds=50.0, killed_seconds=30.0)
    write_report(tmp_path, cfg, results)
    report = (tmp_path / "report.md").read_text()
    assert "| 1/6 synthetic benchmark | 50 * |" in report
    assert "\\* includes attempts that were killed (kill -9, a reboot)" in report
    assert "so at least: 1/6 synthetic benchmark 30 s." in report
