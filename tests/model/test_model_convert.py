"""`vimpac convert-original`: a released checkpoint folder (classifier.pt + args.pickle) made
from the fixture weights converts to our format and reproduces the fixture outputs; a crafted
args pickle is refused without running its code."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_testlib import FIXTURES, fixture_state_dict, load_fixture
from pickle_payloads import payloads
from vimpac.cli import main
from vimpac.model import CheckpointError, ModelConfig, VimpacBackbone, VimpacForClassification, VimpacForPretraining
from vimpac.model.convert import convert_original, load_args, load_original_state_dict

TOL = dict(atol=1e-5, rtol=1e-5)


def released_args(fx_name: str) -> argparse.Namespace:
    """The pretrain.py options that produced the fixture (its config_json lists them)."""
    cli = json.loads(str(load_fixture(fx_name)["config_json"]))["pretrain_cli_equivalent"]
    return argparse.Namespace(model=cli["model"], pos_emb=cli["pos_emb"], layers=cli["layers"],
                              hid_dim=cli["hid_dim"], clip_len=cli["clip_len"], vocab_size=cli["vocab_size"],
                              nce_proj_layers=cli["nce_proj_layers"], nce_proj_hid_dim=cli["nce_proj_hid_dim"],
                              halve_att=cli["halve_att"], halve_mlp=cli["halve_mlp"], pre_activation=False,
                              dropout=0.1, frame_size=32, lr=1e-3, epoch=99, output="snap/pretrain")


def write_release(folder, fx_name: str, ddp_prefix: bool = False) -> dict:
    fx = load_fixture(fx_name)
    folder.mkdir(parents=True)
    state = fixture_state_dict(fx)
    if ddp_prefix:
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, folder / "classifier.pt")
    (folder / "args.pickle").write_bytes(pickle.dumps(released_args(fx_name)))
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    return fx


@pytest.mark.parametrize("fx_name", FIXTURES)
def test_convert_cli_reproduces_the_fixture(tmp_path, fx_name):
    fx = write_release(tmp_path / "release", fx_name, ddp_prefix=fx_name == FIXTURES[1])
    assert main(["convert-original", str(tmp_path / "release"), str(tmp_path / "ours")]) == 0
    model = VimpacForPretraining.from_pretrained(tmp_path / "ours").eval()
    assert model.config.layout == ("T,H|W" if fx_name == "tiny_t_hw" else "T,H,W")
    tokens = torch.from_numpy(fx["input_tokens"])
    with torch.no_grad():
        out = model(tokens, tokens == model.config.vocab.mask_id)
    torch.testing.assert_close(out.cls_hidden, torch.from_numpy(fx["out/cls_hidden"]), **TOL)
    torch.testing.assert_close(out.hiddens, torch.from_numpy(fx["out/hiddens"]), **TOL)
    torch.testing.assert_close(out.cls_projection, torch.from_numpy(fx["out/cls_proj"]), **TOL)
    labels = torch.from_numpy(fx["input_mlm_labels"])
    assert torch.equal(out.mlm_logits.argmax(-1), torch.from_numpy(fx["out/mlm_argmax"])[labels != -100])


def test_fine_tuned_checkpoint_converts_to_a_classifier(tmp_path):
    fx = load_fixture("tiny_t_hw")
    folder = tmp_path / "ft"
    folder.mkdir()
    state = {k: v for k, v in fixture_state_dict(fx).items() if k.startswith("backbone.")}
    state["cls_fc.weight"] = torch.randn(7, 128)
    state["cls_fc.bias"] = torch.randn(7)
    torch.save(state, folder / "classifier.pt")
    (folder / "args.pickle").write_bytes(pickle.dumps(released_args("tiny_t_hw")))
    convert_original(folder, tmp_path / "ours")
    clf = VimpacForClassification.from_pretrained(tmp_path / "ours").eval()
    assert clf.num_classes == 7
    tokens = torch.from_numpy(fx["input_tokens"])
    with torch.no_grad():
        logits = clf(tokens)
    expected = torch.from_numpy(fx["out/cls_hidden"]) @ state["cls_fc.weight"].t() + state["cls_fc.bias"]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


class _RunsCode:
    """A pickle payload that would create a folder if it were ever unpickled naively."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_malicious_args_pickle_is_refused_and_never_runs(tmp_path):
    write_release(tmp_path / "release", "tiny_t_hw")
    marker = tmp_path / "pwned"
    evil = argparse.Namespace(model="efflayoutT,H|W", payload=_RunsCode(str(marker)))
    (tmp_path / "release" / "args.pickle").write_bytes(pickle.dumps(evil))
    with pytest.raises(CheckpointError, match=r"args.pickle.*refusing global posix.mkdir|args.pickle.*refusing global os.mkdir"):
        convert_original(tmp_path / "release", tmp_path / "ours")
    assert not marker.exists()
    assert not (tmp_path / "ours").exists()
    # The CLI reports it as an error (exit 1), not a traceback.
    assert main(["convert-original", str(tmp_path / "release"), str(tmp_path / "ours")]) == 2
    assert not marker.exists()
    # Sanity check that the payload is live: plain pickle would have run it.
    pickle.loads(pickle.dumps(_RunsCode(str(marker))))
    assert marker.exists()


def test_args_file_must_be_a_namespace_and_weights_only(tmp_path):
    (tmp_path / "args.pkl").write_bytes(pickle.dumps({"model": "efflayoutT"}))
    with pytest.raises(CheckpointError, match="expected a pickled argparse.Namespace, got dict"):
        load_args(tmp_path / "args.pkl")
    folder = tmp_path / "release"
    folder.mkdir()
    torch.save({"w": np.arange(3)}, folder / "classifier.pt")   # a numpy array needs a non-weights global
    with pytest.raises(CheckpointError, match="classifier.pt: cannot load as a weights-only state dict"):
        convert_original(folder, tmp_path / "ours")


def test_pre_ln_checkpoint_keeps_the_originals_normalized_residual(tmp_path):
    """The authors' pre-activation attention block returns LN(x) + dense(context), adding to the
    *normalized* input (its MultiPatternAttention.forward reassigns x = LayerNorm(x) first); a
    converted pre-LN checkpoint must compute that, not the textbook x + dense(context).

    With every value projection zeroed all attention contexts are 0, so the original's forward
    reduces to a few lines: per block x <- LN(x) + dense.bias, per MLP x <- x + mlp(LN(x))."""
    cfg = ModelConfig(codebook_size=32, dim=128, layers=2, heads=2, layout="T,H|W", pre_ln=True,
                      max_frames=2, height=3, width=3, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    backbone = VimpacBackbone(cfg)  # only a source of correctly named, correctly shaped weights
    state = {}
    for key, value in backbone.state_dict().items():
        zero = ".attention.value." in key
        state["backbone." + key] = torch.zeros_like(value) if zero else torch.randn_like(value) * 0.3
    state["cls_fc.weight"], state["cls_fc.bias"] = torch.randn(3, 128), torch.randn(3)
    folder = tmp_path / "release"
    folder.mkdir()
    torch.save(state, folder / "classifier.pt")
    args = argparse.Namespace(model="efflayoutT,H|W", pos_emb="hw_separation", pre_activation=True,
                              dropout=0.1, last_dropout=0.0)
    (folder / "args.pickle").write_bytes(pickle.dumps(args))
    assert main(["convert-original", str(folder), str(tmp_path / "ours")]) == 0
    clf = VimpacForClassification.from_pretrained(tmp_path / "ours").eval()

    def w(key: str) -> torch.Tensor:
        return state["backbone." + key]

    def ln(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(h, (128,), w(name + ".weight"), w(name + ".bias"), eps=1e-12)

    tokens = torch.randint(0, 32, (2, 2, 3, 3), generator=torch.Generator().manual_seed(1))
    pos = "positional_embedding."
    x = (w("embedding.weight")[tokens] + w(pos + "temporal_pos_embedding")[:, None, None]
         + w(pos + "height_pos_embedding")[None, :, None] + w(pos + "width_pos_embedding")[None, None, :])
    cls = (w("cls_param") + w(pos + "cls_pos_embedding")[0]).expand(2, -1)
    for i in range(2):
        layer = f"transformer.resblocks.{i}."
        for j in range(2):
            block = f"{layer}attention_blocks.{j}."
            cls, x = (ln(h, block + "LayerNorm") + w(block + "dense.bias") for h in (cls, x))
        def mlp(h: torch.Tensor) -> torch.Tensor:
            hidden = F.gelu(F.linear(ln(h, layer + "ln"), w(layer + "mlp.c_fc.weight"), w(layer + "mlp.c_fc.bias")))
            return F.linear(hidden, w(layer + "mlp.c_proj.weight"), w(layer + "mlp.c_proj.bias"))
        cls, x = cls + mlp(cls), x + mlp(x)
    expected = F.linear(ln(cls, "ln_post"), state["cls_fc.weight"], state["cls_fc.bias"])
    with torch.no_grad():
        torch.testing.assert_close(clf(tokens), expected, **TOL)
    assert clf.config.pre_ln and clf.config.pre_ln_residual == "normalized"


@pytest.mark.parametrize("converted, pre_ln, expected", [
    (True, True, "normalized"),   # convert-original before pre_ln_residual existed
    (False, True, "input"),       # our own pre-LN runs of that time trained with the input residual
    (True, False, "input"),
])
def test_folders_written_before_pre_ln_residual_load_with_what_they_were_trained(tmp_path, converted, pre_ln,
                                                                              expected):
    cfg = ModelConfig(codebook_size=32, dim=32, layers=1, heads=2, pre_ln=pre_ln, max_frames=2, height=3, width=3,
                      pre_ln_residual="normalized" if pre_ln else "input")
    folder = VimpacForPretraining(cfg).save_pretrained(tmp_path / "model",
                                                       **({"converted_from": "/release"} if converted else {}))
    meta = json.loads((folder / "config.json").read_text())
    del meta["model"]["pre_ln_residual"]
    (folder / "config.json").write_text(json.dumps(meta))
    assert VimpacForPretraining.from_pretrained(folder).config.pre_ln_residual == expected


def test_args_pickle_declaring_a_huge_length_is_a_clear_error(tmp_path):
    """12 bytes (BINBYTES8 declaring 1 TiB) that make the unpickler allocate before it reads:
    a CheckpointError, not a MemoryError traceback."""
    write_release(tmp_path / "release", "tiny_t_hw")
    (tmp_path / "release" / "args.pickle").write_bytes(b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b".")
    with pytest.raises(CheckpointError, match="args.pickle: not a plain pickled argparse.Namespace"):
        load_args(tmp_path / "release" / "args.pickle")
    assert main(["convert-original", str(tmp_path / "release"), str(tmp_path / "ours")]) == 2
    assert not (tmp_path / "ours").exists()


def test_ignore_args_needs_a_layout(tmp_path):
    write_release(tmp_path / "release", "tiny_t_hw")
    (tmp_path / "release" / "args.pickle").unlink()
    with pytest.raises(CheckpointError, match="no args.pickle"):
        convert_original(tmp_path / "release", tmp_path / "ours")
    with pytest.raises(CheckpointError, match="layout is not in the weights"):
        convert_original(tmp_path / "release", tmp_path / "ours", ignore_args=True)
    assert main(["convert-original", str(tmp_path / "release"), str(tmp_path / "ours"),
                 "--ignore-args", "--set", "layout=T,H|W"]) == 0


def test_convert_refuses_to_overwrite_a_model_folder_without_overwrite(tmp_path, capsys):
    write_release(tmp_path / "release", "tiny_t_hw")
    out = tmp_path / "ours"
    assert main(["convert-original", str(tmp_path / "release"), str(out)]) == 0
    (out / "notes.txt").write_text("a note of the old model")
    weights = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["convert-original", str(tmp_path / "release"), str(out)]) == 2
    assert "already holds a model (config.json, model.safetensors, notes.txt); pass --overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == weights
    # With --overwrite the whole folder is replaced: nothing of the old model stays to describe the new one.
    assert main(["convert-original", str(tmp_path / "release"), str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_convert_refuses_a_folder_that_is_not_a_model_even_with_overwrite(tmp_path, capsys):
    write_release(tmp_path / "release", "tiny_t_hw")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "videos.txt").write_text("x.mp4\n")
    assert main(["convert-original", str(tmp_path / "release"), str(tmp_path / "data"), "--overwrite"]) == 2
    assert "not empty (videos.txt) and not a model folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["videos.txt"]


@pytest.mark.parametrize("form", payloads("true"))
def test_args_and_classifier_pickles_refuse_every_opcode_that_calls_a_global(tmp_path, form):
    marker = tmp_path / "PWNED"
    data = payloads(f"touch {marker}")[form]
    pickle.loads(data)  # sanity: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    (tmp_path / "args.pickle").write_bytes(data)
    with pytest.raises(CheckpointError, match="args.pickle: not a plain pickled argparse.Namespace .*refusing global"):
        load_args(tmp_path / "args.pickle")
    # classifier.pt: the same payload as the data.pkl of a torch.save archive, read weights-only.
    torch.save({"w": torch.zeros(2)}, tmp_path / "classifier.pt")
    with zipfile.ZipFile(tmp_path / "classifier.pt") as src:
        members = {name: src.read(name) for name in src.namelist()}
    members[next(n for n in members if n.endswith("data.pkl"))] = data
    with zipfile.ZipFile(tmp_path / "classifier.pt", "w") as dst:
        for name, member in members.items():
            dst.writestr(name, member)
    with pytest.raises(CheckpointError, match="classifier.pt: cannot load as a weights-only state dict"):
        load_original_state_dict(tmp_path / "classifier.pt")
    assert not marker.exists()


def _legacy_torch_save(state, path):
    torch.save(state, path, _use_new_zipfile_serialization=False)  # as torch < 1.6 wrote
    return path


def test_a_legacy_format_state_dict_loads_as_saved(tmp_path):
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "module.b": torch.ones(2, dtype=torch.float16)}
    loaded = load_original_state_dict(_legacy_torch_save(state, tmp_path / "classifier.pt"))
    assert sorted(loaded) == ["b", "w"]
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["module.b"])
    assert loaded["b"].dtype == torch.float16


def test_a_legacy_format_storage_larger_than_the_file_is_refused_before_allocating(tmp_path):
    # torch.load allocated the declared 2**40 floats (4 TB) of a 365-byte file before reading any.
    path = _legacy_torch_save({"w": torch.zeros(4)}, tmp_path / "classifier.pt")
    data = path.read_bytes()
    declared = b"cpuq\x06K\x04"  # the storage's persistent id ends with its location and element count
    assert data.count(declared) == 1
    path.write_bytes(data.replace(declared, b"cpuq\x06\x8a\x06" + (2**40).to_bytes(6, "little")))
    with pytest.raises(CheckpointError, match=f"{path}: storage '.*' claims {2**40} elements, more than the "
                                              "file holds"):
        load_original_state_dict(path)
