"""Subcommands of the tokenizer area (`vimpac convert-dalle`, ...).

Only argparse at import time; torch and the networks are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import sys

from vimpac.argtypes import positive_int
from vimpac.cli import command_error


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_convert_dalle(subparsers)
    _register_train_tokenizer(subparsers)


def _register_convert_dalle(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-dalle",
        help="convert OpenAI's DALL-E encoder.pkl / decoder.pkl into a vimpac tokenizer folder",
        description=(
            "Read OpenAI's pickled DALL-E dVAE (encoder.pkl, decoder.pkl) with a restricted "
            "unpickler that runs none of the file's code, and write OUT_DIR/tokenizer.json + "
            "OUT_DIR/model.safetensors (usable with `--tokenizer OUT_DIR`)."
        ),
    )
    parser.add_argument("encoder_pkl", metavar="ENCODER_PKL", help="path to encoder.pkl")
    parser.add_argument("decoder_pkl", metavar="DECODER_PKL", help="path to decoder.pkl")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="tokenizer folder to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT_DIR when it already holds a tokenizer (the whole folder is replaced)")
    parser.set_defaults(run=_run_convert_dalle)


def _run_convert_dalle(args: argparse.Namespace) -> int:
    from vimpac.tokenizer.base import TokenizerError
    from vimpac.tokenizer.dalle import convert_official_pickles

    try:
        tokenizer = convert_official_pickles(args.encoder_pkl, args.decoder_pkl, args.out_dir, args.overwrite)
    except TokenizerError as exc:
        return command_error(args, exc)
    except OSError as exc:  # e.g. OUT_DIR below a file, or in a folder we may not write
        from vimpac.io import describe_os_error

        return command_error(args, describe_os_error(exc))
    enc = tokenizer.config.encoder
    print(f"wrote {args.out_dir}: DALL-E dVAE, {enc.vocab_size} codes, n_hid {enc.n_hid}, "
          f"{enc.n_blk_per_group} blocks/group, tokenizer id {tokenizer.tokenizer_id}")
    return 0


def _register_train_tokenizer(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-tokenizer",
        help="train our small VQ-VAE frame tokenizer on videos",
        description=(
            "Sample frames from VIDEOS (video files, folders searched recursively, or MMAction2 "
            "list files) at --fps, center-crop them to --size, hold out some videos, train a "
            "VQ-VAE (EMA codebook with dead-code restart), report reconstruction PSNR and "
            "codebook usage on the held-out frames, and write OUT/tokenizer.json, "
            "OUT/model.safetensors and OUT/train_report.json. Unreadable videos are skipped and listed."
        ),
    )
    parser.add_argument("videos", nargs="+", metavar="VIDEOS", help="video files, folders or MMAction2 list files")
    parser.add_argument("--out", required=True, metavar="DIR", help="tokenizer folder to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DIR when it already holds a tokenizer (the whole folder is replaced, once training is done)")
    parser.add_argument("--preset", default="tiny", help="model preset: tiny (default, CPU demo) or small")
    parser.add_argument("--codebook-size", type=int, default=None, metavar="K", help="number of codes (default: the preset's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model config field, e.g. --set width=48 (repeatable)")
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels, a multiple of 8 (default 64)")
    parser.add_argument("--fps", type=float, default=4.0, help="frames per second sampled from each video (default 4)")
    parser.add_argument("--max-frames-per-video", type=int, default=64, help="frames kept per video (default 64)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of videos held out (default 0.1)")
    parser.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    parser.add_argument("--batch-size", type=int, default=32, help="frames per step (default 32)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the held-out split, the initialisation and the batches (default 0)")
    parser.add_argument("--max-minutes", type=float, default=None, metavar="M",
                        help="stop training after M minutes (then evaluate and save as usual)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted training in DIR from its latest checkpoint (exactly; same "
                             "videos and settings)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=100, metavar="N",
                        help="save the training state to DIR/checkpoints every N steps (default 100; also on "
                             "Ctrl-C / SIGTERM); removed once the tokenizer is written")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--no-bf16", action="store_true", help="train and encode in plain fp32")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_train_tokenizer)


def _run_train_tokenizer(args: argparse.Namespace) -> int:
    from vimpac.config import ConfigError, build_config
    from vimpac.tokenizer.base import TokenizerError
    from vimpac.signals import exit_code
    from vimpac.tokenizer.train import DataConfig, TokenizerTrainingInterrupted, TrainConfig, train_tokenizer_from_videos
    from vimpac.tokenizer.vqvae import VQVAE_PRESETS, VQVAEConfig

    try:
        overrides = list(args.set) + ([f"codebook_size={args.codebook_size}"] if args.codebook_size is not None else [])
        model_cfg = build_config(VQVAEConfig, presets=VQVAE_PRESETS, preset=args.preset, overrides=overrides)
        train_cfg = TrainConfig(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            max_minutes=args.max_minutes, bf16=not args.no_bf16,
        )
        data_cfg = DataConfig(
            size=args.size, fps=args.fps, max_frames_per_video=args.max_frames_per_video, val_fraction=args.val_fraction,
        )
        train_tokenizer_from_videos(
            args.videos, args.out, model_cfg, train_cfg, data_cfg, device=args.device, progress=not args.quiet,
            existing_out="replace" if args.overwrite else "refuse", resume=args.resume,
            checkpoint_every=args.checkpoint_every, stop_on_signal=True,
        )
    except TokenizerTrainingInterrupted as exc:
        print(f"vimpac train-tokenizer: {exc}; rerun with --resume to continue", file=sys.stderr)
        return exit_code(exc.signal_name)
    except (ConfigError, TokenizerError) as exc:
        return command_error(args, exc)
    return 0
