"""Crafted DALL-E files must be refused before they make us allocate memory: hyper-parameters that
disagree with the stored tensors, tensors posing as larger than their storage, storages larger
than the file. And `convert-dalle`'s output folder: no silent overwrite, one-line errors for
unusable paths, weights with the usual permissions."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import stat
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from vimpac.cli import main as vimpac_main
from vimpac.io import current_umask
from vimpac.tokenizer.base import TokenizerError
from vimpac.tokenizer.dalle import DalleTokenizer, load_official_pickles
from vimpac.tokenizer.safe_pickle import load_module_pickle

HUGE = 4 * 2**20  # as n_hid: a 7x7 input conv of 4M x 3 and group widths up to 32M: ~158 TB


@pytest.fixture(scope="module")
def dall_e_modules():
    """Small `dall_e` Encoder / Decoder objects (n_hid 16, 2 blocks per group, 64 codes)."""
    dall_e = pytest.importorskip("dall_e", reason="pip install --no-deps DALL-E==0.1 attrs requests")
    import attr

    torch.manual_seed(0)
    attr.set_run_validators(False)  # the package refuses n_hid < 64 and vocab < 512
    try:
        return (dall_e.Encoder(n_hid=16, n_blk_per_group=2, vocab_size=64),
                dall_e.Decoder(n_init=8, n_hid=16, n_blk_per_group=2, vocab_size=64))
    finally:
        attr.set_run_validators(True)


@pytest.fixture(scope="module")
def official_pickles(dall_e_modules, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("dalle_crafted")
    enc, dec = dall_e_modules
    torch.save(enc, folder / "encoder.pkl")
    torch.save(dec, folder / "decoder.pkl")
    return folder / "encoder.pkl", folder / "decoder.pkl"


def crafted(module, path: Path, **attributes) -> Path:
    """torch.save a copy of `module` with its pickled hyper-parameters replaced."""
    module = copy.deepcopy(module)
    for name, value in attributes.items():
        object.__setattr__(module, name, value)  # attrs classes: plain attribute on the instance
    torch.save(module, path)
    return path


# ------------------------------------------------------------------ hyper-parameters


def test_huge_n_hid_is_refused_naming_the_file_and_field(dall_e_modules, official_pickles, tmp_path, capsys):
    enc, _ = dall_e_modules
    enc_pkl, dec_pkl = official_pickles
    huge = crafted(enc, tmp_path / "enc_huge.pkl", n_hid=HUGE)
    with pytest.raises(TokenizerError) as info:  # was: RuntimeError "tried to allocate 158329674399744 bytes"
        load_official_pickles(huge, dec_pkl)
    message = str(info.value)
    assert str(huge) in message
    assert f"the pickled Encoder's n_hid = {HUGE} does not match the stored weights" in message
    assert "blocks.input.w has shape (16, 3, 7, 7), which means n_hid = 16" in message
    assert vimpac_main(["convert-dalle", str(huge), str(dec_pkl), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vimpac convert-dalle: error: ") and "n_hid = 4194304" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value, expected", [
    ("n_init", 2**30, "the pickled Decoder's n_init = 1073741824 does not match the stored weights: blocks.input.w "
                      "has shape (8, 64, 1, 1), which means n_init = 8"),
    ("n_hid", HUGE, "n_hid = 4194304 does not match the stored weights: blocks.output.conv.w has shape "
                    "(6, 16, 1, 1), which means n_hid = 16"),
    ("output_channels", 2**20, "output_channels = 1048576 does not match the stored weights: blocks.output.conv.w "
                               "has shape (6, 16, 1, 1), which means output_channels = 3"),
    ("n_blk_per_group", 3, "n_blk_per_group = 3 does not match the stored weights, which hold 2 blocks in group_1"),
])
def test_crafted_decoder_fields_are_refused(dall_e_modules, official_pickles, tmp_path, field, value, expected):
    _, dec = dall_e_modules
    enc_pkl, _ = official_pickles
    bad = crafted(dec, tmp_path / "dec_bad.pkl", **{field: value})
    with pytest.raises(TokenizerError) as info:
        load_official_pickles(enc_pkl, bad)
    assert f"{bad}: " in str(info.value) and expected in str(info.value)


def test_block_count_is_checked_before_any_network_is_built(dall_e_modules, official_pickles, tmp_path, monkeypatch):
    # 10**9 blocks per group would take hours and all memory to build even as shapes only.
    import vimpac.tokenizer.dalle as dalle

    built = []

    def counted_block(*args, **kwargs):
        built.append(args)
        if len(built) > 100:  # the genuine decoder has 8; a crafted count must not get this far
            raise AssertionError("residual blocks built for a crafted block count")
        return real_block(*args, **kwargs)

    enc, _ = dall_e_modules
    _, dec_pkl = official_pickles
    bad = crafted(enc, tmp_path / "enc_blocks.pkl", n_blk_per_group=10**9)
    real_block = dalle.ResidualBlock
    monkeypatch.setattr(dalle, "ResidualBlock", counted_block)
    with pytest.raises(TokenizerError, match="n_blk_per_group = 1000000000 does not match the stored weights, "
                                             "which hold 2 blocks in group_1"):
        load_official_pickles(bad, dec_pkl)


def test_tokenizer_json_architecture_is_checked_against_the_weights(official_pickles, tmp_path):
    # The converted folder's tokenizer.json is untrusted input as well.
    folder = tmp_path / "tok"
    load_official_pickles(*official_pickles, precision="fp32").save_pretrained(folder)
    meta = json.loads((folder / "tokenizer.json").read_text())
    meta["architecture"]["encoder"]["n_hid"] = HUGE
    meta["architecture"]["decoder"]["n_hid"] = HUGE
    (folder / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerError) as info:
        DalleTokenizer.from_pretrained(folder)
    message = str(info.value)
    assert f"{folder / 'model.safetensors'} (encoder): encoder.n_hid = {HUGE} does not match" in message
    assert f"(decoder): decoder.n_hid = {HUGE} does not match" in message


# ------------------------------------------------------------------ the module tree


def _with_extra_child(module, child_of):
    """A copy of `module` whose `blocks` gets the child `child_of(copy)` under the name "extra"."""
    module = copy.deepcopy(module)
    module.blocks._modules["extra"] = child_of(module)
    return module


def _fan_out(levels: int) -> torch.nn.Module:
    """`levels` modules, each naming the next one twice: a few hundred bytes pickled, 2**levels
    paths to walk."""
    module = torch.nn.ReLU()
    for _ in range(levels):
        module = torch.nn.Sequential(module, module)
    return module


def _chain(levels: int) -> torch.nn.Module:
    module = torch.nn.ReLU()
    for _ in range(levels):
        module = torch.nn.Sequential(module)
    return module


@pytest.mark.parametrize("child_of, expected", [
    (lambda enc: enc, "pickled dall_e.encoder.Encoder at blocks.extra appears twice in the module tree"),
    (lambda enc: _fan_out(25), "appears twice in the module tree (a cycle or a shared sub-module)"),
    (lambda enc: _chain(1500), "pickled modules nest deeper than 32 levels"),
], ids=["cycle", "shared", "deep"])
def test_module_cycles_shared_and_deep_modules_are_refused(dall_e_modules, official_pickles, tmp_path, child_of,
                                                           expected):
    # They made the conversion recurse forever (RecursionError), or walk 2**25 paths.
    enc, _ = dall_e_modules
    _, dec_pkl = official_pickles
    path = tmp_path / "enc_tree.pkl"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))  # torch.save recurses into the chain; loading must not
    try:
        torch.save(_with_extra_child(enc, child_of), path)
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(TokenizerError) as info:
        load_official_pickles(path, dec_pkl)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)


@pytest.mark.parametrize("attribute", ["_modules", "_parameters", "_buffers"])
def test_module_attributes_that_are_not_dicts_are_refused(dall_e_modules, official_pickles, tmp_path, attribute):
    enc, _ = dall_e_modules
    _, dec_pkl = official_pickles
    enc = copy.deepcopy(enc)
    enc.__dict__[attribute] = [1, 2]  # was a TypeError / AttributeError traceback
    path = tmp_path / "enc_attr.pkl"
    torch.save(enc, path)
    with pytest.raises(TokenizerError, match=f"dall_e.encoder.Encoder.{attribute} is list, expected a dict"):
        load_official_pickles(path, dec_pkl)


# ------------------------------------------------------------------ tensors and storages


def test_tensor_larger_than_its_storage_is_refused(dall_e_modules, official_pickles, tmp_path):
    # Zero strides let one stored float pose as the whole 16 x 3 x 7 x 7 weight; with a crafted
    # size, copying it out (state_dict) would allocate whatever the file claims.
    enc, _ = dall_e_modules
    _, dec_pkl = official_pickles
    enc = copy.deepcopy(enc)
    enc.blocks.input.w = torch.nn.Parameter(torch.zeros(1).expand(16, 3, 7, 7))
    path = tmp_path / "enc_strided.pkl"
    torch.save(enc, path)
    with pytest.raises(TokenizerError, match=r"size \(16, 3, 7, 7\) has more elements than its storage of 1 "
                                             r"\(overlapping strides \(0, 0, 0, 0\)\)"):
        load_official_pickles(path, dec_pkl)


class _StorageRef:
    """Pickled as a persistent id: a storage of `numel` floats in the archive's data/0."""

    def __init__(self, numel: int) -> None:
        self.numel = numel


class _Tensor:
    def __init__(self, storage: _StorageRef) -> None:
        self.storage = storage

    def __reduce__(self):
        size = (self.storage.numel,)
        return (torch._utils._rebuild_tensor_v2, (self.storage, 0, size, (1,), False, OrderedDict()))


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
        return None


def test_storage_larger_than_the_file_is_refused_before_reading(tmp_path):
    # A deflated member inflates far beyond the file (torch.save never compresses): 64 MB of
    # zeros in a ~70 kB file, which the pickle claims as one tensor.
    numel = 16 * 2**20
    data_pkl = io.BytesIO()
    _TorchPickler(data_pkl, protocol=2).dump({"w": _Tensor(_StorageRef(numel))})
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("bomb/data.pkl", data_pkl.getvalue())
        archive.writestr("bomb/byteorder", "little")
        archive.writestr("bomb/data/0", bytes(4 * numel), compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(TokenizerError,
                       match=f"storage 'bomb/data/0' claims {numel} elements, more than the file holds"):
        load_module_pickle(path, [])


# ------------------------------------------------------------------ convert-dalle's output folder


def test_convert_dalle_refuses_an_existing_tokenizer_folder_without_overwrite(official_pickles, tmp_path, capsys):
    enc_pkl, dec_pkl = official_pickles
    out = tmp_path / "tok"
    out.mkdir()
    (out / "tokenizer.json").write_text('{"kind": "vqvae", "tokenizer_id": "vqvae-old"}\n')
    (out / "train_report.json").write_text("{}\n")
    (out / "DONE.json").write_text("{}\n")
    assert vimpac_main(["convert-dalle", str(enc_pkl), str(dec_pkl), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: already holds a tokenizer" in err and "--overwrite" in err
    assert json.loads((out / "tokenizer.json").read_text())["tokenizer_id"] == "vqvae-old"  # untouched

    assert vimpac_main(["convert-dalle", str(enc_pkl), str(dec_pkl), str(out), "--overwrite"]) == 0
    capsys.readouterr()
    # The whole folder is the new tokenizer: nothing of the old one describes it any more.
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "tokenizer.json"]
    assert json.loads((out / "tokenizer.json").read_text())["kind"] == "dalle"
    assert DalleTokenizer.from_pretrained(out).codebook_size == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no staging or retired folder left


def test_convert_dalle_never_replaces_a_folder_that_is_not_a_tokenizer(official_pickles, tmp_path, capsys):
    enc_pkl, dec_pkl = official_pickles
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    for extra in ([], ["--overwrite"]):
        assert vimpac_main(["convert-dalle", str(enc_pkl), str(dec_pkl), str(out), *extra]) == 2
        assert f"{out}: not empty (notes.txt) and not a tokenizer folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert vimpac_main(["convert-dalle", str(enc_pkl), str(dec_pkl), str(empty)]) == 0
    assert (empty / "tokenizer.json").exists()


def test_convert_dalle_unusable_out_dir_is_a_one_line_error(official_pickles, tmp_path, capsys):
    enc_pkl, dec_pkl = official_pickles
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    for out, expected in ((afile, f"{afile}: exists and is not a folder"),
                          (afile / "sub", f"{afile / 'sub'}: cannot be created, {afile} is a file"),
                          (Path("/proc/vimpac-test"), "/proc/vimpac-test: No such file or directory")):
        assert vimpac_main(["convert-dalle", str(enc_pkl), str(dec_pkl), str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"vimpac convert-dalle: error: {expected}") and err.count("\n") == 1, err
    assert afile.read_text() == "x\n"


def test_converted_weights_get_the_usual_permissions(official_pickles, tmp_path):
    # safetensors' save_file replaces the file atomic_path made, so a chmod before writing is lost.
    out = tmp_path / "tok"
    assert vimpac_main(["convert-dalle", *map(str, official_pickles), str(out)]) == 0
    expected = 0o666 & ~current_umask()
    assert stat.S_IMODE(os.stat(out / "tokenizer.json").st_mode) == expected
    assert stat.S_IMODE(os.stat(out / "model.safetensors").st_mode) == expected
