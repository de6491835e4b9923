"""The demo's stages, each reusing its output when it already finished with the same settings.

    data/        synthetic benchmark (labelled train / val + uncurated long videos)
    tokenizer/   our VQ-VAE trained on frames of the training and uncurated videos
    stores/      pretrain (uncurated + train videos, centre view), train (6 no-flip views), val (centre)
    pretrain/V/  one pre-training run per variant V (Table 7 / 8 rows)
    finetune/R/  one fine-tuning run per row R (same budget for every row)
    report.md, results.json, *.png

A stage folder holds STAGE.json (its settings and the results of the stages it was built from,
written when it starts; the start time of the attempt running; after an interruption the time
spent so far) and DONE.json (the same plus its result, written when it finishes). A
stage with the same record is reused when done and resumed in place when interrupted; any other
content is moved aside to `<folder>.superseded` and the stage starts afresh. Because a stage's
record holds a fingerprint of every upstream result, redoing a stage redoes everything after it.

Output: stage lines, and what a stage reports while it runs, go to stderr with the progress bars
and the training runs' one-line reports; stdout is left to `vimpac demo`'s result (the tables and
the report's path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from vimpac.config import ConfigError, to_dict
from vimpac.demo.config import PRETRAIN_VARIANTS, DemoConfig
from vimpac.io import atomic_write_json
from vimpac.machine import usable_cores

__all__ = ["PRETRAIN_VARIANTS", "VARIANT_TITLES", "DemoError", "DemoInterrupted", "Stage", "TrainingRun",
           "run_demo", "run_stage", "run_training"]

VARIANT_TITLES = {
    "scratch": "no pre-training",
    "mp_cl": "VIMPAC (MP + CL)",
    "mp_only": "MP only",
    "cl_only": "CL only",
    "iid_mp": "i.i.d. masking (MP only)",
    "single_frame": "VIMPAC, single frame (T = 1)",
}
# The folders a demo writes into --out; an out folder holding them without a demo's records is
# someone else's, and the demo refuses to touch it.
STAGE_FOLDERS = ("data", "tokenizer", "stores", "pretrain", "finetune")


# STAGE.json's time of the interrupted attempts of an unfinished run, added to the attempt that finishes it.
INTERRUPTED_SECONDS = "interrupted_seconds"
# ... of that, the attempts killed without a chance to record their time (kill -9, a reboot),
# counted from their start to the newest file they wrote: a lower bound.
KILLED_SECONDS = "killed_seconds"
# STAGE.json's wall-clock start (time.time()) of the attempt running; left behind by a killed one.
ATTEMPT_STARTED = "attempt_started"

DATA_STAGE, TOKENIZER_STAGE, STORES_STAGE = "1/6 synthetic benchmark", "2/6 tokenizer", "3/6 tokenize"


def pretrain_stage(name: str) -> str:
    return f"4/6 pre-train {name}"


def initial_model_stage(seed: int) -> str:
    return f"5/6 initial model, seed {seed}"


def finetune_stage(name: str) -> str:
    return f"5/6 fine-tune {name}"


class DemoError(RuntimeError):
    """The demo cannot run with this --out folder; the message names the path and what to do."""


class DemoInterrupted(RuntimeError):
    """A training stage stopped early (SIGINT / SIGTERM); its checkpoint lets a re-run resume."""


def fingerprint(result: dict[str, Any]) -> str:
    """Identifies one finished run of a stage: downstream stages record it, so that a stage redone
    for any reason (changed settings, a deleted DONE.json) makes them stale."""
    return hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()[:16]


class Stage:
    """A stage's folder with STAGE.json / DONE.json recording its settings, inputs and result."""

    def __init__(self, folder: Path, settings: dict[str, Any], inputs: dict[str, str] | None = None):
        self.folder = folder
        self.settings = settings
        self.inputs = inputs or {}

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.folder / name
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise DemoError(f"{path}: not a readable demo stage record ({exc}); delete {self.folder} "
                            "to run this stage afresh") from exc
        return record

    def _matches(self, record: dict[str, Any]) -> bool:
        # Records written before inputs were recorded match on their settings alone.
        return record.get("settings") == self.settings and record.get("inputs", self.inputs) == self.inputs

    def finished(self) -> dict[str, Any] | None:
        done = self._read("DONE.json")
        if done is not None and self._matches(done) and "result" in done:
            return done["result"]
        return None

    def _aside(self) -> Path:
        return self.folder.with_name(self.folder.name + ".superseded")

    def reuse(self, name: str, log: Callable[[str], None]) -> dict[str, Any] | None:
        """The result of a finished run of these settings and inputs: in the folder, or in the
        superseded copy (settings changed back), which then swaps places with the folder."""
        cached = self.finished()
        if cached is None and (self._aside() / "DONE.json").exists():
            cached = Stage(self._aside(), self.settings, self.inputs).finished()
            if cached is not None:
                log(f"[{name}] {self._aside()} finished with these settings: swapping it back")
                self._swap_with_aside()
        if cached is not None:
            log(f"[{name}] already done, reusing {self.folder}")
        return cached

    def _swap_with_aside(self) -> None:
        aside = self._aside()
        if not self.folder.exists():
            aside.rename(self.folder)
            return
        swap = self.folder.with_name(self.folder.name + ".swap")
        if swap.exists():
            shutil.rmtree(swap)  # left by a swap that was killed half-way
        self.folder.rename(swap)
        aside.rename(self.folder)
        swap.rename(aside)

    def start(self, name: str, log: Callable[[str], None]) -> None:
        """Make the folder ready for `work`: keep an unfinished run of the same settings (it resumes
        from its checkpoints), move anything else aside, then record the settings."""
        started = self._read("STAGE.json")
        if started is not None and self._matches(started) and self._read("DONE.json") is None:
            log(f"[{name}] resuming the unfinished run in {self.folder}")
            return
        if self.folder.exists() and any(self.folder.iterdir()):
            aside = self._aside()
            log(f"[{name}] {self._why_stale(started or self._read('DONE.json'))}: moving the old "
                f"{self.folder.name} to {aside} and starting afresh")
            if aside.exists():
                shutil.rmtree(aside)  # keep one superseded copy, not one per change
            self.folder.rename(aside)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / "STAGE.json", {"settings": self.settings, "inputs": self.inputs})

    def _why_stale(self, record: dict[str, Any] | None) -> str:
        if record is None:
            return "its folder holds files without a demo record (an older vimpac's run?)"
        old = record.get("settings") or {}
        changed = [_describe_change(key, old.get(key), self.settings.get(key))
                   for key in sorted(set(old) | set(self.settings)) if old.get(key) != self.settings.get(key)]
        if changed:
            return "settings changed (" + "; ".join(changed) + ")"
        return "a stage it is built from was redone"

    def earlier_seconds(self) -> tuple[float, float]:
        """Time spent in earlier attempts of the unfinished run that `start` kept (0 for a fresh
        one), and how much of it was in attempts that were killed: one whose start STAGE.json
        still holds counts until the newest file in the folder, its last sign of life."""
        record = self._read("STAGE.json") or {}
        earlier, killed = (_seconds(record.get(key)) for key in (INTERRUPTED_SECONDS, KILLED_SECONDS))
        started = record.get(ATTEMPT_STARTED)
        if isinstance(started, (int, float)) and math.isfinite(started):
            lost = max(0.0, _newest_mtime(self.folder) - started)
            earlier, killed = earlier + lost, killed + lost
        return earlier, killed

    def begin_attempt(self, earlier: float, killed: float) -> None:
        """Record, before the work starts, when this attempt started (and the earlier attempts'
        time, a killed one's included): if it is killed too, the next attempt still counts it."""
        self._write_stage_record({INTERRUPTED_SECONDS: round(earlier, 1), KILLED_SECONDS: round(killed, 1),
                                  ATTEMPT_STARTED: time.time()})

    def record_interrupted(self, seconds: float, killed: float) -> None:
        """Keep the time of the attempts so far in STAGE.json, for the attempt that resumes them."""
        try:
            self._write_stage_record({INTERRUPTED_SECONDS: round(seconds, 1), KILLED_SECONDS: round(killed, 1)})
        except OSError:
            pass  # the stage's own error (a full disk, say) is the one to report; the count is a nicety

    def _write_stage_record(self, times: dict[str, float]) -> None:
        atomic_write_json(self.folder / "STAGE.json", {"settings": self.settings, "inputs": self.inputs, **times})

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        atomic_write_json(self.folder / "DONE.json", {"settings": self.settings, "inputs": self.inputs,
                                                      "result": result})
        return result


def _describe_change(key: str, old: Any, new: Any) -> str:
    """`key: old -> new`, for lists (and JSON lists, as in "pretrain") only the items that differ."""
    def as_list(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("["):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    old, new = as_list(old), as_list(new)
    if isinstance(old, list) and isinstance(new, list):
        removed = [item for item in old if item not in new]
        added = [item for item in new if item not in old]
        return f"{key}: {', '.join(map(str, removed)) or '-'} -> {', '.join(map(str, added)) or '-'}"
    return f"{key}: {old!r} -> {new!r}"


def run_stage(name: str, folder: Path, settings: dict[str, Any], work: Callable[[], dict[str, Any]],
              log: Callable[[str], None], inputs: dict[str, str] | None = None,
              reused: list[str] | None = None) -> dict[str, Any]:
    """Reuse the stage's result, or run `work` in its folder; `reused` collects reused names."""
    stage = Stage(folder, settings, inputs)
    cached = stage.reuse(name, log)
    if cached is not None:
        if reused is not None:
            reused.append(name)
        return cached
    stage.start(name, log)
    log(f"[{name}] running ...")
    earlier, killed = stage.earlier_seconds()
    stage.begin_attempt(earlier, killed)
    started = time.perf_counter()
    try:
        result = work()
    except BaseException:
        stage.record_interrupted(earlier + time.perf_counter() - started, killed)
        raise
    attempt = time.perf_counter() - started
    # A resumed stage's time is that of all its attempts: the time table under-reported it.
    result["seconds"] = round(earlier + attempt, 1)
    if killed:
        result[KILLED_SECONDS] = round(killed, 1)
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    result["run_id"] = uuid.uuid4().hex  # a redo never repeats a fingerprint, however alike its result
    before = ""
    if earlier:
        of_killed = f", at least {killed:.0f} s of it in attempts that were killed" if killed else ""
        before = f" (+ {earlier:.0f} s before it was interrupted{of_killed})"
    log(f"[{name}] done in {attempt:.0f} s{before}")
    return stage.finish(result)


def _seconds(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0 else 0.0


def _newest_mtime(folder: Path) -> float:
    """The latest modification time of a file under `folder` (0 without one)."""
    newest = 0.0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
            except OSError:
                continue  # removed meanwhile (a checkpoint pruned)
    return newest


@dataclass(frozen=True)
class TrainingRun:
    """One pre-training or fine-tuning stage, described by picklable data so that it can run in
    a worker process: `work(*args, progress=...)` is a module-level function."""

    title: str
    folder: Path
    settings: dict[str, Any]
    work: Callable[..., dict[str, Any]]
    args: tuple
    inputs: dict[str, str] | None = None  # fingerprints of the upstream results (see Stage)


def stage_line(line: str) -> None:
    """A line of the demo's own progress: on stderr, beside the bars (see the module docstring)."""
    print(line, file=sys.stderr, flush=True)


def torch_threads(asked: int) -> int:
    """`asked` torch threads, but no more than the cores this process may run on (its CPU
    affinity: a SLURM allocation, `taskset`): OpenMP threads sharing a core wait on each other at
    every operation, and the demo's tokenizer, asked for 2 threads on one core, trained 9x slower
    than with 1 (docs/demo.md)."""
    return max(1, min(asked, usable_cores() or asked))


def _execute(run: TrainingRun, threads: int, progress: bool,
             log: Callable[[str], None] = stage_line) -> dict[str, Any]:
    torch.set_num_threads(threads)
    return run_stage(run.title, run.folder, run.settings, lambda: run.work(*run.args, progress=progress),
                     log, run.inputs)


def run_training(runs: list[TrainingRun], cfg: DemoConfig, log: Callable[[str], None],
                 progress: bool, reused: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run independent training stages, `cfg.parallel_runs` at a time; results by title.

    Why processes: the tiny model's operations are small, so a second thread speeds one run up
    only 1.44x on 2 cores, while two 1-thread runs side by side finish 1.35x sooner than the same
    runs one after the other (bench/bench_parallel_runs.py). Finished stages are reused without
    starting a worker.
    """
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for run in runs:
        cached = Stage(run.folder, run.settings, run.inputs).reuse(run.title, log)
        if cached is not None:
            results[run.title] = cached
            if reused is not None:
                reused.append(run.title)
        else:
            pending.append(run)
    workers = min(cfg.parallel_runs, len(pending))
    if workers <= 1:
        for run in pending:
            results[run.title] = _execute(run, torch_threads(cfg.threads), progress, log)
    else:
        threads = max(1, torch_threads(cfg.threads) // workers)
        log(f"running {len(pending)} training stages, {workers} at a time ({threads} thread(s) each)")
        context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            # Side-by-side progress bars would garble each other: workers print stage lines and a few
            # one-line reports (progress_lines).
            futures = {run.title: pool.submit(_execute, run, threads, False) for run in pending}
            for title, future in futures.items():
                try:
                    results[title] = future.result()
                except BrokenProcessPool as exc:
                    raise DemoInterrupted(
                        f"a training worker died while {title!r} or a stage beside it was running (out of "
                        "memory, or killed). Finished stages are kept and interrupted ones resume from "
                        "their checkpoints: run the same command again (parallel_runs=1 needs less memory)"
                    ) from exc
    return {run.title: results[run.title] for run in runs}


def run_demo(out: str | Path, cfg: DemoConfig, log: Callable[[str], None] = stage_line,
             progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    check_settings(cfg)
    _claim_out(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch_threads(cfg.threads)
    if threads < cfg.threads:
        log(f"threads={cfg.threads}, but this process may run on {threads} core(s): using {threads} torch "
            "thread(s) (more threads than cores run several times slower; the last bits of results may differ "
            "from a run with more threads)")
    torch.set_num_threads(threads)
    started = time.perf_counter()
    reused: list[str] = []
    results: dict[str, Any] = {"config": to_dict(cfg), "stages": {}, "reused": reused}
    stages = results["stages"]

    stages["data"] = run_stage(DATA_STAGE, out / "data", _data_settings(cfg),
                               lambda: _make_data(out / "data", cfg, progress), log, reused=reused)
    stages["tokenizer"] = run_stage(TOKENIZER_STAGE, out / "tokenizer", _tokenizer_settings(cfg),
                                    lambda: _train_tokenizer(out, cfg, progress), log,
                                    {"data": fingerprint(stages["data"])}, reused)
    stages["stores"] = run_stage(STORES_STAGE, out / "stores", _store_settings(cfg),
                                 lambda: _tokenize(out, cfg, progress), log,
                                 {"tokenizer": fingerprint(stages["tokenizer"])}, reused)
    stores_input = {"stores": fingerprint(stages["stores"])}
    pretrain_runs = {}
    for variant in cfg.pretrain_variants:
        for seed in cfg.seeds:
            name = _run_name(variant, seed, cfg)
            pretrain_runs[name] = TrainingRun(
                pretrain_stage(name), out / "pretrain" / name,
                {**_store_settings(cfg), **_pretrain_settings(cfg, variant, seed)},
                _pretrain, (out, cfg, variant, seed, name), stores_input)
    done = run_training(list(pretrain_runs.values()), cfg, log, progress, reused)
    pretrained = {name: done[run.title] for name, run in pretrain_runs.items()}
    stages["pretrain"] = pretrained

    # The from-scratch rows' initial models: built here once, not by two workers at the same time.
    scratch = {}
    for seed in cfg.seeds:
        settings = {**_store_settings(cfg), "model": _model_overrides(cfg), "frames": cfg.frames, "seed": seed}
        scratch[seed] = run_stage(initial_model_stage(seed), _scratch_folder(out, seed), settings,
                                  lambda seed=seed: _scratch_result(out, cfg, seed), log, stores_input, reused)
    stages["initial_models"] = {str(seed): result for seed, result in scratch.items()}
    finetune_runs = {}
    for row, source, frames in _finetune_rows(cfg):
        for seed in cfg.seeds:
            name = _run_name(row, seed, cfg)
            # Not "steps": that key of the store settings is the tokenizer's, which it used to hide.
            settings = {**_store_settings(cfg), "source": source, "frames": frames, "seed": seed,
                        "finetune_steps": cfg.finetune_steps, "finetune_batch": cfg.finetune_batch,
                        "pretrain": pretrained.get(_run_name(source, seed, cfg), {}).get("settings_key")}
            model = scratch[seed] if source == "scratch" else pretrained[_run_name(source, seed, cfg)]
            finetune_runs[name] = TrainingRun(finetune_stage(name), out / "finetune" / name, settings,
                                              _finetune, (out, cfg, source, frames, seed, name),
                                              {**stores_input, "model": fingerprint(model)})
    done = run_training(list(finetune_runs.values()), cfg, log, progress, reused)
    stages["finetune"] = {name: done[run.title] for name, run in finetune_runs.items()}
    results["seconds"] = round(time.perf_counter() - started, 1)  # this invocation (0 when all is reused)
    results["stage_seconds"] = round(sum(stage_seconds(stages).values()), 1)  # as each stage recorded

    from vimpac.demo.report import write_report

    log("[6/6 report] writing tables, plots and report.md")
    results["tables"] = write_report(out, cfg, results)
    atomic_write_json(out / "results.json", results)
    return results


def stage_results(stages: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each stage's result by the stage names run_demo logs and lists in results["reused"]."""
    results = {DATA_STAGE: stages["data"], TOKENIZER_STAGE: stages["tokenizer"], STORES_STAGE: stages["stores"]}
    results.update({pretrain_stage(name): run for name, run in stages["pretrain"].items()})
    results.update({initial_model_stage(int(seed)): run for seed, run in stages.get("initial_models", {}).items()})
    results.update({finetune_stage(name): run for name, run in stages["finetune"].items()})
    return results


def stage_seconds(stages: dict[str, Any]) -> dict[str, float]:
    """Each stage's recorded run time (of the run that made it, for reused stages), by the stage
    names run_demo logs and lists in results["reused"]."""
    return {title: float(result.get("seconds", 0)) for title, result in stage_results(stages).items()}


def check_settings(cfg: DemoConfig) -> None:
    """What DemoConfig cannot check alone (the model overrides against the pre-training config),
    before any stage runs; raises ConfigError naming the field."""
    from vimpac.model.errors import ModelError
    from vimpac.pretrain.config import build_pretrain_config

    for variant in cfg.pretrain_variants or ("mp_cl",):
        try:
            pcfg = build_pretrain_config("tiny", overrides=_pretrain_overrides(cfg, variant, cfg.seeds[0]))
            pcfg.model.validate()  # the sizes the store fills in later do not change what fails here
        except (ConfigError, ModelError) as exc:
            raise ConfigError(f"model_overrides {list(cfg.model_overrides)}: {exc}") from exc


def _claim_out(out: Path) -> None:
    """Refuse an --out that is a file, or a folder with stage folders no demo recorded (another
    tool's data/ would otherwise be mixed with the demo's or moved aside)."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out}: exists and is not a folder; --out expects a folder (new, or a demo's)")
    if not out.is_dir():
        return
    present = [name for name in STAGE_FOLDERS
               if (out / name).exists() and (not (out / name).is_dir() or any((out / name).iterdir()))]
    # Any record of a demo stage (or a demo's results) marks the folder as a demo's: a user who
    # deleted data/ to regenerate it, as a damaged record's message suggests, must not be refused.
    records = [out / "results.json", *(out / name / record for name in STAGE_FOLDERS
                                       for record in ("DONE.json", "STAGE.json"))]
    if present and not any(path.is_file() for path in records):
        raise DemoError(
            f"{out}: holds {', '.join(p + '/' for p in present)} without a demo record (DONE.json or STAGE.json "
            "in them, results.json beside them), so this is not a vimpac demo folder (or an older vimpac's "
            "demo stopped in its first stage); choose another --out, or delete those folders")


def _run_name(variant: str, seed: int, cfg: DemoConfig) -> str:
    return variant if len(cfg.seeds) == 1 else f"{variant}_seed{seed}"


def _finetune_rows(cfg: DemoConfig) -> list[tuple[str, str, int]]:
    """(row name, pre-trained source (a variant or "scratch"), frames) for every fine-tuning run."""
    rows = [("scratch", "scratch", cfg.frames)]
    rows += [(variant, variant, cfg.frames) for variant in cfg.pretrain_variants]
    if "mp_cl" in cfg.pretrain_variants:
        rows.append(("single_frame", "mp_cl", 1))
    return rows


# ------------------------------------------------------------------------------ settings

def _data_settings(cfg: DemoConfig) -> dict[str, Any]:
    return {"preset": cfg.synthetic_preset, "train": cfg.train_per_class, "val": cfg.val_per_class,
            "uncurated": cfg.uncurated_videos}


def _tokenizer_settings(cfg: DemoConfig) -> dict[str, Any]:
    return {**_data_settings(cfg), "size": cfg.size, "fps": cfg.fps, "steps": cfg.tokenizer_steps}


def _store_settings(cfg: DemoConfig) -> dict[str, Any]:
    return _tokenizer_settings(cfg)


def _pretrain_settings(cfg: DemoConfig, variant: str, seed: int) -> dict[str, Any]:
    return {"variant": variant, "overrides": list(_pretrain_overrides(cfg, variant, seed))}


def _model_overrides(cfg: DemoConfig) -> list[str]:
    return [f"model.{item}" for item in cfg.model_overrides]


def _pretrain_overrides(cfg: DemoConfig, variant: str, seed: int) -> list[str]:
    overrides = [*_model_overrides(cfg), f"data.frames={cfg.frames}", f"train.total_steps={cfg.pretrain_steps}",
                 f"train.batch_size={cfg.pretrain_batch}", f"train.seed={seed}", "train.checkpoint_every=100",
                 f"train.val_every={max(cfg.pretrain_steps // 5, 1)}", *PRETRAIN_VARIANTS[variant]]
    if variant == "iid_mp":
        overrides.append(f"masking.ratio={_block_ratio(cfg):.4f}")  # the same ratio as block masking
    return overrides


def _block_ratio(cfg: DemoConfig) -> float:
    from vimpac.pretrain.masking import auto_num_blocks, induced_masking_ratio

    grid = cfg.size // 8
    return induced_masking_ratio(cfg.frames, grid, grid, auto_num_blocks(cfg.frames, grid, grid))


# ------------------------------------------------------------------------------ stages

def _make_data(folder: Path, cfg: DemoConfig, progress: bool) -> dict[str, Any]:
    from vimpac.data.synthetic import SYNTHETIC_PRESETS, generate_benchmark, generate_uncurated

    synth = dataclasses.replace(SYNTHETIC_PRESETS[cfg.synthetic_preset], train_per_class=cfg.train_per_class,
                                val_per_class=cfg.val_per_class, uncurated_videos=cfg.uncurated_videos)
    summary = generate_benchmark(folder, synth, progress=progress, workers=cfg.workers)
    summary = summary.merge(generate_uncurated(folder, synth, progress=progress, workers=cfg.workers))
    stage_line(summary.format_table())
    # Pre-training list: the uncurated videos and the training videos (labels unused).
    train = [line.rsplit(maxsplit=1)[0] for line in (folder / "train.txt").read_text().splitlines() if line.strip()]
    uncurated = [line.strip() for line in (folder / "uncurated.txt").read_text().splitlines() if line.strip()]
    (folder / "pretrain.txt").write_text("".join(f"{p}\n" for p in uncurated + train))
    return {"classes": len(synth.classes), "train": len(train), "uncurated": len(uncurated),
            "frame_size": [synth.height, synth.width], "source_fps": synth.fps}


def _train_tokenizer(out: Path, cfg: DemoConfig, progress: bool) -> dict[str, Any]:
    from vimpac.tokenizer.train import DataConfig, TrainConfig, train_tokenizer_from_videos
    from vimpac.tokenizer.vqvae import VQVAE_PRESETS

    report = train_tokenizer_from_videos(
        [out / "data" / "pretrain.txt"], out / "tokenizer", VQVAE_PRESETS["tiny"],
        TrainConfig(steps=cfg.tokenizer_steps), DataConfig(size=cfg.size, fps=cfg.fps), progress=progress,
        # An interrupted demo continues the training (the stage record ensures the same settings).
        resume=True, log=stage_line)
    held_out = report["held_out"]
    return {"tokenizer_id": report["tokenizer_id"], "psnr_db": held_out["psnr_db"],
            "codes_used_fraction": held_out["codes_used_fraction"], "perplexity": held_out["perplexity"],
            "bf16_fp32_token_agreement": report["bf16_fp32_token_agreement"]}


def _tokenize(out: Path, cfg: DemoConfig, progress: bool) -> dict[str, Any]:
    from vimpac.data.annotations import read_mmaction_list
    from vimpac.store.tokenize import tokenize_videos
    from vimpac.tokenizer.base import load_tokenizer

    data = out / "data"
    tokenizer = load_tokenizer(out / "tokenizer")
    summary = {}
    for name, list_file, views in (("pretrain", "pretrain.txt", "center"), ("train", "train.txt", "noflip6"),
                                   ("val", "val.txt", "center")):
        class_names = None if name == "pretrain" else str(data / "classes.txt")
        records = read_mmaction_list(data / list_file, class_names)
        report = tokenize_videos(records, data, tokenizer, cfg.fps, cfg.size, views, out / "stores" / name,
                                 workers=cfg.workers, progress=progress)
        stage_line(f"  {name}: {report.summary()}")
        summary[name] = {"videos": report.encoded_videos + report.already_done, "failed": len(report.failures),
                         "frames_per_s": round(report.frames_per_s, 1)}
    return summary


def _progress_lines(progress: bool) -> int:
    """One-line reports per training run: none beside a progress bar, 4 from a side-by-side worker."""
    return 0 if progress else 4


def _pretrain(out: Path, cfg: DemoConfig, variant: str, seed: int, name: str, progress: bool) -> dict[str, Any]:
    from vimpac.pretrain.config import build_pretrain_config
    from vimpac.pretrain.run import run_pretraining

    overrides = _pretrain_overrides(cfg, variant, seed) + [f"train.progress={str(progress).lower()}"]
    run_dir = out / "pretrain" / name
    pcfg = build_pretrain_config("tiny", overrides=overrides)
    # Side by side (no bars): a few one-line reports; not in `overrides`, which key the stage.
    # Logged at least every 1/20 of the run, for the report's curves: the preset's every 10 updates
    # gave the quick demo's 12-update runs two points (updates 10 and 12); the full demo keeps 10.
    log_every = max(1, min(pcfg.train.log_every, cfg.pretrain_steps // 20))
    pcfg = dataclasses.replace(pcfg, train=dataclasses.replace(pcfg.train, progress_lines=_progress_lines(progress),
                                                               log_every=log_every))
    resume = (run_dir / "checkpoints").exists()  # safe: Stage.start moved aside runs of other settings
    result = run_pretraining(out / "stores" / "pretrain", run_dir, pcfg, resume=resume)
    if result.status != "finished":
        raise DemoInterrupted(f"pre-training {name} stopped at step {result.step} ({result.status}); "
                              "run the same command again to resume")
    return {"status": result.status, "steps": result.step, "metrics": result.last_metrics,
            "settings_key": json.dumps(overrides)}


def _finetune(out: Path, cfg: DemoConfig, source: str, frames: int, seed: int, name: str,
              progress: bool) -> dict[str, Any]:
    from vimpac.finetune.runner import FinetuneConfig, run_finetune

    if source == "scratch":
        pretrained = _scratch_folder(out, seed)
    else:
        pretrained = out / "pretrain" / _run_name(source, seed, cfg) / "model"
    run_dir = out / "finetune" / name
    fcfg = FinetuneConfig(
        train_store=str(out / "stores" / "train"), val_store=str(out / "stores" / "val"), out=str(run_dir),
        pretrained=str(pretrained), preset="tiny", recipe="synthetic", frames=frames, steps=cfg.finetune_steps,
        batch_size=cfg.finetune_batch, precision="bf16", seed=seed, progress=progress,
        progress_lines=_progress_lines(progress),
        # Safe: Stage.start has moved aside any run of other settings or inputs.
        resume=(run_dir / "checkpoints").exists())
    summary = run_finetune(fcfg)
    if summary.status != "finished":
        raise DemoInterrupted(f"fine-tuning {name} stopped at step {summary.steps} ({summary.status}); "
                              "run the same command again to resume")
    return {"status": summary.status, "steps": summary.steps, "evaluation": summary.evaluation}


def _scratch_folder(out: Path, seed: int) -> Path:
    return out / "finetune" / ("scratch_init" if seed == 0 else f"scratch_init_seed{seed}")


def _scratch_result(out: Path, cfg: DemoConfig, seed: int) -> dict[str, Any]:
    folder = _scratch_model(out, cfg, seed)
    return {"model": str(folder)}


def _scratch_model(out: Path, cfg: DemoConfig, seed: int) -> Path:
    """A randomly initialised model with the pre-trained models' architecture: fine-tuning it is
    the "no pre-training" row, with everything else equal. Built like `run_pretraining` builds
    its model (same config, `torch.manual_seed(seed)`), so it holds the very weights the
    pre-training runs of this seed start from."""
    from vimpac.model.vimpac import VimpacForPretraining
    from vimpac.pretrain.config import build_pretrain_config
    from vimpac.pretrain.task import resolve_config
    from vimpac.store.reader import TokenStore

    folder = _scratch_folder(out, seed)
    pcfg = build_pretrain_config("tiny", overrides=_pretrain_overrides(cfg, "mp_cl", 0))
    pcfg = resolve_config(TokenStore.open(out / "stores" / "pretrain"), pcfg, 1)
    torch.manual_seed(seed)
    VimpacForPretraining(pcfg.model).save_pretrained(folder)
    return folder
