"""Subcommands of the fine-tuning area: `vimpac finetune`, `evaluate`, `probe`, `embed`.

Only argparse-level code at the top; handlers import torch and the real work lazily.
"""

from __future__ import annotations

import argparse
import json
import sys

from vimpac.argtypes import nonnegative_float, positive_float, positive_int
from vimpac.cli import command_error

RECIPE_NAMES = ("ssv2", "diving48", "ucf101", "hmdb51", "k400", "synthetic")  # vimpac.finetune.recipes


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_finetune(subparsers)
    _register_evaluate(subparsers)
    _register_probe(subparsers)
    _register_embed(subparsers)


def _register_finetune(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a pre-trained (or from-scratch) model on a labelled token store",
        description="Fine-tune on a token store with the paper's Table 4 recipe for --recipe (options "
                    "override it), then evaluate on --val-store with the multi-view protocol. Writes "
                    "RUN/model (the classifier), RUN/eval (results.json, confusion_matrix.png), metrics "
                    "and resumable checkpoints.")
    p.add_argument("--train-store", required=True, metavar="STORE", help="labelled token store to train on")
    p.add_argument("--val-store", metavar="STORE", help="evaluated periodically (--val-every) and at the end")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pretrained", metavar="MODEL_DIR", help="pre-trained model folder to start from")
    source.add_argument("--from-scratch", action="store_true", help="random initialisation (--preset)")
    p.add_argument("--preset", default="small",
                   help="model preset for --from-scratch (large-half: lr 5e-5; with --pretrained the model's "
                        "own size picks the lr)")
    p.add_argument("--recipe", default="ucf101", choices=RECIPE_NAMES, help="Table 4 defaults (default: ucf101)")
    p.add_argument("--out", required=True, metavar="RUN",
                   help="run folder (new, or one to --resume): checkpoints, metrics, model/ and eval/")
    p.add_argument("--frames", type=int, metavar="T", help="clip length (recipe: 10)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float,
                        help="passes over the training videos (recipe: e.g. 50 for ucf101, more with --from-scratch)")
    budget.add_argument("--steps", type=int, help="optimizer updates (instead of --epochs)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate (recipe: 1e-4, 5e-5 for large-half models)")
    p.add_argument("--batch-size", type=int, help="videos per micro-step and process (recipe: 128; synthetic 16)")
    p.add_argument("--grad-accum", type=int, default=1, dest="grad_accum_steps", metavar="N",
                   help="micro-steps per optimizer update (default 1); an update sees batch x N x processes videos")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (recipe: 0.01)")
    p.add_argument("--warmup-ratio", type=float,
                   help="fraction of the updates with linear warm-up, then linear decay (recipe: 0.1)")
    p.add_argument("--dropout", type=float, help="backbone and attention dropout (recipe: 0.1)")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="label smoothing of the cross-entropy, in [0, 1) (default 0: off)")
    p.add_argument("--layer-decay", type=float, default=1.0, help="layer-wise LR decay factor (1.0: off)")
    p.add_argument("--temporal-clips", type=int, help="clips at the final evaluation (recipe: 10)")
    p.add_argument("--spatial-crops", type=int, choices=(1, 3),
                   help="crops at evaluation: 3 (top-left / center / bottom-right) or 1 (center); recipe: 3, 1 "
                        "for ssv2 and synthetic")
    p.add_argument("--val-every", type=int, default=0, help="steps between validations (0: only at the end)")
    p.add_argument("--val-temporal-clips", type=int, help="clips for periodic validation (default: --temporal-clips)")
    p.add_argument("--eval-batch-size", type=positive_int, metavar="N",
                   help="clips per forward pass of the periodic validation and the final evaluation (default: 4 on "
                        "a CPU, 32 on a GPU, as --batch-size of `vimpac evaluate`): lower it to fit memory")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="training precision (default fp32; fp16 only on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0, help="seed of a from-scratch initialisation, the training samples and dropout (default 0)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (torch.use_deterministic_algorithms): with fp32, a resumed run "
                        "repeats the uninterrupted one's numbers on GPU too (slower)")
    p.add_argument("--log-every", type=int, default=10, metavar="N",
                   help="write training metrics (metrics.jsonl, TensorBoard) every N updates (default 10)")
    p.add_argument("--checkpoint-every", type=int, default=200, metavar="N",
                   help="save a resumable checkpoint every N updates (default 200; also at the end and when "
                        "stopped)")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="stop after M minutes of training with a checkpoint (exit code 3; continue with --resume)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less memory, slower steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--progress-lines", type=int, default=0, metavar="N",
                   help="with --no-progress: N one-line reports over the run instead of nothing")
    p.set_defaults(run=_run_finetune)


def _register_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="multi-view evaluation of a fine-tuned classifier on a labelled token store",
        description="Average softmax probabilities over spatial crops x uniform temporal clips; write "
                    "top-1 / top-5 / mean-class / per-class accuracy to OUT/results.json and the confusion "
                    "matrix to OUT/confusion_matrix.png.")
    p.add_argument("--checkpoint", required=True, metavar="RUN_OR_MODEL_DIR",
                   help="a fine-tuning run folder, or a classifier model folder")
    p.add_argument("--store", required=True, metavar="STORE", help="labelled token store to evaluate on")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder for results.json and confusion_matrix.png")
    p.add_argument("--temporal-clips", type=positive_int,
                   help="uniform clips per view (default: the run's when --checkpoint is a fine-tuning run, else 10)")
    p.add_argument("--spatial-crops", type=int, choices=(1, 3),
                   help="3: top-left / center / bottom-right (center only if the store lacks them); default: the "
                        "run's when --checkpoint is a fine-tuning run (1 for the ssv2 recipe), else 3")
    p.add_argument("--frames", type=positive_int, metavar="T", help="clip length (default: the model's)")
    p.add_argument("--batch-size", type=positive_int,
                   help="clips per forward pass (default: 4 on a CPU, where small forwards run faster, 32 on a GPU): "
                        "several videos' views share one when they are few, a video with more views (3 crops x 10 "
                        "clips = 30) takes several; lower it to fit memory")
    p.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast (default fp32)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=_run_evaluate)


def _register_probe(subparsers) -> None:
    p = subparsers.add_parser(
        "probe", help="k-NN or linear probe on frozen CLS features (no fine-tuning)",
        description="CLS features of the center view, averaged over uniform clips, of a frozen model; "
                    "k-NN (cosine, temperature-weighted votes) or a logistic-regression probe.")
    p.add_argument("--checkpoint", required=True, metavar="MODEL_DIR",
                   help="model folder (pre-training or classification; its backbone is used)")
    p.add_argument("--train-store", required=True, metavar="STORE", help="labelled token store the probe learns from")
    p.add_argument("--val-store", required=True, metavar="STORE",
                   help="labelled token store it is scored on (same classes, FPS and frame size)")
    p.add_argument("--method", default="knn", choices=("knn", "linear"),
                   help="knn: cosine k-nearest-neighbour vote; linear: logistic regression (default knn)")
    p.add_argument("--k", type=positive_int, default=20, help="k-NN: neighbours that vote (default 20)")
    p.add_argument("--temperature", type=positive_float, default=0.07,
                   help="k-NN: a neighbour's vote is exp(similarity / temperature) (default 0.07)")
    p.add_argument("--steps", type=positive_int, default=300, help="linear probe: optimizer iterations")
    p.add_argument("--weight-decay", type=nonnegative_float, default=1e-4, help="linear probe: L2 penalty")
    p.add_argument("--optimizer", default="lbfgs", choices=("lbfgs", "adamw"),
                   help="linear probe: full-batch L-BFGS (default) or AdamW")
    p.add_argument("--frames", type=positive_int, metavar="T", help="clip length (default: the model's)")
    p.add_argument("--temporal-clips", type=positive_int, default=4, metavar="N",
                   help="uniform clips per video whose CLS features are averaged (default 4)")
    p.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast (default fp32)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--out", metavar="FILE.json", help="also write the result here")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress count of the videos")
    p.set_defaults(run=_run_probe)


def _register_embed(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="CLS (and token) features of raw video files",
        description="Decode, tokenize and encode videos; write CLS features (N, D) as .npy (+ .keys.json) "
                    "or .safetensors, chosen by the --out suffix. Unreadable videos are listed, not fatal.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model folder (pre-training or classification)")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (unreadable ones are listed and skipped)")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="the tokenizer the model was trained on")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="features file: FILE.npy (+ FILE.keys.json) or FILE.safetensors")
    p.add_argument("--fps", type=positive_float, default=2.0, help="frames per second sampled (default 2)")
    p.add_argument("--size", type=positive_int, default=128,
                   help="frame size S in pixels: frames are resized and center-cropped to S x S (default 128)")
    p.add_argument("--frames", type=positive_int, metavar="T", help="clip length (default: the model's)")
    p.add_argument("--tokens", action="store_true", help="also write token features (T, h, w, D) per video")
    p.add_argument("--batch-size", type=positive_int,
                   help="clips per forward pass (default: 4 on a CPU, 32 on a GPU)")
    p.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast (default fp32)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=_run_embed)


def _input_errors() -> tuple[type[Exception], ...]:
    from vimpac.config import ConfigError
    from vimpac.engine.checkpoint import CheckpointError
    from vimpac.finetune.errors import FinetuneError
    from vimpac.model import ModelError
    from vimpac.store import StoreError
    from vimpac.tokenizer.base import TokenizerError

    return (ConfigError, CheckpointError, FinetuneError, ModelError, StoreError, TokenizerError, KeyError)


def _run_finetune(args: argparse.Namespace) -> int:
    from vimpac.engine import distributed
    from vimpac.finetune.runner import config_from_args, run_finetune

    from vimpac.engine.trainer import TrainingDiverged

    try:
        summary = run_finetune(config_from_args(**vars(args)))
    except _input_errors() as exc:
        return command_error(args, exc)
    except TrainingDiverged as exc:
        return command_error(args, exc, code=4)
    code = {"finished": 0, "interrupted": 130}.get(summary.status, 3)  # 3: the time limit; resume it
    if not distributed.current().is_main:  # under torchrun, one summary
        return code
    print(f"{summary.status} after {summary.steps} steps; run folder {summary.run_dir}")
    if summary.model_dir:
        print(f"model: {summary.model_dir}")
    if summary.evaluation:
        print("evaluation: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in summary.evaluation.items()))
    if summary.status == "time_limit":
        print("stopped by --max-minutes; continue with the same command and --resume", file=sys.stderr)
    return code


def _run_evaluate(args: argparse.Namespace) -> int:
    from vimpac.devices import usable_device
    from vimpac.engine import distributed
    from vimpac.finetune.evaluate import evaluate_classifier, write_evaluation
    from vimpac.finetune.loading import load_classifier, run_evaluation_settings, run_training_store
    from vimpac.finetune.runner import open_store_like

    try:
        args.device = usable_device(args.device, "--device")
        # A fine-tuning run's classifier only on a store tokenized like its training store (same
        # tokenizer, frame size and FPS); unknown for other model folders and older runs.
        store = open_store_like(args.store, run_training_store(args.checkpoint),
                                "the fine-tuning run's training store")
        model = load_classifier(args.checkpoint, frames=args.frames, grid=store.grid,
                                expect_codebook_size=store.meta.codebook_size)
        # Unless given: the protocol the run itself was evaluated with (its recipe's), else the paper's 10 x 3.
        settings = {"temporal_clips": 10, "spatial_crops": 3}
        if args.temporal_clips is None or args.spatial_crops is None:
            settings.update(run_evaluation_settings(args.checkpoint))
        temporal_clips = args.temporal_clips or settings["temporal_clips"]
        spatial_crops = args.spatial_crops or settings["spatial_crops"]
        # Under torchrun each rank scores a share of the videos; rank 0 writes and reports.
        dist = distributed.init_distributed(args.device)
        device = distributed.rank_device(args.device, dist)
        result = evaluate_classifier(model.to(device), store, args.frames, temporal_clips, spatial_crops,
                                     device, args.bf16, args.batch_size, progress=args.progress)
        if not dist.is_main:
            return 0
        paths = write_evaluation(result, args.out)
    except _input_errors() as exc:
        return command_error(args, exc)
    m = result.metrics
    print(f"{m.num_examples} videos, views {result.settings['views']} x {temporal_clips} clips: "
          f"top-1 {100 * m.top1:.2f}%  top-5 {100 * m.top5:.2f}%  mean-class {100 * m.mean_class:.2f}%")
    print(f"wrote {paths['results']} and {paths['confusion_matrix']}")
    return 0


def _run_probe(args: argparse.Namespace) -> int:
    from vimpac.devices import usable_device
    from vimpac.finetune.errors import FinetuneError
    from vimpac.finetune.loading import load_backbone
    from vimpac.finetune.probe import check_same_classes, extract_features, knn_evaluate, linear_probe_evaluate
    from vimpac.io import atomic_write_json
    from vimpac.store import TokenStore

    try:
        args.device = usable_device(args.device, "--device")
        train = TokenStore.open(args.train_store)
        # Features of clips of another time span or frame size would not be comparable.
        val = TokenStore.open(args.val_store, expect_tokenizer_id=train.meta.tokenizer_id,
                              expect_fps=train.meta.fps, expect_size=train.meta.size)
        for store in (train, val):  # before minutes of feature extraction
            if not (store.labels >= 0).any():
                raise FinetuneError(f"{store.root}: no labelled videos; a probe needs labels in both stores")
        check_same_classes(train.class_names, val.class_names, args.train_store, args.val_store)
        backbone = load_backbone(args.checkpoint, frames=args.frames, grid=train.grid,
                                 expect_codebook_size=train.meta.codebook_size).to(args.device)
        kwargs = dict(frames=args.frames, temporal_clips=args.temporal_clips, device=args.device, bf16=args.bf16,
                      progress=args.progress)
        train_features = extract_features(backbone, train, **kwargs)
        val_features = extract_features(backbone, val, **kwargs)
        if args.method == "knn":
            result = knn_evaluate(train_features, val_features, k=args.k, temperature=args.temperature)
        else:
            result = linear_probe_evaluate(train_features, val_features, args.optimizer, args.steps, args.weight_decay)
    except _input_errors() as exc:
        return command_error(args, exc)
    result = {"method": args.method, **result, "checkpoint": args.checkpoint}
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


def _run_embed(args: argparse.Namespace) -> int:
    from vimpac.devices import usable_device
    from vimpac.finetune.embed import check_size, embed_videos, embedding_files, write_embeddings
    from vimpac.finetune.loading import load_backbone
    from vimpac.tokenizer.base import load_tokenizer

    try:
        embedding_files(args.out)  # before minutes of decoding
        args.device = usable_device(args.device, "--device")
        tokenizer = load_tokenizer(args.tokenizer, device=args.device)
        check_size(args.size, tokenizer.downsample)
        grid = (args.size // tokenizer.downsample,) * 2
        backbone = load_backbone(args.checkpoint, frames=args.frames, grid=grid,
                                 expect_codebook_size=tokenizer.codebook_size).to(args.device)
        embeddings = embed_videos(backbone, tokenizer, args.videos, fps=args.fps, size=args.size, frames=args.frames,
                                  with_tokens=args.tokens, device=args.device, bf16=args.bf16, progress=args.progress,
                                  batch_size=args.batch_size)
        written = write_embeddings(embeddings, args.out)
    except _input_errors() as exc:
        return command_error(args, exc)
    for failure in embeddings.failures:
        print(f"skipped {failure['path']}: {failure['error']}", file=sys.stderr)
    print(f"embedded {len(embeddings.cls)} of {len(args.videos)} videos -> {', '.join(map(str, written))}")
    return 0 if embeddings.cls else 1
