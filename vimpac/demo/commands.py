"""`vimpac demo`: the whole pipeline on embedded synthetic data, on a CPU."""

from __future__ import annotations

import argparse
import sys

from vimpac.cli import command_error


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the end-to-end demo: synthetic videos -> tokenizer -> pre-training -> fine-tuning -> report",
        description=(
            "Generate the synthetic temporally-heavy benchmark, train a small VQ-VAE, tokenize, pre-train the "
            "tiny model (MP + CL and the paper's ablations), fine-tune each and a from-scratch model with the "
            "same budget, and write results.json, report.md and plots into --out. Re-running reuses "
            "finished stages and resumes interrupted ones; a stage whose settings changed (and every stage "
            "after it) starts afresh, its old folder moved to FOLDER.superseded."
        ),
    )
    parser.add_argument("--out", help="output folder (default: demo_out, or demo_out_quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every stage in about a minute (30-90 s on 2 cores)")
    parser.add_argument("--seeds", help="comma-separated seeds for every pre-training / fine-tuning run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="demo settings (see vimpac/demo/config.py)")
    parser.set_defaults(run=_run_demo, positional_overrides=True)


def _run_demo(args: argparse.Namespace) -> int:
    from vimpac.config import ConfigError, build_config
    from vimpac.data.annotations import AnnotationError
    from vimpac.data.synthetic import SyntheticError
    from vimpac.data.synthetic_render import BackgroundError
    from vimpac.demo.config import DEMO_PRESETS, DemoConfig
    from vimpac.demo.pipeline import DemoError, DemoInterrupted, run_demo
    from vimpac.engine.checkpoint import CheckpointError as TrainingCheckpointError
    from vimpac.finetune.errors import FinetuneError
    from vimpac.model.errors import ModelError
    from vimpac.pretrain.errors import PretrainError
    from vimpac.store.errors import StoreError
    from vimpac.tokenizer.base import TokenizerError
    from vimpac.video.errors import VideoError

    overrides = list(args.overrides)
    if args.seeds:
        given = [o for o in overrides if o.split("=", 1)[0].strip() == "seeds"]
        if given:
            return command_error(args, f"--seeds {args.seeds} and {given[0]} both set the seeds; give one of them")
        overrides.append(f"seeds={args.seeds}")
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")  # the demo sets torch's threads per stage from its config
    # The quick and the full demo in different default folders, so that the README's
    # `vimpac demo --quick` and then `make demo` do not redo each other's stages.
    out = args.out or ("demo_out_quick" if args.quick else "demo_out")
    try:
        cfg = build_config(DemoConfig, DEMO_PRESETS, "quick" if args.quick else "full", overrides=overrides)
    except ConfigError as exc:
        return command_error(args, exc)
    try:
        results = run_demo(out, cfg, progress=not args.no_progress)
    except ConfigError as exc:
        return command_error(args, exc)
    except DemoInterrupted as exc:
        print(f"vimpac demo: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        # Ctrl-C outside a training stage (generating data, training the tokenizer, tokenizing) said
        # only "interrupted", not that the same command picks up where it stopped.
        print("vimpac demo: interrupted; finished stages are kept and the interrupted one resumes: run the same "
              "command again", file=sys.stderr)
        return 130
    except (DemoError, AnnotationError, SyntheticError, BackgroundError, TokenizerError, StoreError, VideoError,
            ModelError, PretrainError, FinetuneError, TrainingCheckpointError) as exc:
        # Typed errors name the file or field; finished stages are kept for the next run.
        return command_error(args, exc, code=1)
    tables = results["tables"]
    print("\nPre-training tasks (paper Table 7 shape):\n" + tables["table7"])
    print("\nMasking strategy (paper Table 8 shape):\n" + tables["table8"])
    print("\nAll fine-tuning runs:\n" + tables["all_runs"])
    print(f"\nreport: {out}/report.md  (this run {results['seconds']:.0f} s; "
          f"all stages {results['stage_seconds']:.0f} s as recorded, {len(results['reused'])} reused)")
    return 0
