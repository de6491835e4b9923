"""DalleTokenizer: the FrameTokenizer contract, saving / loading, ids, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from process_helpers import imported_in_fresh_process
from vimpac.tokenizer.base import TokenizerError, load_tokenizer
from vimpac.tokenizer.dalle import DALLE_PRESETS, DalleConfig, DalleDecoderConfig, DalleEncoderConfig, DalleTokenizer

# Smaller than the fixture so each test is instant; vocab 64, n_hid 8.
SMALL = DalleConfig(DalleEncoderConfig(8, 1, 3, 64), DalleDecoderConfig(8, 8, 1, 3, 64))


def _tokenizer(seed: int = 0, **kwargs) -> DalleTokenizer:
    torch.manual_seed(seed)
    return DalleTokenizer(SMALL, precision=kwargs.pop("precision", "fp32"), **kwargs)


def _frames(n: int, h: int = 16, w: int = 24) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_encode_decode_shapes_and_types():
    tok = _tokenizer()
    ids = tok.encode(_frames(5))
    assert ids.dtype == torch.int64 and ids.shape == (5, 2, 3)
    assert int(ids.min()) >= 0 and int(ids.max()) < 64
    frames = tok.decode(ids)
    assert frames.dtype == torch.uint8 and frames.shape == (5, 16, 24, 3)
    assert tok.encode(np.zeros((0, 16, 16, 3), np.uint8)).shape == (0, 2, 2)
    assert tok.decode(torch.zeros(0, 2, 2, dtype=torch.int64)).shape == (0, 16, 16, 3)


def test_loading_a_folder_imports_no_compiler(tmp_path):
    # The folder's tensors are checked against networks built on the meta device, where torch's
    # normal_ init is a Python reference that imports torch._dynamo: seconds added to every
    # `vimpac tokenize` / `embed` / `analyze` process, which never compiles.
    _tokenizer().save_pretrained(tmp_path / "tok")
    code = f"from vimpac.tokenizer.base import load_tokenizer\nload_tokenizer({str(tmp_path / 'tok')!r})"
    assert not imported_in_fresh_process(code, "torch._dynamo")


def test_batching_does_not_change_results():
    frames = _frames(7)
    one = _tokenizer(batch_size=1)
    many = _tokenizer(batch_size=16)
    assert torch.equal(one.encode(frames), many.encode(frames))
    ids = many.encode(frames)
    assert torch.equal(one.decode(ids), many.decode(ids))
    # numpy and torch inputs give the same ids
    assert torch.equal(many.encode(torch.from_numpy(frames)), many.encode(frames))


def test_save_and_load_round_trip(tmp_path):
    tok = _tokenizer(precision="fp32")
    tok.save_pretrained(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["kind"] == "dalle" and meta["codebook_size"] == 64
    assert meta["architecture"]["encoder"]["n_hid"] == 8 and meta["tokenizer_id"] == tok.tokenizer_id
    assert not [p for p in (tmp_path / "tok").iterdir() if p.name.startswith(".")]  # no temp files left
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, DalleTokenizer) and loaded.config == SMALL
    assert loaded.tokenizer_id == tok.tokenizer_id
    frames = _frames(3)
    loaded.precision = "fp32"
    assert torch.equal(loaded.encode(frames), tok.encode(frames))


def test_tokenizer_id_depends_on_weights_and_config():
    a, b = _tokenizer(seed=0), _tokenizer(seed=0)
    assert a.tokenizer_id == b.tokenizer_id and a.tokenizer_id.startswith("dalle-")
    assert _tokenizer(seed=1).tokenizer_id != a.tokenizer_id
    with torch.no_grad():
        b.decoder.blocks.output.conv.b[0] += 1e-3
    b._tokenizer_id = None
    assert b.tokenizer_id != a.tokenizer_id


def test_bad_frames_are_clear_errors():
    tok = _tokenizer()
    with pytest.raises(TokenizerError, match=r"frames: expected uint8 \(N, H, W, 3\)"):
        tok.encode(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(TokenizerError, match=r"frames: expected uint8"):
        tok.encode(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(TokenizerError, match="multiples of 8, got 12x16"):
        tok.encode(np.zeros((1, 12, 16, 3), np.uint8))
    with pytest.raises(TokenizerError, match=r"ids: values must lie in \[0, 64\)"):
        tok.decode(torch.full((1, 2, 2), 64))
    with pytest.raises(TokenizerError, match="ids: expected integer"):
        tok.decode(torch.zeros(1, 2, 2))


def test_fp16_on_cpu_is_refused():
    with pytest.raises(TokenizerError, match="fp16.*CUDA only"):
        DalleTokenizer(SMALL, precision="fp16")


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_precision_uses_fp16_on_gpus_that_only_emulate_bf16(monkeypatch, native_bf16, expected):
    tok = _tokenizer(precision="auto")
    assert tok._fast_dtype() == torch.bfloat16  # CPU: bf16 (fp16 there is ~200x slower)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16)
    tok.device = torch.device("cuda")  # as on a V100 / T4 (only the choice is checked here)
    assert tok._fast_dtype() == expected


def test_folder_errors_name_the_file(tmp_path):
    folder = tmp_path / "tok"
    with pytest.raises(TokenizerError, match="tokenizer.json: not found"):
        DalleTokenizer.from_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    weights = folder / "model.safetensors"

    # Tampered weights: the recorded id no longer matches.
    tensors = load_file(str(weights))
    tensors["encoder.blocks.input.b"] = tensors["encoder.blocks.input.b"] + 1
    save_file(tensors, str(weights))
    with pytest.raises(TokenizerError, match="records"):
        DalleTokenizer.from_pretrained(folder)

    # Missing and wrongly shaped tensors are listed by name.
    del tensors["encoder.blocks.input.b"]
    tensors["decoder.blocks.input.w"] = torch.zeros(1, 1, 1, 1)
    save_file(tensors, str(weights))
    with pytest.raises(TokenizerError) as info:
        DalleTokenizer.from_pretrained(folder)
    assert "missing ['blocks.input.b']" in str(info.value) and "blocks.input.w: (1, 1, 1, 1)" in str(info.value)

    weights.write_bytes(b"garbage")
    with pytest.raises(TokenizerError, match="model.safetensors: not a readable safetensors file"):
        DalleTokenizer.from_pretrained(folder)
    weights.unlink()
    with pytest.raises(TokenizerError, match="model.safetensors: not found"):
        DalleTokenizer.from_pretrained(folder)

    config = folder / "tokenizer.json"
    meta = json.loads(config.read_text())
    meta["architecture"]["encoder"]["n_hid"] = "wide"
    config.write_text(json.dumps(meta))
    with pytest.raises(TokenizerError, match=r"architecture.encoder.n_hid: expected int"):
        DalleTokenizer.from_pretrained(folder)
    config.write_text(json.dumps({"kind": "vqvae"}))
    with pytest.raises(TokenizerError, match='expected "kind": "dalle"'):
        DalleTokenizer.from_pretrained(folder)


def test_presets_and_validation():
    assert DALLE_PRESETS["official"].encoder.vocab_size == 8192
    assert DALLE_PRESETS["official"].decoder.n_init == 128
    bad = DalleConfig(DalleEncoderConfig(8, 1, 3, 64), DalleDecoderConfig(8, 8, 1, 3, 32))
    with pytest.raises(ValueError, match="decoder.vocab_size = 32: expected equal to encoder.vocab_size"):
        DalleTokenizer(bad)


def test_official_size_parameter_count():
    """The released encoder has 53.8M parameters and the decoder 43.9M (counts derived from
    the architecture by hand below, not read off our model)."""
    h, v = 256, 8192

    def conv(i, o, k):
        return i * o * k * k + o

    def block(i, o, kernels):
        q = o // 4
        widths = [i, q, q, q, o]
        return sum(conv(widths[j], widths[j + 1], kernels[j]) for j in range(4)) + (conv(i, o, 1) if i != o else 0)

    enc_w = [h, h, 2 * h, 4 * h, 8 * h]
    expected_enc = conv(3, h, 7) + conv(8 * h, v, 1) + sum(
        block(enc_w[g] if b == 0 else enc_w[g + 1], enc_w[g + 1], (3, 3, 3, 1)) for g in range(4) for b in range(2))
    dec_w = [128, 8 * h, 4 * h, 2 * h, h]
    expected_dec = conv(v, 128, 1) + conv(h, 6, 1) + sum(
        block(dec_w[g] if b == 0 else dec_w[g + 1], dec_w[g + 1], (1, 3, 3, 3)) for g in range(4) for b in range(2))
    from vimpac.tokenizer.dalle import DalleDecoder, DalleEncoder

    with torch.device("meta"):
        enc, dec = DalleEncoder(), DalleDecoder()
    assert sum(p.numel() for p in enc.parameters()) == expected_enc
    assert sum(p.numel() for p in dec.parameters()) == expected_dec


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_paths_match_cpu_fp32(precision):
    cpu = _tokenizer(seed=3)
    gpu = DalleTokenizer(SMALL, cpu.encoder, cpu.decoder, device="cuda", precision=precision)
    frames = _frames(4)
    reference = _tokenizer(seed=3).logits(frames)
    logits = gpu.logits(frames)
    tolerance = 1e-4 if precision == "fp32" else 0.03
    assert (logits - reference).abs().max() <= tolerance * reference.abs().max()
    assert gpu.encode(frames).device.type == "cpu" and gpu.decode(gpu.encode(frames)).shape == (4, 16, 24, 3)
