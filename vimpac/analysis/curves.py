"""Training curves from a run's RUN/metrics.jsonl (`vimpac plot`).

The engine logs one JSON object per event: {"step", "split": "train" | "val", metric: value}.
Metrics are grouped into panels by name, so pre-training and fine-tuning runs both plot
without a list of known keys: names containing "loss", names ending in "acc" / containing
"accuracy" or "top", and the learning rate "lr". Train curves are solid, val curves dashed
with markers (val is logged rarely); a series of a single point is drawn as a marker.
Non-finite values (logged as the strings "nan" / "inf") are left out of the lines.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vimpac.analysis.errors import AnalysisError
from vimpac.analysis.images import pyplot, save_figure
from vimpac.io import parse_json

METRICS_FILE = "metrics.jsonl"
NON_FINITE_STRINGS = ("nan", "inf", "-inf")
"""How the engine's metrics logger writes non-finite floats (JSON has no NaN)."""


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    log_scale: bool = False

    def wants(self, key: str) -> bool:
        if self.title == "loss":
            return "loss" in key
        if self.title == "accuracy":
            return key.endswith("acc") or "accuracy" in key or key.startswith("top")
        return key == "lr"


PANELS = (Panel("loss", "loss"), Panel("accuracy", "accuracy"), Panel("learning rate", "lr", log_scale=True))

Series = dict[tuple[str, str], tuple[list[int], list[float]]]  # (split, key) -> (steps, values)


def load_series(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> Series:
    """Every numeric metric of RUN/metrics.jsonl as step/value lists per (split, key).

    A last line cut short (no final newline: the run is still writing it, or was killed while
    writing it) is skipped with a message to `warn` (default: `warnings.warn`); an unreadable
    line anywhere else is an error.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if run_dir.is_file():
        raise AnalysisError(f"{run_dir}: is a file; expected the run folder that holds {METRICS_FILE}"
                            + (f" (pass {run_dir.parent})" if run_dir.name == METRICS_FILE else ""))
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AnalysisError(f"{path}: not found; `vimpac plot` needs a run folder written by "
                            "`vimpac pretrain` or `vimpac finetune`") from None
    except UnicodeDecodeError as exc:
        raise AnalysisError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    series: Series = defaultdict(lambda: ([], []))
    non_finite = 0
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except ValueError as exc:  # not JSON, a number of > 4300 digits, nested too deeply
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            if number == len(lines) and not text.endswith("\n"):
                (warn or warnings.warn)(f"{path}:{number}: skipped the last line, cut short ({reason}); "
                                        "the run is still writing it or stopped while writing it")
                continue
            raise AnalysisError(f"{path}:{number}: not valid JSON ({reason})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or "split" not in record:
            raise AnalysisError(f"{path}:{number}: expected an object with an integer 'step' and a 'split'")
        for key, value in record.items():
            if key != "step" and value in NON_FINITE_STRINGS:
                non_finite += 1
            if key in ("step", "split") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                steps, values = series[(str(record["split"]), key)]
                steps.append(record["step"])
                values.append(float(value))
            else:
                non_finite += 1
    if not series:
        left_out = f" ({non_finite} non-finite values such as 'nan' left out: did the run diverge?)" if non_finite else ""
        raise AnalysisError(f"{path}: holds no finite numeric metrics to plot{left_out}")
    return dict(series)


def plot_curves(run_dir: str | Path, out_dir: str | Path | None = None,
                warn: Callable[[str], None] | None = None) -> Path:
    """Write OUT/curves.png (default OUT = RUN/plots): one panel per group that has data."""
    run_dir = Path(run_dir)
    series = load_series(run_dir, warn)
    panels = [(panel, sorted(k for k in series if panel.wants(k[1]))) for panel in PANELS]
    panels = [(panel, keys) for panel, keys in panels if keys]
    if not panels:
        raise AnalysisError(f"{run_dir / METRICS_FILE}: no loss, accuracy or lr metrics among {sorted({k for _, k in series})}")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel, keys) in zip(axes[0], panels):
        names = sorted({key for _, key in keys})
        for split, key in keys:
            steps, values = series[(split, key)]
            color = colors[names.index(key) % len(colors)]
            style = {"linestyle": "-"} if split == "train" else {"linestyle": "--", "marker": "o", "markersize": 3}
            if len(steps) == 1:  # a line through one point draws nothing (a run shorter than log_every)
                style = {**style, "marker": "o", "markersize": 4}
            ax.plot(steps, values, color=color, label=f"{split} {key}", **style)
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel)
        if panel.log_scale and all(v > 0 for k in keys for v in series[k][1]):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    return save_figure(fig, out / "curves.png")
