"""The demo's stages, each reusing its output when it already finished with the same settings.

    data/        synthetic benchmark (labelled train / val + uncurated long videos)
    tokenizer/   our VQ-VAE trained on frames of the training and uncurated videos
    stores/      pretrain (uncurated + train videos, centre view), train (6 no-flip views), val (centre)
    pretrain/V/  one pre-training run per variant V (Table 7 / 8 rows)
    finetune/R/  one fine-tuning run per row R (same budget for every row)
    report.md, results.json, *.png
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from vimpac.config import to_dict
from vimpac.demo.config import DemoConfig
from vimpac.io import atomic_write_json

# Pre-training variants: KEY=VALUE overrides of the "tiny" pre-training preset.
PRETRAIN_VARIANTS: dict[str, tuple[str, ...]] = {
    "mp_cl": (),  # VIMPAC: block-masked token prediction + contrastive
    "mp_only": ("objective.alpha=0",),  # Table 7, MP only
    "cl_only": ("objective.masked_token=false",),  # Table 7, CL only
    "iid_mp": ("masking.strategy=iid", "objective.alpha=0"),  # Table 8, i.i.d. masking (MP only)
}
VARIANT_TITLES = {
    "scratch": "no pre-training",
    "mp_cl": "VIMPAC (MP + CL)",
    "mp_only": "MP only",
    "cl_only": "CL only",
    "iid_mp": "i.i.d. masking (MP only)",
    "single_frame": "VIMPAC, single frame (T = 1)",
}


class DemoInterrupted(RuntimeError):
    """A training stage stopped early (SIGINT / SIGTERM); its checkpoint lets a re-run resume."""


class Stage:
    """A stage's folder with a DONE.json recording its settings and results."""

    def __init__(self, folder: Path, settings: dict[str, Any]):
        self.folder = folder
        self.settings = settings

    def finished(self) -> dict[str, Any] | None:
        done = self.folder / "DONE.json"
        if done.exists():
            record = json.loads(done.read_text())
            if record.get("settings") == self.settings:
                return record["result"]
        return None

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        atomic_write_json(self.folder / "DONE.json", {"settings": self.settings, "result": result})
        return result


def run_stage(name: str, folder: Path, settings: dict[str, Any], work: Callable[[], dict[str, Any]],
              log: Callable[[str], None]) -> dict[str, Any]:
    stage = Stage(folder, settings)
    cached = stage.finished()
    if cached is not None:
        log(f"[{name}] already done, reusing {folder}")
        return cached
    log(f"[{name}] running ...")
    started = time.perf_counter()
    result = work()
    result["seconds"] = round(time.perf_counter() - started, 1)
    log(f"[{name}] done in {result['seconds']:.0f} s")
    return stage.finish(result)


@dataclass(frozen=True)
class TrainingRun:
    """One pre-training or fine-tuning stage, described by picklable data so that it can run in
    a worker process: `work(*args, progress=...)` is a module-level function."""

    title: str
    folder: Path
    settings: dict[str, Any]
    work: Callable[..., dict[str, Any]]
    args: tuple


def _execute(run: TrainingRun, threads: int, progress: bool) -> dict[str, Any]:
    torch.set_num_threads(threads)
    return run_stage(run.title, run.folder, run.settings, lambda: run.work(*run.args, progress=progress),
                     lambda line: print(line, flush=True))


def run_training(runs: list[TrainingRun], cfg: DemoConfig, log: Callable[[str], None],
                 progress: bool) -> dict[str, dict[str, Any]]:
    """Run independent training stages, `cfg.parallel_runs` at a time; results by title.

    Why processes: the tiny model's operations are small, so a second thread speeds one run up
    only 1.44x on 2 cores, while two 1-thread runs side by side finish 1.35x sooner than the same
    runs one after the other (bench/bench_parallel_runs.py). Finished stages are reused without
    starting a worker.
    """
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for run in runs:
        cached = Stage(run.folder, run.settings).finished()
        if cached is not None:
            log(f"[{run.title}] already done, reusing {run.folder}")
            results[run.title] = cached
        else:
            pending.append(run)
    workers = min(cfg.parallel_runs, len(pending))
    if workers <= 1:
        for run in pending:
            results[run.title] = _execute(run, cfg.threads, progress)
    else:
        threads = max(1, cfg.threads // workers)
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


def run_demo(out: str | Path, cfg: DemoConfig, log: Callable[[str], None] = print,
             progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    results: dict[str, Any] = {"config": to_dict(cfg), "stages": {}}
    stages = results["stages"]

    stages["data"] = run_stage("1/6 synthetic benchmark", out / "data", _data_settings(cfg),
                               lambda: _make_data(out / "data", cfg, progress), log)
    stages["tokenizer"] = run_stage("2/6 tokenizer", out / "tokenizer", _tokenizer_settings(cfg),
                                    lambda: _train_tokenizer(out, cfg, progress), log)
    stages["stores"] = run_stage("3/6 tokenize", out / "stores", _store_settings(cfg),
                                 lambda: _tokenize(out, cfg, progress), log)
    pretrain_runs = {}
    for variant in cfg.pretrain_variants:
        for seed in cfg.seeds:
            name = _run_name(variant, seed, cfg)
            pretrain_runs[name] = TrainingRun(
                f"4/6 pre-train {name}", out / "pretrain" / name,
                {**_store_settings(cfg), **_pretrain_settings(cfg, variant, seed)},
                _pretrain, (out, cfg, variant, seed, name))
    done = run_training(list(pretrain_runs.values()), cfg, log, progress)
    pretrained = {name: done[run.title] for name, run in pretrain_runs.items()}
    stages["pretrain"] = pretrained

    finetune_runs = {}
    for row, source, frames in _finetune_rows(cfg):
        for seed in cfg.seeds:
            name = _run_name(row, seed, cfg)
            settings = {**_store_settings(cfg), "source": source, "frames": frames, "seed": seed,
                        "steps": cfg.finetune_steps, "batch": cfg.finetune_batch,
                        "pretrain": pretrained.get(_run_name(source, seed, cfg), {}).get("settings_key")}
            finetune_runs[name] = TrainingRun(f"5/6 fine-tune {name}", out / "finetune" / name, settings,
                                              _finetune, (out, cfg, source, frames, seed, name))
    for seed in cfg.seeds:
        _scratch_model(out, cfg, seed)  # written here once, not by two workers at the same time
    done = run_training(list(finetune_runs.values()), cfg, log, progress)
    stages["finetune"] = {name: done[run.title] for name, run in finetune_runs.items()}
    results["seconds"] = round(time.perf_counter() - started, 1)

    from vimpac.demo.report import write_report

    log("[6/6 report] writing tables, plots and report.md")
    results["tables"] = write_report(out, cfg, results)
    atomic_write_json(out / "results.json", results)
    return results


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
    print(summary.format_table())
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
        TrainConfig(steps=cfg.tokenizer_steps), DataConfig(size=cfg.size, fps=cfg.fps), progress=progress)
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
        print(f"  {name}: {report.summary()}")
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
    pcfg = dataclasses.replace(pcfg, train=dataclasses.replace(pcfg.train, progress_lines=_progress_lines(progress)))
    resume = (run_dir / "checkpoints").exists()
    result = run_pretraining(out / "stores" / "pretrain", run_dir, pcfg, resume=resume)
    if result.status != "finished":
        raise DemoInterrupted(f"pre-training {name} stopped at step {result.step} ({result.status}); "
                              "run the same command again to resume")
    return {"status": result.status, "steps": result.step, "metrics": result.last_metrics,
            "settings_key": json.dumps(overrides)}


def _finetune(out: Path, cfg: DemoConfig, source: str, frames: int, seed: int, name: str,
              progress: bool) -> dict[str, Any]:
    from vimpac.finetune.runner import FinetuneConfig, run_finetune

    pretrained = _scratch_model(out, cfg, seed) if source == "scratch" else out / "pretrain" / _run_name(source, seed, cfg) / "model"
    run_dir = out / "finetune" / name
    fcfg = FinetuneConfig(
        train_store=str(out / "stores" / "train"), val_store=str(out / "stores" / "val"), out=str(run_dir),
        pretrained=str(pretrained), preset="tiny", recipe="synthetic", frames=frames, steps=cfg.finetune_steps,
        batch_size=cfg.finetune_batch, precision="bf16", seed=seed, progress=progress,
        progress_lines=_progress_lines(progress),
        resume=(run_dir / "checkpoints").exists())
    summary = run_finetune(fcfg)
    if summary.status != "finished":
        raise DemoInterrupted(f"fine-tuning {name} stopped at step {summary.steps} ({summary.status}); "
                              "run the same command again to resume")
    return {"status": summary.status, "steps": summary.steps, "evaluation": summary.evaluation}


def _scratch_model(out: Path, cfg: DemoConfig, seed: int) -> Path:
    """A randomly initialised model with the pre-trained models' architecture: fine-tuning it is
    the "no pre-training" row, with everything else equal. Built like `run_pretraining` builds
    its model (same config, `torch.manual_seed(seed)`), so it holds the very weights the
    pre-training runs of this seed start from."""
    from vimpac.model.vimpac import VimpacForPretraining
    from vimpac.pretrain.config import build_pretrain_config
    from vimpac.pretrain.task import resolve_config
    from vimpac.store.reader import TokenStore

    folder = out / "finetune" / ("scratch_init" if seed == 0 else f"scratch_init_seed{seed}")
    if not (folder / "model.safetensors").exists():
        pcfg = build_pretrain_config("tiny", overrides=_pretrain_overrides(cfg, "mp_cl", 0))
        pcfg = resolve_config(TokenStore.open(out / "stores" / "pretrain"), pcfg, 1)
        torch.manual_seed(seed)
        VimpacForPretraining(pcfg.model).save_pretrained(folder)
    return folder
