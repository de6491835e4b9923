"""A path that is not a tokenizer folder is a one-line `TokenizerError`; `train-tokenizer` checks
its output folder and device before decoding anything, and never writes into a foreign folder
or silently over an existing tokenizer."""

from __future__ import annotations

import json
import os

import pytest
import torch

import vimpac.tokenizer.train as train_module
from vimpac.cli import main
from process_helpers import fifo_writer_after
from vimpac.tokenizer.base import TokenizerError, load_tokenizer
from vimpac.tokenizer.dalle import DALLE_PRESETS, DalleTokenizer
from vimpac.tokenizer.vqvae import VQVAEConfig, VQVAETokenizer
from vqvae_test_frames import fast_train_args, write_clips

FAST_ARGS = fast_train_args(steps=3)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    VQVAETokenizer.from_config(VQVAEConfig(width=8, code_dim=8, codebook_size=16)).save_pretrained(folder)
    return folder


@pytest.fixture
def no_decoding(monkeypatch):
    """Makes decoding a video fail the test: checks must come before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("videos were decoded before the bad option was refused")

    monkeypatch.setattr(train_module, "load_frame_pool", refuse)


# ------------------------------------------------------------------------------ load_tokenizer


def test_a_file_instead_of_the_folder_is_a_clear_error(saved_tokenizer):
    for path in (saved_tokenizer / "model.safetensors", saved_tokenizer / "tokenizer.json"):
        with pytest.raises(TokenizerError) as caught:
            load_tokenizer(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: is a file, expected a tokenizer folder")
        assert "tokenizer.json" in message and "model.safetensors" in message
        assert f"did you mean {saved_tokenizer}?" in message
    assert isinstance(load_tokenizer(saved_tokenizer), VQVAETokenizer)


@pytest.mark.parametrize("content", ["[1, 2]", '"vqvae"', "3", "null"])
def test_a_config_that_is_not_an_object_is_a_clear_error(tmp_path, content):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: expected a JSON object with \"kind\""):
        load_tokenizer(tmp_path)


def test_missing_or_unreadable_config(tmp_path):
    with pytest.raises(TokenizerError, match="no such tokenizer folder"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer.json").mkdir()
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: cannot read"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").rmdir()
    (tmp_path / "tokenizer.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        load_tokenizer(tmp_path)


def test_tokenize_command_reports_a_weights_file_as_tokenizer(saved_tokenizer, tmp_path, capsys):
    (tmp_path / "list.txt").write_text("a.mp4 0\n")
    weights = saved_tokenizer / "model.safetensors"
    rc = main(["tokenize", "--videos", str(tmp_path), "--list", str(tmp_path / "list.txt"), "--tokenizer", str(weights),
               "--fps", "2", "--size", "32", "--out", str(tmp_path / "store"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{weights}: is a file, expected a tokenizer folder" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------ train-tokenizer


def test_output_path_that_is_a_file_is_refused_before_training(clips, tmp_path, capsys, no_decoding):
    a_file = tmp_path / "afile"
    a_file.write_text("keep me")
    for out, expected in ((a_file, "exists and is not a folder"), (a_file / "tok", f"{a_file} is a file")):
        rc = main(["train-tokenizer", str(clips), "--out", str(out), *FAST_ARGS])
        err = capsys.readouterr().err
        assert rc == 2 and str(out) in err and expected in err
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("device", ["tpu", "cuda:99", *([] if torch.cuda.is_available() else ["cuda"])])
def test_unusable_device_is_refused_before_training(clips, tmp_path, capsys, no_decoding, device):
    rc = main(["train-tokenizer", str(clips), "--out", str(tmp_path / "tok"), *FAST_ARGS, "--device", device])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("vimpac train-tokenizer: error: --device: ") and repr(device) in err
    assert not (tmp_path / "tok").exists()


def test_foreign_non_empty_folder_is_refused_even_with_overwrite(clips, tmp_path, capsys, no_decoding):
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text("{}")
    for extra in ([], ["--overwrite"]):
        rc = main(["train-tokenizer", str(clips), "--out", str(store), *FAST_ARGS, *extra])
        err = capsys.readouterr().err
        assert rc == 2 and f"{store}: not empty (manifest.json) and not a tokenizer folder" in err
    assert sorted(p.name for p in store.iterdir()) == ["manifest.json"]


def test_existing_tokenizer_is_replaced_only_with_overwrite(clips, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tok"
    assert main(["train-tokenizer", str(clips), "--out", str(out), *FAST_ARGS]) == 0
    first_id = json.loads((out / "tokenizer.json").read_text())["tokenizer_id"]
    (out / "DONE.json").write_text("{}")  # a file that described the old tokenizer
    capsys.readouterr()

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "load_frame_pool", lambda *a, **k: pytest.fail("decoded before refusing"))
        assert main(["train-tokenizer", str(clips), "--out", str(out), *FAST_ARGS, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: already holds a tokenizer" in err and "--overwrite" in err
    assert json.loads((out / "tokenizer.json").read_text())["tokenizer_id"] == first_id

    assert main(["train-tokenizer", str(clips), "--out", str(out), *FAST_ARGS, "--seed", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "tokenizer.json", "train_report.json"]
    report = json.loads((out / "train_report.json").read_text())
    assert load_tokenizer(out).tokenizer_id == report["tokenizer_id"] != first_id
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no staging or retired folder left


def test_library_callers_may_write_into_their_own_folder(clips, tmp_path):
    # The demo's stage folder holds its STAGE.json before the tokenizer is trained into it.
    out = tmp_path / "stage"
    out.mkdir()
    (out / "STAGE.json").write_text("{}")
    report = train_module.train_tokenizer_from_videos(
        [clips], out, VQVAEConfig(width=8, code_dim=8, codebook_size=16), train_module.TrainConfig(steps=2, batch_size=4),
        train_module.DataConfig(size=32), progress=False, log=lambda *a, **k: None)
    assert load_tokenizer(out).tokenizer_id == report["tokenizer_id"] and (out / "STAGE.json").exists()


def test_val_fraction_zero_says_no_split_was_asked(clips, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["train-tokenizer", str(clips), "--out", str(out), *FAST_ARGS, "--val-fraction", "0"]) == 0
    report = json.loads((out / "train_report.json").read_text())
    source = report["held_out"]["source"]
    assert "no held-out split asked" in source and "too few" not in source
    assert report["videos"]["held_out"] == [] and len(report["videos"]["train"]) == 3
    assert report["training"]["num_train_frames"] == report["held_out"]["num_frames"]  # every frame trained
    assert "no held-out split asked" in capsys.readouterr().out


@pytest.fixture(scope="module")
def saved_dalle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dalle")
    DalleTokenizer(DALLE_PRESETS["tiny"], precision="fp32").save_pretrained(folder)
    return folder


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("kind", ["vqvae", "dalle"])
def test_weights_that_are_a_fifo_are_refused_without_blocking(saved_tokenizer, saved_dalle, tmp_path, kind):
    # A FIFO in a downloaded folder (a tar archive can hold one): safetensors would wait in open()
    # for a writer, for ever.
    folder = tmp_path / kind
    folder.mkdir()
    source = saved_tokenizer if kind == "vqvae" else saved_dalle
    (folder / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    os.mkfifo(folder / "model.safetensors")
    with fifo_writer_after(folder / "model.safetensors"):
        with pytest.raises(TokenizerError, match=f"{folder / 'model.safetensors'}: .*not a regular file"):
            load_tokenizer(folder)


def test_dalle_weights_that_do_not_fit_are_refused_from_the_header_before_loading(saved_dalle, tmp_path,
                                                                                  monkeypatch):
    import safetensors.torch

    folder = tmp_path / "dalle"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((saved_dalle / "model.safetensors").read_bytes())
    meta = json.loads((saved_dalle / "tokenizer.json").read_text())
    meta["architecture"]["encoder"]["n_hid"] *= 2
    (folder / "tokenizer.json").write_text(json.dumps(meta))

    def loaded(*args, **kwargs):
        raise AssertionError("the tensors were loaded before their shapes were checked")
    monkeypatch.setattr(safetensors.torch, "load_file", loaded)
    with pytest.raises(TokenizerError, match=f"{folder / 'model.safetensors'} \\(encoder\\): encoder.n_hid = 64 "
                                             "does not match the stored weights"):
        load_tokenizer(folder)
