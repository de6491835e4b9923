"""The demo's results: tables shaped like the paper's Tables 7 and 8, plots, report.md."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vimpac.demo.config import DemoConfig
from vimpac.demo.pipeline import KILLED_SECONDS, VARIANT_TITLES, _block_ratio, stage_results, stage_seconds
from vimpac.engine.metrics import read_metrics
from vimpac.io import atomic_path, atomic_write_text

# Paper rows (Table 7: UCF101 / SSV2 columns; Table 8: UCF101) for reference beside ours.
TABLE7_ROWS = (("scratch", False, False), ("cl_only", False, True), ("mp_only", True, False), ("mp_cl", True, True))


def _accuracies(results: dict[str, Any], row: str) -> list[float]:
    """Top-1 of every seed's run of `row` (percent)."""
    runs = results["stages"]["finetune"]
    values = [r["evaluation"]["top1"] * 100 for name, r in runs.items()
              if (name == row or name.startswith(f"{row}_seed")) and r.get("evaluation")]
    return values


def _mean_text(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def _pretrain_metric(results: dict[str, Any], variant: str, key: str) -> list[float]:
    runs = results["stages"]["pretrain"]
    return [r["metrics"][key] for name, r in runs.items()
            if (name == variant or name.startswith(f"{variant}_seed")) and key in r.get("metrics", {})]


def build_tables(results: dict[str, Any], cfg: DemoConfig) -> dict[str, str]:
    check = {True: "✓", False: "✗"}
    lines7 = ["| MP | CL | synthetic top-1 (%) |", "|:--:|:--:|--:|"]
    for row, mp, cl in TABLE7_ROWS:
        if row == "scratch" or row in cfg.pretrain_variants:
            lines7.append(f"| {check[mp]} | {check[cl]} | {_mean_text(_accuracies(results, row))} |")
    lines8 = ["| strategy | mask ratio | val mask-accu. (%) | synthetic top-1 (%) |", "|---|--:|--:|--:|"]
    ratio = _block_ratio(cfg) * 100
    for row, strategy in (("mp_only", "block"), ("iid_mp", "i.i.d.")):
        if row in cfg.pretrain_variants:
            acc = [v * 100 for v in _pretrain_metric(results, row, "val/mask_acc")]
            lines8.append(f"| {strategy} | {ratio:.1f}% | {_mean_text(acc)} | {_mean_text(_accuracies(results, row))} |")
    lines_all = ["| fine-tuning run | top-1 (%) | mean-class (%) | top-5 (%) |", "|---|--:|--:|--:|"]
    for name, run in results["stages"]["finetune"].items():
        ev = run.get("evaluation") or {}
        if ev:
            lines_all.append(f"| {VARIANT_TITLES.get(name.split('_seed')[0], name)}"
                             f"{' (' + name.split('_seed')[1] + ')' if '_seed' in name else ''} | "
                             f"{ev['top1'] * 100:.1f} | {ev['mean_class'] * 100:.1f} | {ev['top5'] * 100:.1f} |")
    return {"table7": "\n".join(lines7), "table8": "\n".join(lines8), "all_runs": "\n".join(lines_all)}


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=90)


def plot_pretraining(out: Path, results: dict[str, Any]) -> Path | None:
    """Training curves of this run's pre-training variants (not of every folder in pretrain/,
    which may hold runs of variants this run did not ask for)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    # One colour per variant in every panel, and one legend for all: each panel used to take the
    # next colour for each line it got, so CL only (no masked-token curves) had MP only's colour in
    # the contrastive panel, where the legend (on the first panel) said MP only.
    variants = list(dict.fromkeys(name.split("_seed")[0] for name in results["stages"]["pretrain"]))
    legend: dict[str, Any] = {}
    for run_dir in (out / "pretrain" / name for name in results["stages"]["pretrain"]):
        if not (run_dir / "metrics.jsonl").exists():
            continue
        records = [r for r in read_metrics(run_dir) if r["split"] == "train"]
        variant = run_dir.name.split("_seed")[0]
        label = VARIANT_TITLES.get(variant, run_dir.name)
        for ax, key in zip(axes, ("mask_loss", "cl_loss", "mask_acc")):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                (line,) = ax.plot(*zip(*points), color=f"C{variants.index(variant) % 10}", label=label)
                legend.setdefault(label, line)
    plotted = bool(legend)
    for ax, title in zip(axes, ("masked-token loss", "contrastive loss", "masked-token accuracy")):
        ax.set_title(title)
        ax.set_xlabel("update")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "update 10.25"
        ax.grid(alpha=0.3)
    if legend:
        axes[0].legend(list(legend.values()), list(legend), fontsize=8)
    path = out / "pretraining_curves.png"
    fig.tight_layout()
    if plotted:
        _save_figure(fig, path)
    else:
        path.unlink(missing_ok=True)  # an earlier run's curves would pass for this run's
    plt.close(fig)
    return path if plotted else None


def plot_accuracies(out: Path, results: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(name.split("_seed")[0] for name in results["stages"]["finetune"]))
    means = [np.mean(_accuracies(results, row) or [0.0]) for row in rows]
    spreads = [np.std(_accuracies(results, row), ddof=1) if len(_accuracies(results, row)) > 1 else 0.0
               for row in rows]
    num_classes = results["stages"]["data"]["classes"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(range(len(rows)), means, yerr=spreads, color=["#999999" if r == "scratch" else "#3b75af" for r in rows])
    ax.axhline(100 / num_classes, color="red", linestyle="--", linewidth=1, label=f"chance ({100 / num_classes:.1f}%)")
    ax.set_xticks(range(len(rows)), [VARIANT_TITLES.get(r, r) for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Fine-tuning on the synthetic temporally-heavy benchmark (same budget per row)")
    ax.legend()
    fig.tight_layout()
    path = out / "finetune_accuracy.png"
    _save_figure(fig, path)
    plt.close(fig)
    return path


def write_report(out: Path, cfg: DemoConfig, results: dict[str, Any]) -> dict[str, str]:
    tables = build_tables(results, cfg)
    curves = plot_pretraining(out, results)
    bars = plot_accuracies(out, results)
    stages = results["stages"]
    tok = stages["tokenizer"]
    seconds = stage_seconds(stages)
    reused = set(results.get("reused", ()))
    killed = {title: result[KILLED_SECONDS] for title, result in stage_results(stages).items()
              if result.get(KILLED_SECONDS)}
    timing = [f"| {title} | {value:.0f}{' *' if title in killed else ''} | {'yes' if title in reused else ''} |"
              for title, value in seconds.items()]
    # An attempt killed outright (kill -9, a reboot) could not record its end: the next one counted it
    # up to the newest file it wrote, so the time shown is a lower bound.
    killed_note = ("\n\\* includes attempts that were killed (kill -9, a reboot), each counted from its start "
                   "to the last file it wrote, so at least: "
                   + ", ".join(f"{title} {value:.0f} s" for title, value in killed.items()) + ".\n") if killed else ""
    data = stages["data"]
    chance = 100 / data["classes"]
    single_frame_note = (
        "\nThe single-frame row sees one frame per clip: it can tell which pair of classes a video belongs to, not "
        "which\ndirection, so it should stay near half of the pair-level accuracy. That is what makes the benchmark "
        "temporally heavy.\n")
    text = f"""# vimpac demo report

Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {cfg.threads} threads.
Settings: `{json.dumps(results['config'])}`.
Stages reused from an earlier run report the time of that run.

## Data and tokenizer

- Synthetic temporally-heavy benchmark: {data['classes']} classes in reversed pairs, {data['train']} training
  videos, {data['uncurated']} uncurated long videos for pre-training, {data['frame_size'][0]}x{data['frame_size'][1]} px.
- Our VQ-VAE (tiny preset): held-out PSNR {tok['psnr_db']:.2f} dB, {tok['codes_used_fraction'] * 100:.0f}% of codes used,
  bf16 / fp32 token agreement {tok['bf16_fp32_token_agreement'] * 100:.1f}%.
- Clips: T = {cfg.frames} frames at {cfg.fps:g} FPS, {cfg.size} px frames = {cfg.size // 8}x{cfg.size // 8} tokens.

## Pre-training tasks (shape of the paper's Table 7)

Fine-tuning top-1 on the synthetic benchmark's validation split (chance {chance:.1f}%), every row with the same
fine-tuning budget ({cfg.finetune_steps} updates of {cfg.finetune_batch} clips) and seeds {list(cfg.seeds)}.

{tables['table7']}

## Masking strategy (shape of the paper's Table 8; pre-trained with MP only)

{tables['table8']}

## Every fine-tuning run

{tables['all_runs']}
{single_frame_note if _accuracies(results, 'single_frame') else ''}
![accuracies]({bars.name})
{f'![pre-training curves]({curves.name})' if curves else ''}

## Time per stage (seconds)

| stage | seconds | reused |
|---|--:|:--:|
{chr(10).join(timing)}
| all stages | {sum(seconds.values()):.0f}{' *' if killed else ''} | |
{killed_note}
This run took {results['seconds']:.0f} s ({len(reused)} stage(s) reused).
"""
    atomic_write_text(out / "report.md", text)
    return tables
