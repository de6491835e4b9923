"""Our weight format: a folder with `config.json` + `model.safetensors`.

`config.json` holds the format tag, the model kind ("pretraining" or "classification"), the
`ModelConfig` fields and, for classifiers, the number of classes. The weights are the model's
state dict without tied aliases (the masked-token decoder is the embedding table; it is stored
once). Nothing here unpickles anything, so a folder from anywhere is safe to load, and the
folder loads with `vimpac.model` alone - no training code needed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from vimpac.config import ConfigError, from_dict, to_dict
from vimpac.io import atomic_path, atomic_write_json, parse_json
from vimpac.model.config import ModelConfig
from vimpac.model.errors import CheckpointError, ModelError
from vimpac.model.interpolate import resize_positional_tables
from vimpac.weight_shapes import (fit_problems, listed, numbered_blocks, read_meta_tensors, read_safetensors,
                                  shape_problems, summarize, tied_names)

FORMAT = "vimpac-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """State-dict keys that are the same tensor as an earlier key: alias -> first key."""
    return {alias: names[0] for names in tied_names(model.state_dict(keep_vars=True)) for alias in names[1:]}


def save_model_folder(model: nn.Module, cfg: ModelConfig, folder: str | Path, kind: str,
                      extra: Mapping[str, Any] | None = None) -> Path:
    """Write `config.json` and `model.safetensors` atomically into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    aliases = tied_aliases(model)
    tensors = {key: value.detach().to("cpu").contiguous()
               for key, value in model.state_dict().items() if key not in aliases}
    with atomic_path(folder / WEIGHTS_FILE, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "vimpac_kind": kind})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "model": to_dict(cfg)}
    meta.update(extra or {})
    atomic_write_json(folder / CONFIG_FILE, meta)
    return folder


def read_model_config(folder: str | Path) -> tuple[str, ModelConfig, dict[str, Any]]:
    """(kind, ModelConfig, the whole config.json) of a model folder; errors name the file."""
    path = Path(folder) / CONFIG_FILE
    try:
        meta = parse_json(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found; a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                              "(written by save_pretrained or `vimpac convert-original`)") from None
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8, nested too deeply
        raise CheckpointError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: expected \"format\": \"{FORMAT}\", got {meta.get('format') if isinstance(meta, dict) else meta!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r} is not supported "
                              f"(this vimpac reads {FORMAT_VERSION})")
    model_fields = meta.get("model")
    if (isinstance(model_fields, dict) and "converted_from" in meta and model_fields.get("pre_ln")
            and "pre_ln_residual" not in model_fields):
        # Converted before the field existed: the authors' pre-LN blocks add each sublayer's
        # output to the normalized input, which is what their weights were trained with.
        model_fields = {**model_fields, "pre_ln_residual": "normalized"}
    try:
        cfg = from_dict(ModelConfig, model_fields, where=f"{path}: model")
        cfg.validate()
    except (ConfigError, ModelError) as exc:
        raise CheckpointError(str(exc)) from None
    return str(meta.get("kind")), cfg, meta


def read_weight_header(folder: str | Path) -> dict[str, torch.Tensor]:
    """name -> a meta tensor (dtype and shape, no data) of every tensor in the folder's
    model.safetensors, from its header alone: checked (check_sizes_against_weights,
    check_weight_header) before read_weights loads the tensors."""
    return read_safetensors(Path(folder) / WEIGHTS_FILE, read_meta_tensors, CheckpointError)


def check_weight_header(folder: str | Path, described: nn.Module, header: Mapping[str, torch.Tensor]) -> None:
    """Refuse a model.safetensors whose tensors (`header`, read_weight_header) do not fit
    `described`, the model its config.json describes (built by meta_model): a name the model
    does not have, one it has that the file lacks (tied aliases may be left out: save_pretrained
    stores them once), another shape or a float tensor for an integer one. The CheckpointError
    names the file and the tensors, before any tensor data is read."""
    problems = fit_problems(described.state_dict(), header, optional=tied_aliases(described))
    if problems:
        raise CheckpointError(f"{Path(folder) / WEIGHTS_FILE}: weights do not fit the model {CONFIG_FILE} "
                              "describes: " + "; ".join(problems))


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return read_safetensors(Path(folder) / WEIGHTS_FILE, load_file, CheckpointError)


def check_sizes_against_weights(folder: str | Path, cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]],
                                contrastive_head: bool = False, num_classes: int | None = None) -> None:
    """Before a model is built from a folder's config.json: the sizes that decide how much memory
    it takes (vocabulary, width, depth, positional tables, heads) must be those of the tensors in
    its model.safetensors (`shapes`: name -> shape, from read_weight_header). A config claiming
    dim=10**6 or layers=10**5 is then refused at once instead of allocating terabytes, or building
    for hours, before the weights are found not to fit."""
    expected = {
        "backbone.embedding.weight": (cfg.num_rows, cfg.dim),
        "backbone.positional_embedding.temporal_pos_embedding": (cfg.max_frames, cfg.dim),
        "backbone.positional_embedding.height_pos_embedding": (cfg.height, cfg.dim),
        "backbone.positional_embedding.width_pos_embedding": (cfg.width, cfg.dim),
    }
    if num_classes is not None:
        expected["head.cls_fc.weight"] = (num_classes, cfg.dim)
    problems = shape_problems(expected, shapes)
    layers = numbered_blocks(shapes, "backbone.transformer.resblocks.")
    if len(layers) != cfg.layers:
        problems.append(f"layers: config says {cfg.layers}, file has {len(layers)}")
    if contrastive_head:
        linears = sorted(int(m.group(1)) for k in shapes if (m := re.fullmatch(r"cls_head\.mlp\.linear_(\d+)\.weight", k)))
        if linears != list(range(cfg.cls_head_layers)):
            problems.append(f"cls_head_layers: config says {cfg.cls_head_layers}, file has {len(linears)}")
        else:
            for i in linears:
                out = cfg.cls_head_out if i == linears[-1] else cfg.cls_head_hidden
                shape = shapes[f"cls_head.mlp.linear_{i}.weight"]
                if tuple(shape[:1]) != (out,):
                    problems.append(f"cls_head.mlp.linear_{i}: config implies {out} outputs, file has "
                                    f"a weight of shape {tuple(shape)}")
    if problems:
        raise CheckpointError(f"{Path(folder) / CONFIG_FILE}: does not describe {Path(folder) / WEIGHTS_FILE}: "
                              + summarize(problems))


def stored_num_classes(folder: str | Path, meta: Mapping[str, Any]) -> int:
    """The `num_classes` of a classifier folder's config.json, checked."""
    value = meta.get("num_classes")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{Path(folder) / CONFIG_FILE}: field 'num_classes' must be a positive integer "
                              f"for a classification model, got {value!r}")
    return value


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Load strictly: every key present, nothing extra, shapes equal - except positional tables,
    which are interpolated to the model's T / H / W. Tied aliases missing from `state_dict` are
    filled from their source key. Returns the interpolation notes; mismatches raise
    `CheckpointError` listing the keys. A model folder's file was checked from its header before
    it was read (check_weight_header); these checks are for a state dict without one (the authors'
    checkpoints, `vimpac convert-original`) and a backbone's share resized to other T / H / W."""
    state = dict(state_dict)
    for alias, original in tied_aliases(model).items():
        if alias not in state and original in state:
            state[alias] = state[original]
    target = model.state_dict()
    notes = resize_positional_tables(state, target)
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong_shape = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                         for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or unexpected or wrong_shape:
        parts = [f"{name} [{listed(items)}]" for name, items in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)) if items]
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return notes
