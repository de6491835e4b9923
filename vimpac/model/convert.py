"""Converting the authors' released checkpoints into our format.

A released checkpoint is a folder with `classifier.pt` (the model's state dict, saved with
`torch.save`), optimizer / scheduler states, and `args.pickle` (the pickled `argparse.Namespace`
of the run). We read

- `classifier.pt` with `torch.load(weights_only=True)`: tensors and plain containers only;
- `args.pickle` (or `args.pkl`) with `SafeNamespaceUnpickler`, which admits only
  `argparse.Namespace` and plain builtin values. Any other global - the way a crafted pickle
  runs code - raises `CheckpointError` before anything is called.

Our parameter names equal the original ones, so the state dict needs no renaming apart from a
`module.` prefix (DDP) and the fine-tuned classifier's `cls_fc.*` -> `head.cls_fc.*`. Shapes
(vocabulary, width, depth, positional table sizes, head sizes, pre-/post-LN, halved widths)
are read off the state dict; the layout and head count come from the arguments, since weights
cannot tell T from H from W.
"""

from __future__ import annotations

import argparse
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from vimpac.io import output_folder_problem, write_folder
from vimpac.model.config import ModelConfig
from vimpac.model.errors import CheckpointError, ModelError
from vimpac.model.layout import canonical_layout

STATE_DICT_FILE = "classifier.pt"
ARGS_FILES = ("args.pickle", "args.pkl")

# Plain values a Namespace may hold. `copyreg._reconstructor` + `builtins.object` are how
# protocols 0 and 1 spell "make an instance of the (already admitted) class".
_ALLOWED_GLOBALS = {
    ("argparse", "Namespace"): argparse.Namespace,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("builtins", "range"): range,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): None,  # resolved below, only for admitted classes
}


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    if cls is not argparse.Namespace or base is not object or state is not None:
        raise pickle.UnpicklingError("copyreg._reconstructor is only admitted for argparse.Namespace")
    return argparse.Namespace()


_PY2_MODULES = {"copy_reg": "copyreg", "__builtin__": "builtins"}


class SafeNamespaceUnpickler(pickle.Unpickler):
    """Unpickles an `argparse.Namespace` of plain values; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocols 0-2 write Python 2 module names; map the two that plain values use.
        module = _PY2_MODULES.get(module, module)
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: only argparse.Namespace and plain builtin values are admitted")
        if (module, name) == ("copyreg", "_reconstructor"):
            return _safe_reconstructor
        return _ALLOWED_GLOBALS[(module, name)]


def load_args(path: str | Path) -> argparse.Namespace:
    """Read a pickled argument namespace safely; anything but a Namespace is a `CheckpointError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
        args = SafeNamespaceUnpickler(io.BytesIO(data)).load()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError,
            MemoryError) as exc:
        # MemoryError: a length-prefixed opcode (BINBYTES8, BINUNICODE8) may declare a huge size,
        # which the unpickler allocates before it reads; a 12-byte file can ask for a terabyte.
        raise CheckpointError(f"{path}: not a plain pickled argparse.Namespace "
                              f"({exc or type(exc).__name__}); "
                              "pass the architecture explicitly and skip the file (--ignore-args)") from None
    if not isinstance(args, argparse.Namespace):
        raise CheckpointError(f"{path}: expected a pickled argparse.Namespace, got {type(args).__name__}")
    return args


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """`classifier.pt` via `torch.load(weights_only=True)`, DDP `module.` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; a released VIMPAC checkpoint folder holds {STATE_DICT_FILE}")
    try:
        if zipfile.is_zipfile(path):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            # The legacy format (torch < 1.6): torch.load allocates each storage at the size the
            # pickle declares before reading it (a 400-byte file can ask for terabytes); the
            # restricted reader refuses a storage larger than the file first.
            from vimpac.tokenizer.base import TokenizerError
            from vimpac.tokenizer.safe_pickle import load_module_pickle
            try:
                state = load_module_pickle(path, ())
            except TokenizerError as exc:  # its message names the file
                raise CheckpointError(f"{exc}; not a weights-only state dict") from None
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise CheckpointError(f"{path}: cannot load as a weights-only state dict: {exc}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def infer_config(state: Mapping[str, torch.Tensor], args: argparse.Namespace | None,
                 overrides: Mapping[str, Any], source: str) -> tuple[ModelConfig, str, int | None]:
    """(ModelConfig, kind, num_classes) from the state dict shapes plus the run's arguments."""
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{source}: expected key {key!r}; is this a VIMPAC checkpoint?")
        return state[key]

    rows, dim = need("backbone.embedding.weight").shape
    pos = "backbone.positional_embedding."
    if pos + "temporal_pos_embedding" not in state or pos + "height_pos_embedding" not in state:
        raise CheckpointError(f"{source}: only the 'hw_separation' positional embedding (separate T, H, W "
                              "tables) is supported; the file has none")
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"backbone\.transformer\.resblocks\.(\d+)\.", k))}
    first = "backbone.transformer.resblocks.0."
    pre_ln = "backbone.ln_post.weight" in state
    width = sum(v.shape[0] for k, v in state.items()
                if k.startswith(first + "attention_blocks.0.attentions.") and k.endswith("attention.query.weight"))
    fields: dict[str, Any] = dict(
        codebook_size=int(rows) - 5, dim=int(dim), layers=len(layer_ids),
        halve_att=width != dim, halve_mlp=need(first + "mlp.c_fc.weight").shape[0] == 2 * dim,
        pre_ln=pre_ln,
        # The authors' pre-activation attention blocks add their output to the *normalized* input.
        pre_ln_residual="normalized" if pre_ln else "input",
        max_frames=need(pos + "temporal_pos_embedding").shape[0],
        height=need(pos + "height_pos_embedding").shape[0],
        width=need(pos + "width_pos_embedding").shape[0],
        heads=int(dim) // 64,  # pretrain.py / finetune.py always use D // 64
    )
    if args is not None:
        model_name = str(getattr(args, "model", ""))
        if not model_name.startswith("efflayout"):
            raise CheckpointError(f"{source}: args.model = {model_name!r}; only 'efflayout<LAYOUT>' models are supported")
        fields["layout"] = model_name[len("efflayout"):]
        if getattr(args, "pos_emb", "hw_separation") != "hw_separation":
            raise CheckpointError(f"{source}: args.pos_emb = {args.pos_emb!r}; only 'hw_separation' is supported")
        if isinstance(getattr(args, "dropout", None), float):
            fields["dropout"] = fields["attention_dropout"] = args.dropout
        if isinstance(getattr(args, "last_dropout", None), float):
            fields["classifier_dropout"] = args.last_dropout
    heads_layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"cls_head\.mlp\.linear_(\d+)\.", k))})
    if heads_layers:
        fields["cls_head_layers"] = len(heads_layers)
        fields["cls_head_out"] = state[f"cls_head.mlp.linear_{heads_layers[-1]}.weight"].shape[0]
        fields["cls_head_bn_after_proj"] = f"cls_head.mlp.bn_{heads_layers[-1]}.weight" in state
        if len(heads_layers) > 1:
            fields["cls_head_hidden"] = state["cls_head.mlp.linear_0.weight"].shape[0]
    fields.update(overrides)
    if "layout" not in fields:
        raise CheckpointError(f"{source}: the layout is not in the weights; give the args file or layout=...")
    try:
        fields["layout"] = canonical_layout(str(fields["layout"]))
        cfg = ModelConfig(**fields)
        cfg.validate()
    except (ModelError, TypeError) as exc:
        raise CheckpointError(f"{source}: inferred config does not build: {exc}") from None

    if "cls_fc.weight" in state:
        return cfg, "classification", int(state["cls_fc.weight"].shape[0])
    if any(k.startswith("mlm_head.") for k in state):
        if not heads_layers:
            raise CheckpointError(f"{source}: has a masked-token head but no contrastive head (cls_head.*); "
                                  "only the full pre-training wrapper is supported")
        return cfg, "pretraining", None
    raise CheckpointError(f"{source}: neither a pre-training (mlm_head.*) nor a fine-tuned (cls_fc.*) checkpoint")


def convert_original(ckpt_dir: str | Path, out_dir: str | Path, overrides: Mapping[str, Any] | None = None,
                     ignore_args: bool = False, overwrite: bool = False) -> Path:
    """Convert a released checkpoint folder into our format (config.json + model.safetensors).

    OUT_DIR must be new or empty; with `overwrite`, a model folder there (a config.json) is
    replaced as a whole once the new one is written. Any other non-empty folder is refused."""
    from vimpac.model.pretrained import CONFIG_FILE, load_weights
    from vimpac.model.vimpac import VimpacForClassification, VimpacForPretraining

    problem = output_folder_problem(out_dir, CONFIG_FILE, "model", overwrite)
    if problem:  # before the minutes a large checkpoint takes to read
        raise CheckpointError(problem)
    replace = (Path(out_dir) / CONFIG_FILE).exists()
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir}: not a folder; expected the released checkpoint folder "
                              f"with {STATE_DICT_FILE} and {ARGS_FILES[0]}")
    state_path = ckpt_dir / STATE_DICT_FILE
    state = load_original_state_dict(state_path)
    args = None
    if not ignore_args:
        args_path = next((ckpt_dir / n for n in ARGS_FILES if (ckpt_dir / n).is_file()), None)
        if args_path is None:
            raise CheckpointError(f"{ckpt_dir}: no {' or '.join(ARGS_FILES)}; the layout comes from it "
                                  "(or pass --ignore-args with layout=...)")
        args = load_args(args_path)
    cfg, kind, num_classes = infer_config(state, args, dict(overrides or {}), str(state_path))
    if kind == "classification":
        model = VimpacForClassification(cfg, num_classes or 1)
        state = {("head." + k if k.startswith("cls_fc.") else k): v for k, v in state.items()}
    else:
        model = VimpacForPretraining(cfg)
    load_weights(model, state, str(state_path))
    write_folder(out_dir, replace, lambda folder: model.save_pretrained(folder, converted_from=str(ckpt_dir.resolve())))
    return Path(out_dir)
