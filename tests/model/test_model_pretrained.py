"""Our format (config.json + model.safetensors) and positional-table interpolation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from model_testlib import random_tokens, tiny_config
from process_helpers import imported_in_fresh_process
from vimpac.finetune.loading import load_backbone
from vimpac.model import CheckpointError, VimpacForClassification, VimpacForPretraining
from vimpac.model.interpolate import resize_table


def test_round_trip_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(layout="T,H,W", pre_ln=True, halve_att=True)
    model = VimpacForPretraining(cfg).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["kind"] == "pretraining" and meta["model"]["layout"] == "T,H,W"

    loaded = VimpacForPretraining.from_pretrained(tmp_path / "m").eval()
    assert loaded.mlm_head.decoder.weight is loaded.backbone.embedding.weight   # tie survives loading
    tokens = random_tokens(cfg)
    with torch.no_grad():
        a, b = model(tokens, tokens < 5), loaded(tokens, tokens < 5)
    torch.testing.assert_close(b.mlm_logits, a.mlm_logits, atol=0, rtol=0)
    torch.testing.assert_close(b.cls_projection, a.cls_projection, atol=0, rtol=0)


def test_interpolation_into_longer_and_larger_grids(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(max_frames=3, height=4, width=4)
    model = VimpacForPretraining(cfg)
    model.save_pretrained(tmp_path / "pt")
    clf = VimpacForClassification.from_pretrained(tmp_path / "pt", num_classes=5, max_frames=6, height=8, width=6)
    pos, old = clf.backbone.positional_embedding, model.backbone.positional_embedding
    assert pos.temporal_pos_embedding.shape == (6, cfg.dim)
    assert pos.height_pos_embedding.shape == (8, cfg.dim) and pos.width_pos_embedding.shape == (6, cfg.dim)
    # Linear interpolation with align_corners=False, computed independently for one table.
    expected = F.interpolate(old.temporal_pos_embedding.detach().t()[None], size=6, mode="linear",
                             align_corners=False)[0].t()
    torch.testing.assert_close(pos.temporal_pos_embedding.detach(), expected)
    # Doubling a table: output rows 1 and 2 lie at source positions 0.25 and 0.75.
    table = old.height_pos_embedding.detach()
    torch.testing.assert_close(pos.height_pos_embedding.detach()[1], 0.75 * table[0] + 0.25 * table[1])
    torch.testing.assert_close(pos.cls_pos_embedding, old.cls_pos_embedding)
    torch.testing.assert_close(clf.backbone.embedding.weight, model.backbone.embedding.weight)
    assert torch.count_nonzero(clf.head.cls_fc.weight) == 0
    logits = clf(random_tokens(clf.config, frames=6))
    assert logits.shape == (2, 5) and torch.count_nonzero(logits) == 0   # zero-initialised head
    assert resize_table(table, 4) is table


def test_classifier_round_trip_and_kind_errors(tmp_path):
    cfg = tiny_config()
    clf = VimpacForClassification(cfg, num_classes=3)
    torch.nn.init.normal_(clf.head.cls_fc.weight)
    clf.save_pretrained(tmp_path / "clf")
    again = VimpacForClassification.from_pretrained(tmp_path / "clf")
    assert again.num_classes == 3
    torch.testing.assert_close(again.head.cls_fc.weight, clf.head.cls_fc.weight)
    with pytest.raises(CheckpointError, match="holds a 'classification' model"):
        VimpacForPretraining.from_pretrained(tmp_path / "clf")
    VimpacForPretraining(cfg).save_pretrained(tmp_path / "pt")
    with pytest.raises(CheckpointError, match="pass num_classes"):
        VimpacForClassification.from_pretrained(tmp_path / "pt")


def test_from_pretrained_returns_eval_mode_so_predictions_repeat(tmp_path):
    # A loaded model is for predicting first (as Hugging Face's from_pretrained): in training mode
    # its dropout would give other logits at every call.
    torch.manual_seed(0)
    cfg = tiny_config(dropout=0.3)
    clf = VimpacForClassification(cfg, num_classes=3)
    torch.nn.init.normal_(clf.head.cls_fc.weight)
    clf.save_pretrained(tmp_path / "clf")
    VimpacForPretraining(cfg).save_pretrained(tmp_path / "pt")
    tokens = random_tokens(cfg)
    loaded = [VimpacForClassification.from_pretrained(tmp_path / "clf"),
              VimpacForClassification.from_pretrained(tmp_path / "clf", num_classes=4, new_head=True),
              VimpacForClassification.from_pretrained(tmp_path / "pt", num_classes=3),
              VimpacForPretraining.from_pretrained(tmp_path / "pt")]
    for model in loaded:
        assert not any(module.training for module in model.modules()), type(model).__name__
    with torch.no_grad():
        first, second = loaded[0](tokens), loaded[0](tokens)
        pretrained_first, pretrained_second = loaded[3](tokens).cls_hidden, loaded[3](tokens).cls_hidden
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    torch.testing.assert_close(pretrained_second, pretrained_first, atol=0, rtol=0)


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        VimpacForPretraining.from_pretrained(tmp_path)
    model = VimpacForPretraining(tiny_config())
    model.save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    meta = json.loads(config_path.read_text())
    meta["model"]["dim"] = "wide"
    config_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model.dim"):
        VimpacForPretraining.from_pretrained(tmp_path / "m")
    meta["model"]["dim"] = 64
    meta["model"]["halve_mlp"] = True   # builds, but the weights do not fit it
    config_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        VimpacForPretraining.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        VimpacForPretraining.from_pretrained(tmp_path / "m")


def _refuse_building(monkeypatch):
    """Old code built the model before looking at the weights: with these configs that asks for
    terabytes; fail fast instead."""
    import vimpac.model.vimpac as vimpac_module

    def built(*args, **kwargs):
        raise AssertionError("a model was built from a config.json the weights do not match")
    monkeypatch.setattr(vimpac_module, "VimpacBackbone", built)


@pytest.mark.parametrize("field, value", [("dim", 10**6), ("layers", 10**5), ("codebook_size", 10**9),
                                          ("max_frames", 10**8), ("width", 10**8), ("cls_head_hidden", 10**9),
                                          ("cls_head_out", 10**9), ("cls_head_layers", 10**6)])
def test_a_config_claiming_huge_sizes_is_refused_before_anything_is_built(tmp_path, monkeypatch, field, value):
    VimpacForPretraining(tiny_config()).save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    meta = json.loads(config_path.read_text())
    meta["model"][field] = value
    config_path.write_text(json.dumps(meta))
    _refuse_building(monkeypatch)
    with pytest.raises(CheckpointError, match=f"{config_path}: does not describe .*model.safetensors"):
        VimpacForPretraining.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("num_classes", [10**10, "3", [3], None, True])
def test_a_classifiers_num_classes_must_be_the_heads(tmp_path, monkeypatch, num_classes):
    VimpacForClassification(tiny_config(), num_classes=3).save_pretrained(tmp_path / "clf")
    config_path = tmp_path / "clf" / "config.json"
    meta = json.loads(config_path.read_text())
    meta["num_classes"] = num_classes
    config_path.write_text(json.dumps(meta))
    _refuse_building(monkeypatch)
    with pytest.raises(CheckpointError, match=f"{config_path}: (field 'num_classes'|does not describe)"):
        VimpacForClassification.from_pretrained(tmp_path / "clf")


def _refuse_loading(monkeypatch):
    """Old code loaded every tensor of model.safetensors before comparing any shape with the
    config: a crafted folder made us read all of a file whose tensors could not fit."""
    import safetensors.torch

    def loaded(*args, **kwargs):
        raise AssertionError("the tensors were loaded before their shapes were checked")
    monkeypatch.setattr(safetensors.torch, "load_file", loaded)


@pytest.mark.parametrize("load", [
    lambda folder: VimpacForPretraining.from_pretrained(folder),
    lambda folder: VimpacForClassification.from_pretrained(folder, num_classes=4),
    lambda folder: load_backbone(folder),
], ids=["pretraining", "new classifier", "finetune.load_backbone"])
def test_weights_that_do_not_fit_the_config_are_refused_from_the_header_before_loading(tmp_path, monkeypatch, load):
    VimpacForPretraining(tiny_config()).save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    meta = json.loads(config_path.read_text())
    meta["model"]["dim"] *= 2
    config_path.write_text(json.dumps(meta))
    _refuse_loading(monkeypatch)
    with pytest.raises(CheckpointError, match=f"{config_path}: does not describe .*model.safetensors: "
                                              "backbone.embedding.weight: config implies"):
        load(tmp_path / "m")


def _rewrite_weights(folder, change) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    save_file(change(load_file(str(path))), str(path))


LOADERS = [
    lambda folder: VimpacForPretraining.from_pretrained(folder),
    lambda folder: VimpacForClassification.from_pretrained(folder, num_classes=4),
    lambda folder: load_backbone(folder),
]
LOADER_IDS = ["pretraining", "new classifier", "finetune.load_backbone"]
FILE_CHANGES = {
    # A name the model does not have was refused only after every tensor had been loaded, or not
    # at all by load_backbone (which kept the backbone's tensors).
    "unknown name": (lambda w: {**w, "backbone.extra": torch.zeros(10)}, r"unexpected \[backbone.extra\]"),
    "unknown head name": (lambda w: {**w, "cls_head.extra": torch.zeros(10)}, r"unexpected \[cls_head.extra\]"),
    "missing": (lambda w: {k: v for k, v in w.items() if k != "cls_head.mlp.linear_0.bias"},
                r"missing \[cls_head.mlp.linear_0.bias\]"),
    "integer weights": (lambda w: {**w, "mlm_head.bias": w["mlm_head.bias"].long()},
                        r"dtype mismatch \[mlm_head.bias: file torch.int64 vs model torch.float32\]"),
}


@pytest.mark.parametrize("load", LOADERS, ids=LOADER_IDS)
@pytest.mark.parametrize("change, expected", FILE_CHANGES.values(), ids=FILE_CHANGES.keys())
def test_tensors_unlike_the_models_are_refused_from_the_header_naming_file_and_tensor(tmp_path, monkeypatch, load,
                                                                                      change, expected):
    VimpacForPretraining(tiny_config()).save_pretrained(tmp_path / "m")
    _rewrite_weights(tmp_path / "m", change)
    _refuse_loading(monkeypatch)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'm' / 'model.safetensors'}: weights do not fit the "
                                              f"model config.json describes: {expected}$"):
        load(tmp_path / "m")


def test_a_classifier_file_with_an_unknown_tensor_is_refused_from_the_header(tmp_path, monkeypatch):
    VimpacForClassification(tiny_config(), num_classes=3).save_pretrained(tmp_path / "clf")
    _rewrite_weights(tmp_path / "clf", lambda w: {**w, "head.extra": torch.zeros(3)})
    _refuse_loading(monkeypatch)
    for load in (lambda: VimpacForClassification.from_pretrained(tmp_path / "clf"), lambda: load_backbone(tmp_path / "clf")):
        with pytest.raises(CheckpointError, match=r"clf/model.safetensors: weights do not fit .*unexpected \[head.extra\]"):
            load()


def test_an_unknown_model_kind_is_refused_before_the_weights_are_read(tmp_path, monkeypatch):
    VimpacForPretraining(tiny_config()).save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    meta = json.loads(config_path.read_text())
    meta["kind"] = "segmentation"
    config_path.write_text(json.dumps(meta))
    _refuse_loading(monkeypatch)
    for load in LOADERS[1:]:
        with pytest.raises(CheckpointError, match=f"{config_path}: unknown model kind 'segmentation'"):
            load(tmp_path / "m")


def test_checking_a_header_against_the_described_model_imports_no_compiler(tmp_path):
    # The described model is built on the meta device, where torch's normal_ is a Python reference
    # that imports torch._dynamo: seconds added to every `vimpac evaluate`, which never compiles.
    VimpacForClassification(tiny_config(), num_classes=3).save_pretrained(tmp_path / "clf")
    code = ("from vimpac.model import VimpacForClassification\n"
            f"VimpacForClassification.from_pretrained({str(tmp_path / 'clf')!r})")
    assert not imported_in_fresh_process(code, "torch._dynamo")
