"""Helpers shared by the model tests (a uniquely named module, not a conftest)."""

from __future__ import annotations

import json

import numpy as np
import torch

from shared_fixtures import fixture_path
from vimpac.model import ModelConfig

FIXTURES = ("tiny_t_hw", "tiny_t_h_w_halfatt")


def load_fixture(name: str) -> dict:
    with np.load(fixture_path("original-vimpac", f"{name}.npz")) as z:
        return {k: z[k] for k in z.files}


def fixture_config(fx: dict) -> ModelConfig:
    """Our config from the fixture's constructor arguments (config_json)."""
    c = json.loads(str(fx["config_json"]))
    b, args, head = c["backbone"], c["args_read_by_model"], c["cls_head"]
    return ModelConfig(
        codebook_size=b["vocab_size"] - 5, dim=b["hid_dim"], layers=b["layers"], heads=b["heads"],
        layout=b["layout"], pre_ln=b["pre_activation"], halve_att=args["halve_att"], halve_mlp=args["halve_mlp"],
        max_frames=b["length"], height=b["height"], width=b["width"],
        cls_head_layers=head["num_layers"], cls_head_hidden=head["hid_dim"], cls_head_out=head["output_dim"],
        cls_head_bn_after_proj=head["bn_after_proj"],
    )


def fixture_state_dict(fx: dict, with_aliases: bool = True) -> dict[str, torch.Tensor]:
    """The original state dict in its original order, tied aliases restored from their source."""
    stored = {k[len("state_dict/"):]: torch.from_numpy(np.array(v)) for k, v in fx.items() if k.startswith("state_dict/")}
    tied = json.loads(str(fx["state_dict_tied_json"]))
    index = json.loads(str(fx["state_dict_index_json"]))
    out = {}
    for key, _shape, _dtype in index:
        if key in stored:
            out[key] = stored[key]
        elif with_aliases:
            out[key] = stored[tied[key]]
    return out


def tiny_config(**changes) -> ModelConfig:
    """A very small model for fast CPU tests."""
    base = dict(codebook_size=32, dim=64, layers=2, heads=4, max_frames=3, height=4, width=4,
                cls_head_layers=2, cls_head_hidden=32, cls_head_out=16, dropout=0.0, attention_dropout=0.0)
    base.update(changes)
    return ModelConfig(**base)


def random_tokens(cfg: ModelConfig, batch: int = 2, frames: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, frames or cfg.max_frames, cfg.height, cfg.width)
    return torch.randint(0, cfg.codebook_size, shape, generator=g)
