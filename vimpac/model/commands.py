"""`vimpac convert-original` and `vimpac model-info`.

Only argparse-level code at the top: torch and the model are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json

from vimpac.cli import command_error

LAYOUT_CHOICES_HELP = "e.g. 'T,H|W' (default), 'T,H,W', 'T,HxW', 'TxHxW'; 'all' = the paper's four"


def register(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser(
        "convert-original",
        help="convert an authors' released VIMPAC checkpoint folder into our format",
        description="Read CKPT_DIR/classifier.pt (weights only) and CKPT_DIR/args.pickle (restricted "
                    "unpickler: argparse.Namespace and plain values only) and write OUT_DIR/config.json "
                    "+ OUT_DIR/model.safetensors.",
    )
    convert.add_argument("ckpt_dir", help="released checkpoint folder (classifier.pt, args.pickle)")
    convert.add_argument("out_dir", help="output folder for config.json + model.safetensors (new or empty)")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace OUT_DIR when it already holds a model folder (the whole folder is replaced)")
    convert.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a model config field (e.g. layout=T,H|W heads=8); repeatable")
    convert.add_argument("--ignore-args", action="store_true",
                         help="do not read args.pickle; give the layout with --set layout=...")
    convert.set_defaults(run=_run_convert)

    info = subparsers.add_parser(
        "model-info",
        help="print parameter counts of a model preset (total, backbone, per head)",
        description="Build the model on the meta device (no memory, no weights) and count parameters.",
    )
    info.add_argument("--preset", default="small", help="tiny, small, base or large-half (default small)")
    info.add_argument("--layout", default=None, help=f"attention layout; {LAYOUT_CHOICES_HELP}")
    info.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a model config field (e.g. pre_ln=true codebook_size=1024)")
    info.add_argument("--json", action="store_true", help="print JSON for scripts")
    info.set_defaults(run=_run_model_info)


def _run_convert(args: argparse.Namespace) -> int:
    from vimpac.config import ConfigError, apply_overrides, to_dict
    from vimpac.model.config import ModelConfig
    from vimpac.model.convert import convert_original
    from vimpac.model.errors import ModelError

    overrides = dict(item.split("=", 1) for item in args.overrides if "=" in item)
    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        return command_error(args, f"--set expects KEY=VALUE, got {bad}")
    try:
        if overrides:
            # Type-check the overrides against ModelConfig before touching any file.
            typed = to_dict(apply_overrides(ModelConfig(), overrides))
            overrides = {key: typed[key] for key in overrides}
        out = convert_original(args.ckpt_dir, args.out_dir, overrides, ignore_args=args.ignore_args,
                               overwrite=args.overwrite)
    except (ModelError, ConfigError) as exc:
        return command_error(args, exc)
    print(f"wrote {out}/config.json and {out}/model.safetensors")
    return 0


def _run_model_info(args: argparse.Namespace) -> int:
    from vimpac.model.errors import ModelError
    from vimpac.model.info import parameter_report
    from vimpac.model.layout import PAPER_LAYOUTS

    layouts = list(PAPER_LAYOUTS) if args.layout == "all" else [args.layout]
    try:
        reports = [parameter_report(args.preset, layout, args.overrides) for layout in layouts]
    except ModelError as exc:
        return command_error(args, exc)
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
        return 0
    for report in reports:
        cfg = report["config"]
        print(f"preset {report['preset']}  layout {cfg['layout']}  {'pre' if cfg['pre_ln'] else 'post'}-LN  "
              f"D={cfg['dim']} layers={cfg['layers']} heads={cfg['heads']}  "
              f"tables T={cfg['max_frames']} H={cfg['height']} W={cfg['width']}  codes={cfg['codebook_size']}")
        counts = report["parameters"]
        for name in ("total", "backbone", "backbone_without_embedding", "mlm_head", "cls_head"):
            print(f"  {name:<28} {counts[name]:>13,}  ({counts[name] / 1e6:.1f}M)")
    return 0
