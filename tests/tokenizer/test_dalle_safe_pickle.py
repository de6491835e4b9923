"""Restricted loading of pickled DALL-E modules: real `dall_e` pickles load and match the
package's outputs; pickles that try to run code are refused before anything runs."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vimpac.cli import main as vimpac_main
from vimpac.tokenizer.base import TokenizerError, load_tokenizer
from vimpac.tokenizer.dalle import DalleTokenizer, convert_official_pickles, load_official_pickles
from vimpac.tokenizer.safe_pickle import STANDARD_NN_MODULES, load_module_pickle

from pickle_payloads import payloads


def _dall_e():
    """The `dall_e` package (test-only dependency), or skip."""
    dall_e = pytest.importorskip("dall_e", reason="pip install --no-deps DALL-E==0.1 attrs requests")
    return dall_e


@pytest.fixture(scope="module")
def official_files(tmp_path_factory) -> tuple[Path, Path, object, object]:
    """Small dall_e Encoder / Decoder saved whole with torch.save, as the released files are."""
    dall_e = _dall_e()
    import attr

    torch.manual_seed(0)
    # The package's validators reject n_hid < 64 and vocab < 512; they only check values
    # (fixture README), so switch them off to keep the modules small.
    attr.set_run_validators(False)
    try:
        enc = dall_e.Encoder(n_hid=16, n_blk_per_group=2, vocab_size=64)
        dec = dall_e.Decoder(n_init=8, n_hid=16, n_blk_per_group=2, vocab_size=64)
    finally:
        attr.set_run_validators(True)
    with torch.no_grad():  # non-zero biases, so a dropped or misplaced bias shows
        for p in [*enc.parameters(), *dec.parameters()]:
            if p.ndim == 1:
                p.normal_(std=0.1)
    folder = tmp_path_factory.mktemp("dalle_pkl")
    torch.save(enc, folder / "encoder.pkl")
    torch.save(dec, folder / "decoder.pkl")
    return folder / "encoder.pkl", folder / "decoder.pkl", enc.eval(), dec.eval()


def _frames(n: int = 3, size: int = 32) -> np.ndarray:
    # Smooth gradients plus a little noise: natural-ish, not constant.
    yy, xx = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(0)
    frames = [np.stack([yy, xx, (yy + xx) / 2], -1) * 200 + rng.uniform(0, 55, (size, size, 3)) for _ in range(n)]
    return np.stack(frames).astype(np.uint8)


def test_real_pickles_convert_and_match_the_package(official_files, tmp_path):
    enc_pkl, dec_pkl, enc, dec = official_files
    dall_e = _dall_e()
    tokenizer = convert_official_pickles(enc_pkl, dec_pkl, tmp_path / "tok")
    assert tokenizer.config.encoder.n_hid == 16 and tokenizer.config.decoder.n_init == 8
    for ours, theirs in ((tokenizer.encoder, enc), (tokenizer.decoder, dec)):
        theirs_sd = theirs.state_dict()
        assert list(ours.state_dict()) == list(theirs_sd)
        assert all(torch.equal(v, theirs_sd[k]) for k, v in ours.state_dict().items())

    frames = _frames()
    x = dall_e.map_pixels(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255)
    with torch.no_grad():
        ref_logits = enc(x)
        ref_ids = ref_logits.argmax(1)
        onehot = torch.nn.functional.one_hot(ref_ids, 64).permute(0, 3, 1, 2).float()
        ref_pixels = dall_e.unmap_pixels(torch.sigmoid(dec(onehot)[:, :3]))

    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, DalleTokenizer) and loaded.tokenizer_id == tokenizer.tokenizer_id
    loaded.precision = "fp32"
    torch.testing.assert_close(loaded.logits(frames), ref_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(loaded.encode(frames), ref_ids)
    expected = (ref_pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert (loaded.decode(ref_ids).int() - expected.int()).abs().max() <= 1


def test_legacy_torch_format_also_loads(official_files, tmp_path):
    enc_pkl, _, enc, _ = official_files
    legacy = tmp_path / "encoder_legacy.pkl"
    torch.save(enc, legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    module = load_module_pickle(legacy, ["dall_e.encoder.Encoder", "dall_e.encoder.EncoderBlock",
                                         "dall_e.utils.Conv2d", *STANDARD_NN_MODULES])
    state = module.state_dict()
    assert list(state) == list(enc.state_dict())
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in state.items())


def test_cli_convert_dalle(official_files, tmp_path, capsys):
    enc_pkl, dec_pkl, _, _ = official_files
    assert vimpac_main(["convert-dalle", str(enc_pkl), str(dec_pkl), str(tmp_path / "out")]) == 0
    assert "tokenizer id dalle-" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors", "tokenizer.json"]
    # Swapped arguments: a clear error naming the file and what it holds, exit code 1.
    assert vimpac_main(["convert-dalle", str(dec_pkl), str(enc_pkl), str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert str(dec_pkl) in err and "dall_e.decoder.Decoder" in err and "expected a pickled dall_e.encoder.Encoder" in err
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------ malicious pickles


class _WritesMarker:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_zip_with_payload(path: Path, payload: object) -> None:
    """A genuine torch.save archive whose data.pkl is replaced by a malicious pickle."""
    torch.save({"w": torch.zeros(2)}, path)
    with zipfile.ZipFile(path) as src:
        members = {name: src.read(name) for name in src.namelist()}
    data_pkl = next(n for n in members if n.endswith("data.pkl"))
    members[data_pkl] = pickle.dumps(payload, protocol=2)
    with zipfile.ZipFile(path, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, data)


@pytest.mark.parametrize("container", ["torch_zip", "plain_pickle"])
@pytest.mark.parametrize("payload_kind", ["os_system", "nested_in_state"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, container, payload_kind):
    marker = tmp_path / "PWNED"
    evil = _WritesMarker(marker)
    # Either the top object, or hidden where a module's attributes would be.
    payload = evil if payload_kind == "os_system" else {"n_hid": 8, "_parameters": {"w": evil}}
    path = tmp_path / "encoder.pkl"
    if container == "torch_zip":
        _torch_zip_with_payload(path, payload)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    # Sanity: the payload really would run under plain pickle (in a scratch copy).
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_WritesMarker(probe)))
    assert probe.exists()

    with pytest.raises(TokenizerError) as info:
        load_official_pickles(path, path)
    message = str(info.value)
    assert str(path) in message and "refused" in message
    assert "posix.system" in message or "os.system" in message
    assert not marker.exists()


def test_other_dangerous_globals_are_refused(tmp_path):
    for module, name in [("builtins", "eval"), ("subprocess", "Popen"), ("torch", "load"),
                         ("functools", "partial"), ("dall_e.utils", "map_pixels"),
                         ("torch.storage", "_load_from_bytes"), ("torch._utils", "_rebuild_device_tensor_from_numpy"),
                         ("torch.serialization", "load"), ("builtins", "getattr")]:
        data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(data)
        with pytest.raises(TokenizerError, match=f"refused to load global '{module}.{name}'"):
            load_module_pickle(path, ["dall_e.encoder.Encoder"])


def test_missing_and_malformed_files(tmp_path, official_files):
    enc_pkl, dec_pkl, _, _ = official_files
    with pytest.raises(TokenizerError, match="file not found"):
        load_official_pickles(tmp_path / "nope.pkl", dec_pkl)
    text = tmp_path / "encoder.pkl"
    text.write_text("this is not a pickle\n")
    with pytest.raises(TokenizerError, match=f"{text}.*not a"):
        load_official_pickles(text, dec_pkl)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(enc_pkl.read_bytes()[:2000])
    with pytest.raises(TokenizerError, match=str(truncated)):
        load_official_pickles(truncated, dec_pkl)
    state_only = tmp_path / "state_dict.pt"
    torch.save({"blocks.input.w": torch.zeros(1)}, state_only)
    with pytest.raises(TokenizerError, match="expected a pickled dall_e.encoder.Encoder"):
        load_official_pickles(state_only, dec_pkl)


def test_storage_missing_from_archive_is_reported(official_files, tmp_path):
    enc_pkl, dec_pkl, _, _ = official_files
    broken = tmp_path / "encoder.pkl"
    with zipfile.ZipFile(enc_pkl) as src, zipfile.ZipFile(broken, "w") as dst:
        for name in src.namelist():
            if not name.endswith("/data/0"):
                dst.writestr(name, src.read(name))
    with pytest.raises(TokenizerError, match="missing storage"):
        load_official_pickles(broken, dec_pkl)


@pytest.mark.parametrize("layout", ["torch_zip", "plain_pickle"])
@pytest.mark.parametrize("form", payloads("true"))
def test_every_opcode_that_calls_a_global_is_refused(tmp_path, layout, form):
    marker = tmp_path / "PWNED"
    data = payloads(f"touch {marker}")[form]
    pickle.loads(data)  # sanity: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "encoder.pkl"
    if layout == "torch_zip":
        torch.save({"w": torch.zeros(2)}, path)
        with zipfile.ZipFile(path) as src:
            members = {name: src.read(name) for name in src.namelist()}
        members[next(n for n in members if n.endswith("data.pkl"))] = data
        with zipfile.ZipFile(path, "w") as dst:
            for name, member in members.items():
                dst.writestr(name, member)
    else:
        path.write_bytes(data)
    with pytest.raises(TokenizerError, match=f"{path}: refused to load global"):
        load_module_pickle(path, ["dall_e.encoder.Encoder", *STANDARD_NN_MODULES])
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["torch_zip", "plain_pickle"])
@pytest.mark.parametrize("opcode", [b"\x8e", b"\x8d", b"\x96", b"\x95"])  # BINBYTES8, BINUNICODE8, BYTEARRAY8, FRAME
def test_a_huge_declared_length_is_a_clear_error(tmp_path, layout, opcode):
    """A few bytes declaring a petabyte, which the unpickler allocates before it reads: a
    TokenizerError naming the file, not a MemoryError traceback."""
    data = b"\x80\x05" + opcode + (1 << 50).to_bytes(8, "little") + b"x"
    path = tmp_path / "encoder.pkl"
    if layout == "torch_zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", data)
    else:
        path.write_bytes(data)
    with pytest.raises(TokenizerError, match=f"{path}: not a readable torch.save file"):
        load_module_pickle(path, ["dall_e.encoder.Encoder"])
