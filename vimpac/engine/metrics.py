"""Metrics to a JSONL file (for scripts and `vimpac plot`) and to TensorBoard (for people)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vimpac.io import atomic_write_text


class MetricsLogger:
    """Appends one JSON object per logging event to RUN/metrics.jsonl; mirrors scalars to
    TensorBoard under RUN/tensorboard. Only the main rank writes (`enabled=False` elsewhere).

    The TensorBoard event file is opened at the first record, so that one opened after
    `truncate_after(step)` (a resume) purges the earlier event files' points past `step`: they
    are logged again, and TensorBoard would otherwise draw both copies."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tensorboard_dir = Path(run_dir) / "tensorboard" if enabled and tensorboard else None
        self._writer = None
        self._purge_step: int | None = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _jsonable(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is None and self._tensorboard_dir is not None:
            self._writer = _summary_writer(self._tensorboard_dir, self._purge_step)
            if self._writer is None:
                self._tensorboard_dir = None
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"{split}/{key}", value, step)
            self._writer.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: after a resume they are produced again. A line a killed run
        left half-written is dropped too. TensorBoard's points past `step` are hidden too (by a
        purge step in the next event file)."""
        if not self.enabled:
            return
        self._purge_step = step + 1
        if not self.path.exists():
            return
        kept = [line for line, record in self._records() if record["step"] <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def has_record(self, step: int, split: str) -> bool:
        return self.enabled and any(r["step"] == step and r["split"] == split for _, r in self._records())

    def _records(self) -> list[tuple[str, dict[str, Any]]]:
        records = []
        for line in self.path.read_text().splitlines() if self.path.exists() else ():
            try:
                records.append((line, json.loads(line)))
            except json.JSONDecodeError:
                continue  # torn by a kill mid-write
        return records

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _summary_writer(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
        return None
    # purge_step: TensorBoard drops the points of earlier event files from this step on.
    return SummaryWriter(str(log_dir), purge_step=purge_step)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
